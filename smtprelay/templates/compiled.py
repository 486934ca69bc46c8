"""A template's parts compiled together, and what rendering them gives.

Pure: sources and data in, strings out. The worker keeps these by (id, version), so a
template is parsed once per version, not per message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smtprelay.templates import markup
from smtprelay.templates.engine import CompiledPart, TemplateError, compile_part, variables_of

PARTS = ("subject", "text", "html")


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str | None
    text: str
    html: str | None


@dataclass(frozen=True, eq=False)
class CompiledTemplate:
    subject: CompiledPart | None
    text: CompiledPart | None
    html: CompiledPart | None

    @classmethod
    def of(cls, subject: str | None, text: str | None, html: str | None) -> CompiledTemplate:
        """TemplateError names the part at fault."""
        if not (text or html):
            raise TemplateError("a template needs a text part, an HTML part or both", "html")
        return cls(compile_part(subject, "subject") if subject else None,
                   compile_part(text, "text") if text else None,
                   compile_part(html, "html", html=True) if html else None)

    @property
    def variables(self) -> list[str]:
        return variables_of(self.subject, self.text, self.html)

    def render(self, data: dict[str, Any]) -> Rendered:
        """Every part with the data; a missing variable raises TemplateError naming it. The
        text part, when there is none, is made from the rendered HTML."""
        html = self.html.render(data) if self.html is not None else None
        text = self.text.render(data) if self.text is not None else markup.to_text(html or "")
        subject = self.subject.render(data) if self.subject is not None else None
        if subject is not None and ("\r" in subject or "\n" in subject):
            subject = " ".join(subject.split())     # a value cannot add a header line
        return Rendered(subject, text, html)
