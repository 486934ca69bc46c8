"""The task runner's SQL: what it reads (open tasks, a slice of unresolved rows) and the store
jobs it writes through the group commit (runs started and ended, waits, rejected rows, the
cursor).

Owns: nothing of its own — every statement here is the runner's (batch.runner). Reads take
a connection the runner uses from one thread at a time; jobs run inside the store's group
commit. Must never: decide anything.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable

from smtprelay.catalog.batch import count_run

Job = Callable[[sqlite3.Connection], Any]

_OPEN = ("SELECT t.id, t.account_id, a.name, t.group_id, t.template_id, t.mail_from, t.subject, t.tag, t.data,"
         " t.kind, t.first_at, t.every_seconds, t.held, t.cancelled_at, t.state, t.wait_reason, t.next_run_at,"
         " t.runs, g.size, (SELECT r.cursor FROM task_runs r WHERE r.task_id = t.id AND r.run = t.runs)"
         " FROM tasks t JOIN accounts a ON a.id = t.account_id JOIN groups g ON g.id = t.group_id"
         " WHERE t.state IN ('scheduled', 'running') ORDER BY t.id")
_STATUS = ("SELECT CASE WHEN cancelled_at IS NOT NULL OR state = 'cancelled' THEN 'cancelled'"
           " WHEN state = 'finished' THEN 'finished' WHEN held THEN 'paused'"
           " WHEN state = 'running' AND wait_reason IS NOT NULL THEN 'paused' ELSE state END, count(*)"
           " FROM tasks GROUP BY 1")
_ROWS = ("SELECT g.row, g.email, g.data FROM group_rows g WHERE g.group_id = ? AND g.row > ?"
         " AND NOT EXISTS (SELECT 1 FROM task_rows t WHERE t.task_id = ? AND t.run = ? AND t.row = g.row)"
         " ORDER BY g.row LIMIT ?")


def open_tasks(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    """The tasks that are scheduled or running (a cancelled one until the runner ends it), and
    how many tasks there are per shown status (the gauge)."""
    return [tuple(r) for r in conn.execute(_OPEN)], {r[0]: r[1] for r in conn.execute(_STATUS)}


def unresolved(conn: sqlite3.Connection, group_id: int, task_id: int, run: int, after: int,
               limit: int) -> list[tuple[int, str, str]]:
    """Up to `limit` rows after `after` that this run has not resolved: (row, email, data)."""
    return [tuple(r) for r in conn.execute(_ROWS, (group_id, after, task_id, run, limit))]  # type: ignore[misc]


def resolved(conn: sqlite3.Connection, task_id: int, run: int, row: int) -> bool:
    return conn.execute("SELECT 1 FROM task_rows WHERE task_id = ? AND run = ? AND row = ?",
                        (task_id, run, row)).fetchone() is not None


def start_run(task_id: int, run: int, due_at: float, now: float, size: int, next_run_at: float | None) -> Job:
    def job(db: sqlite3.Connection) -> None:
        db.execute("INSERT OR IGNORE INTO task_runs (task_id, run, due_at, started_at, size, status)"
                   " VALUES (?,?,?,?,?, 'running')", (task_id, run, due_at, now, size))
        db.execute("UPDATE tasks SET state = 'running', runs = ?, next_run_at = ?, wait_reason = NULL,"
                   " wait_until = NULL, updated_at = ? WHERE id = ?", (run, next_run_at, now, task_id))
    return job


def end_run(task_id: int, run: int, now: float, status: str, task_state: str) -> Job:
    """The run is over (finished or cancelled); the task becomes `task_state`."""
    def job(db: sqlite3.Connection) -> None:
        db.execute("UPDATE task_runs SET status = ?, finished_at = ?, cursor = size WHERE task_id = ? AND run = ?"
                   " AND status = 'running'", (status, now, task_id, run))
        db.execute("UPDATE tasks SET state = ?, wait_reason = NULL, wait_until = NULL, updated_at = ?"
                   + (", next_run_at = NULL" if task_state in ("finished", "cancelled") else "") + " WHERE id = ?",
                   (task_state, now, task_id))
    return job


def set_wait(task_ids: list[int], reason: str | None, until: float | None, now: float) -> Job:
    def job(db: sqlite3.Connection) -> None:
        db.executemany("UPDATE tasks SET wait_reason = ?, wait_until = ?, updated_at = ? WHERE id = ?",
                       [(reason, until, now, t) for t in task_ids])
    return job


def prune(before: float, chunk: int = 5000) -> Job:
    """Runs that ended before `before` (events.retention ago): their counts are frozen into
    task_runs, then their task_rows go, `chunk` at a time (a job must stay short). Returns how
    many rows went."""
    def job(db: sqlite3.Connection) -> int:
        for task_id, run in db.execute("SELECT task_id, run FROM task_runs WHERE finished_at < ? AND counts IS NULL"
                                       " LIMIT 20", (before,)).fetchall():
            db.execute("UPDATE task_runs SET counts = ? WHERE task_id = ? AND run = ?",
                       (json.dumps(count_run(db, task_id, run)), task_id, run))
        return int(db.execute(
            "DELETE FROM task_rows WHERE (task_id, run, row) IN (SELECT t.task_id, t.run, t.row FROM task_rows t"
            " JOIN task_runs r ON r.task_id = t.task_id AND r.run = t.run WHERE r.counts IS NOT NULL LIMIT ?)",
            (chunk,)).rowcount)
    return job


def record(rejected: list[tuple[int, int, int, str, float]], cursors: list[tuple[int, int, int]]) -> Job:
    """Rejected rows (task, run, row, reply, at) and each run's cursor (cursor, task, run)."""
    def job(db: sqlite3.Connection) -> None:
        if rejected:
            db.executemany("INSERT OR IGNORE INTO task_rows (task_id, run, row, result, reply, at)"
                           " VALUES (?,?,?,'rejected',?,?)", rejected)
        if cursors:
            db.executemany("UPDATE task_runs SET cursor = max(cursor, ?) WHERE task_id = ? AND run = ?", cursors)
    return job
