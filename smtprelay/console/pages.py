"""The console's operations pages beyond domains and message search: statistics, blocklist,
queue, warm-up and webhooks (issue 21); `console/sending.py` has templates, groups and tasks.

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


def _utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


def form_text(form: Any, key: str) -> str:
    value = form.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def _csv_response(name: str, header: list[str], rows: list[list[Any]]) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


def form_file(form: Any, key: str) -> bytes | None:
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
        account = self.account_of(request) or form_text(form, "block_account") or None
        given = {"address": form_text(form, "block_address")}
        for key, field in (("expires", "block_expires"), ("note", "block_note")):
            if form_text(form, field):
                given[key] = form_text(form, field)
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
        given = {k: form_text(form, k) for k in ("account", "type") if form_text(form, k)}
        if account is not None:
            given["account"] = account          # never another account's, nor an entry for all accounts
        address = form_text(form, "address")
        try:
            result = await self.api("DELETE", "/blocklist/{address}", {"address": address}, given)
        except (Invalid, NotFound) as exc:
            return await self.blocklist(request, {"address": str(exc)}, status=400)
        return await self.blocklist(request, done=f"Removed {result['removed']} entr"
                                                  f"{'y' if result['removed'] == 1 else 'ies'} for {address}.")

    async def allow(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        account = self.account_of(request) or form_text(form, "allow_account")
        address = form_text(form, "allow_address")
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
        data = form_file(form, "csv")
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
        domain = form_text(form, "flush_domain")
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
                                    {"day": form_text(form, "day")})
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
        account = self.account_of(request) or form_text(form, "account")
        given = {"account": account}
        address = form_text(form, "address")
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
            await self.api("PUT", "/webhooks", given={**given, "url": form_text(form, "url")})
        except (Invalid, NotFound) as exc:
            field = getattr(exc, "field", None) or "account"
            return await self.webhooks(request, errors={field if field in ("url", "address") else "account": str(exc)},
                                       status=400)
        return await self.webhooks(request, done=f"Events for {given.get('address') or 'account ' + given['account']} "
                                                 f"go to {form_text(form, 'url')}.")

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
        account = self.account_of(request) or form_text(form, "secret_account")
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
