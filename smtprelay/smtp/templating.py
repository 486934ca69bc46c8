"""A front-end worker's templates: the catalog's current versions in memory, compiled once per
version, and the rendering both doors use — the send API's `template` field and an SMTP
message's `X-Smtprelay-Template` / `X-Smtprelay-Template-Data` headers.

Owns: the worker's template table (replaced at catalog reload, like the credentials) and the
refusals a bad template or bad data get: `550 5.6.0` naming the problem (the API shows the
same text with 400, or 422 for an inactive template).

Must never: do I/O (the worker loads the table off the loop), or touch the message beyond
its body and the two headers it removes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smtprelay.catalog.records import TemplateRecord
from smtprelay.policy import verdict as V
from smtprelay.policy.content import decode_subject, header_block, header_values, remove_headers
from smtprelay.templates import message as mime
from smtprelay.templates.compiled import CompiledTemplate, Rendered
from smtprelay.templates.engine import TemplateError, parse_data

_HEADERS = (b"x-smtprelay-template:", b"x-smtprelay-template-data:")
# Making the text part from HTML and building MIME cost about 40 and 150 ms per MB in pure
# Python (html.parser, quoted-printable; bench/signing.py): past this size they run in a
# thread, so the worker's loop is held about 5 ms at most (the GIL switches every 5 ms).
INLINE_BYTES = 32 * 1024


@dataclass(frozen=True, slots=True)
class Use:
    """The template a message was rendered from (its events and statistics carry it)."""
    id: int
    version: int


class TemplateRefused(Exception):
    """A template or its data cannot be used: `verdict` is the SMTP refusal, `inactive` says
    the template itself is switched off (the API answers 422 rather than 400)."""

    def __init__(self, verdict: V.Verdict, field: str, inactive: bool = False):
        super().__init__(verdict.reply)
        self.verdict = verdict
        self.field = field
        self.inactive = inactive


def _refuse(text: str, field: str, reason: str = "template_invalid", inactive: bool = False) -> TemplateRefused:
    return TemplateRefused(V.reject(550, "5.6.0", text[:400], reason), field, inactive)


class TemplateTable:
    def __init__(self) -> None:
        self._by_id: dict[int, TemplateRecord] = {}
        self._by_name: dict[tuple[int, str], TemplateRecord] = {}
        self._compiled: dict[tuple[int, int], CompiledTemplate] = {}

    def __bool__(self) -> bool:
        """Whether there is any template (most relays have none: no header scan per message)."""
        return bool(self._by_id)

    def replace(self, records: list[TemplateRecord]) -> None:
        """The catalog's templates; new versions are compiled here — the worker calls this in
        its catalog thread, so compiling (about 0.3 s per MB) never holds the loop."""
        compiled = {k: v for k, v in self._compiled.items() if k in {(t.id, t.version) for t in records}}
        for t in records:
            if (t.id, t.version) not in compiled:
                try:
                    compiled[(t.id, t.version)] = CompiledTemplate.of(t.subject, t.text, t.html)
                except TemplateError:
                    pass        # checked when it was stored; render() says why if it ever happens
        self._compiled = compiled
        self._by_id = {t.id: t for t in records}
        self._by_name = {(t.account_id, t.name): t for t in records}

    def find(self, account_id: int, ref: str) -> TemplateRecord:
        """The account's template by id or name; TemplateRefused if it has none such."""
        found = self._by_id.get(int(ref)) if ref.isdigit() else self._by_name.get((account_id, ref))
        if found is None or found.account_id != account_id:
            raise _refuse(f"Template {ref} does not exist in this account", "template.id", "template_unknown")
        if found.status != "active":
            raise _refuse(f"Template {found.name} is inactive: {found.status_reason or 'see template show'}",
                          "template.id", "template_inactive", inactive=True)
        return found

    def render(self, template: TemplateRecord, data: dict[str, Any]) -> tuple[Rendered, Use]:
        key = (template.id, template.version)
        compiled = self._compiled.get(key)
        try:
            if compiled is None:
                compiled = self._compiled[key] = CompiledTemplate.of(template.subject, template.text, template.html)
            return compiled.render(data), Use(template.id, template.version)
        except TemplateError as exc:
            raise _refuse(f"Template {template.name}: {exc}", "template.data"
                          if exc.variable or exc.part == "data" else "template.id") from None

    def apply_headers(self, account_id: int, content: bytes) -> tuple[bytes, Use | None]:
        """An SMTP message naming a template: its body rendered from it (TemplateRefused
        otherwise). A message without the headers is returned as it is."""
        headers = header_block(content)
        refs = header_values(headers, b"x-smtprelay-template")
        datas = header_values(headers, b"x-smtprelay-template-data")
        if not refs:
            if datas:
                raise _refuse("X-Smtprelay-Template-Data without X-Smtprelay-Template", "template.id")
            return content, None
        if len(refs) > 1 or len(datas) > 1:
            raise _refuse("X-Smtprelay-Template and X-Smtprelay-Template-Data may each appear once", "template.id")
        try:
            ref = refs[0].decode("utf-8").strip()
            data = parse_data(decode_subject(datas[0].strip()) if datas else "{}",
                              "X-Smtprelay-Template-Data")
        except UnicodeDecodeError:
            raise _refuse("X-Smtprelay-Template is not UTF-8", "template.id") from None
        except (TemplateError, ValueError) as exc:
            raise _refuse(str(exc), "template.data") from None
        rendered, use = self.render(self.find(account_id, ref), data)
        return mime.rebuild(remove_headers(content, _HEADERS), rendered), use
