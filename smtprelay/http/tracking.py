"""The tracking and unsubscribe endpoints: `/t/o/<token>` (open pixel), `/t/c/<token>` (click
redirect), `/u/<token>` (unsubscribe: GET shows a confirmation, POST records it; RFC 8058
one-click clients POST `List-Unsubscribe=One-Click`).

Owns: presentation. A forged or damaged token gets 404 and is never followed. Opens and
clicks become events through the store's writer (one INSERT … SELECT: the recipient's
message supplies account, domains and tag; in cluster mode, for a message another node
accepted, that node's `accepted` event does, through cluster.lookup); an open or click from a known machine user agent
or within `tracking.machine_window` of the delivery is flagged `machine`. Unsubscribing looks the
message up on the back end's reader (aiosqlite) and goes through the writer to
events.feedback.record_feedback (feedback row, `reject` entry for that sender
domain, `unsubscribed` event), the same function complaints use.

Must never: redirect anywhere a token does not name, or block the event loop.
"""
from __future__ import annotations

import asyncio
import base64
import html
import logging
import sqlite3
from typing import Awaitable, Callable

from aiohttp import web

from smtprelay.cluster.lookup import Accepted
from smtprelay.config import Config
from smtprelay.events import tracking
from smtprelay.queue.readers import StoreReader
from smtprelay.queue.store import Job, QueueStore, StoreUnavailable

log = logging.getLogger("smtprelay.tracking")

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


def _job(kind: str, queue_id: str, recipient: str, url: str, agent: str, machine_agent: bool, now: float,
         window: float) -> Job:
    def job(db: sqlite3.Connection) -> int:
        return db.execute(
            "INSERT INTO events (type, at, account_id, queue_id, recipient, sender_domain, recipient_domain, provider,"
            " tag, template_id, template_version, task_id, task_run, data) SELECT ?, ?, m.account_id, m.id, r.address,"
            " m.sender_domain, r.domain, NULL, m.tag, m.template_id, m.template_version, m.task_id, m.task_run,"
            " json_object('machine', json(CASE WHEN ? OR EXISTS (SELECT 1 FROM events d WHERE d.queue_id = m.id"
            "   AND d.recipient = r.address AND d.type = 'delivered' AND d.at > ?) THEN 'true' ELSE 'false' END),"
            "   'user_agent', ?, 'url', nullif(?, ''))"
            " FROM recipients r JOIN messages m ON m.id = r.message_id WHERE m.id = ? AND r.address = ?",
            (kind, now, int(machine_agent), now - window, agent[:200], url, queue_id, recipient)).rowcount
    return job


def _job_elsewhere(kind: str, queue_id: str, recipient: str, url: str, agent: str, machine_agent: bool, now: float,
                   window: float, found: Accepted) -> Job:
    """The same event for a message another node accepted (cluster mode): its fields from that
    node's `accepted` event."""
    machine = machine_agent or (found.delivered_at is not None and found.delivered_at > now - window)

    def job(db: sqlite3.Connection) -> int:
        return db.execute(
            "INSERT INTO events (type, at, account_id, queue_id, recipient, sender_domain, recipient_domain, provider,"
            " tag, template_id, template_version, task_id, task_run, data) VALUES (?,?,?,?,?,?,?,NULL,?,?,?,?,?,"
            " json_object('machine', json(?), 'user_agent', ?, 'url', nullif(?, ''), 'node', ?))",
            (kind, now, found.account_id, queue_id, recipient, found.sender_domain, found.recipient_domain, found.tag,
             found.template_id, found.template_version, found.task_id, found.task_run,
             "true" if machine else "false", agent[:200], url, found.node)).rowcount
    return job


def _unsubscribe_job(account_id: int | None, sender_domain: str, queue_id: str, recipient: str, at: float,
                     elsewhere: Accepted | None = None) -> Job:
    def job(db: sqlite3.Connection) -> None:
        from smtprelay.events.feedback import record_feedback
        already = db.execute("SELECT 1 FROM feedback WHERE kind = 'unsubscribe' AND address = ? AND"
                             " sender_domain = ?", (recipient, sender_domain)).fetchone()
        if already is None:   # a second click is not a second unsubscribe
            record_feedback(db, at, account_id, sender_domain, recipient, "unsubscribe", queue_id=queue_id,
                            elsewhere=None if elsewhere is None else (
                                elsewhere.tag, elsewhere.template_id, elsewhere.template_version, elsewhere.task_id,
                                elsewhere.task_run))
    return job


def add_routes(app: web.Application, config: Callable[[], Config], store: QueueStore, secret: bytes,
               reader: StoreReader, now: Callable[[], float],
               blocklist_changed: Callable[[], Awaitable[None]] | None = None,
               elsewhere: Callable[[str, str], Awaitable[Accepted | None]] | None = None) -> None:
    """`elsewhere` (cluster mode): what the cluster's events say of a message another node
    accepted, for a link that reached this node."""
    def record(request: web.Request, kind: str, queue_id: str, recipient: str, url: str = "") -> None:
        agent = request.headers.get("User-Agent", "")
        cfg = config().tracking
        machine = any(p in agent.lower() for p in cfg.machine_user_agents) or not agent
        at = now()

        async def write() -> None:
            if await store.run(_job(kind, queue_id, recipient, url, agent, machine, at, cfg.machine_window)):
                return
            found = await elsewhere(queue_id, recipient) if elsewhere is not None else None
            if found is not None:
                await store.run(_job_elsewhere(kind, queue_id, recipient, url, agent, machine, at,
                                               cfg.machine_window, found))
        task = asyncio.create_task(write())   # the reply does not wait for the disk
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    tasks: set[asyncio.Task[None]] = set()

    async def opened(request: web.Request) -> web.Response:
        found = tracking.read_token(secret, request.match_info["token"].removesuffix(".gif"), "o")
        if found is not None:
            record(request, "opened", found[0], found[1])
        # The pixel either way: a broken image tells a forger nothing.
        return web.Response(body=PIXEL, content_type="image/gif", headers=NO_STORE)

    async def clicked(request: web.Request) -> web.Response:
        found = tracking.read_token(secret, request.match_info["token"], "c")
        if found is None or not found[2].startswith(("http://", "https://")):
            return web.Response(status=404, text="unknown link\n", headers=NO_STORE)
        record(request, "clicked", found[0], found[1], found[2])
        raise web.HTTPFound(found[2], headers=NO_STORE)

    async def unsubscribe(request: web.Request) -> web.Response:
        found = tracking.read_token(secret, request.match_info["token"], "u")
        if found is None:
            return web.Response(status=404, text="unknown link\n", headers=NO_STORE)
        queue_id, recipient, _ = found
        if request.method == "GET":   # mail scanners follow links: a GET only asks
            page = (f"<!doctype html><meta charset=utf-8><title>Unsubscribe</title><form method=post>"
                    f"<p>Stop mail to {html.escape(recipient)} from this sender?</p>"
                    f"<button type=submit name=confirm value=1>Unsubscribe</button></form>")
            return web.Response(text=page, content_type="text/html", headers=NO_STORE)
        row = await reader.row("SELECT account_id, sender_domain FROM messages WHERE id = ?", (queue_id,))
        accepted = None
        if row is None and elsewhere is not None:       # cluster mode: another node's message
            accepted = await elsewhere(queue_id, recipient)
            row = None if accepted is None else (accepted.account_id, accepted.sender_domain)
        if row is None or row[1] is None:
            return web.Response(status=404, text="this message is no longer known\n", headers=NO_STORE)
        sender_domain = str(row[1])
        try:
            await store.run(_unsubscribe_job(row[0], sender_domain, queue_id, recipient, now(), accepted))
        except StoreUnavailable:
            return web.Response(status=503, text="please try again in a minute\n", headers=NO_STORE)
        if blocklist_changed is not None:
            await blocklist_changed()   # before the answer: the next RCPT to this address is refused
        log.info("%s: to=<%s>, unsubscribed from %s", queue_id, recipient, sender_domain)
        return web.Response(text=f"<!doctype html><meta charset=utf-8><p>{html.escape(recipient)} will get no more "
                                 f"mail from {html.escape(sender_domain)}.</p>", content_type="text/html",
                            headers=NO_STORE)

    app.router.add_get("/t/o/{token}", opened)
    app.router.add_get("/t/c/{token}", clicked)
    app.router.add_get("/u/{token}", unsubscribe)
    app.router.add_post("/u/{token}", unsubscribe)
