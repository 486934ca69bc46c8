"""Recipient groups and sending tasks: the rules of `group ...`, `task ...` and their API.

Rules: a group belongs to an account, has a name unique within it, and is immutable (a new
upload is a new group); its CSV is imported all or nothing unless `skip_invalid`, every bad
row named by line (batch.csvfile), at most `batch.max_group_size` rows. A group that a task not
yet finished uses (pending, running, paused, recurring) cannot be deleted. A task sends one
template of its account to every row of one group: each template variable must be a column of
the group or a task-wide `data` value (checked here, naming what is missing); a template that
is inactive, or without a subject when the task gives none, is refused. An operator's pause
and cancel are flags the back end's task runner obeys; its own waits (daily quota, a refused
sender) it lifts itself, never an operator's pause.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import IO, Any, Callable

from smtprelay.batch import csvfile, schedule
from smtprelay.catalog.records import GroupRecord, RunRecord, TaskRecord
from smtprelay.errors import Invalid, NotFound, Refused
from smtprelay.policy.address import canonical
from smtprelay.services.accounts import AccountService
from smtprelay.services.context import Context
from smtprelay.services.templates import TemplateService, refuse_if_tasks_use
from smtprelay.when import iso

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def group_doc(g: GroupRecord) -> dict[str, Any]:
    return {"id": g.id, "account": g.account, "name": g.name, "description": g.description,
            "columns": ["email", *g.columns], "size": g.size, "skipped": g.skipped, "created_at": iso(g.created_at)}


@dataclass(frozen=True, slots=True)
class GroupAdded:
    group: GroupRecord
    problems: list[csvfile.Problem]      # the rows left out (skip_invalid)

    def doc(self) -> dict[str, Any]:
        return {**group_doc(self.group), "skipped_rows": [p.doc() for p in self.problems[:1000]]}


@dataclass(frozen=True, slots=True)
class GroupView:
    group: GroupRecord
    rows: list[tuple[int, int, str, str]]

    def doc(self) -> dict[str, Any]:
        return {**group_doc(self.group), "rows": [{"row": r, "line": line, "email": email, "data": json.loads(data)}
                                                  for r, line, email, data in self.rows]}


def run_doc(r: RunRecord) -> dict[str, Any]:
    resolved = r.counts["requested"]
    return {"run": r.run, "status": r.status, "due_at": iso(r.due_at), "started_at": iso(r.started_at),
            "finished_at": iso(r.finished_at), "size": r.size,
            "progress": round(100.0 * resolved / r.size, 1) if r.size else 100.0, **r.counts}


@dataclass(frozen=True, slots=True)
class TaskView:
    task: TaskRecord
    now: float
    runs: list[RunRecord] = field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        t = self.task
        name, detail = schedule.status(t, self.now)
        current = self.runs[0] if self.runs else None
        return {"id": t.id, "account": t.account, "type": schedule.KINDS[t.kind], "status": name,
                "status_detail": detail, "shown_status": schedule.shown(t, self.now),
                "group": {"id": t.group_id, "name": t.group}, "template": {"id": t.template_id, "name": t.template},
                "from": t.mail_from, "subject": t.subject, "tag": t.tag, "data": json.loads(t.data),
                "first_at": iso(t.first_at), "every_days": t.every_seconds / 86400 if t.every_seconds else None,
                "next_run_at": iso(t.next_run_at) if name not in ("finished", "cancelled") else None,
                "runs_started": t.runs, "progress": run_doc(current)["progress"] if current else 0.0,
                "created_at": iso(t.created_at), "cancelled_at": iso(t.cancelled_at),
                "runs": [run_doc(r) for r in self.runs]}


def satisfied(variable: str, given: set[str]) -> bool:
    """A template variable ("user.name") is given by a column or data path that is it, holds it
    ("user"), or lies inside it ("user.name.first")."""
    return any(variable == p or variable.startswith(p + ".") or p.startswith(variable + ".") for p in given)


def paths(data: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for k, v in data.items():
        found.add(prefix + k)
        if isinstance(v, dict):
            found |= paths(v, prefix + k + ".")
    return found


class GroupService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog

    def add(self, account: str, name: str, source: IO[bytes], description: str | None = None,
            skip_invalid: bool = False, progress: Callable[[int], None] | None = None) -> GroupAdded:
        owner = AccountService(self.ctx).get(account)
        if not _NAME.fullmatch(name) or name.isdigit():
            raise Invalid(f"a group name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, "
                          f"and not all digits (ids are); got \"{name}\"", "name")
        limit = self.ctx.config.batch.max_group_size
        reading, rows = csvfile.read(source, limit, progress)
        with self.catalog.transaction():
            group_id = self.catalog.insert_group(owner.id, name, description, reading.columns, rows, self.ctx.now())
            if group_id is None:
                raise Refused(f"account {account} already has a group named {name}: groups never change, so upload "
                              "the new list under a new name (and delete the old one)")
            problems = sorted(reading.problems, key=lambda p: p.line)
            if problems and not skip_invalid:
                raise Invalid(csvfile.problems_message(problems) + " (nothing was imported; fix them, or give "
                              "--skip-invalid to import the rest)", "csv")
            if reading.rows == 0:
                raise Invalid("the CSV has no valid recipient rows", "csv")
            self.catalog.set_group_size(group_id, reading.rows, len(problems))
        return GroupAdded(self.get(str(group_id)), problems)

    def get(self, ref: str, account: str | None = None) -> GroupRecord:
        account_id = AccountService(self.ctx).get(account).id if account is not None else None
        found = self.catalog.find_groups(str(ref), account_id)
        if len(found) > 1:
            raise Invalid(f"several accounts have a group named {ref}: give its id or the account", "account")
        if not found:
            raise NotFound(f"no group {ref}" + (f" in account {account}" if account else ""))
        return found[0]

    def all(self, account: str | None = None) -> list[GroupRecord]:
        account_id = AccountService(self.ctx).get(account).id if account is not None else None
        return self.catalog.groups(account_id)

    def show(self, ref: str, account: str | None = None, limit: int = 20) -> GroupView:
        group = self.get(ref, account)
        return GroupView(group, self.catalog.group_rows(group.id, 0, limit))

    def delete(self, ref: str, account: str | None = None) -> GroupRecord:
        group = self.get(ref, account)
        with self.catalog.transaction():
            refuse_if_tasks_use(f"group {group.name}", self.catalog.open_tasks_using(group_id=group.id))
            self.catalog.delete_group(group.id, self.ctx.now())
        return group


class TaskService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog

    def add(self, account: str, group: str, template: str, mail_from: str, subject: str | None = None,
            tag: str | None = None, data: dict[str, Any] | None = None, now: bool = False, at: str | None = None,
            every: str | None = None) -> TaskView:
        owner = AccountService(self.ctx).get(account)
        found_group = GroupService(self.ctx).get(group, account)
        found_template = TemplateService(self.ctx).get(template, account)
        if found_template.status != "active":
            raise Refused(f"template {found_template.name} is inactive: {found_template.status_reason or ''}"
                          .rstrip(": "))
        sender = self._sender(mail_from, owner.id)
        if subject is not None and ("\n" in subject or "\r" in subject or not subject.strip()):
            raise Invalid("a subject is one line of text", "subject")
        if subject is None and found_template.subject is None:
            raise Invalid(f"template {found_template.name} has no subject: give one", "subject")
        if tag is not None and (not tag.strip() or len(tag) > 128 or "\n" in tag):
            raise Invalid("a tag is one line of at most 128 characters", "tag")
        data = data or {}
        given = {"email"} | set(found_group.columns) | paths(data)
        variables = list(found_template.variables)
        missing = [v for v in variables if not satisfied(v, given)]
        if missing:
            raise Invalid(f"template {found_template.name} uses variable{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)} that group {found_group.name} has no column for and --data does "
                          f"not give (the group's columns: {', '.join(['email', *found_group.columns])})", "template")
        clock_now = self.ctx.now()
        if now == (at is not None):
            raise Invalid("give --now or --at WHEN (one of them)", "at")
        try:
            first = clock_now if now else schedule.parse_at(at or "", clock_now)
        except ValueError as exc:
            raise Invalid(f"--at: {exc}", "at") from None
        try:
            every_seconds = schedule.parse_every(every) if every is not None else None
        except ValueError as exc:
            raise Invalid(f"--every: {exc}", "every") from None
        if first < clock_now - 60:
            raise Invalid(f"--at {at} is in the past ({iso(first)}); the time is UTC unless it names a zone", "at")
        kind = "every" if every_seconds else ("now" if now else "at")
        task_id = self.catalog.insert_task(owner.id, found_group.id, found_template.id, sender, subject, tag, data,
                                           kind, first, every_seconds, clock_now)
        return self.show(task_id)

    def _sender(self, mail_from: str, account_id: int) -> str:
        name, address = parseaddr(mail_from)
        if not address or "@" not in address:
            raise Invalid(f"--from \"{mail_from}\" is not an address (\"Name <user@example.com>\" or "
                          "user@example.com)", "from")
        address = canonical(address, "from")
        domain = self.catalog.domain(address.rpartition("@")[2].lower())
        if domain is None or domain.account_id != account_id:
            raise Refused(f"the sender domain {address.rpartition('@')[2]} is not registered to this account "
                          "(domain add)")
        return f"{name} <{address}>" if name else address

    def get(self, task_id: int) -> TaskRecord:
        found = self.catalog.find_task(task_id)
        if found is None:
            raise NotFound(f"no task {task_id}")
        return found

    def show(self, task_id: int, runs: int = 10) -> TaskView:
        task = self.get(task_id)
        return TaskView(task, self.ctx.now(), self.catalog.task_runs(task.id, runs))

    def all(self, account: str | None = None) -> list[TaskView]:
        account_id = AccountService(self.ctx).get(account).id if account is not None else None
        now = self.ctx.now()
        return [TaskView(t, now, self.catalog.task_runs(t.id, 1)) for t in self.catalog.tasks(account_id)]

    def pause(self, task_id: int) -> TaskView:
        task = self.get(task_id)
        self._open(task, "paused")
        if task.held:
            raise Refused(f"task {task_id} is already paused")
        self.catalog.set_task_held(task_id, True, self.ctx.now())
        return self.show(task_id)

    def resume(self, task_id: int) -> TaskView:
        task = self.get(task_id)
        self._open(task, "resumed")
        if not task.held:
            name, detail = schedule.status(task, self.ctx.now())
            raise Refused(f"task {task_id} is not paused by an operator (it is {name}"
                          + (f": {detail}; the relay resumes it by itself" if detail and name == "paused" else "")
                          + ")")
        self.catalog.set_task_held(task_id, False, self.ctx.now())
        return self.show(task_id)

    def cancel(self, task_id: int) -> TaskView:
        task = self.get(task_id)
        self._open(task, "cancelled")
        self.catalog.cancel_task(task_id, self.ctx.now())
        return self.show(task_id)

    def _open(self, task: TaskRecord, verb: str) -> None:
        name, _ = schedule.status(task, self.ctx.now())
        if name in ("finished", "cancelled"):
            raise Refused(f"task {task.id} is {name}; it cannot be {verb}")
