"""`template check`: what a mailbox provider's content filter would hold against a template,
as findings with their numbers.

Rules (each a warning; `--strict` makes warnings errors, and an error makes the template
inactive until a check passes): no text part (one is generated from the HTML), a very
short text, more than 50 images, an image-only body, a body made only of variables, variable
text over a fifth of the fixed text, links to an IP address or whose shown text names
another domain. Links and their domains are listed as information.

Pure: compiled parts (and optional sample data) in, findings out.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from smtprelay.templates import markup
from smtprelay.templates.engine import CompiledPart

MAX_IMAGES = 50
MAX_VARIABLE_RATIO = 0.2          # variable text : fixed text, 1:5
MIN_TEXT_CHARS = 20
IMAGE_ONLY_CHARS = 100            # an HTML body with images and less visible text than this
ASSUMED_VARIABLE_CHARS = 20       # a placeholder's length when no sample data is given
_PLACEHOLDER = re.compile(r"\{\{\{?[^{}]*\}\}\}?")
_DOMAIN_IN_TEXT = re.compile(r"\b((?:[a-z0-9-]+\.)+[a-z]{2,})\b", re.I)


@dataclass(frozen=True, slots=True)
class Finding:
    level: str          # error, warning, info
    rule: str
    message: str
    value: Any = None

    def doc(self) -> dict[str, Any]:
        return {"level": self.level, "rule": self.rule, "message": self.message, "value": self.value}


def check(subject: CompiledPart | None, text: CompiledPart | None, html: CompiledPart | None,
          data: dict[str, Any] | None = None, strict: bool = False) -> list[Finding]:
    found: list[Finding] = []
    warn = "error" if strict else "warning"
    body = html or text
    if body is None:
        return [Finding("error", "no_body", "the template has neither a text nor an HTML part")]
    facts = markup.read(_fixed(html.source)) if html is not None else None
    # The text part.
    if text is None:
        generated = facts.text if facts is not None else ""
        found.append(Finding("info", "text_generated", f"no text part: one is generated from the HTML "
                                                       f"({len(generated)} characters)", len(generated)))
        text_chars = len(generated)
    else:
        text_chars = len(_fixed(text.source).strip())
        found.append(Finding("info", "text_length", f"the text part has {text_chars} fixed characters", text_chars))
    if text_chars < MIN_TEXT_CHARS:
        found.append(Finding(warn, "text_short", f"the text is {text_chars} characters long; filters distrust "
                                                 f"messages with less than {MIN_TEXT_CHARS}", text_chars))
    if facts is not None:
        if facts.images > MAX_IMAGES:
            found.append(Finding(warn, "images", f"{facts.images} images; more than {MAX_IMAGES} looks like a "
                                                 "catalogue to filters", facts.images))
        else:
            found.append(Finding("info", "images", f"{facts.images} images", facts.images))
        if facts.images and len(facts.text) < IMAGE_ONLY_CHARS:
            found.append(Finding(warn, "image_only", f"the HTML is images with {len(facts.text)} characters of "
                                                     f"text; add text (at least {IMAGE_ONLY_CHARS})",
                                 len(facts.text)))
    # Variables against fixed text.
    fixed = len(_visible(body))
    if fixed == 0 and body.variables:
        found.append(Finding(warn, "variable_only", "the body is only variables: nothing fixed for a reader "
                                                    "(or a filter) to recognise", 0))
    elif body.variables:
        variable = _variable_chars(body, data)
        ratio = variable / max(fixed, 1)
        how = "with the sample data" if data is not None else \
            f"assuming {ASSUMED_VARIABLE_CHARS} characters per placeholder"
        if ratio > MAX_VARIABLE_RATIO:
            found.append(Finding(warn, "variable_ratio", f"variable text is {variable} characters to {fixed} fixed "
                                                         f"({how}): more than 1:5", round(ratio, 3)))
        else:
            found.append(Finding("info", "variable_ratio", f"variable text is {variable} characters to {fixed} "
                                                           f"fixed ({how})", round(ratio, 3)))
    # Links.
    links = facts.links if facts is not None else []
    if links:
        domains = Counter(link.domain for link in links)
        found.append(Finding("info", "links", f"{len(links)} links to " + ", ".join(
            f"{d or '(no host)'} ×{n}" for d, n in domains.most_common()), dict(domains)))
    for link in links:
        host = link.domain
        try:
            ipaddress.ip_address(host.strip("[]"))
            found.append(Finding(warn, "link_ip", f"a link goes to an IP address: {link.url}", link.url))
            continue
        except ValueError:
            pass
        shown = _DOMAIN_IN_TEXT.search(link.text)
        if shown and host and not _same_site(shown.group(1).lower(), host):
            found.append(Finding(warn, "link_mismatch", f"a link shows {shown.group(1)} but goes to {host}",
                                 link.url))
    if subject is None:
        found.append(Finding(warn, "no_subject", "the template has no subject: each send must give one"))
    return found


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]


# -- internals -------------------------------------------------------------------------------
def _fixed(source: str) -> str:
    return _PLACEHOLDER.sub("", source)


def _visible(part: CompiledPart) -> str:
    """The fixed text a reader sees: without placeholders, and without markup in HTML."""
    source = _fixed(part.source)
    return markup.read(source).text if part.part == "html" else " ".join(source.split())


def _variable_chars(part: CompiledPart, data: dict[str, Any] | None) -> int:
    uses = len(_PLACEHOLDER.findall(part.source))
    if data is None:
        return uses * ASSUMED_VARIABLE_CHARS
    rendered = part.render(data)
    text = markup.read(rendered).text if part.part == "html" else " ".join(rendered.split())
    return max(0, len(text) - len(_visible(part)))


def _same_site(shown: str, host: str) -> bool:
    return host == shown or host.endswith("." + shown) or shown.endswith("." + host)
