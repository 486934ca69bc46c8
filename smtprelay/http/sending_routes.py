"""The admin API's routes for what is sent: templates, recipient groups and sending tasks
(issues 15 and 17), joined into http.admin's table.

Must never: hold business logic (the services'), or do I/O itself.
"""
from __future__ import annotations

import io

from smtprelay.errors import Invalid
from smtprelay.http.routing import Field, Params, Route, docs
from smtprelay.services.batch import group_doc
from smtprelay.services.templates import template_doc

ACCOUNT = Field("account", required=True)
_PARTS = (Field("html", description="the HTML part, with {{variables}}"),
          Field("text", description="the plain-text part (else made from the HTML)"),
          Field("subject", description="may hold variables"), Field("description"))
BY_NAME = Field("account", description="the template's account, when a name (not an id) is given")

TEMPLATE_ROUTES = (
    Route("GET", "/templates", "List templates",
          lambda s, p: docs("templates", s.templates.all(p.get("account")), template_doc), (Field("account"),)),
    Route("POST", "/templates", "Add a template (its variables are computed)",
          lambda s, p: template_doc(s.templates.add(p["account"], p["name"], p.get("html"), p.get("text"),
                                                    p.get("subject"), p.get("description"))),
          (ACCOUNT, Field("name", required=True), *_PARTS)),
    Route("POST", "/templates/draft", "Render and check template parts without saving them (a live preview)",
          lambda s, p: s.templates.draft(p.get("subject"), p.get("text"), p.get("html"), p.get("data")).doc(),
          (*_PARTS[:3], Field("data", "object", description="sample values (a missing variable renders empty)"))),
    Route("GET", "/templates/{id}", "A template and its parts (an id, or a name)",
          lambda s, p: template_doc(s.templates.get(p["id"], p.get("account"), p.get("version")), parts=True),
          (BY_NAME, Field("version", "integer"))),
    Route("PATCH", "/templates/{id}", "Change a template: a new version (\"\" removes a part)",
          lambda s, p: template_doc(s.templates.update(p["id"], p.get("account"), p.get("html"), p.get("text"),
                                                       p.get("subject"), p.get("description"), p.get("name"))),
          (BY_NAME, Field("name", description="rename it"), *_PARTS)),
    Route("DELETE", "/templates/{id}", "Delete a template",
          lambda s, p: {"deleted": template_doc(s.templates.delete(p["id"], p.get("account")))}, (BY_NAME,)),
    Route("POST", "/templates/{id}/preview", "Render a template with data, without sending",
          lambda s, p: s.templates.preview(p["id"], p.get("data") or {}, p.get("account"), p.get("version")).doc(),
          (BY_NAME, Field("data", "object"), Field("version", "integer"))),
    Route("POST", "/templates/{id}/check", "What a mailbox provider's filter would hold against a template "
                                           "(strict: warnings are errors, and errors make it inactive)",
          lambda s, p: s.templates.check(p["id"], p.get("data"), bool(p.get("strict")), p.get("account")).doc(),
          (BY_NAME, Field("data", "object"), Field("strict", "boolean"))),
)


def _task_id(p: Params) -> int:
    text = p["id"]
    if not text.isdigit() or int(text) <= 0:
        raise Invalid(f"a task id is a positive integer, got {text!r}", "id")
    return int(text)


BATCH_ROUTES = (
    Route("GET", "/groups", "List recipient groups",
          lambda s, p: docs("groups", s.groups.all(p.get("account")), group_doc), (Field("account"),)),
    Route("POST", "/groups", "Upload a recipient group: a CSV (multipart/form-data file \"csv\", or a string) with a "
                             "header row, an email column and one column per variable; all or nothing unless "
                             "skip_invalid; bad rows are named by line",
          lambda s, p: s.groups.add(p["account"], p["name"], io.BytesIO(p["csv"]), p.get("description"),
                                    bool(p.get("skip_invalid"))).doc(),
          (ACCOUNT, Field("name", required=True), Field("csv", "file", required=True), Field("description"),
           Field("skip_invalid", "boolean", description="import the good rows and list the bad ones"))),
    Route("GET", "/groups/{id}", "A group and its first rows (an id, or a name)",
          lambda s, p: s.groups.show(p["id"], p.get("account"), p.get("limit") or 20).doc(),
          (Field("account"), Field("limit", "integer", description="rows to show (default 20)"))),
    Route("DELETE", "/groups/{id}", "Delete a group (refused while a task that is not finished uses it)",
          lambda s, p: {"deleted": group_doc(s.groups.delete(p["id"], p.get("account")))}, (Field("account"),)),
    Route("GET", "/tasks", "List sending tasks",
          lambda s, p: {"tasks": [v.doc() for v in s.tasks.all(p.get("account"))]}, (Field("account"),)),
    Route("POST", "/tasks", "Create a sending task: a template to every row of a group, now, at a time, or every "
                            "N days",
          lambda s, p: s.tasks.add(p["account"], p["group"], p["template"], p["from"], p.get("subject"), p.get("tag"),
                                   p.get("data"), bool(p.get("now")), p.get("at"), p.get("every")).doc(),
          (ACCOUNT, Field("group", required=True, description="id or name"),
           Field("template", required=True, description="id or name"),
           Field("from", required=True, description="\"Name <user@example.com>\" or user@example.com"),
           Field("subject", description="overrides the template's"), Field("tag"),
           Field("data", "object", description="task-wide variables (a row's own columns win)"),
           Field("now", "boolean", description="start at once (or give at)"),
           Field("at", description="2026-12-24T09:00:00Z; UTC unless it names a zone (+01:00, or "
                                   "\"2026-12-24T09:00 Europe/Paris\"); or a duration from now (2h)"),
           Field("every", description="run again every period (7d; at least 1h)"))),
    Route("GET", "/tasks/{id}", "A task: status, type, progress, next run, and each run's counts",
          lambda s, p: s.tasks.show(_task_id(p)).doc()),
    Route("POST", "/tasks/{id}/pause", "Pause a task (only resume continues it)",
          lambda s, p: s.tasks.pause(_task_id(p)).doc()),
    Route("POST", "/tasks/{id}/resume", "Continue a task an operator paused",
          lambda s, p: s.tasks.resume(_task_id(p)).doc()),
    Route("POST", "/tasks/{id}/cancel", "Cancel a task (rows already queued are sent)",
          lambda s, p: s.tasks.cancel(_task_id(p)).doc()),
)
