"""The event vocabulary and how events are written.

Owns: the names of message events (DESIGN §1) and the SQL that records them. Events are
written inside the transaction of the change they describe (enqueue, delivery outcome,
feedback), so there is exactly one event per change and none for a change that did not
commit. SMTP-time refusals are the exception: nothing is stored for them, so the front end
queues `rejected` events and the app writes them within a second (a crash may lose the
last second of refusals, never an acceptance or delivery).

Must never: decide anything; it only records.
"""
from __future__ import annotations

import enum
import json
import sqlite3
from typing import Any, Callable

Job = Callable[[sqlite3.Connection], Any]   # as queue.store.Job (no import cycle)


class EventType(str, enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    THROTTLED = "throttled"
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"
    DELETED = "deleted"              # queue delete: the operator removed it, no bounce sent


# Delivery outcomes (queue.jobs.Outcome.result) that are events of the same name.
OUTCOME_EVENTS = frozenset({"delivered", "deferred", "bounced", "expired", "throttled"})

INSERT = ("INSERT INTO events (type, at, account_id, queue_id, recipient, sender_domain, recipient_domain,"
          " provider, tag, data) VALUES (?,?,?,?,?,?,?,?,?,?)")

# The front end's `rejected` events: a sending task's recipient names its task and run.
INSERT_REJECTED = ("INSERT INTO events (type, at, account_id, queue_id, recipient, sender_domain, recipient_domain,"
                   " provider, tag, data, task_id, task_run) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")

# `accepted`: the message's template (id, version) and sending task (id, run) as well.
INSERT_WITH_TEMPLATE = ("INSERT INTO events (type, at, account_id, queue_id, recipient, sender_domain,"
                        " recipient_domain, provider, tag, data, template_id, template_version, task_id, task_run)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")

# An outcome's event: the recipient's message gives account, queue id, domains, tag and template.
INSERT_FOR_RECIPIENT = (
    "INSERT INTO events (type, at, account_id, queue_id, recipient, sender_domain, recipient_domain, provider,"
    " tag, data, template_id, template_version, task_id, task_run) SELECT ?, ?, m.account_id, m.id, r.address,"
    " m.sender_domain, r.domain, ?, m.tag, ?, m.template_id, m.template_version, m.task_id, m.task_run"
    " FROM recipients r JOIN messages m ON m.id = r.message_id WHERE r.id = ? AND m.mail_from != ''")


def data(**fields: Any) -> str:
    return json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":"))


def insert_job(rows: list[tuple[Any, ...]]) -> Job:
    """Rows in INSERT_REJECTED's column order (the front end's `rejected` events)."""
    def job(db: sqlite3.Connection) -> None:
        db.executemany(INSERT_REJECTED, rows)
    return job
