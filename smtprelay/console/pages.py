"""The console's pages beyond domains and message search: statistics, blocklist, queue, warm-up,
webhooks, templates, recipient groups and sending tasks (issue 21).

Every read and write goes through the admin API's route table (`Console.api`), as the CLI's
commands do through the services: this module only turns forms into those calls and their
answers into pages. Scope: an account's user sees and changes only its account's objects
(another account's is "not found"); the queue, dead letters and imports are the operator's.

Must never: hold business rules or SQL.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
from html import escape
from typing import Any, Awaitable, Callable

from aiohttp import web

from smtprelay.errors import Invalid, NotFound, Refused
from smtprelay.events.stats import COUNTS
from smtprelay.policy.blocklist import TYPES as BLOCK_TYPES
from smtprelay.queue.listing import STATES

# The statistics chart's series: (count, label).
SERIES = (("requests", "Requests"), ("delivered", "Delivered"), ("bounced_invalid", "Bounced: invalid address"),
          ("bounced_spam", "Bounced: spam"), ("bounced_other", "Bounced: other"), ("opened_unique", "Opened"),
          ("clicked_unique", "Clicked"), ("complained", "Complaints"), ("unsubscribed", "Unsubscribes"))
MAX_STATS_DAYS = 400
SAMPLE_CSV = ("email,first_name,company\r\n"
              "ada@example.com,Ada,Analytical Engines\r\n"
              "grace@example.org,Grace,Compilers Inc\r\n")


def _utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


def _text(form: Any, key: str) -> str:
    value = form.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def _csv_response(name: str, header: list[str], rows: list[list[Any]]) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


def _upload(form: Any, key: str) -> bytes | None:
    """A file field's bytes (None when no file was chosen)."""
    field = form.get(key)
    if field is None or isinstance(field, str):
        return field.encode("utf-8") if isinstance(field, str) and field else None
    data = field.file.read()
    return data or None


class Pages:
    """Mixed into web.Console, which defines these (declared here for the type checker)."""
    queue_counts: Callable[[], dict[str, int]]
    api: Callable[..., Awaitable[Any]]
    page: Callable[..., web.Response]
    not_found: Callable[[web.Request, str], web.Response]
    account_of: Callable[[web.Request], str | None]
    domain_in_scope: Callable[[web.Request, str], Awaitable[dict[str, Any] | None]]

    # -- helpers ---------------------------------------------------------------------------------
    async def own_domains(self, account: str) -> set[str]:
        return {d["domain"] for d in (await self.api("GET", "/domains", given={"account": account}))["domains"]}

    def admin_only(self, request: web.Request) -> web.Response | None:
        if self.account_of(request) is not None:
            return self.not_found(request, "This page is the operator's.")
        return None

    async def owned(self, request: web.Request, path: str, ref: str) -> dict[str, Any] | None:
        """An object by its id (a positive integer) through `GET path`, when this user may see it:
        None for another account's, exactly as for one that does not exist."""
        if not ref.isdigit() or int(ref) <= 0:
            return None
        try:
            doc: dict[str, Any] = await self.api("GET", path, {"id": ref})
        except NotFound:
            return None
        account = self.account_of(request)
        return doc if account is None or doc["account"] == account else None

    async def accounts(self, request: web.Request) -> list[str]:
        if self.account_of(request) is not None:
            return []
        return [a["name"] for a in (await self.api("GET", "/accounts"))["accounts"]]

    # -- statistics ------------------------------------------------------------------------------
    async def _stats_rows(self, request: web.Request) -> tuple[dict[str, str], dict[str, str],
                                                                        list[dict[str, Any]], list[str]]:
        account = self.account_of(request)
        q = request.query
        values = {k: q.get(k, "").strip() for k in ("from", "to", "sender_domain", "recipient_domain", "tag",
                                                     "template")}
        errors: dict[str, str] = {}
        today = _utc_today()
        dates: dict[str, datetime.date] = {}
        for key, default in (("from", today - datetime.timedelta(days=6)), ("to", today)):
            try:
                dates[key] = datetime.date.fromisoformat(values[key]) if values[key] else default
            except ValueError:
                errors[key] = f"a date like {today.isoformat()}, got \"{values[key]}\""
                dates[key] = default
        if not errors and dates["from"] > dates["to"]:
            errors["to"] = "the end date is before the start date"
        elif not errors and (dates["to"] - dates["from"]).days >= MAX_STATS_DAYS:
            errors["from"] = f"at most {MAX_STATS_DAYS} days at once"
        values["from"], values["to"] = dates["from"].isoformat(), dates["to"].isoformat()
        days = [(dates["from"] + datetime.timedelta(days=n)).isoformat()
                for n in range(max(0, min((dates["to"] - dates["from"]).days + 1, MAX_STATS_DAYS)))]
        if errors:
            return values, errors, [], days
        given = {"from": values["from"], "to": (dates["to"] + datetime.timedelta(days=1)).isoformat()}
        for key in ("sender_domain", "recipient_domain", "template"):
            if values[key]:
                given[key] = values[key]
        if account is not None and values["template"]:
            given["account"] = account
        try:
            rows = (await self.api("GET", "/stats", given=given))["days"]
        except Invalid as exc:
            errors[exc.field if exc.field in values else "from"] = str(exc)
            rows = []
        except NotFound as exc:
            errors["template"] = str(exc)
            rows = []
        if account is not None:
            names = await self.own_domains(account)
            rows = [r for r in rows if r.get("sender_domain") in names]
        if values["tag"]:
            rows = [r for r in rows if r.get("tag") == values["tag"]]
        return values, errors, rows, days

    async def stats(self, request: web.Request) -> web.Response:
        values, errors, rows, days = await self._stats_rows(request)
        by_day = {day: {name: 0 for name, _ in SERIES} for day in days}
        for row in rows:
            if row["day"] in by_day:
                for name, _ in SERIES:
                    by_day[row["day"]][name] += int(row.get(name) or 0)
        chart = {"days": days, "series": [{"key": k, "label": label, "values": [by_day[d][k] for d in days]}
                                          for k, label in SERIES]}
        totals = {k: sum(by_day[d][k] for d in days) for k, _ in SERIES}
        query = "&".join(f"{k}={v}" for k, v in values.items() if v)
        return self.page(request, "stats.html", status=400 if errors else 200, values=values, errors=errors,
                         series=SERIES, by_day=by_day, days=days, totals=totals, chart=json.dumps(chart),
                         query=query)

    async def stats_csv(self, request: web.Request) -> web.Response:
        values, errors, rows, _ = await self._stats_rows(request)
        if errors:
            return self.page(request, "error.html", status=400, title="Statistics",
                             message="; ".join(f"{k}: {v}" for k, v in errors.items()))
        keys = ["day", "sender_domain", "recipient_domain", "tag", "template", *COUNTS]
        return _csv_response(f"smtprelay-stats-{values['from']}-{values['to']}.csv", keys,
                             [[r.get(k) if r.get(k) is not None else "" for k in keys] for r in rows])

    # -- blocklist -------------------------------------------------------------------------------
    async def blocklist(self, request: web.Request, errors: dict[str, str] | None = None,
                        report: dict[str, Any] | None = None, status: int = 200,
                        done: str | None = None) -> web.Response:
        account = self.account_of(request)
        q = request.query
        values = {k: q.get(k, "").strip() for k in ("address", "type", "account", "since", "until")}
        values["expired"] = "1" if q.get("expired") else ""
        errors = dict(errors or {})
        given = {k: v for k, v in values.items() if v}
        if account is not None:
            given["account"] = account
        entries: list[dict[str, Any]] = []
        try:
            entries = (await self.api("GET", "/blocklist", given=given))["entries"]
        except Invalid as exc:
            errors[exc.field if exc.field in values else "address"], status = str(exc), 400
        except NotFound as exc:
            errors["account"], status = str(exc), 400
        return self.page(request, "blocklist.html", status=status, entries=entries, values=values, errors=errors,
                         types=BLOCK_TYPES, accounts=await self.accounts(request), report=report, done=done)

    async def block(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        account = self.account_of(request) or _text(form, "block_account") or None
        given = {"address": _text(form, "block_address")}
        for key, field in (("expires", "block_expires"), ("note", "block_note")):
            if _text(form, field):
                given[key] = _text(form, field)
        if account:
            given["account"] = account
        try:
            entry = await self.api("POST", "/blocklist", given=given)
        except (Invalid, NotFound, Refused) as exc:
            field = {"address": "block_address", "expires": "block_expires", "account": "block_account"}.get(
                getattr(exc, "field", None) or "address", "block_address")
            return await self.blocklist(request, {field: str(exc)}, status=400)
        return await self.blocklist(request, done=f"{entry['address']} is blocked for "
                                                  f"{'account ' + account if account else 'all accounts'}.")

    async def unblock(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        account = self.account_of(request)
        given = {k: _text(form, k) for k in ("account", "type") if _text(form, k)}
        if account is not None:
            given["account"] = account          # never another account's, nor an entry for all accounts
        address = _text(form, "address")
        try:
            result = await self.api("DELETE", "/blocklist/{address}", {"address": address}, given)
        except (Invalid, NotFound) as exc:
            return await self.blocklist(request, {"address": str(exc)}, status=400)
        return await self.blocklist(request, done=f"Removed {result['removed']} entr"
                                                  f"{'y' if result['removed'] == 1 else 'ies'} for {address}.")

    async def allow(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        account = self.account_of(request) or _text(form, "allow_account")
        address = _text(form, "allow_address")
        try:
            await self.api("POST", "/blocklist/{address}/allow", {"address": address}, {"account": account})
        except (Invalid, NotFound) as exc:
            field = "allow_account" if getattr(exc, "field", None) == "account" or isinstance(exc, NotFound) \
                else "allow_address"
            return await self.blocklist(request, {field: str(exc)}, status=400)
        return await self.blocklist(request, done=f"{address} is allowed for account {account}: its entries no "
                                                  "longer refuse that account's mail.")

    async def block_import(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.admin_only(request)) is not None:
            return refused
        form = await request.post()
        data = _upload(form, "csv")
        if data is None:
            return await self.blocklist(request, {"csv": "choose a CSV file"}, status=400)
        report = await self.api("POST", "/blocklist/import", given={"csv": data})
        return await self.blocklist(request, report=report, status=400 if report["bad_rows"] else 200)

    async def block_export(self, request: web.Request) -> web.Response:
        account = self.account_of(request)
        doc = await self.api("GET", "/blocklist/export")
        rows = [e for e in doc["entries"] if account is None or (e["type"] == "custom" and e["account"] == account)]
        return _csv_response("smtprelay-blocklist.csv", doc["columns"], [[e[c] for c in doc["columns"]] for e in rows])

    # -- queue -----------------------------------------------------------------------------------
    async def queue(self, request: web.Request, done: str | None = None,
                    errors: dict[str, str] | None = None, status: int = 200) -> web.Response:
        if (refused := self.admin_only(request)) is not None:
            return refused
        values = {k: request.query.get(k, "").strip() for k in ("state", "domain")}
        errors = dict(errors or {})
        given = {k: v for k, v in values.items() if v}
        given["limit"] = "500"
        messages: list[dict[str, Any]] = []
        try:
            messages = (await self.api("GET", "/queue", given=given))["messages"]
        except Invalid as exc:
            errors[exc.field or "state"], status = str(exc), 400
        return self.page(request, "queue.html", status=status, messages=messages, values=values, errors=errors,
                         states=STATES, counts=self.queue_counts(), done=done)

    async def queue_action(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.admin_only(request)) is not None:
            return refused
        queue_id, action = request.match_info["id"], request.match_info["action"]
        method, path = {"hold": ("POST", "/queue/{id}/hold"), "release": ("POST", "/queue/{id}/release"),
                        "delete": ("DELETE", "/queue/{id}")}[action]
        try:
            result = await self.api(method, path, {"id": queue_id})
        except NotFound as exc:
            return self.not_found(request, str(exc))
        count = next(v for k, v in result.items() if k != "id")
        words = {"hold": "held", "release": "released", "delete": "deleted (no bounce)"}[action]
        return await self.queue(request, done=f"{queue_id}: {count} recipient(s) {words}.")

    async def flush(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.admin_only(request)) is not None:
            return refused
        form = await request.post()
        domain = _text(form, "flush_domain")
        result = await self.api("POST", "/queue/flush", given={"domain": domain} if domain else {})
        return await self.queue(request, done=f"{result['due_now']} deferred recipient(s) due now"
                                              f"{' for ' + domain if domain else ''}.")

    # -- warm-up ---------------------------------------------------------------------------------
    async def warmup(self, request: web.Request, done: str | None = None,
                     errors: dict[str, str] | None = None, status: int = 200) -> web.Response:
        account = self.account_of(request)
        doc = await self.api("GET", "/warmup")
        pairs = doc["pairs"]
        if account is not None:
            names = await self.own_domains(account)
            pairs = [p for p in pairs if p.get("sender_domain") in names]
        return self.page(request, "warmup.html", status=status, enabled=doc["enabled"], pairs=pairs, done=done,
                         errors=errors or {})

    async def warmup_day(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.admin_only(request)) is not None:
            return refused
        form = await request.post()
        domain, provider = request.match_info["domain"], request.match_info["provider"]
        try:
            result = await self.api("PUT", "/warmup/{domain}/{provider}", {"domain": domain, "provider": provider},
                                    {"day": _text(form, "day")})
        except (Invalid, NotFound) as exc:
            return await self.warmup(request, errors={f"{domain}/{provider}": str(exc)}, status=400)
        return await self.warmup(request, done=f"{domain} at {provider}: day {result['day']}, "
                                               f"cap {result['cap'] if result['cap'] is not None else 'none'}.")

    async def resume_domain(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.admin_only(request)) is not None:
            return refused
        domain = request.match_info["domain"]
        try:
            result = await self.api("POST", "/domains/{domain}/resume", {"domain": domain})
        except (Refused, NotFound) as exc:
            return await self.warmup(request, errors={domain: str(exc)}, status=409)
        return await self.warmup(request, done=f"{domain} may send again; {result['released']} held recipient(s) "
                                               "queued.")

    # -- webhooks --------------------------------------------------------------------------------
    async def webhooks(self, request: web.Request, done: str | None = None,
                       errors: dict[str, str] | None = None, status: int = 200,
                       secret: dict[str, Any] | None = None) -> web.Response:
        account = self.account_of(request)
        hooks = (await self.api("GET", "/webhooks"))["webhooks"]
        if account is not None:
            hooks = [h for h in hooks if h["account"] == account]
        failures = (await self.api("GET", "/webhooks/failures"))["failures"] if account is None else []
        return self.page(request, "webhooks.html", status=status, hooks=hooks, failures=failures, done=done,
                         errors=errors or {}, secret=secret, accounts=await self.accounts(request))

    async def _hook_owner(self, request: web.Request, form: Any) -> dict[str, str]:
        """The account (an account's user: its own) and, for an address's webhook, the address,
        which must be one of that account's."""
        account = self.account_of(request) or _text(form, "account")
        given = {"account": account}
        address = _text(form, "address")
        if address:
            domain = await self.domain_in_scope(request, address.rpartition("@")[2].lower())
            if domain is None or domain["account"] != account:
                raise Invalid(f"{address} is not a sender address of account {account}", "address")
            given["address"] = address
        return given

    async def set_webhook(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        try:
            given = await self._hook_owner(request, form)
            await self.api("PUT", "/webhooks", given={**given, "url": _text(form, "url")})
        except (Invalid, NotFound) as exc:
            field = getattr(exc, "field", None) or "account"
            return await self.webhooks(request, errors={field if field in ("url", "address") else "account": str(exc)},
                                       status=400)
        return await self.webhooks(request, done=f"Events for {given.get('address') or 'account ' + given['account']} "
                                                 f"go to {_text(form, 'url')}.")

    async def delete_webhook(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        try:
            given = await self._hook_owner(request, form)
            await self.api("DELETE", "/webhooks", given=given)
        except (Invalid, NotFound) as exc:
            return await self.webhooks(request, errors={"delete": str(exc)}, status=400)
        return await self.webhooks(request, done="Webhook deleted.")

    async def webhook_secret(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        account = self.account_of(request) or _text(form, "secret_account")
        given = {"account": account, **({"rotate": "true"} if form.get("rotate") else {})}
        try:
            secret = await self.api("POST", "/webhooks/secret", given=given)
        except (Invalid, NotFound) as exc:
            return await self.webhooks(request, errors={"secret_account": str(exc)}, status=400)
        return await self.webhooks(request, secret=secret)

    async def replay(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.admin_only(request)) is not None:
            return refused
        result = await self.api("POST", "/webhooks/replay")
        return await self.webhooks(request, done=f"{result['replayed']} dead letter(s) queued again.")

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
        values = {k: _text(form, k) for k in ("account", "name", "description")}
        values["account"] = self.account_of(request) or values["account"]
        data = _upload(form, "csv")
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
        values = {k: _text(form, k) for k in ("account", "group", "template", "from", "subject", "tag", "when", "at",
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
    r.add_get("/console/stats", console.stats)
    r.add_get("/console/stats.csv", console.stats_csv)
    r.add_get("/console/blocklist", console.blocklist)
    r.add_post("/console/blocklist", console.block)
    r.add_post("/console/blocklist/remove", console.unblock)
    r.add_post("/console/blocklist/allow", console.allow)
    r.add_post("/console/blocklist/import", console.block_import)
    r.add_get("/console/blocklist.csv", console.block_export)
    r.add_get("/console/queue", console.queue)
    r.add_post("/console/queue/flush", console.flush)
    r.add_post(r"/console/queue/{id}/{action:hold|release|delete}", console.queue_action)
    r.add_get("/console/warmup", console.warmup)
    r.add_post("/console/warmup/{domain}/{provider}", console.warmup_day)
    r.add_post("/console/domains/{domain}/resume", console.resume_domain)
    r.add_get("/console/webhooks", console.webhooks)
    r.add_post("/console/webhooks", console.set_webhook)
    r.add_post("/console/webhooks/delete", console.delete_webhook)
    r.add_post("/console/webhooks/secret", console.webhook_secret)
    r.add_post("/console/webhooks/replay", console.replay)
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
