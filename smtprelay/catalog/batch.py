"""The catalog's recipient groups and sending tasks on SQLite.

Owns: the SQL of `groups`, `group_rows`, what an operator writes to `tasks` (the task, its
`held` flag, `cancelled_at`), and the reads of a task's runs and their counts. A group's rows
are written once, in the caller's transaction, streamed in slices (a 100 000-row upload never
sits in memory); deleting a group drops its rows and keeps its row (tasks still name it).
The runner's own writes (progress) are in batch.progress, through the store's writer.

Must never: judge a row or a task (batch.csvfile and the services do).
"""
from __future__ import annotations

import itertools
import json
import sqlite3
from typing import Any, Iterable

from smtprelay.batch.csvfile import Row
from smtprelay.catalog.records import GroupRecord, RunRecord, TaskRecord

_GROUP = ("SELECT g.id, g.account_id, a.name, g.name, g.description, g.columns, g.size, g.skipped, g.created_at"
          " FROM groups g JOIN accounts a ON a.id = g.account_id WHERE g.deleted_at IS NULL")
_TASK = ("SELECT t.id, t.account_id, a.name, t.group_id, g.name, t.template_id, tp.name, t.mail_from, t.subject,"
         " t.tag, t.data, t.kind, t.first_at, t.every_seconds, t.created_at, t.held, t.cancelled_at, t.state,"
         " t.wait_reason, t.wait_until, t.next_run_at, t.runs, t.updated_at FROM tasks t"
         " JOIN accounts a ON a.id = t.account_id JOIN groups g ON g.id = t.group_id"
         " JOIN templates tp ON tp.id = t.template_id")
OPEN = "t.cancelled_at IS NULL AND t.state IN ('scheduled', 'running')"
SLICE = 2000        # group rows per INSERT
# Per run: what the events say happened to its messages (opens and clicks: each message once).
_EVENT_COUNTS = ("SELECT type, count(DISTINCT queue_id) FROM events WHERE task_id = ? AND task_run = ?"
                 " AND type IN ('delivered', 'bounced', 'expired', 'opened', 'clicked', 'unsubscribed',"
                 " 'complained') GROUP BY type")
_QUEUE_COUNTS = ("SELECT count(*) FILTER (WHERE r.state = 'queued' AND r.throttled_since IS NOT NULL),"
                 " count(*) FILTER (WHERE r.state IN ('queued', 'active', 'hold'))"
                 " FROM messages m JOIN recipients r ON r.message_id = m.id WHERE m.task_id = ? AND m.task_run = ?")
COUNT_NAMES = ("requested", "accepted", "rejected", "throttled", "waiting", "delivered", "bounced", "expired",
               "opened", "clicked", "unsubscribed", "complained")


def _group(r: Any) -> GroupRecord:
    return GroupRecord(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7], r[8])


def _task(r: Any) -> TaskRecord:
    v = list(r)
    v[15] = bool(v[15])
    return TaskRecord(*v)


class SqliteBatch:
    conn: sqlite3.Connection

    # -- groups ----------------------------------------------------------------------------------
    def insert_group(self, account_id: int, name: str, description: str | None, columns: list[str],
                     rows: Iterable[Row], now: float) -> int | None:
        """The group and its rows (inside the caller's transaction); None if the name is taken."""
        try:
            cur = self.conn.execute("INSERT INTO groups (account_id, name, description, columns, size, created_at)"
                                    " VALUES (?,?,?,?,0,?)", (account_id, name, description, json.dumps(columns),
                                                              now))
        except sqlite3.IntegrityError:
            return None
        group_id = int(cur.lastrowid or 0)
        it = iter(rows)
        while True:
            chunk = [(group_id, r.row, r.line, r.email, r.data) for r in itertools.islice(it, SLICE)]
            if not chunk:
                break
            self.conn.executemany("INSERT INTO group_rows (group_id, row, line, email, data) VALUES (?,?,?,?,?)",
                                  chunk)
        return group_id

    def set_group_size(self, group_id: int, size: int, skipped: int) -> None:
        self.conn.execute("UPDATE groups SET size = ?, skipped = ? WHERE id = ?", (size, skipped, group_id))

    def find_groups(self, ref: str, account_id: int | None = None) -> list[GroupRecord]:
        sql, args = _GROUP, list[Any]()
        if ref.isdigit():
            sql += " AND g.id = ?"
            args.append(int(ref))
        else:
            sql += " AND g.name = ?"
            args.append(ref)
        if account_id is not None:
            sql += " AND g.account_id = ?"
            args.append(account_id)
        return [_group(r) for r in self.conn.execute(sql + " ORDER BY g.id", args)]

    def groups(self, account_id: int | None = None) -> list[GroupRecord]:
        sql, args = _GROUP, []
        if account_id is not None:
            sql += " AND g.account_id = ?"
            args.append(account_id)
        return [_group(r) for r in self.conn.execute(sql + " ORDER BY a.name, g.name", args)]

    def group_rows(self, group_id: int, after: int = 0, limit: int = 100) -> list[tuple[int, int, str, str]]:
        """(row, line, email, data JSON) in row order, after row `after`."""
        return self.conn.execute("SELECT row, line, email, data FROM group_rows WHERE group_id = ? AND row > ?"
                                 " ORDER BY row LIMIT ?", (group_id, after, limit)).fetchall()

    def delete_group(self, group_id: int, now: float) -> None:
        self.conn.execute("UPDATE groups SET deleted_at = ? WHERE id = ?", (now, group_id))
        self.conn.execute("DELETE FROM group_rows WHERE group_id = ?", (group_id,))

    def open_tasks_using(self, group_id: int | None = None, template_id: int | None = None) -> list[int]:
        """Tasks not finished or cancelled (pending, running, paused, recurring) that use it."""
        column, value = ("group_id", group_id) if group_id is not None else ("template_id", template_id)
        return [r[0] for r in self.conn.execute(f"SELECT t.id FROM tasks t WHERE t.{column} = ? AND {OPEN}"
                                                " ORDER BY t.id", (value,))]

    # -- tasks -----------------------------------------------------------------------------------
    def insert_task(self, account_id: int, group_id: int, template_id: int, mail_from: str, subject: str | None,
                    tag: str | None, data: dict[str, Any], kind: str, first_at: float, every_seconds: float | None,
                    now: float) -> int:
        cur = self.conn.execute(
            "INSERT INTO tasks (account_id, group_id, template_id, mail_from, subject, tag, data, kind, first_at,"
            " every_seconds, created_at, next_run_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (account_id, group_id, template_id, mail_from, subject, tag, json.dumps(data, ensure_ascii=False), kind,
             first_at, every_seconds, now, first_at, now))
        return int(cur.lastrowid or 0)

    def find_task(self, task_id: int) -> TaskRecord | None:
        row = self.conn.execute(_TASK + " WHERE t.id = ?", (task_id,)).fetchone()
        return _task(row) if row else None

    def tasks(self, account_id: int | None = None) -> list[TaskRecord]:
        sql, args = _TASK, []
        if account_id is not None:
            sql += " WHERE t.account_id = ?"
            args.append(account_id)
        return [_task(r) for r in self.conn.execute(sql + " ORDER BY t.id", args)]

    def set_task_held(self, task_id: int, held: bool, now: float) -> None:
        self.conn.execute("UPDATE tasks SET held = ?, updated_at = ? WHERE id = ?", (int(held), now, task_id))

    def cancel_task(self, task_id: int, now: float) -> None:
        self.conn.execute("UPDATE tasks SET cancelled_at = ?, updated_at = ? WHERE id = ? AND cancelled_at IS NULL",
                          (now, now, task_id))

    def task_runs(self, task_id: int, last: int | None = None) -> list[RunRecord]:
        """The task's runs, newest first (the last `last` of them), with their counts."""
        rows = self.conn.execute("SELECT run, due_at, started_at, finished_at, size, status FROM task_runs"
                                 " WHERE task_id = ? ORDER BY run DESC" + (" LIMIT ?" if last else ""),
                                 (task_id, last) if last else (task_id,)).fetchall()
        return [RunRecord(task_id, r[0], r[1], r[2], r[3], r[4], r[5], self.run_counts(task_id, r[0]))
                for r in rows]

    def run_counts(self, task_id: int, run: int) -> dict[str, int]:
        frozen = self.conn.execute("SELECT counts FROM task_runs WHERE task_id = ? AND run = ?",
                                   (task_id, run)).fetchone()
        return json.loads(frozen[0]) if frozen and frozen[0] else count_run(self.conn, task_id, run)


def count_run(conn: sqlite3.Connection, task_id: int, run: int) -> dict[str, int]:
    """A run's counts from its task_rows, its messages' events and their recipients' states."""
    counts = dict.fromkeys(COUNT_NAMES, 0)
    for result, n in conn.execute("SELECT result, count(*) FROM task_rows WHERE task_id = ? AND run = ?"
                                  " GROUP BY result", (task_id, run)):
        counts[result] = n
    counts["requested"] = counts["accepted"] + counts["rejected"]
    for kind, n in conn.execute(_EVENT_COUNTS, (task_id, run)):
        counts[kind] = n
    counts["throttled"], counts["waiting"] = conn.execute(_QUEUE_COUNTS, (task_id, run)).fetchone()
    return counts
