"""Templates per account: add, list, show, update (a new version), delete, preview, check.

Rules: a name is unique within its account and is not all digits (an id is); a template has
a text part, an HTML part or both, each within `limits.max_message_bytes`, and holds only
`{{variable}}` / `{{{variable}}}` placeholders (templates.engine); its variables are
computed, never typed in. An update makes a new version (messages already queued were
rendered from theirs). `check --strict` makes a template `inactive` when it finds errors:
sending with it is refused, saying why; a passing strict check or an update makes it active.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from smtprelay.catalog.records import TemplateRecord
from smtprelay.errors import Invalid, NotFound, Refused
from smtprelay.services.accounts import AccountService
from smtprelay.services.context import Context
from smtprelay.templates import lint
from smtprelay.templates.compiled import CompiledTemplate, Rendered
from smtprelay.templates.engine import TemplateError
from smtprelay.when import iso

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def template_doc(t: TemplateRecord, parts: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": t.id, "account": t.account, "name": t.name, "description": t.description,
                           "version": t.version, "status": t.status, "status_reason": t.status_reason,
                           "variables": list(t.variables), "has_text": t.text is not None,
                           "has_html": t.html is not None, "subject": t.subject,
                           "created_at": iso(t.created_at), "updated_at": iso(t.updated_at)}
    if parts:
        doc.update(text=t.text, html=t.html)
    return doc


@dataclass(frozen=True, slots=True)
class Preview:
    template: TemplateRecord
    rendered: Rendered

    def doc(self) -> dict[str, Any]:
        r = self.rendered
        return {"id": self.template.id, "name": self.template.name, "version": self.template.version,
                "subject": r.subject, "text": r.text, "html": r.html}


@dataclass(frozen=True, slots=True)
class CheckReport:
    template: TemplateRecord
    findings: list[lint.Finding]
    strict: bool

    @property
    def errors(self) -> list[lint.Finding]:
        return lint.errors(self.findings)

    def doc(self) -> dict[str, Any]:
        return {"id": self.template.id, "name": self.template.name, "version": self.template.version,
                "strict": self.strict, "status": "inactive" if self.errors else "active",
                "findings": [f.doc() for f in self.findings]}


@dataclass(frozen=True, slots=True)
class Draft:
    """Parts not saved yet, rendered with sample data and checked (the console's live preview)."""
    rendered: Rendered
    variables: tuple[str, ...]
    findings: list[lint.Finding]

    def doc(self) -> dict[str, Any]:
        r = self.rendered
        return {"subject": r.subject, "text": r.text, "html": r.html, "variables": list(self.variables),
                "findings": [f.doc() for f in self.findings]}


def compile_record(t: TemplateRecord) -> CompiledTemplate:
    return CompiledTemplate.of(t.subject, t.text, t.html)


class TemplateService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog

    def get(self, ref: str, account: str | None = None, version: int | None = None) -> TemplateRecord:
        """By id or name; a name used by several accounts needs the account."""
        account_id = AccountService(self.ctx).get(account).id if account is not None else None
        found = self.catalog.find_templates(str(ref), account_id, version)
        if len(found) > 1:
            raise Invalid(f"several accounts have a template named {ref}: give its id or the account", "account")
        if not found:
            what = f"version {version} of template" if version is not None else "template"
            raise NotFound(f"no {what} {ref}" + (f" in account {account}" if account else ""))
        return found[0]

    def all(self, account: str | None = None) -> list[TemplateRecord]:
        account_id = AccountService(self.ctx).get(account).id if account is not None else None
        return self.catalog.templates(account_id)

    def add(self, account: str, name: str, html: str | None = None, text: str | None = None,
            subject: str | None = None, description: str | None = None) -> TemplateRecord:
        owner = AccountService(self.ctx).get(account)
        self._check_name(name)
        parts, compiled = self._parts(subject, text, html)
        template_id = self.catalog.insert_template(owner.id, name, description, parts, compiled.variables,
                                                   self.ctx.now())
        if template_id is None:
            raise Refused(f"account {account} already has a template named {name}")
        return self.get(str(template_id))

    def update(self, ref: str, account: str | None = None, html: str | None = None, text: str | None = None,
               subject: str | None = None, description: str | None = None, name: str | None = None) -> TemplateRecord:
        """A new version: the parts given replace the current ones ("" removes one)."""
        current = self.get(ref, account)
        now = self.ctx.now()
        with self.catalog.transaction():
            if name is not None and name != current.name:
                self._check_name(name)
                if not self.catalog.rename_template(current.id, name, now):
                    raise Refused(f"account {current.account} already has a template named {name}")
            if (html, text, subject, description) != (None, None, None, None):
                parts, compiled = self._parts(*(current_or(given, was) for given, was in (
                    (subject, current.subject), (text, current.text), (html, current.html))))
                self.catalog.update_template(current.id, current.version + 1,
                                             current.description if description is None else description or None,
                                             parts, compiled.variables, now)
        return self.get(str(current.id))

    def delete(self, ref: str, account: str | None = None) -> TemplateRecord:
        found = self.get(ref, account)
        with self.catalog.transaction():
            refuse_if_tasks_use(f"template {found.name}", self.catalog.open_tasks_using(template_id=found.id))
            self.catalog.delete_template(found.id, self.ctx.now())
        return found

    def preview(self, ref: str, data: dict[str, Any], account: str | None = None,
                version: int | None = None) -> Preview:
        found = self.get(ref, account, version)
        try:
            return Preview(found, compile_record(found).render(data))
        except TemplateError as exc:
            raise Invalid(str(exc), "data") from None

    def check(self, ref: str, data: dict[str, Any] | None = None, strict: bool = False,
              account: str | None = None) -> CheckReport:
        found = self.get(ref, account)
        compiled = compile_record(found)
        try:
            findings = lint.check(compiled.subject, compiled.text, compiled.html, data, strict)
        except TemplateError as exc:
            raise Invalid(str(exc), "data") from None
        report = CheckReport(found, findings, strict)
        errors = report.errors
        reason = "; ".join(f.message for f in errors)[:1000] if errors else None
        if strict:      # only a strict check judges: a plain one reports
            self.catalog.set_template_status(found.id, "inactive" if errors else "active", reason, self.ctx.now())
        return report

    def draft(self, subject: str | None, text: str | None, html: str | None,
              data: dict[str, Any] | None = None) -> Draft:
        """Render and check parts without saving them: the same rules as add (sizes, one-line
        subject, placeholders), the same findings as check; a variable missing from `data`
        renders empty."""
        _, compiled = self._parts(subject, text, html)
        sample = {name: "" for name in compiled.variables} | (data or {})
        try:
            findings = lint.check(compiled.subject, compiled.text, compiled.html, data or None, False)
            rendered = compiled.render(sample)
        except TemplateError as exc:
            raise Invalid(str(exc), "data") from None
        return Draft(rendered, tuple(compiled.variables), findings)

    # -- rules -------------------------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        if not _NAME.fullmatch(name) or name.isdigit():
            raise Invalid(f"a template name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                          f"digit, and not all digits (ids are); got \"{name}\"", "name")

    def _parts(self, subject: str | None, text: str | None, html: str | None) -> tuple[dict[str, str | None],
                                                                                         CompiledTemplate]:
        parts = {"subject": subject or None, "text": text or None, "html": html or None}
        limit = self.ctx.config.limits.max_message_bytes
        for part, value in parts.items():
            if value is not None and len(value.encode("utf-8")) > limit:
                raise Invalid(f"the {part} is larger than limits.max_message_bytes ({limit} bytes)", part)
        if parts["subject"] is not None and ("\n" in parts["subject"] or "\r" in parts["subject"]):
            raise Invalid("a subject is one line", "subject")
        try:
            compiled = CompiledTemplate.of(parts["subject"], parts["text"], parts["html"])
        except TemplateError as exc:
            raise Invalid(str(exc), exc.part) from None
        return parts, compiled


def refuse_if_tasks_use(what: str, using: list[int]) -> None:
    """A template or group that sending tasks not yet finished use cannot go."""
    if using:
        raise Refused(f"{what} is used by task{'s' if len(using) > 1 else ''} {', '.join(map(str, using))} "
                      "(pending, running, paused or recurring): cancel them first")


def current_or(given: str | None, was: str | None) -> str | None:
    return was if given is None else given
