"""The warm-up ledger's SQL: pairs, provider hours, request counts, suspensions, and the
transition events, for the scheduler (store jobs and start-up loads) and the CLI.

Owns: the `warmup`, `ip_warmup`, `provider_hours` and `domain_requests` tables, the suspension columns
of `domains`, and the warm-up rows of `events`. The scheduler (through its throttle) is
the only writer of live counters; operators change a pair's day (`warmup set-day`) through
`day_override`, and lift a suspension (`domain resume`), and bump `warmup_generation` so
the running scheduler reloads within a scan.
"""
from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from smtprelay.warmup import schedule as W
from smtprelay.queue.store import Job

if TYPE_CHECKING:
    from smtprelay.warmup.throttle import Throttle, Transition


def save(throttle: "Throttle", now: float) -> Job | None:
    """A job writing everything the throttle changed since the last save (None: nothing)."""
    pairs = [throttle.pairs[k] for k in throttle.dirty_pairs if k in throttle.pairs]
    hours = [(p, *throttle.hours[p]) for p in throttle.dirty_hours if p in throttle.hours]
    requests = []
    for domain, hour in throttle.dirty_requests:
        bucket = throttle.domain_stats[domain].buckets.get(hour) if domain in throttle.domain_stats else None
        if bucket is not None:
            requests.append((domain, hour, bucket[4], bucket[5]))
    ips = throttle.ips
    ip_rows = [(p.sender_domain, p.provider, p.day, p.day_date, p.used, p.withheld, p.paused_until, p.pause_reason,
                p.backoff_step, now) for p in (ips.pairs[k] for k in ips.dirty if k in ips.pairs)]
    ips.dirty.clear()
    transitions = list(throttle.transitions)
    suspensions = list(throttle.new_suspensions)
    throttle.dirty_pairs.clear()
    throttle.dirty_hours.clear()
    throttle.dirty_requests.clear()
    throttle.transitions.clear()
    throttle.new_suspensions.clear()
    if not (pairs or hours or requests or transitions or suspensions or ip_rows):
        return None
    rows = [(p.sender_domain, p.provider, p.day, p.day_date, p.used, p.withheld, p.frozen, p.paused_until,
             p.pause_reason, p.backoff_step, now) for p in pairs]

    def job(db: sqlite3.Connection) -> None:
        if rows:
            db.executemany(
                "INSERT INTO warmup (sender_domain, provider, day, day_date, used, withheld, frozen_reason,"
                " paused_until, pause_reason, backoff_step, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (sender_domain, provider) DO UPDATE SET day = excluded.day,"
                " day_date = excluded.day_date, used = excluded.used, withheld = excluded.withheld,"
                " frozen_reason = excluded.frozen_reason, paused_until = excluded.paused_until,"
                " pause_reason = excluded.pause_reason, backoff_step = excluded.backoff_step,"
                " updated_at = excluded.updated_at", rows)
        if ip_rows:
            db.executemany(
                "INSERT INTO ip_warmup (address, provider, day, day_date, used, withheld, paused_until, pause_reason,"
                " backoff_step, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (address, provider) DO UPDATE"
                " SET day = excluded.day, day_date = excluded.day_date, used = excluded.used,"
                " withheld = excluded.withheld, paused_until = excluded.paused_until,"
                " pause_reason = excluded.pause_reason, backoff_step = excluded.backoff_step,"
                " updated_at = excluded.updated_at", ip_rows)
        if hours:
            db.executemany("INSERT INTO provider_hours (provider, hour, used) VALUES (?,?,?) ON CONFLICT"
                                 " (provider) DO UPDATE SET hour = excluded.hour, used = excluded.used", hours)
        if requests:
            db.executemany(
                "INSERT INTO domain_requests (sender_domain, hour, requests, blocklisted) VALUES (?,?,?,?)"
                " ON CONFLICT (sender_domain, hour) DO UPDATE SET requests = excluded.requests,"
                " blocklisted = excluded.blocklisted", requests)
        for domain, why in suspensions:
            db.execute("UPDATE domains SET suspended_at = ?, suspended_reason = ? WHERE name = ?",
                             (now, why, domain))
            # Its queued mail is held until an operator resumes the domain.
            db.execute(
                "UPDATE recipients SET state = 'hold', hold_reason = 'suspended', last_reply = ?"
                " WHERE state = 'queued' AND message_id IN (SELECT id FROM messages WHERE sender_domain = ?)",
                (f"held: sending for {domain} is suspended", domain))
        if transitions:
            db.executemany("INSERT INTO events (type, at, sender_domain, provider, data) VALUES (?,?,?,?,?)",
                                 [event_row(t) for t in transitions])
    return job


def event_row(t: "Transition") -> tuple[str, float, str, str | None, str]:
    kind = {"suspended": "domain.suspended", "resumed": "domain.resumed"}.get(t.kind, f"warmup.{t.kind}")
    return (kind, t.at, t.sender_domain, t.provider,
            json.dumps({"sender_domain": t.sender_domain, "provider": t.provider, "reason": t.reason}))


def clear_override(sender_domain: str, provider: str, day: int, now: float) -> Job:
    """The scheduler took over an operator's day: clear it, and let the domain's throttled mail be
    looked at now (a larger budget should not wait for midnight; what still does not fit waits again)."""
    def job(db: sqlite3.Connection) -> None:
        db.execute("UPDATE warmup SET day = ?, day_override = NULL WHERE sender_domain = ? AND provider = ?"
                         " AND day_override = ?", (day, sender_domain, provider, day))
        db.execute("UPDATE recipients SET next_attempt_at = ? WHERE state = 'queued' AND throttled_since IS NOT"
                         " NULL AND message_id IN (SELECT id FROM messages WHERE sender_domain = ?)",
                         (now, sender_domain))
    return job


def generation(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'warmup_generation'").fetchone()
    return int(row[0]) if row else 0


def load(db: sqlite3.Connection, throttle: "Throttle", now: float) -> None:
    """Everything the throttle needs after a start: pairs, hours, 24 h of reputation counts."""
    for r in db.execute("SELECT sender_domain, provider, day, day_date, used, withheld, frozen_reason,"
                        " paused_until, pause_reason, backoff_step FROM warmup"):
        throttle.load_pair(W.PairState(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]))
    for r in db.execute("SELECT address, provider, day, day_date, used, withheld, paused_until, pause_reason,"
                        " backoff_step FROM ip_warmup"):
        throttle.ips.load(W.PairState(r[0], r[1], r[2], r[3], r[4], r[5], None, r[6], r[7], r[8]))
    for provider, hour, used in db.execute("SELECT provider, hour, used FROM provider_hours"):
        throttle.load_hour(provider, hour, used)
    since = now - 86400
    for r in db.execute("SELECT sender_domain, provider, result, bounce_class, at FROM attempts"
                        " WHERE at > ? AND sender_domain IS NOT NULL ORDER BY at", (since,)):
        throttle.load_attempt(r[0], r[1], r[2], r[3], r[4])
    for r in db.execute("SELECT q.sender_domain, q.hour, q.requests, q.blocklisted FROM domain_requests q"
                        " LEFT JOIN domains d ON d.name = q.sender_domain WHERE q.hour > ?"
                        " AND (d.resumed_at IS NULL OR q.hour * 3600 >= d.resumed_at)", (W.hour_index(now) - 24,)):
        throttle.load_requests(r[0], r[1], r[2], r[3])
    throttle.suspended = suspended(db)


def suspended(db: sqlite3.Connection) -> dict[str, str]:
    return {r[0]: r[1] or "suspended" for r in
            db.execute("SELECT name, suspended_reason FROM domains WHERE suspended_at IS NOT NULL")}


def overrides(db: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return [(r[0], r[1], r[2]) for r in db.execute("SELECT sender_domain, provider, day_override FROM warmup"
                                                   " WHERE day_override IS NOT NULL")]


def ip_overrides(db: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return [(r[0], r[1], r[2]) for r in db.execute("SELECT address, provider, day_override FROM ip_warmup"
                                                   " WHERE day_override IS NOT NULL")]


def clear_ip_override(address: str, provider: str, day: int, now: float) -> Job:
    """Like clear_override, for an address: its throttled mail is routed again now."""
    def job(db: sqlite3.Connection) -> None:
        db.execute("UPDATE ip_warmup SET day = ?, day_override = NULL WHERE address = ? AND provider = ?"
                   " AND day_override = ?", (day, address, provider, day))
        db.execute("UPDATE recipients SET next_attempt_at = ? WHERE state = 'queued' AND throttled_since IS NOT"
                   " NULL", (now,))
    return job


def complaints_since(db: sqlite3.Connection, after_id: int) -> list[tuple[int, str, str, float]]:
    return [(r[0], r[1], r[2], r[3]) for r in db.execute(
        "SELECT id, sender_domain, address, at FROM feedback WHERE id > ? AND kind = 'complaint'"
        " ORDER BY id LIMIT 10000", (after_id,))]


def last_feedback_id(db: sqlite3.Connection, since: float) -> int:
    """Complaints older than 24 h do not count; start just before the first recent one."""
    row = db.execute("SELECT coalesce(min(id) - 1, (SELECT coalesce(max(id), 0) FROM feedback))"
                     " FROM feedback WHERE at > ?", (since,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
