"""`smtprelay template add|list|show|update|delete|preview|check`: arguments and output
(rules: services.templates). Parts come from files ("-" is standard input); data is JSON,
given inline or as @FILE."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from smtprelay.cli.base import Registry, UsageError, emit, positive_int, print_table, services, words
from smtprelay.services.templates import template_doc
from smtprelay.templates.engine import TemplateError, parse_data


def _read(option: str, path: str | None) -> str | None:
    if path is None:
        return None
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{option}: {path} is not UTF-8 text") from None


def _data(args: argparse.Namespace) -> dict[str, Any] | None:
    text = args.data
    if text is None:
        return None
    if text.startswith("@"):
        text = _read("--data", text[1:]) or ""
    try:
        return parse_data(text, "--data")
    except TemplateError as exc:
        raise UsageError(str(exc)) from None


def _parts(args: argparse.Namespace) -> dict[str, Any]:
    return {"html": _read("--html", args.html), "text": _read("--text", args.text), "subject": args.subject,
            "description": args.description}


def _show_one(doc: dict[str, Any]) -> None:
    for key in ("id", "account", "name", "version", "status", "status_reason", "description", "subject",
                "variables", "created_at", "updated_at"):
        print(f"{key + ':':15} {words(doc[key])}")
    for part in ("text", "html"):
        if doc.get(part) is not None:
            print(f"--- {part} ---")
            print(doc[part].rstrip("\n"))


def template_add(args: argparse.Namespace) -> int:
    if args.html is None and args.text is None:
        raise UsageError("template add needs --html FILE, --text FILE or both")
    found = services(args).templates.add(args.account, args.name, **_parts(args))
    doc = template_doc(found)
    emit(args, doc, lambda: print(f"template {found.name} (id {found.id}) added to account {found.account}; "
                                  f"variables: {words(list(found.variables))}"))
    return 0


def template_list(args: argparse.Namespace) -> int:
    docs = [template_doc(t) for t in services(args).templates.all(args.account)]
    emit(args, {"templates": docs}, lambda: print_table(
        ["id", "account", "name", "version", "status", "variables", "updated_at"],
        [[d["id"], d["account"], d["name"], d["version"], d["status"], words(d["variables"]), d["updated_at"]]
         for d in docs]))
    return 0


def template_show(args: argparse.Namespace) -> int:
    doc = template_doc(services(args).templates.get(args.template, args.account, args.version), parts=True)
    emit(args, doc, lambda: _show_one(doc))
    return 0


def template_update(args: argparse.Namespace) -> int:
    parts = _parts(args)
    if all(v is None for v in parts.values()) and args.name is None:
        raise UsageError("template update needs something to change: --html, --text, --subject, --description "
                         "or --name")
    found = services(args).templates.update(args.template, args.account, name=args.name, **parts)
    emit(args, template_doc(found), lambda: print(f"template {found.name} (id {found.id}) is now version "
                                                  f"{found.version}; variables: {words(list(found.variables))}"))
    return 0


def template_delete(args: argparse.Namespace) -> int:
    found = services(args).templates.delete(args.template, args.account)
    emit(args, {"id": found.id, "name": found.name, "deleted": True},
         lambda: print(f"template {found.name} (id {found.id}) deleted (messages already queued are not changed)"))
    return 0


def template_preview(args: argparse.Namespace) -> int:
    preview = services(args).templates.preview(args.template, _data(args) or {}, args.account, args.version)
    doc = preview.doc()
    if args.html_out and doc["html"] is not None:
        try:
            Path(args.html_out).write_text(doc["html"], encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--html-out: cannot write {args.html_out}: {exc.strerror or exc}") from None

    def human() -> None:
        print(f"Subject: {words(doc['subject'])}")
        print("--- text ---")
        print(doc["text"].rstrip("\n"))
        if doc["html"] is not None:
            if args.html_out:
                print(f"--- html: written to {args.html_out} ---")
            else:
                print("--- html ---")
                print(doc["html"].rstrip("\n"))
    emit(args, doc, human)
    return 0


def template_check(args: argparse.Namespace) -> int:
    report = services(args).templates.check(args.template, _data(args), args.strict, args.account)
    doc = report.doc()

    def human() -> None:
        print_table(["level", "rule", "finding"], [[f.level, f.rule, f.message] for f in report.findings])
        print(f"template {report.template.name}: {len(report.errors)} error(s)"
              + (", inactive until a strict check passes or it is updated" if report.errors and args.strict else ""))
    emit(args, doc, human)
    return 1 if report.errors else 0


def register(reg: Registry) -> None:
    tp = reg.group("template", "message templates with {{variables}}")
    p = reg.command(tp, "add", template_add, "add a template to an account (HTML and/or text, from files)")
    p.add_argument("account")
    p.add_argument("name")
    commands: list[tuple[str, Any, str]] = [
        ("show", template_show, "a template's details and parts"),
        ("update", template_update, "change a template (a new version)"),
        ("delete", template_delete, "delete a template"),
        ("preview", template_preview, "render a template with data, without sending"),
        ("check", template_check, "what a mailbox provider's filter would hold against a template")]
    subs = {"add": p}
    for name, func, text in commands:
        subs[name] = reg.command(tp, name, func, text)
        subs[name].add_argument("template", metavar="TEMPLATE", help="its id, or its name (with --account if "
                                                                       "several accounts use it)")
        subs[name].add_argument("--account")
    for name in ("add", "update"):
        s = subs[name]
        s.add_argument("--html", metavar="FILE", help="the HTML part ('-': standard input)")
        s.add_argument("--text", metavar="FILE", help="the plain-text part (else made from the HTML)")
        s.add_argument("--subject", help="may hold variables; a send may give its own")
        s.add_argument("--description")
    subs["update"].add_argument("--name", help="rename it")
    for name in ("show", "preview"):
        subs[name].add_argument("--version", type=positive_int,
                                help="an earlier version (default: the current one)")
    for name in ("preview", "check"):
        subs[name].add_argument("--data", metavar="JSON", help="the variables as a JSON object, or @FILE")
    subs["preview"].add_argument("--html-out", metavar="FILE", help="write the HTML there rather than to stdout")
    subs["check"].add_argument("--strict", action="store_true",
                               help="warnings are errors; errors make the template inactive")
    p = reg.command(tp, "list", template_list, "list templates")
    p.add_argument("--account")
