"""What `queue list`, `queue show` and the status query show: messages with their recipients
and shown states, read through a reader connection (never the writer's).

Owns: the shown states (`deferred` and `throttled` are queued recipients with a condition),
and how the listing finds the oldest messages through the indexes, so its cost follows the
limit and not the depth of the queue.

Must never: write.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One message as `queue list` shows it."""
    id: str
    created_at: float
    size: int
    mail_from: str
    recipients: tuple[str, ...]
    state: str
    last_reply: str | None


DISPLAY_STATE = ("CASE WHEN r.state = 'queued' AND r.throttled_since IS NOT NULL THEN 'throttled'"
                 " WHEN r.state = 'queued' AND r.attempts > 0 THEN 'deferred' ELSE r.state END")
STATES = ("queued", "deferred", "throttled", "active", "hold", "delivered", "bounced", "expired", "deleted")


UNFINISHED = ("queued", "active", "hold")
WAITING = ("queued", "deferred", "throttled", "hold")      # shown states that have a next attempt
FAILED = ("bounced", "expired")                            # the only ones a bounce class describes
FINISHED = ("delivered", "bounced", "expired", "deleted")   # `deleted`: queue delete
# A shown state is a stored state, sometimes with a condition (DISPLAY_STATE).
_SHOWN = {"queued": ("queued", "r.attempts = 0 AND r.throttled_since IS NULL"),
          "deferred": ("queued", "r.attempts > 0 AND r.throttled_since IS NULL"),
          "throttled": ("queued", "r.throttled_since IS NOT NULL")}


def list_queue(conn: sqlite3.Connection, state: str | None = None, domain: str | None = None,
               limit: int = 1000, include_finished: bool = False) -> list[QueueEntry]:
    """Messages with their recipients, oldest first (for `queue list`). Without a state,
    only what is still in the queue (like mailq); `include_finished` adds the rest.

    The oldest `limit` message ids are found per stored state through the indexes
    (state, message_id) and (domain, state, message_id), which yield them in order: the
    cost follows `limit`, not the depth of the queue (issue 8: a million recipients)."""
    if state is not None:
        stored, condition = _SHOWN.get(state, (state, None))
        wanted = [(stored, condition)]
    else:
        wanted = [(s, None) for s in UNFINISHED + (FINISHED if include_finished else ())]
    domain = domain.lower() if domain else None
    ids: set[str] = set()
    for stored, condition in wanted:
        sql = ("SELECT DISTINCT r.message_id FROM recipients r WHERE r.state = ?" + (" AND r.domain = ?" if domain else "")
               + (f" AND {condition}" if condition else "") + " ORDER BY r.message_id LIMIT ?")
        ids.update(row[0] for row in conn.execute(sql, (stored, *([domain] if domain else []), limit)))
    chosen = sorted(ids)[:limit]
    if not chosen:
        return []
    where = [f"m.id IN ({','.join('?' * len(chosen))})"]
    args: list[object] = list(chosen)
    if state:
        where.append(f"{DISPLAY_STATE} = ?")
        args.append(state)
    elif not include_finished:
        where.append(f"r.state NOT IN ({', '.join(repr(s) for s in FINISHED)})")
    if domain:
        where.append("r.domain = ?")
        args.append(domain)
    sql = ("SELECT m.id, m.created_at, m.size, m.mail_from, group_concat(r.address, char(10)),"
           f" group_concat(DISTINCT {DISPLAY_STATE}), max(r.last_reply)"
           " FROM messages m JOIN recipients r ON r.message_id = m.id WHERE " + " AND ".join(where)
           + " GROUP BY m.id ORDER BY m.id")
    rows = conn.execute(sql, args).fetchall()
    return [QueueEntry(id=r[0], created_at=r[1], size=r[2], mail_from=r[3],
                       recipients=tuple(r[4].split("\n")), state=r[5], last_reply=r[6])
            for r in rows]


def show_message(conn: sqlite3.Connection, queue_id: str) -> dict[str, object] | None:
    row = conn.execute("SELECT m.id, m.account_id, m.username, m.mail_from, m.size, m.created_at, m.client_address,"
                       " m.tls, m.header_message_id, m.tag, m.template_id, m.template_version, t.name"
                       " FROM messages m LEFT JOIN templates t ON t.id = m.template_id WHERE m.id = ?",
                       (queue_id,)).fetchone()
    if row is None:
        return None
    rcpts = conn.execute(f"SELECT r.id, r.address, {DISPLAY_STATE}, r.attempts, r.next_attempt_at, r.last_reply,"
                         " r.bounce_class FROM recipients r WHERE r.message_id = ? ORDER BY r.id",
                         (queue_id,)).fetchall()
    account = None
    if row[1] is not None:
        found = conn.execute("SELECT name FROM accounts WHERE id = ?", (row[1],)).fetchone()
        account = found[0] if found else None
    recipients = []
    for r in rcpts:
        attempts = [{"at": a[0], "result": a[1], "relay": a[2], "tls": a[3], "reply": a[4], "bounce_class": a[5],
                     "source": a[6]}
                    for a in conn.execute("SELECT at, result, relay, tls, reply, bounce_class, source FROM attempts"
                                          " WHERE recipient_id = ? ORDER BY id", (r[0],))]
        recipients.append({"address": r[1], "state": r[2], "attempts": r[3],
                           "next_attempt_at": r[4] if r[2] in WAITING else None,
                           "last_reply": r[5], "bounce_class": r[6] if r[2] in FAILED else None,
                           "history": attempts})
    return {
        "id": row[0], "account": account, "username": row[2], "from": row[3], "size": row[4],
        "created_at": row[5], "client_address": row[6], "tls": row[7], "message_id": row[8], "tag": row[9],
        "template": {"id": row[10], "version": row[11], "name": row[12]} if row[10] is not None else None,
        "recipients": recipients,
    }


def read_body(conn: sqlite3.Connection, queue_id: str) -> bytes | None:
    row = conn.execute("SELECT body FROM messages WHERE id = ?", (queue_id,)).fetchone()
    return None if row is None else bytes(row[0])
