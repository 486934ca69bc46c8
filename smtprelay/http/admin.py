"""The admin API under /api/v1/: the CLI's operations over HTTP, with token auth, JSON and an
OpenAPI document generated from the same table.

Owns: the route table (method, path → the `smtprelay` command it runs) and the HTTP mapping
of results. Every operation runs the very command function the CLI runs (cli.run_for_api,
in a worker thread: the services use blocking sqlite3 and DNS), so CLI and HTTP cannot
disagree and no logic lives here. Path parameters become the command's positional
arguments; query parameters (GET, DELETE) and JSON body fields (POST, PUT, PATCH) become its
options (`daily_quota` → `--daily-quota`; `true` → a flag).

Results: 200 with the command's JSON document (also for `domain verify` on a domain that is
not verified yet: the document says so); 400 for bad arguments; 401 without the token;
404 for "no such ..." refusals and unknown routes; 409 for other refusals; 503 when the store
cannot be used. Without `http.admin_token` the API is off (403 saying so).

Must never: hold business logic, or block the event loop.
"""
from __future__ import annotations

import asyncio
import hmac
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from smtprelay import __version__

PREFIX = "/api/v1"


@dataclass(frozen=True)
class Op:
    method: str
    path: str                       # with {name} parameters, in the command's positional order
    argv: tuple[str, ...]           # the command, e.g. ("account", "add")
    summary: str
    options: tuple[str, ...] = ()   # accepted query/body fields
    flags: tuple[str, ...] = ()     # boolean options
    required: tuple[str, ...] = ()  # body fields passed as positional arguments, in order
    tags: tuple[str, ...] = field(default=())


OPS: tuple[Op, ...] = (
    Op("GET", "/accounts", ("account", "list"), "List accounts"),
    Op("POST", "/accounts", ("account", "add"), "Create an account", ("daily_quota", "rate"), required=("name",)),
    Op("PATCH", "/accounts/{name}", ("account", "set"), "Change an account's quota, rate or delivery TLS",
       ("daily_quota", "rate", "delivery_tls")),
    Op("GET", "/accounts/{account}/credentials", ("credential", "list"), "List an account's SMTP credentials"),
    Op("POST", "/accounts/{account}/credentials", ("credential", "add"),
       "Create SMTP credentials (the password is in this answer only)"),
    Op("DELETE", "/credentials/{username}", ("credential", "revoke"), "Revoke a credential"),
    Op("GET", "/domains", ("domain", "list"), "List sender domains", ("account",)),
    Op("POST", "/domains", ("domain", "add"), "Register a sender domain (makes its DKIM keys)",
       required=("account", "domain")),
    Op("GET", "/domains/{domain}/records", ("domain", "records"), "The DNS records to publish"),
    Op("POST", "/domains/{domain}/verify", ("domain", "verify"), "Check the DNS records now"),
    Op("POST", "/domains/{domain}/resume", ("domain", "resume"), "Lift a reputation suspension"),
    Op("POST", "/domains/{domain}/rotate-dkim", ("dkim", "rotate"), "Create a new DKIM selector"),
    Op("DELETE", "/domains/{domain}", ("domain", "delete"), "Delete a sender domain"),
    Op("GET", "/addresses", ("address", "list"), "List sender addresses", ("domain",)),
    Op("POST", "/addresses", ("address", "add"), "Register a sender address", ("name",), required=("address",)),
    Op("DELETE", "/addresses/{address}", ("address", "delete"), "Delete a sender address"),
    Op("GET", "/blocklist", ("blocklist", "list"), "List blocklist entries",
       ("type", "account", "origin", "address", "since", "until"), ("expired",)),
    Op("POST", "/blocklist", ("blocklist", "add"), "Block an address (type custom)", ("account", "expires", "note"),
       required=("address",)),
    Op("DELETE", "/blocklist/{address}", ("blocklist", "remove"), "Remove entries for an address",
       ("account", "type")),
    Op("GET", "/blocklist/{address}", ("blocklist", "check"), "Whether an address is blocked, and why",
       ("account", "sender_domain")),
    Op("POST", "/blocklist/{address}/allow", ("blocklist", "allow"), "Allow an address for an account",
       ("account",), ("undo",)),
    Op("GET", "/queue", ("queue", "list"), "Queued messages (like mailq)", ("state", "domain", "limit"), ("all",)),
    Op("GET", "/queue/{id}", ("queue", "show"), "One queued message"),
    Op("POST", "/queue/flush", ("queue", "flush"), "Retry deferred mail now", ("domain",)),
    Op("POST", "/queue/{id}/hold", ("queue", "hold"), "Put a message on hold"),
    Op("POST", "/queue/{id}/release", ("queue", "release"), "Release a held message"),
    Op("DELETE", "/queue/{id}", ("queue", "delete"), "Delete a message (no bounce)"),
    Op("GET", "/stats", ("stats",), "Daily statistics", ("from", "to", "sender_domain", "recipient_domain")),
    Op("GET", "/status/{queue_id}", ("status",), "Delivery status and history of a message"),
    Op("GET", "/status", ("status",), "Delivery status of the mail to one address", ("recipient", "from", "to")),
    Op("GET", "/warmup", ("warmup", "status"), "Warm-up per sender domain and provider", ("sender_domain",)),
    Op("PUT", "/warmup/{domain}/{provider}", ("warmup", "set-day"), "Put a pair on a warm-up day",
       required=("day",)),
    Op("GET", "/webhooks", ("webhook", "list"), "List webhooks"),
    Op("PUT", "/webhooks", ("webhook", "set"), "Set the account's or a sender address's webhook",
       ("account", "address"), required=("url",)),
    Op("DELETE", "/webhooks", ("webhook", "delete"), "Delete a webhook", ("account", "address")),
    Op("POST", "/webhooks/secret", ("webhook", "secret"), "Show or rotate an account's signing secret",
       ("account",), ("rotate",)),
    Op("GET", "/webhooks/failures", ("webhook", "failures"), "Dead letters"),
    Op("POST", "/webhooks/replay", ("webhook", "replay"), "Queue dead letters again", ("since",)),
    Op("GET", "/tracking", ("tracking", "show"), "Tracking and unsubscribe settings"),
    Op("PUT", "/tracking", ("tracking", "set"), "Turn opens, clicks or unsubscribe on, off or inherit",
       ("account", "domain", "opens", "clicks", "unsubscribe")),
    Op("GET", "/explain", ("explain",), "Every policy that applies to a sender and recipient now",
       ("account", "from", "to")),
)

_OPTION_NAMES = {"from": "--from", "to": "--to"}


class BadRequest(Exception):
    pass


def build_argv(op: Op, match: dict[str, str], fields: dict[str, Any]) -> list[str]:
    argv = list(op.argv) + [match[name] for name in _path_params(op.path)]
    for name in op.required:
        if name not in fields or fields[name] in (None, ""):
            raise BadRequest(f"the field \"{name}\" is required")
        argv.append(str(fields[name]))
    unknown = set(fields) - set(op.options) - set(op.flags) - set(op.required)
    if unknown:
        raise BadRequest("unknown field(s): " + ", ".join(sorted(unknown)) +
                         (f"; this operation takes: {', '.join(op.options + op.flags)}" if op.options + op.flags
                          else "; this operation takes none"))
    for name in op.options:
        if name in fields and fields[name] is not None:
            argv += [_OPTION_NAMES.get(name, "--" + name.replace("_", "-")), str(fields[name])]
    for name in op.flags:
        value = fields.get(name)
        if value in (True, "true", "1", "yes"):
            argv.append("--" + name.replace("_", "-"))
        elif value not in (None, False, "false", "0", "no"):
            raise BadRequest(f"the field \"{name}\" must be true or false")
    return argv


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in OPS:
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in _path_params(op.path)]
        entry: dict[str, Any] = {"summary": op.summary, "operationId": "_".join(op.argv).replace("-", "_") +
                                 ("_" + "_".join(_path_params(op.path)) if _path_params(op.path) else ""),
                                 "responses": {"200": {"description": "the document `smtprelay " + " ".join(op.argv)
                                                       + " --json` prints"},
                                               "400": {"description": "bad arguments"},
                                               "401": {"description": "missing or wrong token"},
                                               "404": {"description": "no such object"},
                                               "409": {"description": "refused"}}}
        fields = {n: {"type": "boolean"} for n in op.flags}
        fields.update({n: {"type": "string"} for n in op.options + op.required})
        if op.method in ("GET", "DELETE"):
            params += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in fields.items()]
        elif fields:
            entry["requestBody"] = {"required": bool(op.required), "content": {"application/json": {"schema": {
                "type": "object", "properties": fields, "required": list(op.required),
                "additionalProperties": False}}}}
        if params:
            entry["parameters"] = params
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {"openapi": "3.0.3", "info": {"title": "smtprelay admin API", "version": __version__},
            "servers": [{"url": PREFIX}],
            "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
            "security": [{"token": []}], "paths": paths}


def add_routes(app: web.Application, token: Callable[[], str | None], config_path: Path) -> None:
    from smtprelay.accounts import RefusedError
    from smtprelay.cli import ParseError, UsageError, run_for_api
    from smtprelay.config import ConfigError

    def handler(op: Op) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            expected = token()
            if not expected:
                return web.json_response({"error": "the admin API is off: set http.admin_token in relay.toml"},
                                         status=403)
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
                return web.json_response({"error": "missing or wrong token (Authorization: Bearer <token>)"},
                                         status=401, headers={"WWW-Authenticate": "Bearer"})
            try:
                if op.method in ("GET", "DELETE"):
                    fields: dict[str, Any] = dict(request.query)
                else:
                    fields = await request.json() if request.can_read_body else {}
                    if not isinstance(fields, dict):
                        raise BadRequest("the body must be a JSON object")
                argv = build_argv(op, dict(request.match_info), fields)
                _, doc = await asyncio.to_thread(run_for_api, argv, str(config_path))
            except (BadRequest, ParseError, UsageError, ValueError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            except RefusedError as exc:
                text = str(exc)
                return web.json_response({"error": text}, status=404 if text.startswith("no ") else 409)
            except ConfigError as exc:
                return web.json_response({"error": "; ".join(exc.problems)}, status=503)
            except sqlite3.Error as exc:
                return web.json_response({"error": f"the store could not be used: {exc}"}, status=503)
            return web.json_response(doc)
        return handle

    async def get_openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi())

    app.router.add_get(PREFIX + "/openapi.json", get_openapi)
    for op in OPS:
        app.router.add_route(op.method, PREFIX + op.path, handler(op))
