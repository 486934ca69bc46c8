"""Unsubscribes and complaints: remember each (reputation), record its event with the message's
tag, and block that recipient for that sender domain (a `reject` entry).

Owns: the `feedback` rows and the automatic `reject` entries. Runs as a store job (the
tracking handler's unsubscribe) or directly on a connection (tests, the future feedback MX).
"""
from __future__ import annotations

import sqlite3

from smtprelay.events import types as events
from smtprelay.policy.address import canonical


def record_feedback(conn: sqlite3.Connection, now: float, account_id: int | None, sender_domain: str, address: str,
                    kind: str, queue_id: str | None = None,
                    elsewhere: tuple[str | None, int | None, int | None, int | None, int | None] | None = None) -> None:
    """`elsewhere`: (tag, template id, version, task id, run) of a message this node does not
    hold (cluster mode: another node accepted it)."""
    if kind not in ("unsubscribe", "complaint"):
        raise ValueError(kind)
    address = canonical(address)
    domain = sender_domain.lower()
    conn.execute("INSERT INTO feedback (account_id, sender_domain, address, kind, at) VALUES (?,?,?,?,?)",
                 (account_id, domain, address, kind, now))
    # Every event of a message carries its tag and template, so stats count this in the same
    # row as the message's opens and deliveries.
    found = conn.execute("SELECT tag, template_id, template_version, task_id, task_run FROM messages WHERE id = ?",
                         (queue_id,)).fetchone() if queue_id else None
    tag, template_id, version, task_id, task_run = found if found else elsewhere or (None, None, None, None, None)
    conn.execute(events.INSERT_WITH_TEMPLATE, ("complained" if kind == "complaint" else "unsubscribed", now, account_id,
                                               queue_id, address, domain, address.rpartition("@")[2], None, tag,
                                               events.data(), template_id, version, task_id, task_run))
    exists = conn.execute("SELECT 1 FROM blocklist WHERE address = ? AND type = 'reject' AND sender_domain = ?",
                          (address, domain)).fetchone()
    if not exists:
        conn.execute("INSERT INTO blocklist (address, type, sender_domain, origin_account_id, reason, created_at)"
                     " VALUES (?, 'reject', ?, ?, ?, ?)",
                     (address, domain, account_id, "unsubscribed" if kind == "unsubscribe" else "complained", now))
