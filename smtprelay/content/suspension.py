"""Suspending an account for content abuse: the SQL of it and of lifting it, and the strike
count the gate keeps.

Owns: `Strikes` (per account, the times of its virus/spam refusals within
`content.suspend_window`; pure, with the clock's `now` given), the store job that suspends
(`suspend`: the account row, its queued mail held, an `account.suspended` event), and
`resume` (the operator's: the row cleared, `content_resumed_at` set so older refusals no
longer count, the held mail queued again, an `account.resumed` event).

Must never: decide who is abusive beyond counting (the threshold is configuration).
"""
from __future__ import annotations

import json
import sqlite3
from collections import deque
from typing import Any, Callable

from smtprelay.queue.store import SUSPENDED_HOLD

HELD = SUSPENDED_HOLD
RULES = ("virus", "spam")
Job = Callable[[sqlite3.Connection], Any]


class Strikes:
    def __init__(self) -> None:
        self.times: dict[int, deque[float]] = {}

    def add(self, account_id: int, now: float, window: float) -> int:
        """One more refusal for content; how many fall within the window."""
        times = self.times.setdefault(account_id, deque())
        times.append(now)
        while times and times[0] <= now - window:
            times.popleft()
        return len(times)

    def clear(self, account_id: int) -> None:
        self.times.pop(account_id, None)

    def load(self, rows: list[tuple[int, float]]) -> None:
        """(account, time) of the refusals still counted, oldest first (at start)."""
        for account_id, at in rows:
            self.times.setdefault(account_id, deque()).append(at)


RECENT_SQL = ("SELECT e.account_id, e.at FROM events e JOIN accounts a ON a.id = e.account_id"
              " WHERE e.type = 'rejected' AND json_extract(e.data, '$.rule') IN ('virus', 'spam') AND e.at > ?"
              " AND a.suspended_at IS NULL AND e.at > coalesce(a.content_resumed_at, 0) ORDER BY e.at")


def suspend(account_id: int, reason: str, refusals: int, now: float) -> Job:
    """Returns whether it suspended (False: it already was)."""
    def job(db: sqlite3.Connection) -> bool:
        done = db.execute("UPDATE accounts SET suspended_at = ?, suspended_reason = ? WHERE id = ?"
                          " AND suspended_at IS NULL", (now, reason, account_id)).rowcount
        if not done:
            return False
        held = db.execute("UPDATE recipients SET state = 'hold', hold_reason = ?, updated_at = ? WHERE state = 'queued'"
                          " AND message_id IN (SELECT id FROM messages WHERE account_id = ?)",
                          (HELD, now, account_id)).rowcount
        db.execute("INSERT INTO events (type, at, account_id, data) VALUES ('account.suspended', ?, ?, ?)",
                   (now, account_id, json.dumps({"reason": reason, "rule": "content", "refusals": refusals,
                                                 "held": held})))
        return True
    return job


def resume(conn: sqlite3.Connection, account_id: int, now: float) -> int:
    """In the caller's transaction; the number of recipients queued again."""
    conn.execute("UPDATE accounts SET suspended_at = NULL, suspended_reason = NULL, content_resumed_at = ?"
                 " WHERE id = ?", (now, account_id))
    released = conn.execute("UPDATE recipients SET state = 'queued', hold_reason = NULL, next_attempt_at = ?,"
                            " updated_at = ? WHERE state = 'hold' AND hold_reason = ? AND message_id IN"
                            " (SELECT id FROM messages WHERE account_id = ?)", (now, now, HELD, account_id)).rowcount
    conn.execute("INSERT INTO events (type, at, account_id, data) VALUES ('account.resumed', ?, ?, ?)",
                 (now, account_id, json.dumps({"released": released})))
    return int(released)
