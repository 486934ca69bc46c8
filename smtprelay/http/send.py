"""POST /api/v1/send: the send API's HTTP side, in the back end.

Owns: HTTP Basic auth parsing (the account's SMTP credential: the admin token is not for
sending), the JSON body and its validation (templates.request: 400 naming the field), and
handing the request to a front-end worker, which runs it through the same FrontEnd as an
SMTP session (smtp.api) and answers with the status and body returned here unchanged.

Must never: check a credential or a policy itself, or block the loop.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from smtprelay.config import Config
from smtprelay.errors import Invalid
from smtprelay.smtp.api import Answer
from smtprelay.smtp.channel import ChannelClosed, RemoteError
from smtprelay.templates.request import SendRequest, parse

PATH = "/api/v1/send"
INLINE_BODY = 64 * 1024
Send = Callable[[SendRequest, str, str, str], Awaitable[Answer]]
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="smtprelay", charset="UTF-8"'}


def body_limit(config: Config) -> int:
    """The largest request body: a message at the size limit, base64-encoded and in JSON."""
    return max(1 << 20, config.limits.max_message_bytes * 2)


def credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def _decode(raw: bytes, max_recipients: int) -> SendRequest:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        raise Invalid("the body is not JSON") from None
    return parse(body, max_recipients)


def add_route(app: web.Application, config: Callable[[], Config], send: Send) -> None:
    async def handle(request: web.Request) -> web.Response:
        given = credentials(request.headers.get("Authorization", ""))
        if given is None:
            return web.json_response({"error": "send with an account's SMTP credential as HTTP Basic auth"},
                                     status=401, headers=_CHALLENGE)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "the request is larger than the message size limit allows"},
                                     status=413)
        try:
            limit = config().limits.max_recipients
            # A large body (attachments) is decoded in a thread: the back end's loop runs the
            # group commits and the scheduler.
            send_request = _decode(raw, limit) if len(raw) <= INLINE_BODY else \
                await asyncio.to_thread(_decode, raw, limit)
        except Invalid as exc:
            return web.json_response({"error": str(exc), **({"field": exc.field} if exc.field else {})}, status=400)
        try:
            answer = await send(send_request, given[0], given[1], request.remote or "")
        except (ChannelClosed, RemoteError):
            return web.json_response({"error": "no front-end worker can take the message now; try again"},
                                     status=503, headers={"Retry-After": "1"})
        headers = {**answer.headers, **(_CHALLENGE if answer.status == 401 else {})}
        return web.json_response(answer.body, status=answer.status, headers=headers)

    app.router.add_post(PATH, handle)


def openapi_path() -> dict[str, Any]:
    """The send endpoint's OpenAPI entry (merged into the admin API's document)."""
    address = {"type": "string", "description": "\"Name <user@example.com>\" or \"user@example.com\""}
    addresses = {"type": "array", "items": address}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    line = {"type": "object", "properties": {"address": {"type": "string"},
                                             "status": {"type": "string", "enum": ["accepted", "refused"]},
                                             "smtp_reply": {"type": "string"}}}
    return {"post": {
        "summary": "Send a message (a template with data, or html/text) through the same pipeline as SMTP",
        "operationId": "send", "security": [{"basic": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["from"], "additionalProperties": False, "properties": {
                "from": address, "to": addresses, "cc": addresses, "bcc": addresses, "reply_to": addresses,
                "subject": {"type": "string", "description": "required without a template, or when the "
                                                            "template has none; overrides the template's"},
                "template": {"type": "object", "required": ["id"], "properties": {
                    "id": {"oneOf": [{"type": "integer"}, {"type": "string"}], "description": "id or name"},
                    "data": {"type": "object", "description": "the variables' values"}}},
                "html": {"type": "string"}, "text": {"type": "string"},
                "attachments": {"type": "array", "items": {"type": "object", "required": ["filename",
                                                                                          "content_base64"],
                                                           "properties": {"filename": {"type": "string"},
                                                                          "content_type": {"type": "string"},
                                                                          "content_base64": {"type": "string"}}}},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "tag": {"type": "string", "description": "for statistics (as X-Smtprelay-Tag)"}}}}}},
        "responses": {
            "202": {"description": "committed and synced: the queue id and a line per recipient",
                    "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "queue_id": {"type": "string"}, "smtp_reply": {"type": "string"},
                        "recipients": {"type": "array", "items": line}}}}}},
            "400": {"description": "a field, the template or its data is wrong (\"field\" names it)", **error},
            "401": {"description": "missing or wrong credential, or the address is locked out", **error},
            "413": {"description": "over limits.max_message_bytes", **error},
            "422": {"description": "refused by policy (sender, content, every recipient), or an inactive "
                                   "template; \"smtp_reply\" is what SMTP would answer", **error},
            "429": {"description": "recipient hourly cap, daily quota or rate: see Retry-After", **error},
            "503": {"description": "the store or the front end cannot take it now; retry", **error}}}}
