"""Daily statistics by sender domain × recipient domain × tag × template, counted from events;
and delivery outcomes by source address (`by_source`).

Reads only; shared by the CLI and, later, the admin API. Counts cover what the events
table holds (`events.retention`, 30 days by default). Bounces are split by class:
invalid address, spam, other (mailbox full, reputation and the rest).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

COUNTS = ("requests", "accepted", "rejected", "delivered", "deferred", "bounced", "bounced_invalid", "bounced_spam",
          "bounced_other", "expired", "throttled", "opened", "opened_unique", "clicked", "clicked_unique",
          "opened_machine", "clicked_machine", "unsubscribed", "complained")

_TYPES = ("accepted", "rejected", "delivered", "deferred", "bounced", "expired", "throttled", "opened", "clicked",
          "unsubscribed", "complained")


@dataclass(frozen=True)
class Dialect:
    """Where the events are read: this node's store, or the cluster's PostgreSQL (issue 20),
    whose rows also say which node wrote them (task ids are a node's own)."""
    day: str                # the UTC day of `at`, YYYY-MM-DD
    json: str               # a field of `data` ({key})
    flag: str               # a true/false field of `data` as 1/0 ({key})
    node: str               # the node of the row ('' on a single node)
    local_node: str = ""    # this node: a task id names one of its tasks


SQLITE = Dialect("date(at, 'unixepoch')", "json_extract(data, '$.{key}')", "coalesce(json_extract(data, '$.{key}'), 0)",
                 "''")


def postgres(node: str) -> Dialect:
    return Dialect("to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "(data->>'{key}')",
                   "(CASE WHEN data->>'{key}' IN ('true', '1') THEN 1 ELSE 0 END)", "node", node)


def daily(conn: Any, since: float, until: float, sender_domain: str | None = None,
          recipient_domain: str | None = None, template_id: int | None = None,
          template_names: dict[int, tuple[str, str]] | None = None, task_id: int | None = None,
          task_run: int | None = None, dialect: Dialect = SQLITE) -> list[dict[str, Any]]:
    """Rows per day and group; `template_names` (id → account, name) names the template of
    each row (its id when the name is not known)."""
    where = ["at >= ?", "at < ?", f"type IN ({','.join('?' * len(_TYPES))})"]
    args: list[Any] = [since, until, *_TYPES]
    if dialect.local_node and task_id is not None:
        where.append("node = ?")        # a task id names this node's (tasks run where they were made)
        args.append(dialect.local_node)
    if sender_domain:
        where.append("sender_domain = ?")
        args.append(sender_domain.lower())
    if recipient_domain:
        where.append("recipient_domain = ?")
        args.append(recipient_domain.lower())
    if template_id is not None:
        where.append("template_id = ?")
        args.append(template_id)
    if task_id is not None:         # a sending task's rows (index events_task)
        where.append("task_id = ?")
        args.append(task_id)
        if task_run is not None:
            where.append("task_run = ?")
            args.append(task_run)
    rows = conn.execute(
        f"SELECT {dialect.day}, coalesce(sender_domain, ''), coalesce(recipient_domain, ''),"
        f" coalesce(tag, ''), type, {dialect.json.format(key='bounce_type')}, count(*),"
        " count(DISTINCT coalesce(queue_id, '') || ' ' || coalesce(recipient, ''))"
        f" , {dialect.flag.format(key='machine')}, coalesce(template_id, 0), {dialect.node}"
        " FROM events WHERE " + " AND ".join(where) + " GROUP BY 1, 2, 3, 4, 5, 6, 9, 10, 11", args).fetchall()
    names = template_names or {}
    groups: dict[tuple[str, str, str, str, int], dict[str, Any]] = {}
    for day, sd, rd, tag, kind, klass, total, unique, machine, template, _node in rows:
        g = groups.setdefault((day, sd, rd, tag, template), {
            "day": day, "sender_domain": sd or None, "recipient_domain": rd or None, "tag": tag or None,
            "template_id": template or None,
            "template": (names[template][1] if template in names else str(template)) if template else None,
            **{c: 0 for c in COUNTS}})
        if kind in ("opened", "clicked") and machine:   # prefetchers and scanners are counted apart
            g[kind + "_machine"] += total
            continue
        g[kind] += total
        if kind == "bounced":
            g["bounced_" + {"invalid_address": "invalid", "spam": "spam"}.get(klass or "", "other")] += total
        elif kind in ("opened", "clicked"):
            g[kind + "_unique"] += unique
    result = []
    for key in sorted(groups):
        g = groups[key]
        g["requests"] = g["accepted"] + g["rejected"]
        g["delivery_rate"] = round(g["delivered"] / g["accepted"], 4) if g["accepted"] else None
        g["open_rate"] = round(g["opened_unique"] / g["delivered"], 4) if g["delivered"] else None
        result.append(g)
    return result


IP_COUNTS = ("delivered", "deferred", "bounced", "bounced_invalid", "bounced_spam", "bounced_other", "expired")


def by_source(conn: Any, since: float, until: float, sender_domain: str | None = None,
              dialect: Dialect = SQLITE) -> list[dict[str, Any]]:
    """Delivery outcomes per day and source address (issue 19: `stats --by ip`); `ip` None is
    mail the kernel chose the address for (a pool without addresses)."""
    where = ["at >= ?", "at < ?", "type IN ('delivered', 'deferred', 'bounced', 'expired')"]
    args: list[Any] = [since, until]
    if sender_domain:
        where.append("sender_domain = ?")
        args.append(sender_domain.lower())
    rows = conn.execute(
        f"SELECT {dialect.day}, coalesce({dialect.json.format(key='source_ip')}, ''), type,"
        f" {dialect.json.format(key='bounce_type')}, count(*) FROM events WHERE " + " AND ".join(where) +
        " GROUP BY 1, 2, 3, 4", args).fetchall()
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for day, ip, kind, klass, total in rows:
        g = groups.setdefault((day, ip), {"day": day, "ip": ip or None, **{c: 0 for c in IP_COUNTS}})
        g[kind] += total
        if kind == "bounced":
            g["bounced_" + {"invalid_address": "invalid", "spam": "spam"}.get(klass or "", "other")] += total
    result = []
    for key in sorted(groups):
        g = groups[key]
        finished = g["delivered"] + g["bounced"] + g["expired"]
        g["delivery_rate"] = round(g["delivered"] / finished, 4) if finished else None
        result.append(g)
    return result
