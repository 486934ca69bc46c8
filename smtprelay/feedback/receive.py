"""What the feedback listener does with one accepted mail (issue 18), as one store job: the
mail is kept (`feedback_messages`, raw and parsed) and what it reports is applied in the same
transaction, so a mail answered 250 is never lost and never applied twice.

- To the unsubscribe mailbox (tracking.unsubscribe_mailto): the token in the subject (the
  List-Unsubscribe mailto link carries it) unsubscribes that recipient, as the one-click POST.
- A DSN: each `failed` recipient it names becomes a late bounce (feedback.apply.late_bounce);
  delayed/delivered/relayed notices are kept and ignored.
- An ARF report: a complaint about the recipient it names (feedback.apply.complaint).
- Anything else: kept as `unparsed`.

Result per mail: applied (something changed), duplicate (already known), unmatched (no message
of ours found: a forged or expired token, an unknown Message-ID), ignored (nothing to do),
kept (unparsed).

Must never: parse in the store thread (the caller passes the parsed report), or answer SMTP.
"""
from __future__ import annotations

import json
import re
import sqlite3
import urllib.parse
from dataclasses import dataclass, field
from email.header import decode_header, make_header

from smtprelay.events import tracking
from smtprelay.events.feedback import record_feedback
from smtprelay.feedback import apply, verp
from smtprelay.feedback.parse import Report
from smtprelay.queue.jobs import AutoBlock
from smtprelay.queue.store import Job

_SUBJECT_TOKEN = re.compile(r"unsubscribe\s+([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Inbound:
    listener: str
    peer: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    raw: bytes
    at: float


@dataclass(slots=True)
class Applied:
    """What one mail changed: for the reply, the log, the metric and the throttle."""
    feedback_id: int = 0
    type: str = "unparsed"
    result: str = "kept"
    queue_id: str | None = None
    recipient: str | None = None
    # Late bounces (sender domain, recipient address, bounce class, state before): reputation.
    bounces: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    blocklist_changed: bool = False
    actions: list[dict[str, object]] = field(default_factory=list)


def subject_of(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found = re.search(rb"(?im)^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", head)
    if not found:
        return ""
    text = re.sub(rb"\r?\n[ \t]+", b" ", found.group(1)).decode("utf-8", "replace").strip()
    try:
        return str(make_header(decode_header(text)))
    except Exception:
        return text


def unsubscribe_token(raw: bytes) -> str | None:
    found = _SUBJECT_TOKEN.search(urllib.parse.unquote(subject_of(raw)))
    return found.group(1) if found else None


def receive(mail: Inbound, report: Report | None, unsubscribe_secret: bytes | None, verp_secrets: list[bytes],
            auto: AutoBlock | None) -> Job:
    """`report` None: the mail went to the unsubscribe mailbox."""
    def job(db: sqlite3.Connection) -> Applied:
        done = Applied()
        if report is None:
            _unsubscribe(db, mail, unsubscribe_secret, done)
        elif report.kind == "dsn":
            _dsn(db, mail, report, verp_secrets, auto, done)
        elif report.kind == "arf":
            _arf(db, mail, report, verp_secrets, done)
        detail = {"report": report.doc() if report is not None else None, "actions": done.actions}
        cursor = db.execute(
            "INSERT INTO feedback_messages (received_at, listener, peer, mail_from, rcpt_to, type, result, queue_id,"
            " recipient, sender_domain, account_id, detail, raw) VALUES (?,?,?,?,?,?,?,?,?,"
            " (SELECT sender_domain FROM messages WHERE id = ?), (SELECT account_id FROM messages WHERE id = ?),?,?)",
            (mail.at, mail.listener, mail.peer, mail.mail_from, "\n".join(mail.rcpt_to), done.type, done.result,
             done.queue_id, done.recipient, done.queue_id, done.queue_id, json.dumps(detail), mail.raw))
        done.feedback_id = int(cursor.lastrowid or 0)
        return done
    return job


def _unsubscribe(db: sqlite3.Connection, mail: Inbound, secret: bytes | None, done: Applied) -> None:
    done.type = "unsubscribe"
    token = unsubscribe_token(mail.raw)
    found = tracking.read_token(secret, token, "u") if token and secret else None
    if found is None:
        done.result = "unmatched"
        done.actions.append({"action": "none", "why": "no valid unsubscribe token in the subject"})
        return
    queue_id, recipient, _ = found
    row = db.execute("SELECT account_id, sender_domain FROM messages WHERE id = ?", (queue_id,)).fetchone()
    done.queue_id, done.recipient = queue_id, recipient
    if row is None or row[1] is None:
        done.result = "unmatched"
        done.actions.append({"action": "none", "why": "the message is no longer known"})
        return
    already = db.execute("SELECT 1 FROM feedback WHERE kind = 'unsubscribe' AND address = ? AND sender_domain = ?",
                         (recipient, row[1])).fetchone()
    if already is not None:
        done.result = "duplicate"
        done.actions.append({"action": "none", "why": "already unsubscribed", "recipient": recipient})
        return
    record_feedback(db, mail.at, row[0], row[1], recipient, "unsubscribe", queue_id=queue_id)
    done.result, done.blocklist_changed = "applied", True
    done.actions.append({"action": "unsubscribed", "recipient": recipient, "sender_domain": row[1]})


def _verp_rcpt(mail: Inbound) -> str | None:
    return next((r for r in mail.rcpt_to if verp.looks_like(r)), mail.rcpt_to[0] if mail.rcpt_to else None)


def _dsn(db: sqlite3.Connection, mail: Inbound, report: Report, secrets: list[bytes], auto: AutoBlock | None,
         done: Applied) -> None:
    done.type = "dsn"
    failed = report.failed
    if not failed:
        done.result = "ignored"
        done.actions.append({"action": "none", "why": "no failed recipient (a delay or success notice)"})
        return
    envelope = _verp_rcpt(mail)
    results = []
    for recipient in failed:
        target = apply.locate(db, report, envelope, secrets, recipient)
        if target is None:
            results.append("unmatched")
            done.actions.append({"action": "none", "recipient": recipient.address,
                                 "why": "no message of ours found for it (unknown or forged return path)"})
            continue
        state = target.state
        if apply.late_bounce(target, recipient, mail.at, auto)(db):
            results.append("applied")
            done.queue_id, done.recipient = target.message_id, target.address
            if target.sender_domain:
                done.bounces.append((target.sender_domain, target.address, recipient.bounce_class, state))
            done.blocklist_changed = done.blocklist_changed or (auto is not None and
                                                                recipient.bounce_class == "invalid_address")
            done.actions.append({"action": "bounced", "queue_id": target.message_id, "recipient": target.address,
                                 "bounce_class": recipient.bounce_class, "was": state})
        else:
            results.append("duplicate")
            done.queue_id, done.recipient = target.message_id, target.address
            done.actions.append({"action": "none", "queue_id": target.message_id, "recipient": target.address,
                                 "why": f"already {state}"})
    done.result = next((r for r in ("applied", "duplicate", "unmatched") if r in results), "unmatched")


def _arf(db: sqlite3.Connection, mail: Inbound, report: Report, secrets: list[bytes], done: Applied) -> None:
    done.type = "arf"
    target = apply.locate(db, report, _verp_rcpt(mail), secrets)
    if target is None:
        done.result = "unmatched"
        done.actions.append({"action": "none", "why": "the reported message is not one of ours (or its return path "
                                                      "was forged)"})
        return
    done.queue_id, done.recipient = target.message_id, target.address
    if db.execute("SELECT 1 FROM events WHERE type = 'complained' AND queue_id = ? AND recipient = ?",
                  (target.message_id, target.address)).fetchone() is not None:
        done.result = "duplicate"
        done.actions.append({"action": "none", "queue_id": target.message_id, "recipient": target.address,
                             "why": "this complaint was already recorded"})
        return
    if apply.complaint(target, mail.at)(db):
        done.result, done.blocklist_changed = "applied", True
        done.actions.append({"action": "complained", "queue_id": target.message_id, "recipient": target.address,
                             "feedback_type": report.feedback_type})
    else:
        done.result = "ignored"
        done.actions.append({"action": "none", "why": "a bounce (null sender) cannot be complained about"})


def prune(before: float, limit: int = 5000) -> Job:
    def job(db: sqlite3.Connection) -> int:
        return db.execute("DELETE FROM feedback_messages WHERE id IN (SELECT id FROM feedback_messages"
                          " WHERE received_at < ? LIMIT ?)", (before, limit)).rowcount
    return job
