"""Operator actions on the queue (`queue flush/hold/release/delete`), like postqueue -f
and postsuper -h/-H/-d. Synchronous: the CLI (and later the admin API) calls them; a
running server sees the change at its next scan (every `delivery.scan_interval`).
"""
from __future__ import annotations

import logging
import sqlite3

from smtprelay.errors import NotFound, Refused
from smtprelay.events import types as events

log = logging.getLogger("smtprelay.queue")


def _require(conn: sqlite3.Connection, queue_id: str) -> None:
    if conn.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone() is None:
        raise NotFound(f"no queued message with id {queue_id}")


def flush(conn: sqlite3.Connection, now: float, domain: str | None = None) -> int:
    """Retry now: deferred recipients become due, and the server forgets dead destinations and
    lifts backoff pauses (for DOMAIN's provider, or all)."""
    # Throttled recipients wait for warm-up budget, not for a retry: a flush does not bypass it.
    sql = ("UPDATE recipients SET next_attempt_at = ? WHERE state = 'queued' AND next_attempt_at > ?"
           " AND throttled_since IS NULL")
    args: list[object] = [now, now]
    if domain:
        sql += " AND domain = ?"
        args.append(domain.lower())
    count = conn.execute(sql, args).rowcount
    # The running scheduler reads both: it forgets dead destinations and lifts the backoff
    # pauses of DOMAIN's mailbox provider ("*": every pause).
    conn.execute("INSERT INTO meta (key, value) VALUES ('flush_scope', ?) ON CONFLICT (key) DO UPDATE SET"
                 " value = excluded.value", (domain.lower() if domain else "*",))
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'flush_generation'")
    log.info("queue flush%s: %d recipient(s) due now", f" {domain}" if domain else "", count)
    return count


def hold(conn: sqlite3.Connection, queue_id: str) -> int:
    _require(conn, queue_id)
    count = conn.execute("UPDATE recipients SET state = 'hold' WHERE message_id = ? AND state IN ('queued', 'active')",
                         (queue_id,)).rowcount
    if count == 0:
        raise Refused(f"message {queue_id} has no recipient waiting for delivery")
    log.info("%s: held by operator (%d recipient(s))", queue_id, count)
    return count


def release(conn: sqlite3.Connection, queue_id: str, now: float) -> int:
    _require(conn, queue_id)
    count = conn.execute("UPDATE recipients SET state = 'queued', next_attempt_at = ?, hold_reason = NULL"
                         " WHERE message_id = ? AND state = 'hold'", (now, queue_id)).rowcount
    if count == 0:
        raise Refused(f"message {queue_id} is not on hold")
    log.info("%s: released from hold by operator", queue_id)
    return count


def delete(conn: sqlite3.Connection, queue_id: str, now: float) -> int:
    """The message's unfinished recipients end as `deleted` (postsuper -d; no bounce is sent),
    each with a `deleted` event (so its webhook gets a final event), and its body is dropped.
    The message and its history stay for `status`, like any finished message."""
    _require(conn, queue_id)
    pending = [r[0] for r in conn.execute("SELECT id FROM recipients WHERE message_id = ? AND state IN"
                                          " ('queued', 'active', 'hold')", (queue_id,))]
    if not pending:
        raise Refused(f"message {queue_id} has no recipient left to deliver (it stays in the history)")
    reason = "deleted by the operator (no bounce sent)"
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("UPDATE recipients SET state = 'deleted', last_reply = ?, updated_at = ?, lease_until = NULL,"
                         " body = NULL WHERE id = ? AND state IN ('queued', 'active', 'hold')",
                         [(reason, now, rid) for rid in pending])
        conn.executemany(events.INSERT_FOR_RECIPIENT,
                         [("deleted", now, None, events.data(reason=reason), rid) for rid in pending])
        conn.execute("UPDATE messages SET body = x'' WHERE id = ?", (queue_id,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.warning("%s: deleted by operator (%d undelivered recipient(s), no bounce)", queue_id, len(pending))
    return len(pending)
