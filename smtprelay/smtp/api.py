"""The send API on a front-end worker: one HTTP request as one SMTP session.

The back end's HTTP server validates the JSON (templates.request) and hands the request to a
worker over its channel; here it goes through the FrontEnd exactly as an SMTP client's
session would — the gate's connection caps, AUTH with the same credentials and lockout,
MAIL (sender policy), one RCPT per recipient (blocklist, hourly cap, quota, rate), then the
message (content checks, stamping, tracking, DKIM, the durable group commit) — so there is
one policy path and the answer carries the very SMTP replies.

Owns: `ApiSession` (the FrontEnd's view of the request) and the mapping of those replies to
HTTP: 202 with the queue id once the commit is synced; 401 for bad credentials or a
lockout; 400 for a template or data the renderer refuses; 413 over the size limit; 422 for a
policy refusal of the whole message (and an inactive template); 429 with Retry-After for the
hourly cap, quota and rate; 503 when the store or back end cannot take it now.

Must never: decide a policy (the FrontEnd and the gate do), or answer 202 before the commit.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from smtprelay.catalog.records import TemplateRecord
from smtprelay.config import ListenerConfig, TlsMode
from smtprelay.smtp.commands import AUTH_OK
from smtprelay.smtp.handler import FrontEnd, SessionState
from smtprelay.smtp.templating import INLINE_BYTES, TemplateRefused
from smtprelay.templates import message as mime
from smtprelay.templates.compiled import Rendered
from smtprelay.templates.markup import to_text
from smtprelay.templates.request import SendRequest

log = logging.getLogger("smtprelay.api")

LISTENER = ListenerConfig(name="api", address="", port=0, tls=TlsMode.NONE)


@dataclass
class Answer:
    """What the back end's HTTP handler sends: a status, a JSON body, extra headers."""
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)       # hashed by identity: the FrontEnd keeps its sessions in a set
class ApiSession:
    """The FrontEnd's `Session` for one API request."""
    client_ip: str
    hostname: str
    listener: ListenerConfig = LISTENER
    trusted: bool = False
    tls_version: str | None = None
    state: SessionState | None = None
    closing: bool = False

    @property
    def in_data(self) -> bool:
        return True         # a request is short: shutdown lets it finish

    def refuse_and_close(self, reply: str) -> None:
        self.closing = True


def status_of(reply: str) -> int:
    """An SMTP refusal as the HTTP status the API gives it."""
    code, enhanced = reply[:3], reply[4:].split(" ", 1)[0]
    if code == "552":
        return 413
    if code == "451":       # the store, the back end or a content scanner cannot judge it now
        return 503
    if code.startswith("5"):
        return 422
    if enhanced.startswith("4.7.") or code == "450":
        return 429
    return 503


_MOMENT = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def retry_after(reply: str, now: float) -> str:
    """Seconds until a limit lets the next one through: the moment the reply names (the
    hourly cap, the daily quota), one second for the per-second rate, else a minute."""
    found = _MOMENT.search(reply)
    if found:
        moment = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
        return str(max(1, math.ceil(moment.timestamp() - now)))
    return "1" if "sending rate" in reply else "60"


def refusal(reply: str, recipients: list[dict[str, Any]] | None = None, now: float | None = None) -> Answer:
    status = status_of(reply)
    body: dict[str, Any] = {"error": reply[4:], "smtp_reply": reply}
    if recipients is not None:
        body["recipients"] = recipients
    return Answer(status, body, {"Retry-After": retry_after(reply, now if now is not None else time.time())}
                  if status == 429 else {})


async def submit(frontend: FrontEnd, request: SendRequest, username: str, password: str, client_ip: str) -> Answer:
    session = ApiSession(client_ip, frontend.config.server.hostname)
    session.state = frontend.new_session_state(session)
    session.state.helo = "api"
    refused = await frontend.open(session)
    if refused is not None:
        return Answer(429, {"error": f"too many connections ({refused.replace('_', '-')} cap); try again shortly"},
                      {"Retry-After": "1"})
    try:
        frontend.opened(session)
        return await _transaction(frontend, session, request, username, password)
    finally:
        frontend.closed(session)


async def _transaction(frontend: FrontEnd, session: ApiSession, request: SendRequest, username: str,
                       password: str) -> Answer:
    state = session.state
    assert state is not None
    reply, _ = await frontend.authenticate(session, "HTTP-BASIC", username.encode(), password.encode())
    if reply != AUTH_OK:
        status = 503 if reply.startswith("451") else 401
        return Answer(status, {"error": reply[4:], "smtp_reply": reply})    # http.send adds the challenge
    reply = frontend.mail(session, request.sender[1], [])     # sender policy; reserves nothing
    if not reply.startswith("250"):
        return refusal(reply)
    assert state.account_id is not None
    # The body before any recipient: a template or data error costs no reservation.
    try:
        raw, subject_missing = await _body(frontend, request, state)
    except TemplateRefused as exc:
        frontend.reject(state, "END-OF-MESSAGE", exc.verdict, request.recipients)
        frontend.reset(state)
        return Answer(422 if exc.inactive else 400, {"error": exc.verdict.reply[10:], "field": exc.field})
    if subject_missing:
        frontend.reset(state)
        return Answer(400, {"error": "the template has no subject: give \"subject\"", "field": "subject"})
    if len(raw) > frontend.config.limits.max_message_bytes:
        reply = "552 5.3.4 Message size exceeds fixed limit"
        frontend.refuse_command(session, "END-OF-MESSAGE", reply)
        frontend.reset(state)
        return refusal(reply)
    lines: list[dict[str, Any]] = []
    for address in request.recipients:
        answer = frontend.rcpt(session, address)
        rcpt_reply = answer if isinstance(answer, str) else await answer
        accepted = rcpt_reply.startswith("250")
        lines.append({"address": address, "status": "accepted" if accepted else "refused",
                      **({} if accepted else {"smtp_reply": rcpt_reply})})
    if not state.recipients:
        frontend.reset(state)
        return refusal(_whole([line["smtp_reply"] for line in lines]), lines, frontend.clock.now())
    if session.closing:
        frontend.reset(state)
        return Answer(503, {"error": "the relay is shutting down; try again"})
    reply = await frontend.message(session, raw)
    if not reply.startswith("250"):
        return refusal(reply, [{**line, **({"status": "refused", "smtp_reply": reply}
                                           if line["status"] == "accepted" else {})} for line in lines])
    queue_id = reply.rsplit(" ", 1)[-1]
    return Answer(202, {"queue_id": queue_id, "smtp_reply": reply, "recipients": lines})


def _whole(replies: list[str]) -> str:
    """Every recipient refused: the reply that stands for the message. The store or back end
    away → 503; only limits (a retry later can pass) → 429; else a refusal → 422."""
    statuses = [status_of(r) for r in replies]
    for wanted in (503, 422, 413):
        if wanted in statuses:
            return replies[statuses.index(wanted)]
    return replies[0]


async def _body(frontend: FrontEnd, request: SendRequest, state: SessionState) -> tuple[bytes, bool]:
    """The rendered message (in a thread when large) and whether a subject is missing;
    TemplateRefused for a template or data the renderer refuses."""
    assert state.account_id is not None
    template = frontend.templates.find(state.account_id, request.template) if request.template else None
    if _size(request, template) <= INLINE_BYTES:
        return _render(frontend, request, template, state)
    return await asyncio.to_thread(_render, frontend, request, template, state)


def _size(request: SendRequest, template: TemplateRecord | None) -> int:
    """About what rendering and building the message handle."""
    size = len(request.html or "") + len(request.text or "") + sum(len(a.content) for a in request.attachments)
    if template is not None:
        size += len(template.html or "") + len(template.text or "")
    return size


def _render(frontend: FrontEnd, request: SendRequest, template: TemplateRecord | None,
            state: SessionState) -> tuple[bytes, bool]:
    """The message's bytes (CRLF), and whether a subject is missing."""
    if template is not None:
        rendered, use = frontend.templates.render(template, request.data)
        state.template = use
    else:
        text = request.text if request.text is not None else to_text(request.html or "")
        rendered = Rendered(None, text, request.html)
    subject = request.subject if request.subject is not None else rendered.subject
    if subject is None:
        return b"", True
    return mime.build(request, rendered, subject), False


async def submit_task(frontend: FrontEnd, request: SendRequest, account: str,
                      task: tuple[int, int, int]) -> tuple[str, str]:
    """One row of a sending task (batch.runner), as the account's trusted session: MAIL,
    render, RCPT, the message — the same FrontEnd calls as an SMTP client's. Returns (stage,
    reply): stage "MAIL" (the sender was refused: the whole task waits), "RENDER", "RCPT" or
    "DATA"; the reply is the SMTP reply of that stage, "250 ... queued as <ID>" when committed.
    The message carries (task, run, row), and the store records the row with it."""
    listener = ListenerConfig(name="task", address="", port=0, tls=TlsMode.NONE, trusted_account=account)
    session = ApiSession("127.0.0.1", frontend.config.server.hostname, listener=listener, trusted=True)
    state = session.state = frontend.new_session_state(session)
    state.helo = f"task-{task[0]}"
    state.task = task
    frontend.sessions.add(session)     # shutdown waits for it like any session; no connection slot
    try:
        reply = frontend.mail(session, request.sender[1], [])
        if not reply.startswith("250"):
            return "MAIL", reply
        assert state.account_id is not None
        try:
            raw, subject_missing = await _body(frontend, request, state)
        except TemplateRefused as exc:
            frontend.reject(state, "END-OF-MESSAGE", exc.verdict, request.recipients)
            return ("MAIL" if exc.inactive or exc.field == "template.id" else "RENDER"), exc.verdict.reply
        if subject_missing:
            return "MAIL", "550 5.6.0 The template has no subject and the task gives none"
        if len(raw) > frontend.config.limits.max_message_bytes:
            reply = "552 5.3.4 Message size exceeds fixed limit"
            frontend.refuse_command(session, "END-OF-MESSAGE", reply)
            return "DATA", reply
        for address in request.recipients:
            answer = frontend.rcpt(session, address)
            reply = answer if isinstance(answer, str) else await answer
            if not reply.startswith("250"):
                return "RCPT", reply
        return "DATA", await frontend.message(session, raw)
    finally:
        frontend.release(state)
        frontend.sessions.discard(session)


async def run_task(frontend: FrontEnd, args: tuple[Any, ...]) -> tuple[str, str]:
    """The channel's "task" call: (request, account, (task, run, row))."""
    request, account, task = args
    try:
        return await submit_task(frontend, request, account, task)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("task %d run %d row %d: the submission failed", *task)
        return "DATA", "451 4.3.0 Internal error; see the relay log"


async def run(frontend: FrontEnd, args: tuple[Any, ...]) -> Answer:
    """The channel's "send" call: (request, username, password, client address)."""
    request, username, password, client_ip = args
    try:
        return await submit(frontend, request, username, password, client_ip)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("send API: the request failed")
        return Answer(500, {"error": "internal error; see the relay log"})
