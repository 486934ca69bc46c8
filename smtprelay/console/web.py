"""The web console under /console/ on the [http] listener (issue 21), when `[console] enabled`.

Server-rendered pages (Jinja2, autoescaped; one stylesheet and one small script shipped in the
package: no build step, no CDN). Every read and write goes through the admin API's route table
(`http.admin.call`), in a thread: the console is a third front door over the same services,
never a second path to the data.

- **Login**: a console user (`console-user add`) and its generated password. Failures count
  toward the same lockout as SMTP AUTH (`auth.max_failures` per client address within
  `auth.failure_window` → locked for `auth.lockout`). The session cookie is HttpOnly,
  SameSite=Strict, Secure with `console.secure_cookie`; it ends at `console.session_lifetime`,
  after `console.idle_timeout` idle, or at logout.
- **CSRF**: every form carries the session's token; a POST without it (or with another) is 403.
- **Scope**: an account's user sees and changes only that account's objects. Another account's
  domain is "not found" (404), exactly like one that does not exist. A read-only user's POSTs
  are 403.

Owns: sessions in cookies, pages and forms. Must never: hold business rules or SQL.
"""
from __future__ import annotations

import asyncio
import datetime
import hmac
import logging
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from smtprelay.catalog.console import ConsoleSession
from smtprelay.console.pages import add_routes as add_pages
from smtprelay.console.sending import SendingPages, add_routes as add_sending
from smtprelay.clock import Clock
from smtprelay.config import Config
from smtprelay.errors import Invalid, NotFound, Refused, ServiceError, StoreUnavailable
from smtprelay.http.admin import call
from smtprelay.services import Services, guard
from smtprelay.smtp.guards import AuthLockout

log = logging.getLogger("smtprelay.console")

HERE = Path(__file__).parent
COOKIE = "smtprelay_console"
SESSION = web.AppKey("console_session", ConsoleSession)


class Console(SendingPages):
    def __init__(self, config: Callable[[], Config], open_services: Callable[[], Services], clock: Clock,
                 health: Callable[[], dict[str, object]], queue_counts: Callable[[], dict[str, int]]):
        self.queue_counts = queue_counts
        self.config = config
        self.open_services = open_services
        self.clock = clock
        self.health = health
        auth = config().auth
        self.lockout = AuthLockout(clock, auth.max_failures, auth.failure_window, auth.lockout)
        self.env = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                               autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)

    # -- plumbing ------------------------------------------------------------------------------
    async def api(self, method: str, path: str, match: dict[str, str] | None = None,
                  given: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(call, self.open_services, method, path, match, given)

    async def _services(self, work: Callable[[Services], Any]) -> Any:
        def run() -> Any:
            with guard():
                services = self.open_services()
                try:
                    with guard():
                        return work(services)
                finally:
                    services.close()
        return await asyncio.to_thread(run)

    def page(self, request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
        session = request.get("console_session")
        html = self.env.get_template(template).render(session=session, user=session.user if session else None,
                                                      path=request.path, **values)
        return web.Response(text=html, status=status, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                       "script-src 'self'; frame-ancestors 'none'; form-action 'self'"})

    def not_found(self, request: web.Request, what: str) -> web.Response:
        return self.page(request, "error.html", status=404, title="Not found", message=what)

    # -- middleware: the session, CSRF, read-only ------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if not request.path.startswith("/console"):
            return await handler(request)
        if request.path.startswith("/console/static/") or request.path == "/console/login":
            return await handler(request)
        token = request.cookies.get(COOKIE, "")
        try:
            session = await self._services(lambda s: s.console.session(token)) if token else None
        except ServiceError:
            return web.Response(status=503, text="the store is not available; try again in a minute\n")
        if session is None:
            raise web.HTTPSeeOther("/console/login")
        request["console_session"] = session
        if request.method == "POST":
            form = await request.post()
            given = str(form.get("csrf", ""))
            if not given or not hmac.compare_digest(given, session.csrf):
                log.warning("console: %s %s from %s without a valid CSRF token (user %s)", request.method,
                            request.path, request.remote, session.user.name)
                return self.page(request, "error.html", status=403, title="Refused",
                                 message="This form is out of date or did not come from this console. Reload the "
                                         "page and try again.")
            if session.user.read_only and request.path != "/console/logout":
                return self.page(request, "error.html", status=403, title="Read-only",
                                 message=f"{session.user.name} may look, not change.")
        return await handler(request)

    # -- login and logout ----------------------------------------------------------------------
    async def login_form(self, request: web.Request) -> web.Response:
        return self.page(request, "login.html", errors={})

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        ip = request.remote or ""
        if self.lockout.locked(ip):
            return self.page(request, "login.html", status=429, name=name, errors={
                "password": "Too many failed logins from your address; try again later."})
        try:
            found = await self._services(lambda s: s.console.login(name, password))
        except ServiceError:
            return self.page(request, "login.html", status=503, name=name,
                             errors={"password": "The store is not available; try again in a minute."})
        if found is None:
            self.lockout.failure(ip)
            log.info("console: failed login for %r from %s", name, ip)
            return self.page(request, "login.html", status=401, name=name,
                             errors={"password": "Unknown user or wrong password."})
        token, session = found
        self.lockout.success(ip)
        log.info("console: %s logged in from %s", session.user.name, ip)
        response = web.HTTPSeeOther("/console/")
        response.set_cookie(COOKIE, token, path="/console", httponly=True, samesite="Strict",
                            secure=self.config().console.secure_cookie or request.secure,
                            max_age=int(self.config().console.session_lifetime))
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        token = request.cookies.get(COOKIE, "")
        await self._services(lambda s: s.console.logout(token))
        response = web.HTTPSeeOther("/console/login")
        response.del_cookie(COOKIE, path="/console")
        raise response

    # -- scope ---------------------------------------------------------------------------------
    @staticmethod
    def account_of(request: web.Request) -> str | None:
        """None for an admin: everything; else the one account this user acts for."""
        return request["console_session"].user.account

    async def domain_in_scope(self, request: web.Request, domain: str) -> dict[str, Any] | None:
        try:
            doc = await self.api("GET", "/domains/{domain}", {"domain": domain})
        except NotFound:
            return None
        account = self.account_of(request)
        return doc if account is None or doc["account"] == account else None

    # -- pages ---------------------------------------------------------------------------------
    async def overview(self, request: web.Request) -> web.Response:
        account = self.account_of(request)
        today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        domains = (await self.api("GET", "/domains", given={"account": account} if account else {}))["domains"]
        names = {d["domain"] for d in domains}
        stats = await self.api("GET", "/stats", given={"from": today})
        rows = [d for d in stats["days"] if account is None or d.get("sender_domain") in names]
        keys = ("requests", "accepted", "delivered", "bounced", "deferred", "complained", "unsubscribed", "rejected")
        totals = {k: sum(int(r.get(k) or 0) for r in rows) for k in keys}
        warmup = await self.api("GET", "/warmup")
        attention = [w for w in warmup["pairs"]
                     if w.get("state") in ("frozen", "paused", "suspended")
                     and (account is None or w.get("sender_domain") in names)]
        queue = self.queue_counts() if account is None else None     # the scheduler's gauges, every 10 s
        usage = (await self.api("GET", "/usage", given={"account": account} if account else {}))["usage"]
        return self.page(request, "overview.html", totals=totals, domains=domains, attention=attention,
                         queue=queue, health=self.health(), today=today, usage=usage)

    async def domains(self, request: web.Request, errors: dict[str, str] | None = None,
                      values: dict[str, str] | None = None, status: int = 200) -> web.Response:
        account = self.account_of(request)
        found = (await self.api("GET", "/domains", given={"account": account} if account else {}))["domains"]
        accounts = [] if account else [a["name"] for a in (await self.api("GET", "/accounts"))["accounts"]]
        return self.page(request, "domains.html", status=status, domains=found, accounts=accounts,
                         errors=errors or {}, values=values or {})

    async def add_domain(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        account = self.account_of(request) or str(form.get("account", ""))
        domain = str(form.get("domain", "")).strip()
        try:
            await self.api("POST", "/domains", given={"account": account, "domain": domain})
        except Invalid as exc:
            return await self.domains(request, {exc.field or "domain": str(exc)}, {"domain": domain}, 400)
        except Refused as exc:
            return await self.domains(request, {"domain": str(exc)}, {"domain": domain}, 409)
        raise web.HTTPSeeOther(f"/console/domains/{domain.lower().rstrip('.')}")

    async def domain(self, request: web.Request, errors: dict[str, str] | None = None,
                     verification: dict[str, Any] | None = None, status: int = 200,
                     done: str | None = None) -> web.Response:
        name = request.match_info["domain"]
        doc = await self.domain_in_scope(request, name)
        if doc is None:
            return self.not_found(request, f"No sender domain {name}.")
        records = (await self.api("GET", "/domains/{domain}/records", {"domain": doc["domain"]}))["records"]
        addresses = (await self.api("GET", "/addresses", given={"domain": doc["domain"]}))["addresses"]
        checks = {(c["kind"], c["fqdn"]): c for c in (verification or {}).get("records", [])}
        settings = (await self.api("GET", "/tracking"))["settings"]
        tracking = next((t for t in settings if t["domain"] == doc["domain"]), None)
        zone = "\n".join(f"{r['fqdn']}. 3600 IN {r['type']} {zone_value(r)}" for r in records)
        return self.page(request, "domain.html", status=status, domain=doc, records=records, addresses=addresses,
                         checks=checks, verification=verification, errors=errors or {}, zone=zone,
                         tracking=tracking, done=done, pools=list(self.config().egress.pools),
                         max_addresses=self.config().domains.max_addresses_per_domain)

    async def rotate(self, request: web.Request) -> web.Response:
        name = request.match_info["domain"]
        if await self.domain_in_scope(request, name) is None:
            return self.not_found(request, f"No sender domain {name}.")
        result = await self.api("POST", "/domains/{domain}/rotate-dkim", {"domain": name})
        selectors = ", ".join(r["fqdn"].partition(".")[0] for r in result["records"] if r["kind"] == "dkim")
        return await self.domain(request, done=f"New DKIM selector {selectors}: publish its record below, then "
                                               "Verify now; mail is signed with it once it verifies.")

    async def set_tracking(self, request: web.Request) -> web.Response:
        doc = await self.domain_in_scope(request, request.match_info["domain"])
        if doc is None:
            return self.not_found(request, f"No sender domain {request.match_info['domain']}.")
        form = await request.post()
        given = {k: str(form.get(k, "")) for k in ("opens", "clicks", "unsubscribe") if form.get(k)}
        try:
            await self.api("PUT", "/tracking", given={"domain": doc["domain"], **given})
        except Invalid as exc:
            return await self.domain(request, {"tracking": str(exc)}, status=400)
        return await self.domain(request, done="Tracking settings saved.")

    async def set_pool(self, request: web.Request) -> web.Response:
        """The operator binds a domain to an [[egress.pools]] pool (or back to its account's)."""
        if self.account_of(request) is not None:
            return self.not_found(request, "Egress pools are the operator's.")
        doc = await self.domain_in_scope(request, request.match_info["domain"])
        if doc is None:
            return self.not_found(request, f"No sender domain {request.match_info['domain']}.")
        form = await request.post()
        given = {k: str(form.get(k, "")) for k in ("pool", "pool_fallback") if form.get(k)}
        try:
            result = await self.api("PATCH", "/domains/{domain}", {"domain": doc["domain"]}, given)
        except (Invalid, NotFound) as exc:
            return await self.domain(request, {"pool": str(exc)}, status=400)
        return await self.domain(request, done=f"Mail from {doc['domain']} goes out from pool {result['pool']} "
                                               f"(when it cannot: {result['pool_fallback']}).")

    async def verify(self, request: web.Request) -> web.Response:
        name = request.match_info["domain"]
        if await self.domain_in_scope(request, name) is None:
            return self.not_found(request, f"No sender domain {name}.")
        result = await self.api("POST", "/domains/{domain}/verify", {"domain": name})
        return await self.domain(request, verification=result)

    async def add_address(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["domain"]
        doc = await self.domain_in_scope(request, name)
        if doc is None:
            return self.not_found(request, f"No sender domain {name}.")
        form = await request.post()
        address = str(form.get("address", "")).strip()
        if address.rpartition("@")[2].lower() != doc["domain"]:
            return await self.domain(request, {"address": f"the address must be at {doc['domain']}"}, status=400)
        given = {"address": address}
        if form.get("name"):
            given["name"] = str(form["name"])
        try:
            await self.api("POST", "/addresses", given=given)
        except (Invalid, Refused) as exc:
            return await self.domain(request, {"address": str(exc)}, status=400 if isinstance(exc, Invalid) else 409)
        raise web.HTTPSeeOther(f"/console/domains/{doc['domain']}#addresses")

    async def delete_address(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["domain"]
        doc = await self.domain_in_scope(request, name)
        address = request.match_info["address"]
        if doc is None or address.rpartition("@")[2].lower() != doc["domain"]:
            return self.not_found(request, f"No sender address {address}.")
        try:
            await self.api("DELETE", "/addresses/{address}", {"address": address})
        except NotFound:
            return self.not_found(request, f"No sender address {address}.")
        raise web.HTTPSeeOther(f"/console/domains/{doc['domain']}#addresses")

    async def messages(self, request: web.Request) -> web.Response:
        """Message search: by queue id or Message-ID (`q`), or by recipient and dates; each
        recipient's state, attempts and events. An account's user finds only its own mail."""
        account = self.account_of(request)
        q = request.query.get("q", "").strip()
        recipient = request.query.get("recipient", "").strip()
        values = {k: request.query.get(k, "") for k in ("q", "recipient", "from", "to")}
        message, found, errors, status = None, None, {}, 200
        try:
            if q:
                try:
                    message = await self.api("GET", "/status/{queue_id}", {"queue_id": q})
                except NotFound:
                    message = None
                if message is not None and account is not None and message.get("account") != account:
                    message = None
                if message is None:
                    errors["q"] = f"No message {q}."
            elif recipient:
                given = {"recipient": recipient, **{k: values[k] for k in ("from", "to") if values[k]}}
                found = (await self.api("GET", "/status", given=given))["messages"]
                if account is not None:
                    names = {d["domain"] for d in (await self.api("GET", "/domains", given={"account": account}))[
                        "domains"]}
                    found = [m for m in found if m["from"].rpartition("@")[2].lower() in names]
        except Invalid as exc:
            errors[exc.field or "q"], status = str(exc), 400
        return self.page(request, "messages.html", status=status,
                         message=message, found=found, values=values, errors=errors)

    @web.middleware
    async def errors(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """A store or service failure on a console page is a page saying so, not a traceback."""
        if not request.path.startswith("/console"):
            return await handler(request)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except StoreUnavailable as exc:
            return self.page(request, "error.html", status=503, title="Store not available", message=str(exc))
        except NotFound as exc:
            return self.not_found(request, str(exc))
        except ServiceError as exc:
            return self.page(request, "error.html", status=409, title="Refused", message=str(exc))


def zone_value(record: dict[str, Any]) -> str:
    """A record's value as a zone file line wants it: TXT in quoted strings of at most 255 octets."""
    value = str(record["value"])
    if record["type"] != "TXT":
        return value
    return " ".join('"' + value[i:i + 255].replace('"', '\\"') + '"' for i in range(0, len(value), 255))


def add_routes(app: web.Application, console: Console) -> None:
    app.middlewares.append(console.errors)
    app.middlewares.append(console.middleware)
    r = app.router
    r.add_get("/console", lambda request: web.HTTPFound("/console/"))   # type: ignore[arg-type, return-value]
    r.add_get("/console/login", console.login_form)
    r.add_post("/console/login", console.login)
    r.add_post("/console/logout", console.logout)
    r.add_get("/console/", console.overview)
    r.add_get("/console/domains", console.domains)
    r.add_post("/console/domains", console.add_domain)
    r.add_get("/console/domains/{domain}", console.domain)
    r.add_post("/console/domains/{domain}/verify", console.verify)
    r.add_post("/console/domains/{domain}/addresses", console.add_address)
    r.add_post("/console/domains/{domain}/addresses/{address}/delete", console.delete_address)
    r.add_post("/console/domains/{domain}/rotate-dkim", console.rotate)
    r.add_post("/console/domains/{domain}/tracking", console.set_tracking)
    r.add_post("/console/domains/{domain}/pool", console.set_pool)
    r.add_get("/console/messages", console.messages)
    add_pages(app, console)
    add_sending(app, console)
    r.add_static("/console/static/", HERE / "static")
