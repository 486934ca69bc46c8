"""What a parsed bounce or complaint report changes in the store (issue 18): which recipient it is
about, and the store job that records it exactly as the same outcome during the transaction
would have been recorded.

Locating: the VERP return path (the address the report came to, or the original's Return-Path
or the ARF Original-Mail-From) names the queue id and the recipient, signed; a report without
any token is found by the original's Message-ID and the reported recipient address. A report
whose token no secret of ours made (forged or altered) finds nothing, whatever else it says.

- A late bounce (`failed` in a DSN) of a recipient that was `delivered` or is still waiting:
  the recipient becomes `bounced` with the class, a `bounced` event (data `late: true`, the
  diagnostic) goes to the webhooks, an `invalid_address` bounce blocks the address as during
  delivery (blocklist.invalid_address_days), and a `delivered` event of that recipient becomes
  `delivery_reversed`, so statistics count it once, as a bounce.
- A complaint (ARF) is the tracking handler's complaint: a `complained` event, a `reject`
  entry for that sender domain × recipient, and the `feedback` row reputation reads.

Must never: parse mail (feedback.parse does), or know the listener.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

from smtprelay.events import types as events
from smtprelay.events.feedback import record_feedback
from smtprelay.feedback import verp
from smtprelay.feedback.parse import Recipient, Report
from smtprelay.queue.jobs import AutoBlock, Outcome, auto_block
from smtprelay.queue.store import Job

FINISHED_BADLY = ("bounced", "expired", "deleted")


@dataclass(frozen=True, slots=True)
class Target:
    rcpt_id: int
    message_id: str
    address: str
    state: str
    account_id: int | None
    sender_domain: str | None


_TARGET_SQL = ("SELECT r.id, r.message_id, r.address, r.state, m.account_id, m.sender_domain FROM recipients r"
               " JOIN messages m ON m.id = r.message_id")


def _target(row: Any) -> Target | None:
    if row is None:
        return None
    return Target(int(row[0]), str(row[1]), str(row[2]), str(row[3]), row[4] if row[4] is None else int(row[4]),
                  None if row[5] is None else str(row[5]))


def by_token(db: sqlite3.Connection, addresses: Sequence[str | None], secrets: list[bytes]) -> Target | None:
    """The recipient the first valid VERP address among `addresses` names."""
    for address in addresses:
        if not address:
            continue
        found = verp.parse(address, secrets)
        if found is not None:
            queue_id, rcpt_id = found
            target = _target(db.execute(_TARGET_SQL + " WHERE r.id = ? AND r.message_id = ?",
                                        (rcpt_id, queue_id)).fetchone())
            if target is not None:
                return target
    return None


def by_message_id(db: sqlite3.Connection, message_id: str | None, address: str | None) -> Target | None:
    """The recipient `address` of the message with this Message-ID (a report without VERP)."""
    if not message_id or not address:
        return None
    return _target(db.execute(_TARGET_SQL + " WHERE m.header_message_id = ? AND r.address = ? COLLATE NOCASE"
                              " ORDER BY r.id DESC LIMIT 1", (message_id.strip(), address)).fetchone())


def locate(db: sqlite3.Connection, report: Report, envelope_rcpt: str | None, secrets: list[bytes],
           failed: Recipient | None = None) -> Target | None:
    """The recipient a report (or one failed recipient of a DSN) is about."""
    tokens = [a for a in (envelope_rcpt, report.original_return_path, report.original_mail_from)
              if a and verp.looks_like(a)]
    target = by_token(db, tokens, secrets)
    if target is None and tokens:
        return None        # a token no secret of ours made: forged or altered, and ignored
    if target is not None:
        # A DSN naming several recipients: the token names one; the others by address.
        if failed is None or failed.address.lower() == target.address.lower():
            return target
        return by_message_id(db, report.original_message_id, failed.address) or _target(db.execute(
            _TARGET_SQL + " WHERE r.message_id = ? AND r.address = ? COLLATE NOCASE",
            (target.message_id, failed.address)).fetchone())
    address = failed.address if failed is not None else (report.original_rcpt_to or report.original_to)
    return by_message_id(db, report.original_message_id, address)


def late_bounce(target: Target, failed: Recipient, now: float, auto: AutoBlock | None) -> Job:
    """The job recording a bounce that came after the transaction."""
    reply = failed.diagnostic.split(";", 1)[-1].strip() if failed.diagnostic else f"{failed.status or '5.0.0'}"

    def job(db: sqlite3.Connection) -> bool:
        state = db.execute("SELECT state FROM recipients WHERE id = ?", (target.rcpt_id,)).fetchone()
        if state is None or state[0] in FINISHED_BADLY:
            return False            # deleted meanwhile, or already counted as a failure
        db.execute("UPDATE recipients SET state = 'bounced', bounce_class = ?, last_reply = ?, updated_at = ?,"
                   " lease_until = NULL, body = NULL WHERE id = ?",
                   (failed.bounce_class, f"late bounce: {reply}"[:1000], now, target.rcpt_id))
        if state[0] == "delivered":
            # Its delivery is taken back where reputation reads it after a restart, too.
            db.execute("UPDATE attempts SET result = 'bounced', bounce_class = ? WHERE id = (SELECT max(id)"
                       " FROM attempts WHERE recipient_id = ? AND result = 'delivered')",
                       (failed.bounce_class, target.rcpt_id))
            db.execute("UPDATE events SET type = 'delivery_reversed' WHERE type = 'delivered' AND queue_id = ?"
                       " AND recipient = ?", (target.message_id, target.address))
        db.execute(events.INSERT_FOR_RECIPIENT,
                   ("bounced", now, None, events.data(smtp_response=reply, bounce_type=failed.bounce_class,
                                                      late=True, status=failed.status, mx=failed.remote_mta),
                    target.rcpt_id))
        if auto is not None:
            auto_block(db, [Outcome(target.rcpt_id, target.message_id, "bounced", now, None, reply, None,
                                     failed.status, failed.bounce_class, failed.remote_mta, None, 0.0,
                                     attempted=True)], auto)
        return True
    return job


def complaint(target: Target, now: float) -> Job:
    """The job recording a complaint (as the tracking handler records one)."""
    def job(db: sqlite3.Connection) -> bool:
        if not target.sender_domain:
            return False
        record_feedback(db, now, target.account_id, target.sender_domain, target.address, "complaint",
                        target.message_id)
        return True
    return job
