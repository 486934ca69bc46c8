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


# -- cluster mode (issue 20): another node's message, from the events in PostgreSQL -----------
_OUTCOME = {"accepted": "queued", "deferred": "deferred", "throttled": "throttled", "delivered": "delivered",
            "bounced": "bounced", "expired": "expired"}
_ATTEMPTS = ("deferred", "delivered", "bounced")


def cluster_message_status(pg: Any, queue_id: str, accounts: dict[int, str],
                           recipient: str | None = None) -> dict[str, Any] | None:
    """What the cluster's events say of a message another node accepted (`pg`: a catalog
    connection taking `?`): its recipients' states are their last outcome; the attempts'
    details (relay, TLS) stay in the node's own store (`status` on that node shows them)."""
    bare = queue_id.strip().strip("<>")
    found = pg.execute("SELECT queue_id FROM events WHERE queue_id = ? OR (type = 'accepted' AND"
                       " data->>'message_id' IN (?, ?)) ORDER BY at DESC LIMIT 1", (queue_id, f"<{bare}>", bare))
    row = found.fetchone()
    if row is None:
        return None
    queue_id = row[0]
    sql = "SELECT node, type, at, recipient, data::text, account_id FROM events WHERE queue_id = ?"
    args: tuple[Any, ...] = (queue_id,)
    if recipient is not None:
        sql += " AND recipient = ?"
        args += (recipient,)
    events = [(r[0], r[1], float(r[2]), r[3], json.loads(r[4]), r[5])
              for r in pg.execute(sql + " ORDER BY at, local_id", args)]
    if not events:
        return None
    accepted = next((e for e in events if e[1] == "accepted"), events[0])
    recipients: dict[str, dict[str, Any]] = {}
    for node, kind, at, address, data, _ in events:
        if address is None:
            continue
        r = recipients.setdefault(address, {"address": address, "state": "queued", "attempts": 0,
                                            "next_attempt_at": None, "last_reply": None, "bounce_class": None,
                                            "history": [], "events": []})
        r["events"].append({"type": kind, "at": at, "recipient": address, **data})
        if kind in _OUTCOME:
            r["state"] = _OUTCOME[kind]
        if kind in _ATTEMPTS:
            r["attempts"] += 1
            r["last_reply"] = data.get("smtp_response") or r["last_reply"]
        if kind == "bounced":
            r["bounce_class"] = data.get("bounce_type")
    data = accepted[4]
    return {"id": queue_id, "node": accepted[0], "account": accounts.get(accepted[5]) if accepted[5] else None,
            "username": None, "from": data.get("from"), "size": data.get("size"), "created_at": accepted[2],
            "client_address": None, "tls": None, "message_id": data.get("message_id"), "tag": None,
            "template": None, "recipients": list(recipients.values())}


def cluster_recipient_messages(pg: Any, address: str, since: float, until: float, node: str,
                               limit: int = 1000) -> list[str]:
    """The queue ids of messages to `address` (as the events record it) other nodes accepted in
    [since, until), newest first."""
    return [r[0] for r in pg.execute(
        "SELECT queue_id FROM events WHERE recipient = ? AND type = 'accepted' AND at >= ? AND at < ? AND node != ?"
        " ORDER BY at DESC LIMIT ?", (address, since, until, node, limit))]
