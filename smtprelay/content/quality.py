"""The quality check of a message before it is sent (`check-message`): facts about it and one
score from 0 to 100.

Owns: reading a message (Python's `email`) into `Facts` — size, subject length, From: domain,
text and HTML parts, images against visible text, links and their domains, List-Unsubscribe and
whether it looks like bulk mail — and `score`, which starts at 100 and takes off, each with the
finding that says why:
- virus found: the score is 0;
- spam score: up to 40, in proportion to the score over the reject score (at or over: 40);
- From: domain not a verified domain of the account (or of the relay): 30; DKIM would not align
  with From: (no signing key for it): 10;
- over `limits.max_message_bytes`: 50; subject over 998 characters: 30 (it would be refused),
  over 78: 5; no subject: 10;
- no text part: 10; an HTML body that is mostly images (less than 100 visible characters with
  images, or more than 50 images): 15;
- a link to an IP address, or whose shown text names another domain: 10 each, at most 20;
- bulk mail (Precedence: bulk/list, or a List-Id) without List-Unsubscribe: 10.
Pure: bytes and the relay's facts in, a report out; the scanners are asked by the service.
"""
from __future__ import annotations

import email
import email.policy
import ipaddress
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

from smtprelay.templates import markup

SUBJECT_WARN = 78
SUBJECT_MAX = 998
_DOMAIN_IN_TEXT = re.compile(r"\b((?:[a-z0-9-]+\.)+[a-z]{2,})\b", re.I)


@dataclass
class Finding:
    level: str          # error, warning, info
    rule: str
    message: str
    cost: int = 0

    def doc(self) -> dict[str, Any]:
        return {"level": self.level, "rule": self.rule, "message": self.message, "cost": self.cost}


@dataclass
class Facts:
    size: int
    subject: str | None
    from_domain: str | None
    has_text: bool
    has_html: bool
    images: int
    visible_chars: int
    links: list[tuple[str, str]]            # (url, shown text)
    bulk: bool
    list_unsubscribe: bool
    attachments: list[str] = field(default_factory=list)
    from_address: str | None = None
    first_recipient: str | None = None

    def doc(self) -> dict[str, Any]:
        domains = sorted({_host(u) for u, _ in self.links} - {""})
        return {"size": self.size, "subject": self.subject,
                "subject_chars": len(self.subject) if self.subject is not None else None,
                "from_domain": self.from_domain, "text_part": self.has_text, "html_part": self.has_html,
                "images": self.images, "visible_chars": self.visible_chars,
                "links": [{"url": u, "text": t} for u, t in self.links[:100]], "link_domains": domains,
                "bulk": self.bulk, "list_unsubscribe": self.list_unsubscribe, "attachments": self.attachments}


def read(raw: bytes) -> Facts:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    subject = str(msg["Subject"]) if msg["Subject"] is not None else None
    sender = msg["From"]
    addresses = getattr(sender, "addresses", ()) if sender is not None else ()
    from_domain = addresses[0].domain.lower() if addresses and addresses[0].domain else None
    to = getattr(msg["To"], "addresses", ()) if msg["To"] is not None else ()
    text = html = None
    attachments = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.get_content_disposition() == "attachment" or part.get_filename():
            attachments.append(part.get_filename() or part.get_content_type())
            continue
        ctype = part.get_content_type()
        try:
            if ctype == "text/plain" and text is None:
                text = part.get_content()
            elif ctype == "text/html" and html is None:
                html = part.get_content()
        except (LookupError, ValueError):
            continue
    facts = markup.read(html) if html is not None else markup.Facts(text=text or "")
    precedence = str(msg.get("Precedence", "")).strip().lower()
    return Facts(len(raw), subject, from_domain, text is not None, html is not None, facts.images,
                 len(" ".join(facts.text.split())), [(link.url, link.text) for link in facts.links],
                 precedence in ("bulk", "list") or msg["List-Id"] is not None, msg["List-Unsubscribe"] is not None,
                 attachments, addresses[0].addr_spec if addresses else None, to[0].addr_spec if to else None)


def judge(facts: Facts, max_bytes: int, domain_verified: bool, dkim_aligned: bool,
          virus: str | None, spam_score: float | None, reject_score: float | None) -> list[Finding]:
    found: list[Finding] = []
    if virus is not None:
        found.append(Finding("error", "virus", f"virus {virus} found: the relay refuses it (554 5.7.1)", 100))
    if spam_score is not None and reject_score:
        cost = 40 if spam_score >= reject_score else max(0, round(40 * spam_score / reject_score))
        level = "error" if spam_score >= reject_score else "warning" if cost >= 10 else "info"
        found.append(Finding(level, "spam_score", f"spam score {spam_score:.1f} (the relay refuses at "
                                                  f"{reject_score:g})", cost))
    if facts.from_domain is None:
        found.append(Finding("error", "from", "no From: address", 30))
    elif not domain_verified:
        found.append(Finding("error", "from_domain", f"From: domain {facts.from_domain} is not a verified sender "
                                                     "domain of the account: the relay refuses it (550 5.7.1)", 30))
    elif not dkim_aligned:
        found.append(Finding("warning", "dkim_alignment", f"no signing key for {facts.from_domain}: DKIM would not "
                                                          "align with From:", 10))
    if facts.size > max_bytes:
        found.append(Finding("error", "size", f"{facts.size} bytes is over limits.max_message_bytes ({max_bytes})",
                             50))
    if facts.subject is None or not facts.subject.strip():
        found.append(Finding("warning", "subject", "no subject", 10))
    elif len(facts.subject) > SUBJECT_MAX:
        found.append(Finding("error", "subject_length", f"the subject has {len(facts.subject)} characters: the relay "
                                                        f"refuses over {SUBJECT_MAX} (550 5.6.0)", 30))
    elif len(facts.subject) > SUBJECT_WARN:
        found.append(Finding("warning", "subject_length", f"the subject has {len(facts.subject)} characters; "
                                                          f"mail clients cut it past about {SUBJECT_WARN}", 5))
    if not facts.has_text:
        found.append(Finding("warning", "text_part", "no text/plain part (filters favour multipart/alternative)",
                             10))
    if facts.has_html and facts.images and (facts.visible_chars < 100 or facts.images > 50):
        found.append(Finding("warning", "image_ratio", f"{facts.images} image(s) and {facts.visible_chars} characters "
                                                       "of visible text: a mostly-image message", 15))
    link_cost = 0
    for url, shown in facts.links:
        host = _host(url)
        why = None
        try:
            ipaddress.ip_address(host)
            why = f"a link to an IP address ({url[:100]})"
        except ValueError:
            named = _DOMAIN_IN_TEXT.search(shown or "")
            if host and named and not _same_site(named.group(1).lower(), host):
                why = f"a link shown as {named.group(1)} goes to {host}"
        if why:
            cost = 10 if link_cost < 20 else 0
            link_cost += cost
            found.append(Finding("warning", "links", why, cost))
    if facts.bulk and not facts.list_unsubscribe:
        found.append(Finding("warning", "list_unsubscribe", "bulk mail (Precedence or List-Id) without "
                                                            "List-Unsubscribe", 10))
    return found


def score(findings: list[Finding]) -> int:
    return max(0, 100 - sum(f.cost for f in findings))


def _host(url: str) -> str:
    try:
        return (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return ""


def _same_site(shown: str, host: str) -> bool:
    return host == shown or host.endswith("." + shown) or shown.endswith("." + host)
