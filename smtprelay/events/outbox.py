"""The webhook outbox as an operator sees it: dead letters, and queueing them again.

Owns: the operator's statements on `outbox` (the dispatcher, events.webhooks, owns the rest).
Synchronous and free of aiohttp, so the CLI does not load it.
"""
from __future__ import annotations

import sqlite3
from typing import Any


def dead_letters(conn: sqlite3.Connection, limit: int = 1000) -> list[dict[str, Any]]:
    return [{"outbox_id": r[0], "event_id": r[1], "type": r[2], "queue_id": r[3], "url": r[4],
             "attempts": r[5], "last_error": r[6], "created_at": r[7]} for r in conn.execute(
        "SELECT o.id, o.event_id, e.type, o.queue_id, o.url, o.attempts, o.last_error, o.created_at FROM outbox o"
        " LEFT JOIN events e ON e.id = o.event_id WHERE o.state = 'dead' ORDER BY o.id LIMIT ?", (limit,))]


def replay(conn: sqlite3.Connection, since: float, now: float) -> int:
    """Dead letters that failed since `since` are queued again, with a fresh max_age."""
    return int(conn.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?, created_at = ?"
                            " WHERE state = 'dead' AND created_at >= ?", (now, now, since)).rowcount)
