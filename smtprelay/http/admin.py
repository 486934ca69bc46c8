"""The admin API under /api/v1/: the services over HTTP, with token auth, JSON in and out, and
an OpenAPI document generated from the route table.

Owns: the route table — each route names the service method it calls and the typed fields it
takes (path, query or body) — the validation of those fields, and the one mapping of service
errors to HTTP: 400 `{"error", "field"}` for an unknown, missing or malformed field (and for
`Invalid`); 401 without the token; 404 for `NotFound` and for an unknown route (JSON, like
every answer here); 405 for a known path with another method; 409 for `Refused`; 503 for
`StoreUnavailable`. Without `http.admin_token` the API is off (403 saying so). Each call runs
in a worker thread on its own connection (the services block: SQLite, DNS).

Must never: hold business logic (that is the services'), import the CLI, or block the loop.
"""
from __future__ import annotations

import asyncio
import io
import hmac
import re
import time
from typing import Any, Callable

import aiohttp
from aiohttp import web

from smtprelay import __version__, when
from smtprelay.config import ConfigError
from smtprelay.config.pools import FALLBACKS
from smtprelay.errors import Invalid, NotFound, Refused, ServiceError, StoreUnavailable
from smtprelay.events.stats import COUNTS
from smtprelay.http.routing import Field, Params, Route, docs, validate
from smtprelay.http.sending_routes import BATCH_ROUTES, BY_NAME, TEMPLATE_ROUTES
from smtprelay.policy.blocklist import TYPES
from smtprelay.queue.listing import STATES
from smtprelay.services import Services, guard
from smtprelay.services.accounts import DELIVERY_TLS, credential_doc
from smtprelay.services.blocklist import CSV_COLUMNS
from smtprelay.services.domains import address_doc, domain_doc, domain_name
from smtprelay.services.feedback import RESULTS as FEEDBACK_RESULTS, TYPES as FEEDBACK_TYPES
from smtprelay.services.tracking import CHOICES
from smtprelay.services.webhooks import webhook_doc

PREFIX = "/api/v1"


def _feedback_id(text: str) -> int:
    if not text.isdigit():
        raise Invalid(f"a feedback id is a number, got \"{text}\"", "id")
    return int(text)


def _hook_delete(s: Services, p: Params) -> dict[str, Any]:
    owner = s.webhooks.delete(p.get("account"), p.get("address"))
    return {"account": owner.account, "address": owner.address, "deleted": True}


def _status(s: Services, p: Params) -> dict[str, Any]:
    if not p.get("recipient"):
        raise Invalid("give a queue id in the path (/status/{queue_id}) or the field \"recipient\"", "recipient")
    return s.reports.recipient(p["recipient"], p.get("from"), p.get("to")).doc()


def _address_add(s: Services, p: Params) -> dict[str, Any]:
    added = s.domains.add_address(p["address"], p.get("name"))
    return {"address": added.address, "account": added.account, "name": added.name}


def _blocklist_allow(s: Services, p: Params) -> dict[str, Any]:
    undo = bool(p.get("undo"))
    address = (s.blocklist.disallow if undo else s.blocklist.allow)(p["address"], p["account"])
    return {"address": address, "account": p["account"], "allowed": not undo}


def _blocklist_remove(s: Services, p: Params) -> dict[str, Any]:
    from smtprelay.policy.address import canonical
    removed = s.blocklist.remove(p["address"], p.get("account"), p.get("type"))
    return {"address": canonical(p["address"]), "removed": removed}


def _blocklist_import(s: Services, p: Params) -> dict[str, Any]:
    now = s.blocklist.ctx.now()
    text = io.StringIO(p["csv"].decode("utf-8-sig", "replace"), newline="")
    return s.blocklist.import_csv(text, lambda t: when.parse_when(t, now, future=True)).doc()


def _domain_delete(s: Services, p: Params) -> dict[str, Any]:
    info = s.domains.delete(p["domain"])
    return {"deleted": info.name, "account": info.account}


def _credential_revoke(s: Services, p: Params) -> dict[str, Any]:
    doc = credential_doc(s.accounts.revoke(p["username"]))
    return {k: doc[k] for k in ("username", "account", "revoked_at")}


_ACCOUNT = Field("account", required=True)
_DOMAIN = Field("domain", required=True)
_POOL = Field("pool", description="an [[egress.pools]] name of relay.toml, or \"default\" (a domain: its "
                                  "account's; an account: shared)")
_POOL_FALLBACK = Field("pool_fallback", choices=FALLBACKS + ("default",),
                       description="when none of the pool's addresses can send: the shared pool, or wait")
ROUTES: tuple[Route, ...] = (
    Route("GET", "/accounts", "List accounts, and the reputation rule that sets their quotas",
          lambda s, p: s.accounts.listing().doc()),
    Route("POST", "/accounts", "Create an account",
          lambda s, p: s.accounts.add(p["name"], p.get("daily_quota"), p.get("rate")).doc(),
          (Field("name", required=True), Field("daily_quota", "integer", description="recipients per rolling 24 h"),
           Field("rate", "number", description="recipients per second"))),
    Route("PATCH", "/accounts/{name}", "Change an account's quota, rate, delivery TLS or egress pool",
          lambda s, p: s.accounts.set(p["name"], p.get("daily_quota"), p.get("rate"), p.get("delivery_tls"),
                                      p.get("pool"), p.get("pool_fallback")).doc(),
          (Field("daily_quota", "integer"), Field("rate", "number"),
           Field("delivery_tls", choices=DELIVERY_TLS), _POOL, _POOL_FALLBACK)),
    Route("POST", "/accounts/{name}/resume", "Lift an account's suspension for content (its held mail is queued "
                                             "again)",
          lambda s, p: (lambda r: {**r[0].doc(), "released": r[1]})(s.accounts.resume(p["name"]))),
    Route("GET", "/accounts/{account}/credentials", "List an account's SMTP credentials",
          lambda s, p: docs("credentials", s.accounts.credentials(p["account"]), credential_doc)),
    Route("POST", "/accounts/{account}/credentials", "Create SMTP credentials (the password is in this answer only)",
          lambda s, p: s.accounts.add_credential(p["account"]).doc()),
    Route("DELETE", "/credentials/{username}", "Revoke a credential", _credential_revoke),
    Route("GET", "/domains", "List sender domains",
          lambda s, p: docs("domains", s.domains.all(p.get("account")), domain_doc), (Field("account"),)),
    Route("POST", "/domains", "Register a sender domain (makes its DKIM keys)",
          lambda s, p: s.domains.add(p["account"], p["domain"]).doc(), (_ACCOUNT, _DOMAIN)),
    Route("GET", "/domains/{domain}", "One sender domain: status, DKIM selectors, egress pool",
          lambda s, p: domain_doc(s.domains.get(p["domain"]))),
    Route("GET", "/domains/{domain}/records", "The DNS records to publish",
          lambda s, p: {"domain": domain_name(p["domain"]),
                        "records": [r.as_dict() for r in s.domains.records(p["domain"])]}),
    Route("POST", "/domains/{domain}/verify", "Check the DNS records now (200 also when not verified: see "
                                              "\"verified\")", lambda s, p: s.domains.verify(p["domain"]).doc()),
    Route("POST", "/domains/{domain}/resume", "Lift a reputation suspension",
          lambda s, p: s.warmup.resume(p["domain"]).doc()),
    Route("POST", "/domains/{domain}/rotate-dkim", "Create a new DKIM selector",
          lambda s, p: {"domain": domain_name(p["domain"]),
                        "records": [r.as_dict() for r in s.domains.rotate(p["domain"])]}),
    Route("PATCH", "/domains/{domain}", "Bind a sender domain to an egress pool (overrides its account's)",
          lambda s, p: domain_doc(s.domains.set(p["domain"], p.get("pool"), p.get("pool_fallback"))),
          (_POOL, _POOL_FALLBACK)),
    Route("DELETE", "/domains/{domain}", "Delete a sender domain", _domain_delete),
    Route("GET", "/addresses", "List sender addresses",
          lambda s, p: docs("addresses", s.domains.addresses(p.get("domain")), address_doc), (Field("domain"),)),
    Route("POST", "/addresses", "Register a sender address", _address_add,
          (Field("address", required=True), Field("name", description="display name"))),
    Route("DELETE", "/addresses/{address}", "Delete a sender address",
          lambda s, p: {"deleted": s.domains.delete_address(p["address"]) and p["address"]}),
    Route("GET", "/blocklist", "List blocklist entries",
          lambda s, p: {"entries": s.blocklist.docs(s.blocklist.entries(
              p.get("type"), p.get("account"), p.get("origin"), p.get("address"), p.get("since"), p.get("until"),
              bool(p.get("expired"))))},
          (Field("type", choices=TYPES), Field("account"), Field("origin"), Field("address"), Field("since", "when"),
           Field("until", "when"), Field("expired", "boolean"))),
    Route("POST", "/blocklist", "Block an address (type custom)",
          lambda s, p: s.blocklist.doc(s.blocklist.add(p["address"], "custom", p.get("account"), p.get("expires"),
                                                       p.get("note"))),
          (Field("address", required=True), Field("account"), Field("expires", "deadline"), Field("note"))),
    Route("DELETE", "/blocklist/{address}", "Remove entries for an address", _blocklist_remove,
          (Field("account"), Field("type", choices=TYPES))),
    Route("DELETE", "/blocklist", "Remove in bulk the entries an account's mail triggered",
          lambda s, p: {"origin": p["origin"], "type": p.get("type"), "removed": s.blocklist.remove_triggered(
              p["origin"], p.get("type"), p.get("since"), p.get("until"))},
          (Field("origin", required=True), Field("type", choices=TYPES), Field("since", "when"),
           Field("until", "when"))),
    Route("PATCH", "/blocklist/{address}", "Change an address's entries: expiry (or none) and note",
          lambda s, p: {"entries": s.blocklist.docs(s.blocklist.set(
              p["address"], p.get("expires"), bool(p.get("no_expiry")), p.get("note"), p.get("account"),
              p.get("type")))},
          (Field("expires", "deadline"), Field("no_expiry", "boolean"), Field("note"), Field("account"),
           Field("type", choices=TYPES))),
    Route("GET", "/blocklist/export", "Every active entry, as the CSV's columns (" + ", ".join(CSV_COLUMNS) + ")",
          lambda s, p: {"columns": list(CSV_COLUMNS), "entries": [dict(zip(CSV_COLUMNS, row))
                                                                  for row in s.blocklist.export_rows()]}),
    Route("POST", "/blocklist/import", "Import a CSV (" + ", ".join(CSV_COLUMNS) + "); the bad rows are named by line",
          _blocklist_import,
          (Field("csv", "file", required=True, description="the CSV (multipart/form-data file \"csv\", or a "
                                                           "string)"),)),
    Route("GET", "/blocklist/{address}", "Whether an address is blocked, and why",
          lambda s, p: s.blocklist.check(p["address"], p.get("account"), p.get("sender_domain")).doc(),
          (Field("account"), Field("sender_domain"))),
    Route("POST", "/blocklist/{address}/allow", "Allow an address for an account", _blocklist_allow,
          (_ACCOUNT, Field("undo", "boolean"))),
    Route("GET", "/feedback", "Mail the feedback listener received (bounces, complaints, unsubscribes), newest first",
          lambda s, p: {"feedback": [e.doc() for e in s.feedback.list(p.get("type"), p.get("since"), p.get("until"),
                                                                       p.get("result"), p.get("limit", 100))]},
          (Field("type", choices=FEEDBACK_TYPES), Field("result", choices=FEEDBACK_RESULTS), Field("since", "when"),
           Field("until", "when"), Field("limit", "integer"))),
    Route("GET", "/feedback/{id}", "One received feedback mail: what it was parsed as, what it changed, the raw mail",
          lambda s, p: s.feedback.show(_feedback_id(p["id"])).doc()),
    Route("GET", "/queue", "Queued messages (like mailq)",
          lambda s, p: s.queue.list(p.get("state"), p.get("domain"), p.get("limit", 1000), bool(p.get("all"))).doc(),
          (Field("state", choices=STATES), Field("domain"), Field("limit", "integer"), Field("all", "boolean"))),
    Route("GET", "/queue/{id}", "One queued message", lambda s, p: s.queue.show(p["id"]).doc()),
    Route("POST", "/queue/flush", "Retry deferred mail now", lambda s, p: s.queue.flush(p.get("domain")).doc(),
          (Field("domain"),)),
    Route("POST", "/queue/{id}/hold", "Put a message on hold", lambda s, p: s.queue.hold(p["id"]).doc()),
    Route("POST", "/queue/{id}/release", "Release a held message", lambda s, p: s.queue.release(p["id"]).doc()),
    Route("DELETE", "/queue/{id}", "Delete a message (no bounce)", lambda s, p: s.queue.delete(p["id"]).doc()),
    Route("GET", "/stats", "Daily statistics (counts: " + ", ".join(COUNTS) + ")",
          lambda s, p: s.reports.stats(p.get("from"), p.get("to"), p.get("sender_domain"),
                                       p.get("recipient_domain"), template=p.get("template"),
                                       account=p.get("account"), task=p.get("task"), run=p.get("run")).doc(),
          (Field("from", "when"), Field("to", "when"), Field("sender_domain"), Field("recipient_domain"),
           Field("template", description="an id, or a name"), BY_NAME,
           Field("task", "integer", description="one sending task's rows"),
           Field("run", "integer", description="with task: one run's rows"))),
    Route("GET", "/usage", "Each account's daily quota and what the rolling 24 h used of it",
          lambda s, p: {"usage": s.reports.usage(p.get("account"))}, (Field("account"),)),
    Route("GET", "/stats/ip", "Delivery outcomes per day and egress source address",
          lambda s, p: s.reports.ip_stats(p.get("from"), p.get("to"), p.get("sender_domain")).doc(),
          (Field("from", "when"), Field("to", "when"), Field("sender_domain"))),
    Route("GET", "/status/{queue_id}", "Delivery status and history of a message",
          lambda s, p: s.reports.message(p["queue_id"]).doc()),
    Route("GET", "/status", "Delivery status of the mail to one address", _status,
          (Field("recipient", required=True), Field("from", "when"), Field("to", "when"))),
    Route("GET", "/warmup", "Warm-up per sender domain and provider, or of one egress address (ip)",
          lambda s, p: (s.warmup.ip_status(p["ip"]) if p.get("ip") else s.warmup.status(p.get("sender_domain"))).doc(),
          (Field("sender_domain"), Field("ip", description="an [[egress.pools]] address"))),
    Route("PUT", "/warmup/ip/{address}/{provider}", "Put an egress address on a warm-up day at a provider",
          lambda s, p: s.warmup.set_ip_day(p["address"], p["provider"], p["day"]).doc(),
          (Field("day", "integer", required=True),)),
    Route("PUT", "/warmup/{domain}/{provider}", "Put a pair on a warm-up day",
          lambda s, p: s.warmup.set_day(p["domain"], p["provider"], p["day"]).doc(),
          (Field("day", "integer", required=True),)),
    Route("GET", "/webhooks", "List webhooks", lambda s, p: docs("webhooks", s.webhooks.all(), webhook_doc)),
    Route("PUT", "/webhooks", "Set the account's or a sender address's webhook",
          lambda s, p: s.webhooks.set(p["url"], p.get("account"), p.get("address")).doc(),
          (Field("url", required=True), Field("account"), Field("address"))),
    Route("DELETE", "/webhooks", "Delete a webhook", _hook_delete, (Field("account"), Field("address"))),
    Route("POST", "/webhooks/secret", "Show or rotate an account's signing secret",
          lambda s, p: s.webhooks.secret(p["account"], bool(p.get("rotate"))).doc(),
          (_ACCOUNT, Field("rotate", "boolean"))),
    Route("GET", "/webhooks/failures", "Dead letters", lambda s, p: {"failures": s.webhooks.failures()}),
    Route("POST", "/webhooks/replay", "Queue dead letters again",
          lambda s, p: {"replayed": s.webhooks.replay(p.get("since"))}, (Field("since", "when"),)),
    Route("GET", "/tracking", "Tracking and unsubscribe settings", lambda s, p: s.tracking.show().doc()),
    Route("PUT", "/tracking", "Turn opens, clicks or unsubscribe on, off or inherit",
          lambda s, p: s.tracking.set(p.get("account"), p.get("domain"), opens=p.get("opens"),
                                      clicks=p.get("clicks"), unsubscribe=p.get("unsubscribe")),
          (Field("account"), Field("domain"), *(Field(k, choices=tuple(CHOICES))
                                                for k in ("opens", "clicks", "unsubscribe")))),
    *TEMPLATE_ROUTES,
    *BATCH_ROUTES,
    Route("POST", "/check-message", "What the relay and its scanners would make of a message, without sending it "
                                    "(a score 0-100 and its findings)",
          lambda s, p: s.content.check(p["message"], p.get("account")).doc(),
          (Field("message", "file", required=True, description="the message (RFC 5322), as a file or a string"),
           Field("account", description="judge the From: domain as this account's"))),
    Route("GET", "/explain", "Every policy that applies to a sender and recipient now",
          lambda s, p: s.reports.explain(p["account"], p["from"], p["to"]).doc(),
          (_ACCOUNT, Field("from", required=True), Field("to", required=True))),
)

_SCHEMA: dict[str, dict[str, Any]] = {"string": {"type": "string"}, "integer": {"type": "integer", "minimum": 1},
           "number": {"type": "number", "exclusiveMinimum": 0}, "boolean": {"type": "boolean"},
           "object": {"type": "object", "description": "variable names and their values"},
           "file": {"type": "string", "format": "binary", "description": "a file (multipart/form-data), or its text "
                                                                         "in JSON"},
           "when": {"type": "string", "description": "a date (2026-12-31), a time (2026-12-31T12:00:00Z) or a "
                                                     "duration back from now (7d)"},
           "deadline": {"type": "string", "description": "a date, a time, or a duration from now (30d)"}}


def openapi() -> dict[str, Any]:
    def schema(f: Field) -> dict[str, Any]:
        s: dict[str, Any] = dict(_SCHEMA[f.type])
        if f.choices:
            s["enum"] = list(f.choices)
        if f.description:
            s["description"] = f.description
        return s

    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict[str, Any] = {}
    for route in ROUTES:
        params: list[dict[str, Any]] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                                        for n in route.path_params]
        entry: dict[str, Any] = {
            "summary": route.summary, "operationId": route.operation_id,
            "responses": {"200": {"description": "the document the CLI prints with --json"},
                          "400": {"description": "a field is unknown, missing or malformed (\"field\" names it)",
                                  **error},
                          "401": {"description": "missing or wrong token", **error},
                          "404": {"description": "no such object", **error},
                          "409": {"description": "refused in the current state", **error},
                          "503": {"description": "the store could not be used", **error}}}
        if route.method in ("GET", "DELETE"):
            params += [{"name": f.name, "in": "query", "required": f.required, "schema": schema(f)}
                       for f in route.fields]
        elif route.fields:
            body = {"schema": {"type": "object", "properties": {f.name: schema(f) for f in route.fields},
                               "required": [f.name for f in route.fields if f.required], "additionalProperties": False}}
            content = {"application/json": body}
            if any(f.type == "file" for f in route.fields):
                content["multipart/form-data"] = body
            entry["requestBody"] = {"required": any(f.required for f in route.fields), "content": content}
        if params:
            entry["parameters"] = params
        paths.setdefault(route.path, {})[route.method.lower()] = entry
    from smtprelay.http.send import openapi_path
    paths["/send"] = openapi_path()
    return {"openapi": "3.0.3", "info": {"title": "smtprelay admin and send API", "version": __version__},
            "servers": [{"url": PREFIX}],
            "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"},
                                               "basic": {"type": "http", "scheme": "basic",
                                                         "description": "an account's SMTP credential"}},
                           "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {
                               "error": {"type": "string"},
                               "field": {"type": "string", "description": "the field to blame (400)"}}}}},
            "security": [{"token": []}], "paths": paths}


def error_response(exc: BaseException) -> web.Response:
    """The one mapping of service errors to HTTP."""
    if isinstance(exc, Invalid):
        body: dict[str, Any] = {"error": str(exc)}
        if exc.field:
            body["field"] = exc.field
        return web.json_response(body, status=400)
    if isinstance(exc, NotFound):
        return web.json_response({"error": str(exc)}, status=404)
    if isinstance(exc, Refused):
        return web.json_response({"error": str(exc)}, status=409)
    if isinstance(exc, ConfigError):
        return web.json_response({"error": "; ".join(exc.problems)}, status=503)
    if isinstance(exc, StoreUnavailable):
        return web.json_response({"error": str(exc)}, status=503)
    return web.json_response({"error": str(exc)}, status=500)


def _run(open_services: Callable[[], Services], route: Route, params: Params) -> Any:
    with guard():
        services = open_services()
        try:
            with guard():
                return route.call(services, params)
        finally:
            services.close()


async def _form(request: web.Request) -> dict[str, Any]:
    """A multipart/form-data body: text fields as strings, file fields as bytes."""
    given: dict[str, Any] = {}
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            return given
        if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
            raise Invalid("a multipart field without a name")
        data = await part.read()
        given[part.name] = data if part.filename is not None else data.decode("utf-8", "replace")


_BY_KEY = {(r.method, r.path): r for r in ROUTES}


def call(open_services: Callable[[], Services], method: str, path: str, match: dict[str, str] | None = None,
         given: dict[str, Any] | None = None) -> Any:
    """One admin API route, by its method and path template, with string fields (as a query or a
    form gives them): the web console's only way to the data (issue 21). Blocks: run it in a
    thread. Raises the services' errors."""
    route = _BY_KEY[(method, path)]
    return _run(open_services, route, validate(route, match or {}, given or {}, True, time.time()))


def add_routes(app: web.Application, token: Callable[[], str | None], open_services: Callable[[], Services]) -> None:
    def authorized(request: web.Request) -> web.Response | None:
        expected = token()
        if not expected:
            return web.json_response({"error": "the admin API is off: set http.admin_token in relay.toml"},
                                     status=403)
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            return web.json_response({"error": "missing or wrong token (Authorization: Bearer <token>)"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    def handler(route: Route) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            refusal = authorized(request)
            if refusal is not None:
                return refusal
            try:
                if route.method in ("GET", "DELETE"):
                    given: dict[str, Any] = dict(request.query)
                else:
                    form = request.content_type == "multipart/form-data"
                    try:
                        given = await _form(request) if form else await request.json() if request.can_read_body \
                            else {}
                    except ValueError:
                        raise Invalid("the body is not JSON") from None
                    if not isinstance(given, dict):
                        raise Invalid("the body must be a JSON object")
                params = validate(route, dict(request.match_info), given,
                                  route.method in ("GET", "DELETE") or form, time.time())
                doc = await asyncio.to_thread(_run, open_services, route, params)
            except (ServiceError, ConfigError) as exc:
                return error_response(exc)
            return web.json_response(doc)
        return handle

    patterns = [(re.compile("^" + re.sub(r"{\w+}", "[^/]+", r.path) + "$"), r.method) for r in ROUTES]

    async def unknown(request: web.Request) -> web.Response:
        path = request.path[len(PREFIX):]
        allowed = sorted({method for pattern, method in patterns if pattern.match(path)})
        if allowed:
            return web.json_response({"error": f"{request.method} is not allowed on {request.path}; "
                                               f"use {', '.join(allowed)}"},
                                     status=405, headers={"Allow": ", ".join(allowed)})
        return web.json_response({"error": f"no such route: {request.method} {request.path} "
                                           f"(see {PREFIX}/openapi.json)"}, status=404)

    async def get_openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi())

    app.router.add_get(PREFIX + "/openapi.json", get_openapi)
    for route in ROUTES:
        app.router.add_route(route.method, PREFIX + route.path, handler(route))
    app.router.add_route("*", PREFIX + "/{tail:.*}", unknown)
