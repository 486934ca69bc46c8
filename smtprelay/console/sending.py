"""The console's pages for what is sent: templates (an editor with a live preview), recipient
groups and sending tasks (issue 21). Like `console/pages.py`, every read and write goes through
the admin API's routes; an account's user finds another account's template, group or task
"not found", exactly like an id that does not exist.

Must never: hold business rules or SQL.
"""
from __future__ import annotations

import json
from html import escape
from typing import Any

from aiohttp import web

from smtprelay.console.pages import Pages, form_file, form_text
from smtprelay.errors import Invalid, NotFound, Refused

SAMPLE_CSV = ("email,first_name,company\r\n"
              "ada@example.com,Ada,Analytical Engines\r\n"
              "grace@example.org,Grace,Compilers Inc\r\n")


class SendingPages(Pages):
    """Templates, groups and tasks; web.Console mixes these in (with Pages' helpers)."""

    # -- templates -------------------------------------------------------------------------------
    async def template_in_scope(self, request: web.Request, ref: str) -> dict[str, Any] | None:
        return await self.owned(request, "/templates/{id}", ref)

    async def templates(self, request: web.Request, errors: dict[str, str] | None = None,
                        values: dict[str, str] | None = None, status: int = 200) -> web.Response:
        account = self.account_of(request)
        found = (await self.api("GET", "/templates", given={"account": account} if account else {}))["templates"]
        return self.page(request, "templates.html", status=status, templates=found, errors=errors or {},
                         values=values or {}, accounts=await self.accounts(request))

    async def add_template(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        values = {k: str(form.get(k, "")) for k in ("account", "name", "subject", "html", "text", "description")}
        values["account"] = self.account_of(request) or values["account"].strip()
        given = {k: v for k, v in values.items() if v}
        try:
            doc = await self.api("POST", "/templates", given=given)
        except (Invalid, Refused, NotFound) as exc:
            field = getattr(exc, "field", None) or "name"
            return await self.templates(request, {field if field in values else "name": str(exc)}, values, 400)
        raise web.HTTPSeeOther(f"/console/templates/{doc['id']}")

    async def template(self, request: web.Request, errors: dict[str, str] | None = None,
                       values: dict[str, str] | None = None, status: int = 200,
                       done: str | None = None) -> web.Response:
        doc = await self.template_in_scope(request, request.match_info["id"])
        if doc is None:
            return self.not_found(request, f"No template {request.match_info['id']}.")
        return self.page(request, "template.html", status=status, tpl=doc, errors=errors or {},
                         values=values or {}, done=done)

    async def update_template(self, request: web.Request) -> web.StreamResponse:
        doc = await self.template_in_scope(request, request.match_info["id"])
        if doc is None:
            return self.not_found(request, f"No template {request.match_info['id']}.")
        form = await request.post()
        values = {k: str(form.get(k, "")) for k in ("subject", "html", "text", "description")}
        try:
            saved = await self.api("PATCH", "/templates/{id}", {"id": str(doc["id"])}, values)
        except (Invalid, Refused) as exc:
            field = getattr(exc, "field", None) or "html"
            return await self.template(request, {field if field in values else "html": str(exc)}, values, 400)
        return await self.template(request, done=f"Saved as version {saved['version']}.")

    async def delete_template(self, request: web.Request) -> web.StreamResponse:
        doc = await self.template_in_scope(request, request.match_info["id"])
        if doc is None:
            return self.not_found(request, f"No template {request.match_info['id']}.")
        try:
            await self.api("DELETE", "/templates/{id}", {"id": str(doc["id"])})
        except Refused as exc:
            return await self.template(request, {"delete": str(exc)}, status=409)
        raise web.HTTPSeeOther("/console/templates")

    async def draft(self, request: web.Request) -> web.Response:
        """The editor's live preview: the parts as typed, rendered with the sample data, and the
        check's findings; JSON for console.js."""
        form = await request.post()
        given: dict[str, Any] = {k: str(form.get(k, "")) for k in ("subject", "html", "text")}
        try:
            data = json.loads(str(form.get("data") or "{}"))
        except ValueError as exc:
            return web.json_response({"error": f"the sample data is not JSON: {exc}", "field": "data"}, status=400)
        if not isinstance(data, dict):
            return web.json_response({"error": "the sample data is a JSON object", "field": "data"}, status=400)
        try:
            return web.json_response(await self.api("POST", "/templates/draft", given={**given, "data": data}))
        except Invalid as exc:
            return web.json_response({"error": str(exc), "field": exc.field}, status=400)

    async def draft_frame(self, request: web.Request) -> web.Response:
        """The preview frame's document: the HTML part as rendered, under its own policy: a
        sandbox with no script, inline styles allowed (mail uses them), no remote loads."""
        form = await request.post()
        given: dict[str, Any] = {k: str(form.get(k, "")) for k in ("subject", "html", "text")}
        try:
            data = json.loads(str(form.get("data") or "{}"))
            doc = await self.api("POST", "/templates/draft",
                                 given={**given, "data": data if isinstance(data, dict) else {}})
            html = doc["html"] or "<p>(no HTML part)</p>"
        except (ValueError, Invalid) as exc:
            html = f"<p>(no preview: {escape(str(exc))})</p>"
        return web.Response(text=html, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Frame-Options": "SAMEORIGIN",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"})

    # -- recipient groups ------------------------------------------------------------------------
    async def group_in_scope(self, request: web.Request, ref: str) -> dict[str, Any] | None:
        return await self.owned(request, "/groups/{id}", ref)

    async def groups(self, request: web.Request, errors: dict[str, str] | None = None,
                     values: dict[str, str] | None = None, status: int = 200,
                     added: dict[str, Any] | None = None) -> web.Response:
        account = self.account_of(request)
        found = (await self.api("GET", "/groups", given={"account": account} if account else {}))["groups"]
        return self.page(request, "groups.html", status=status, groups=found, errors=errors or {},
                         values=values or {}, added=added, accounts=await self.accounts(request))

    async def add_group(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        values = {k: form_text(form, k) for k in ("account", "name", "description")}
        values["account"] = self.account_of(request) or values["account"]
        data = form_file(form, "csv")
        if data is None:
            return await self.groups(request, {"csv": "choose a CSV file"}, values, 400)
        given: dict[str, Any] = {k: v for k, v in values.items() if v}
        given["csv"] = data
        if form.get("skip_invalid"):
            given["skip_invalid"] = "true"
        try:
            added = await self.api("POST", "/groups", given=given)
        except (Invalid, Refused, NotFound) as exc:
            field = getattr(exc, "field", None) or "csv"
            return await self.groups(request, {field if field in ("account", "name", "csv") else "csv": str(exc)},
                                     values, 400)
        return await self.groups(request, added=added)

    async def group(self, request: web.Request, errors: dict[str, str] | None = None,
                    status: int = 200) -> web.Response:
        doc = await self.group_in_scope(request, request.match_info["id"])
        if doc is None:
            return self.not_found(request, f"No recipient group {request.match_info['id']}.")
        return self.page(request, "group.html", status=status, group=doc, errors=errors or {})

    async def delete_group(self, request: web.Request) -> web.StreamResponse:
        doc = await self.group_in_scope(request, request.match_info["id"])
        if doc is None:
            return self.not_found(request, f"No recipient group {request.match_info['id']}.")
        try:
            await self.api("DELETE", "/groups/{id}", {"id": str(doc["id"])})
        except Refused as exc:
            return await self.group(request, {"delete": str(exc)}, 409)
        raise web.HTTPSeeOther("/console/groups")

    async def group_sample(self, request: web.Request) -> web.Response:
        return web.Response(text=SAMPLE_CSV, content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": 'attachment; filename="recipients-sample.csv"'})

    # -- sending tasks ---------------------------------------------------------------------------
    async def task_in_scope(self, request: web.Request, ref: str) -> dict[str, Any] | None:
        return await self.owned(request, "/tasks/{id}", ref)

    async def tasks(self, request: web.Request, errors: dict[str, str] | None = None,
                    values: dict[str, str] | None = None, status: int = 200) -> web.Response:
        account = self.account_of(request)
        scope = {"account": account} if account else {}
        found = (await self.api("GET", "/tasks", given=scope))["tasks"]
        groups = (await self.api("GET", "/groups", given=scope))["groups"]
        templates = (await self.api("GET", "/templates", given=scope))["templates"]
        return self.page(request, "tasks.html", status=status, tasks=found, groups=groups, templates=templates,
                         errors=errors or {}, values=values or {"when": "now"}, accounts=await self.accounts(request))

    async def add_task(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        values = {k: form_text(form, k) for k in ("account", "group", "template", "from", "subject", "tag", "when", "at",
                                              "every", "zone")}
        account = self.account_of(request)
        given: dict[str, Any] = {k: values[k] for k in ("group", "template", "from", "subject", "tag") if values[k]}
        # The group and template are chosen by id: the account is theirs (checked in scope).
        group = await self.group_in_scope(request, values["group"]) if values["group"] else None
        template = await self.template_in_scope(request, values["template"]) if values["template"] else None
        if group is None:
            return await self.tasks(request, {"group": "choose a recipient group"}, values, 400)
        if template is None:
            return await self.tasks(request, {"template": "choose a template"}, values, 400)
        if group["account"] != template["account"]:
            return await self.tasks(request, {"template": f"template {template['name']} is account "
                                                          f"{template['account']}'s, the group is account "
                                                          f"{group['account']}'s"}, values, 400)
        given["account"] = account or group["account"]
        if values["when"] == "now":
            given["now"] = "true"
        else:
            if not values["at"]:
                return await self.tasks(request, {"at": "give the date and time of the first run"}, values, 400)
            # <input type="datetime-local"> gives 2026-12-24T09:00, in the zone the browser reports.
            given["at"] = f"{values['at']} {values['zone']}" if values["zone"] else values["at"]
        if values["when"] == "recurring":
            if not values["every"]:
                return await self.tasks(request, {"every": "give the period, like 7d"}, values, 400)
            given["every"] = values["every"]
        try:
            doc = await self.api("POST", "/tasks", given=given)
        except (Invalid, Refused, NotFound) as exc:
            field = getattr(exc, "field", None) or "group"
            return await self.tasks(request, {field if field in values else "group": str(exc)}, values, 400)
        raise web.HTTPSeeOther(f"/console/tasks/{doc['id']}")

    async def task(self, request: web.Request, errors: dict[str, str] | None = None,
                   status: int = 200, done: str | None = None) -> web.Response:
        doc = await self.task_in_scope(request, request.match_info["id"])
        if doc is None:
            return self.not_found(request, f"No task {request.match_info['id']}.")
        return self.page(request, "task.html", status=status, task=doc, errors=errors or {}, done=done)

    async def task_action(self, request: web.Request) -> web.StreamResponse:
        doc = await self.task_in_scope(request, request.match_info["id"])
        if doc is None:
            return self.not_found(request, f"No task {request.match_info['id']}.")
        action = request.match_info["action"]
        try:
            result = await self.api("POST", f"/tasks/{{id}}/{action}", {"id": str(doc["id"])})
        except (Refused, Invalid) as exc:
            return await self.task(request, {"action": str(exc)}, 409)
        return await self.task(request, done=f"Task {doc['id']} is {result['shown_status']}.")


def add_routes(app: web.Application, console: Any) -> None:
    """`console`: the web.Console these pages are mixed into."""
    r = app.router
    r.add_get("/console/templates", console.templates)
    r.add_post("/console/templates", console.add_template)
    r.add_post("/console/templates/draft", console.draft)
    r.add_post("/console/templates/draft-frame", console.draft_frame)
    r.add_get("/console/templates/{id}", console.template)
    r.add_post("/console/templates/{id}", console.update_template)
    r.add_post("/console/templates/{id}/delete", console.delete_template)
    r.add_get("/console/groups", console.groups)
    r.add_post("/console/groups", console.add_group)
    r.add_get("/console/groups/sample.csv", console.group_sample)
    r.add_get("/console/groups/{id}", console.group)
    r.add_post("/console/groups/{id}/delete", console.delete_group)
    r.add_get("/console/tasks", console.tasks)
    r.add_post("/console/tasks", console.add_task)
    r.add_get("/console/tasks/{id}", console.task)
    r.add_post(r"/console/tasks/{id}/{action:pause|resume|cancel}", console.task_action)
