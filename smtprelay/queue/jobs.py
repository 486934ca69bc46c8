"""The queue SQL of the delivery side, as jobs run inside the store's group commit.

Owns: claiming ready recipients under a lease, recording outcomes (state, attempt row,
DSN messages) atomically, returning expired leases, and deferring a dead destination's
waiting recipients in one statement. Picking work uses the (state, next_attempt_at)
index with a LIMIT, so it costs the same at depth 0 and at depth 1 M.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smtprelay.events import types as events
from smtprelay.queue.store import Job, QueuedMessage, insert_messages

if TYPE_CHECKING:
    from smtprelay.config.model import BlocklistConfig

FINAL_STATES = ("delivered", "bounced", "expired")


@dataclass(slots=True)
class Work:
    """One claimed recipient, held in the scheduler's in-memory window."""
    rcpt_id: int
    message_id: str
    address: str
    domain: str
    attempts: int
    mail_from: str
    account_id: int | None
    created_at: float
    account_tls: str | None
    sender_domain: str = ""         # "" for bounces (null sender)
    throttled_for: float = 0.0      # seconds spent waiting for warm-up budget (not lifetime)
    provider: str = ""              # mailbox provider, set when the scheduler routes it
    personal: bool = False          # has its own body (tracking): one recipient per transaction
    pool: str = "shared"            # the egress pool it is bound to (its domain's, else its account's)
    fallback: str = "shared"        # when no address of `pool` can send: "shared", or "none" (wait)
    source: str = ""                # the address it goes out from, set when routed ("": the kernel's choice)
    egress_pool: str = ""           # the pool `source` belongs to (the fallback's when it fell back)
    verp: bool = False              # its envelope sender is a VERP return path: one recipient per transaction
    delay_warned: bool = False      # its sender was told it is delayed (delivery.delay_warning)

    @property
    def lifetime_start(self) -> float:
        """When max_lifetime is counted from: throttled waiting does not count (issue 6)."""
        return self.created_at + self.throttled_for


@dataclass(frozen=True, slots=True)
class Outcome:
    rcpt_id: int
    message_id: str
    result: str                     # delivered, deferred, bounced, expired; throttled, hold (not attempts)
    at: float
    next_attempt_at: float | None   # for deferred
    reply: str
    code: int | None
    enhanced: str | None
    bounce_class: str | None
    relay: str | None
    tls: str | None
    duration: float
    attempted: bool                 # False when deferred without trying (destination suspended)
    sender_domain: str | None = None
    provider: str | None = None
    source: str | None = None       # the egress address it went out from (None: the kernel's choice)


def claim(now: float, limit: int, lease_until: float, verp: bool = False) -> Job:
    """`verp`: the return path is on (feedback.return_path and a feedback listener); a
    recipient gets it when its sender domain's bounce records verified (issue 18)."""
    def job(db: sqlite3.Connection) -> list[Work]:
        # Time spent throttled is added up here, when the wait ends (it does not count toward
        # delivery.max_lifetime, only toward warmup.max_wait).
        rows = db.execute(
                "UPDATE recipients SET state = 'active', lease_until = ?, throttled_for = throttled_for +"
                " CASE WHEN throttled_since IS NULL THEN 0 ELSE max(0, ? - throttled_since) END,"
                " throttled_since = NULL WHERE id IN (SELECT id FROM recipients"
                " WHERE state = 'queued' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
                " RETURNING id, message_id, address, domain, attempts, throttled_for, body IS NOT NULL,"
                " delay_warned_at IS NOT NULL",
                (lease_until, now, now, limit)).fetchall()
        if not rows:
            return []
        ids = sorted({r[1] for r in rows})
        marks = ",".join("?" * len(ids))
        # The egress binding: the sender domain's overrides the account's (issue 19).
        info = {r[0]: r for r in db.execute(
                f"SELECT m.id, m.mail_from, m.account_id, m.created_at, a.delivery_tls,"
                f" coalesce(d.pool, a.pool, 'shared'), coalesce(d.pool_fallback, a.pool_fallback, 'shared'),"
                f" coalesce(d.return_path_ok, 0)"
                f" FROM messages m LEFT JOIN accounts a ON a.id = m.account_id"
                f" LEFT JOIN domains d ON d.name = m.sender_domain WHERE m.id IN ({marks})", ids)}
        return [Work(r[0], r[1], r[2], r[3], r[4], i[1], i[2], i[3], i[4],
                     i[1].rpartition("@")[2].lower() if i[1] else "", r[5], "", bool(r[6]), i[5], i[6],
                     verp=verp and bool(i[7]) and bool(i[1]), delay_warned=bool(r[7]))
                for r in rows if (i := info.get(r[1])) is not None]
    return job


@dataclass(frozen=True, slots=True)
class AutoBlock:
    """What delivery failures add to the blocklist ([blocklist] in relay.toml)."""
    invalid_days: int = 180
    full_inbox: bool = False
    full_inbox_failures: int = 3
    full_inbox_window: float = 72 * 3600.0
    full_inbox_days: int = 7

    @classmethod
    def of(cls, config: "BlocklistConfig") -> "AutoBlock":
        return cls(config.invalid_address_days, config.auto_block_full_inbox, config.full_inbox_failures,
                   config.full_inbox_window, config.full_inbox_days)


def record(outcomes: list[Outcome], dsns: list[QueuedMessage], auto: AutoBlock | None = None,
           warned: tuple[int, ...] = ()) -> Job:
    """`warned`: recipients whose sender got a delay warning with `dsns` (never a second one)."""
    def job(db: sqlite3.Connection) -> None:
        if warned:
            db.executemany("UPDATE recipients SET delay_warned_at = ? WHERE id = ?",
                           [(outcomes[0].at if outcomes else 0.0, rcpt_id) for rcpt_id in warned])
        final = [o for o in outcomes if o.result in FINAL_STATES]
        deferred = [o for o in outcomes if o.result == "deferred"]
        throttled = [o for o in outcomes if o.result == "throttled"]
        held = [o for o in outcomes if o.result == "hold"]
        if throttled:
            # Waiting for warm-up budget: not an attempt, and the wait is not lifetime.
            db.executemany(
                "UPDATE recipients SET state = CASE WHEN state = 'hold' THEN 'hold' ELSE 'queued' END,"
                " next_attempt_at = ?, last_reply = ?, throttled_since = ?, updated_at = ?, lease_until = NULL"
                " WHERE id = ? AND state IN ('active', 'hold')",
                [(o.next_attempt_at, o.reply, o.at, o.at, o.rcpt_id) for o in throttled])
        if held:
            db.executemany(
                "UPDATE recipients SET state = 'hold', hold_reason = 'suspended', last_reply = ?, updated_at = ?,"
                " lease_until = NULL WHERE id = ? AND state IN ('active', 'hold')",
                [(o.reply, o.at, o.rcpt_id) for o in held])
        if final:
            db.executemany(
                "UPDATE recipients SET state = ?, last_reply = ?, bounce_class = ?, attempts = attempts + ?,"
                " updated_at = ?, lease_until = NULL, body = NULL WHERE id = ? AND state IN ('active', 'hold')",
                [(o.result, o.reply, o.bounce_class, int(o.attempted), o.at, o.rcpt_id) for o in final])
        if deferred:
            # A message put on hold while its attempt was in flight stays on hold.
            db.executemany(
                "UPDATE recipients SET state = CASE WHEN state = 'hold' THEN 'hold' ELSE 'queued' END,"
                " next_attempt_at = ?, last_reply = ?, bounce_class = ?, attempts = attempts + ?, updated_at = ?,"
                " lease_until = NULL WHERE id = ? AND state IN ('active', 'hold')",
                [(o.next_attempt_at, o.reply, o.bounce_class, int(o.attempted), o.at, o.rcpt_id) for o in deferred])
        attempted = [o for o in outcomes if o.attempted or o.result in FINAL_STATES]
        if attempted:
            # The recipient may have been deleted by `queue delete` meanwhile: then nothing to record.
            db.executemany(
                "INSERT INTO attempts (recipient_id, at, result, relay, tls, code, enhanced, reply, bounce_class,"
                " duration, sender_domain, provider, source) SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?"
                " WHERE EXISTS (SELECT 1 FROM recipients WHERE id = ?)",
                [(o.rcpt_id, o.at, o.result, o.relay, o.tls, o.code, o.enhanced, o.reply, o.bounce_class,
                  o.duration, o.sender_domain, o.provider, o.source, o.rcpt_id) for o in attempted])
        changes = [(o.result, o.at, o.provider, _event_data(o), o.rcpt_id) for o in outcomes
                   if o.result in events.OUTCOME_EVENTS]
        if changes:
            db.executemany(events.INSERT_FOR_RECIPIENT, changes)
        if auto is not None:
            auto_block(db, outcomes, auto)
        if dsns:
            insert_messages(db, dsns)
        done = sorted({o.message_id for o in final})
        if done:
            # Finished messages keep their rows (status history) but not their bodies.
            db.executemany(
                "UPDATE messages SET body = x'' WHERE id = ? AND NOT EXISTS (SELECT 1 FROM recipients r"
                " WHERE r.message_id = messages.id AND r.state NOT IN ('delivered', 'bounced', 'expired', 'deleted'))",
                [(m,) for m in done])
    return job


def _event_data(o: Outcome) -> str:
    retry = o.next_attempt_at if o.result in ("deferred", "throttled") else None
    return events.data(smtp_response=o.reply if o.attempted or o.result != "throttled" else None,
                       reason=o.reply if o.result == "throttled" else None, mx=o.relay, tls=o.tls, source_ip=o.source,
                       bounce_type=o.bounce_class if o.result in ("bounced", "expired", "deferred") else None,
                       attempted=o.attempted, next_attempt_at=retry)


def auto_block(db: sqlite3.Connection, outcomes: list[Outcome], auto: AutoBlock) -> None:
    """Recipient faults only: a hard `invalid_address` bounce blocks the address globally; with
    auto_block_full_inbox, N `mailbox_full` failures within the window block it for a while.
    Reputation-class failures (our IP or domain) never add entries."""
    invalid = [o for o in outcomes if o.result == "bounced" and o.bounce_class == "invalid_address"]
    if invalid:
        db.executemany(
            "INSERT INTO blocklist (address, type, origin_account_id, reason, created_at, expires_at)"
            " SELECT r.address, 'invalid', m.account_id, ?, ?, ? FROM recipients r JOIN messages m"
            " ON m.id = r.message_id WHERE r.id = ? AND m.mail_from != '' AND NOT EXISTS (SELECT 1 FROM blocklist b"
            " WHERE b.address = r.address AND b.type = 'invalid' AND (b.expires_at IS NULL OR b.expires_at > ?))",
            [(o.reply, o.at, o.at + auto.invalid_days * 86400.0, o.rcpt_id, o.at) for o in invalid])
    full = [o for o in outcomes if o.bounce_class == "mailbox_full" and o.result != "delivered"]
    if auto.full_inbox and full:
        db.executemany(
            "INSERT INTO blocklist (address, type, origin_account_id, reason, created_at, expires_at)"
            " SELECT r.address, 'full_inbox', m.account_id, ?, ?, ? FROM recipients r JOIN messages m"
            " ON m.id = r.message_id WHERE r.id = ?"
            " AND (SELECT count(*) FROM attempts a JOIN recipients r2 ON r2.id = a.recipient_id"
            "      WHERE r2.address = r.address AND a.bounce_class = 'mailbox_full' AND a.at > ?) >= ?"
            " AND NOT EXISTS (SELECT 1 FROM blocklist b WHERE b.address = r.address AND b.type = 'full_inbox'"
            "      AND (b.expires_at IS NULL OR b.expires_at > ?))",
            [(f"{auto.full_inbox_failures} mailbox_full failures: {o.reply}", o.at,
              o.at + auto.full_inbox_days * 86400.0, o.rcpt_id, o.at - auto.full_inbox_window,
              auto.full_inbox_failures, o.at) for o in full])


def prune(before: float, now: float, chunk: int = 5000, events_before: float | None = None) -> Job:
    """Forget sends older than `before` and expired blocklist entries, a chunk at a time so
    that one job never holds the writer long (acceptance shares it)."""
    def job(db: sqlite3.Connection) -> int:
        removed = db.execute("DELETE FROM sends WHERE rowid IN (SELECT rowid FROM sends WHERE at < ? LIMIT ?)",
                             (before, chunk)).rowcount
        removed += db.execute("DELETE FROM blocklist WHERE id IN (SELECT id FROM blocklist WHERE expires_at"
                              " IS NOT NULL AND expires_at <= ? LIMIT ?)", (now, chunk)).rowcount
        if events_before is not None:
            removed += db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? LIMIT ?)",
                                  (events_before, chunk)).rowcount
        return removed
    return job


def wake_throttled(now: float) -> Job:
    """Throttled recipients are looked at again now (a pause was lifted); the throttle decides
    again, and what still has no budget waits again."""
    def job(db: sqlite3.Connection) -> int:
        return int(db.execute("UPDATE recipients INDEXED BY recipients_throttled SET next_attempt_at = ?"
                              " WHERE state = 'queued' AND throttled_since IS NOT NULL AND next_attempt_at > ?",
                              (now, now)).rowcount)
    return job


def reclaim(now: float, everything: bool) -> Job:
    """Expired leases go back to queued (all of them at start: nothing can be in flight then)."""
    def job(db: sqlite3.Connection) -> int:
        return int(db.execute("UPDATE recipients SET state = 'queued', lease_until = NULL WHERE state = 'active'"
                              " AND (? OR lease_until <= ?)", (1 if everything else 0, now)).rowcount)
    return job


DEFER_CHUNK = 2000


def defer_domains(domains: list[str], until: float, reply: str, now: float) -> Job:
    """A dead destination: push up to DEFER_CHUNK of its waiting recipients past `until`
    (oldest first); the caller repeats while a full chunk was moved, one commit each."""
    def job(db: sqlite3.Connection) -> int:
        marks = ",".join("?" * len(domains))
        return int(db.execute(
            # A recipient that was tried keeps the reply it got; the others say why they wait.
            f"UPDATE recipients SET next_attempt_at = ?, last_reply = coalesce(last_reply, ?) WHERE id IN"
            f" (SELECT id FROM recipients WHERE domain IN ({marks}) AND state = 'queued' AND next_attempt_at < ?"
            f" LIMIT {DEFER_CHUNK})",
            (until, reply, *domains, until)).rowcount)
    return job


# Recipients per state, the throttled ones, and the arrival time of the oldest unfinished
# message, in one statement (the back end's reader answers it in one hop). Throttled is a shown
# state (queued + throttled_since) counted through its partial index, named because the planner
# prefers (state, next_attempt_at) and reads every queued row's table entry: 0.16 s at a million
# queued recipients instead of 0.1 ms. The oldest: min(message_id) per state through
# (state, message_id) — queue ids sort by arrival.
COUNTS_SQL = """
SELECT (SELECT json_group_object(state, n) FROM (SELECT state, count(*) AS n FROM recipients GROUP BY state)),
       (SELECT count(*) FROM recipients INDEXED BY recipients_throttled
         WHERE state = 'queued' AND throttled_since IS NOT NULL),
       (SELECT count(*) FROM recipients INDEXED BY recipients_deferred
         WHERE state = 'queued' AND attempts > 0 AND throttled_since IS NULL),
       (SELECT created_at FROM messages WHERE id = (SELECT min(m) FROM (
           SELECT min(message_id) AS m FROM recipients WHERE state = 'queued'
           UNION ALL SELECT min(message_id) FROM recipients WHERE state = 'active'
           UNION ALL SELECT min(message_id) FROM recipients WHERE state = 'hold')))
"""


def counts(row: tuple[Any, ...], now: float) -> tuple[dict[str, int], float]:
    """COUNTS_SQL's row → recipients per shown state, and the age of the oldest unfinished
    message (an index scan as long as the queue: run it on a reader, off the event loop)."""
    by_state, throttled, deferred, oldest_at = row
    result: dict[str, int] = {state: int(n) for state, n in json.loads(by_state or "{}").items()}
    result["throttled"] = int(throttled or 0)
    result["deferred"] = int(deferred or 0)
    result["queued"] = result.get("queued", 0) - result["throttled"] - result["deferred"]
    return result, 0.0 if oldest_at is None else max(0.0, now - oldest_at)
