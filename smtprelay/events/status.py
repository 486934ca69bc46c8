"""The status query: what happened to a message, or to every message sent to an address.

Reads only (recipients, attempts, events); shared by the CLI and, later, the admin API.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from smtprelay.queue.listing import DISPLAY_STATE, FAILED, show_message


def _events(conn: sqlite3.Connection, queue_id: str, recipient: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT type, at, recipient, data FROM events WHERE queue_id = ?"
    args: tuple[Any, ...] = (queue_id,)
    if recipient is not None:
        sql += " AND recipient = ?"
        args += (recipient,)
    return [{"type": r[0], "at": r[1], "recipient": r[2], **json.loads(r[3])}
            for r in conn.execute(sql + " ORDER BY id", args)]


def message_status(conn: sqlite3.Connection, queue_id: str) -> dict[str, Any] | None:
    """By queue id, or by the message's Message-ID header (with or without <>)."""
    doc = show_message(conn, queue_id)
    if doc is None:
        bare = queue_id.strip().strip("<>")
        row = conn.execute("SELECT id FROM messages WHERE header_message_id IN (?, ?) ORDER BY id DESC LIMIT 1",
                           (f"<{bare}>", bare)).fetchone()
        doc = show_message(conn, row[0]) if row else None
        if doc is None:
            return None
        queue_id = str(doc["id"])
    events = _events(conn, queue_id)
    for rcpt in doc["recipients"]:  # type: ignore[attr-defined]
        rcpt["events"] = [e for e in events if e["recipient"] == rcpt["address"]]
    return doc


def recipient_status(conn: sqlite3.Connection, address: str, since: float, until: float,
                     limit: int = 1000) -> list[dict[str, Any]]:
    """Every message to `address` accepted in [since, until), newest first."""
    local, _, domain = address.rpartition("@")
    rows = conn.execute(
        f"SELECT r.id, m.id, m.mail_from, m.created_at, r.address, {DISPLAY_STATE}, r.attempts, r.last_reply,"
        " r.bounce_class, m.header_message_id FROM recipients r JOIN messages m ON m.id = r.message_id"
        " WHERE r.address = ? AND r.domain = ? AND m.created_at >= ? AND m.created_at < ?"
        " ORDER BY m.created_at DESC LIMIT ?", (f"{local}@{domain.lower()}" if local else address, domain.lower(),
                                                 since, until, limit)).fetchall()
    result = []
    for r in rows:
        history = [{"at": a[0], "result": a[1], "relay": a[2], "tls": a[3], "reply": a[4], "bounce_class": a[5]}
                   for a in conn.execute("SELECT at, result, relay, tls, reply, bounce_class FROM attempts"
                                         " WHERE recipient_id = ? ORDER BY id", (r[0],))]
        result.append({"queue_id": r[1], "from": r[2], "created_at": r[3], "recipient": r[4], "state": r[5],
                       "attempts": r[6], "last_reply": r[7], "bounce_class": r[8] if r[5] in FAILED else None,
                       "message_id": r[9],
                       "history": history, "events": _events(conn, r[1], r[4])})
    return result
