"""`smtprelay group add|list|show|delete|sample` and `smtprelay task add|list|show|pause|resume|
cancel`: arguments and output (rules: services.batch). Progress bars (rich) go to stderr and
only to a terminal: `group add` of a large CSV, and `task show --follow`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from smtprelay.batch.csvfile import SAMPLE
from smtprelay.cli.base import Registry, UsageError, emit, positive_int, print_table, services, words
from smtprelay.services.batch import group_doc
from smtprelay.templates.engine import TemplateError, parse_data

BAR_BYTES = 1 << 20      # a CSV this large gets a progress bar


def _open_csv(path: str) -> tuple[IO[bytes], int]:
    if path == "-":
        return sys.stdin.buffer, 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise UsageError(f"--csv: cannot read {path}: {exc.strerror or exc}") from None
    return f, Path(path).stat().st_size


def group_add(args: argparse.Namespace) -> int:
    source, size = _open_csv(args.csv)
    svc = services(args).groups
    try:
        if size >= BAR_BYTES and sys.stderr.isatty() and not args.json:
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TimeRemainingColumn(), console=_stderr(), transient=True) as bar:
                job = bar.add_task(f"importing {Path(args.csv).name}", total=size)
                added = svc.add(args.account, args.name, source, args.description, args.skip_invalid,
                                lambda done: bar.update(job, completed=done))
        else:
            added = svc.add(args.account, args.name, source, args.description, args.skip_invalid)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    g = added.group

    def human() -> None:
        print(f"group {g.name} (id {g.id}) added to account {g.account}: {g.size} recipient(s); "
              f"columns: {words(['email', *g.columns])}")
        if added.problems:
            print(f"{len(added.problems)} bad row(s) left out:")
            for p in added.problems[:50]:
                print(f"  line {p.line}: {p.text}")
            if len(added.problems) > 50:
                print(f"  ... and {len(added.problems) - 50} more (--json lists up to 1000)")
    emit(args, added.doc(), human)
    return 0


def group_list(args: argparse.Namespace) -> int:
    docs = [group_doc(g) for g in services(args).groups.all(args.account)]
    emit(args, {"groups": docs}, lambda: print_table(
        ["id", "account", "name", "size", "columns", "created_at"],
        [[d["id"], d["account"], d["name"], d["size"], words(d["columns"]), d["created_at"]] for d in docs]))
    return 0


def group_show(args: argparse.Namespace) -> int:
    view = services(args).groups.show(args.group, args.account, args.limit)
    doc = view.doc()

    def human() -> None:
        for key in ("id", "account", "name", "description", "size", "skipped", "columns", "created_at"):
            print(f"{key + ':':13} {words(doc[key])}")
        print_table(["row", "line", "email", "data"],
                    [[r["row"], r["line"], r["email"], json.dumps(r["data"], ensure_ascii=False)] for r in doc["rows"]])
        if doc["size"] > len(doc["rows"]):
            print(f"({doc['size'] - len(doc['rows'])} more; --limit N shows more)")
    emit(args, doc, human)
    return 0


def group_delete(args: argparse.Namespace) -> int:
    g = services(args).groups.delete(args.group, args.account)
    emit(args, {"id": g.id, "name": g.name, "deleted": True},
         lambda: print(f"group {g.name} (id {g.id}) deleted"))
    return 0


def group_sample(args: argparse.Namespace) -> int:
    emit(args, {"csv": SAMPLE}, lambda: print(SAMPLE.replace("\r\n", "\n"), end=""))
    return 0


def _data(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--data: cannot read {text[1:]}: {exc}") from None
    try:
        return parse_data(text, "--data")
    except TemplateError as exc:
        raise UsageError(str(exc)) from None


def task_add(args: argparse.Namespace) -> int:
    if args.now == (args.at is not None):
        raise UsageError("task add needs --now or --at WHEN (one of them)")
    view = services(args).tasks.add(args.account, args.group, args.template, args.sender, args.subject, args.tag,
                                    _data(args.data), args.now, args.at, args.every)
    doc = view.doc()
    emit(args, doc, lambda: print(f"task {doc['id']} added ({doc['type']}): template {doc['template']['name']} to "
                                  f"group {doc['group']['name']}; {doc['shown_status']}"))
    return 0


def _task_row(d: dict[str, Any]) -> list[Any]:
    return [d["id"], d["account"], d["type"], d["shown_status"], d["group"]["name"], d["template"]["name"],
            f"{d['progress']:g}%", d["runs_started"], d["next_run_at"]]


def task_list(args: argparse.Namespace) -> int:
    docs = [v.doc() for v in services(args).tasks.all(args.account)]
    emit(args, {"tasks": docs}, lambda: print_table(
        ["id", "account", "type", "status", "group", "template", "progress", "runs", "next_run_at"],
        [_task_row(d) for d in docs]))
    return 0


_SHOWN = ("requested", "accepted", "rejected", "throttled", "waiting", "delivered", "bounced", "opened", "clicked",
          "unsubscribed")


def _show_task(doc: dict[str, Any]) -> None:
    for key, value in (("id", doc["id"]), ("account", doc["account"]), ("type", doc["type"]),
                       ("status", doc["shown_status"]), ("group", doc["group"]["name"]),
                       ("template", doc["template"]["name"]), ("from", doc["from"]), ("subject", doc["subject"]),
                       ("tag", doc["tag"]), ("first run", doc["first_at"]),
                       ("every", f"{doc['every_days']:g} day(s)" if doc["every_days"] else None),
                       ("next run", doc["next_run_at"]), ("progress", f"{doc['progress']:g}%")):
        print(f"{key + ':':10} {words(value)}")
    if doc["runs"]:
        print_table(["run", "status", "started_at", "size", *_SHOWN, "progress"],
                    [[r["run"], r["status"], r["started_at"], r["size"], *[r[k] for k in _SHOWN],
                      f"{r['progress']:g}%"] for r in doc["runs"]])


def task_show(args: argparse.Namespace) -> int:
    svc = services(args).tasks
    if not args.follow:
        doc = svc.show(args.task).doc()
        emit(args, doc, lambda: _show_task(doc))
        return 0
    if args.json:
        raise UsageError("--follow draws a progress bar; it does not go with --json")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    doc = svc.show(args.task).doc()
    with Progress(TextColumn("task {task.fields[id]} run {task.fields[run]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=_stderr()) as bar:
        run = doc["runs"][0] if doc["runs"] else None
        job = bar.add_task("", total=run["size"] if run else 1, completed=run["requested"] if run else 0,
                           id=doc["id"], run=run["run"] if run else "-", status=doc["shown_status"])
        while True:
            run = doc["runs"][0] if doc["runs"] else None
            bar.update(job, total=run["size"] if run else 1, completed=run["requested"] if run else 0,
                       run=run["run"] if run else "-", status=doc["shown_status"])
            if doc["status"] in ("finished", "cancelled") or (run is not None and run["status"] != "running"
                                                              and doc["type"] == "recurring"):
                break
            time.sleep(args.interval)
            doc = svc.show(args.task).doc()
    _show_task(doc)
    return 0


def _task_action(verb: str) -> Any:
    def action(args: argparse.Namespace) -> int:
        view = getattr(services(args).tasks, verb)(args.task)
        doc = view.doc()
        emit(args, doc, lambda: print(f"task {doc['id']}: {doc['shown_status']}"))
        return 0
    return action


def _stderr() -> Any:
    from rich.console import Console
    return Console(stderr=True)


def register(reg: Registry) -> None:
    gp = reg.group("group", "recipient groups (a CSV of addresses and their variables)")
    p = reg.command(gp, "add", group_add, "upload a recipient group from a CSV file")
    p.add_argument("account")
    p.add_argument("name")
    p.add_argument("--csv", required=True, metavar="FILE", help="header row with an email column and one column per "
                                                                 "variable; UTF-8 ('-': standard input)")
    p.add_argument("--description")
    p.add_argument("--skip-invalid", action="store_true", help="import the good rows and list the bad ones "
                                                               "(default: all or nothing)")
    p = reg.command(gp, "list", group_list, "list recipient groups")
    p.add_argument("--account")
    for name, func, text in (("show", group_show, "a group and its first rows"),
                             ("delete", group_delete, "delete a group (not while a task that is not finished "
                                                      "uses it)")):
        p = reg.command(gp, name, func, text)
        p.add_argument("group", metavar="GROUP", help="its id, or its name (with --account if several accounts "
                                                      "use it)")
        p.add_argument("--account")
        if name == "show":
            p.add_argument("--limit", type=positive_int, default=20, help="rows to show (default 20)")
    reg.command(gp, "sample", group_sample, "print an example CSV")

    tp = reg.group("task", "sending tasks: a template to every row of a group, now, at a time, or every N days")
    p = reg.command(tp, "add", task_add, "create a sending task")
    p.add_argument("account")
    p.add_argument("--group", required=True, help="the group's id or name")
    p.add_argument("--template", required=True, help="the template's id or name")
    p.add_argument("--from", dest="sender", required=True, metavar="ADDRESS",
                   help="\"Name <user@example.com>\" or user@example.com (a verified sender domain of the account)")
    p.add_argument("--subject", help="overrides the template's (may hold variables)")
    p.add_argument("--tag", help="for statistics, like X-Smtprelay-Tag")
    p.add_argument("--data", metavar="JSON", help="task-wide variables as a JSON object, or @FILE (a row's own "
                                                  "columns win)")
    p.add_argument("--now", action="store_true", help="start at once")
    p.add_argument("--at", metavar="WHEN", help="2026-12-24T09:00:00Z; UTC unless it names a zone (+01:00, or "
                                                "\"2026-12-24T09:00 Europe/Paris\"); or a duration from now (2h)")
    p.add_argument("--every", metavar="PERIOD", help="run again every PERIOD (7d; at least 1h)")
    p = reg.command(tp, "list", task_list, "list sending tasks")
    p.add_argument("--account")
    for name, func, text in (("show", task_show, "a task: status, runs and their counts"),
                             ("pause", _task_action("pause"), "pause a task (only `task resume` continues it)"),
                             ("resume", _task_action("resume"), "continue a task an operator paused"),
                             ("cancel", _task_action("cancel"), "cancel a task (rows already queued are sent)")):
        p = reg.command(tp, name, func, text)
        p.add_argument("task", type=positive_int, metavar="ID")
        if name == "show":
            p.add_argument("--follow", action="store_true", help="a progress bar until the run ends")
            p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
