"""The queue, as an operator sees it: list and show (like mailq), flush, hold, release and
delete (like postqueue -f and postsuper -h/-H/-d). A running relay sees a change at its next
scan (every `delivery.scan_interval`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from smtprelay.errors import Invalid, NotFound
from smtprelay.queue import admin
from smtprelay.queue.listing import STATES, QueueEntry, list_queue, show_message
from smtprelay.services.context import Context
from smtprelay.when import iso


@dataclass(frozen=True, slots=True)
class QueueList:
    entries: list[QueueEntry]
    now: float

    def doc(self) -> dict[str, Any]:
        return {"messages": [{"id": e.id, "age_seconds": round(self.now - e.created_at, 1),
                              "created_at": iso(e.created_at), "size": e.size, "from": e.mail_from,
                              "recipients": list(e.recipients), "state": e.state, "last_reply": e.last_reply}
                             for e in self.entries]}


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One message with its recipients and their attempts (the document `queue show` prints)."""
    id: str
    detail: dict[str, Any] = field(repr=False)

    def doc(self) -> dict[str, Any]:
        """Every time as RFC 3339 UTC, as in `status --json`."""
        from smtprelay.services.reports import stamp
        return stamp(copy.deepcopy(self.detail))


@dataclass(frozen=True, slots=True)
class QueueAction:
    """What an action changed: how many recipients, in the words of its document."""
    key: str            # due_now, held, released, undelivered_recipients
    count: int
    id: str | None = None
    domain: str | None = None

    def doc(self) -> dict[str, Any]:
        if self.key == "due_now":
            return {"due_now": self.count, "domain": self.domain}
        return {"id": self.id, self.key: self.count}


class QueueService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    def list(self, state: str | None = None, domain: str | None = None, limit: int = 1000,
             include_finished: bool = False) -> QueueList:
        if state is not None and state not in STATES:
            raise Invalid(f"state must be one of {', '.join(STATES)}, got \"{state}\"", "state")
        if limit <= 0:
            raise Invalid(f"limit must be a positive integer, got {limit}", "limit")
        return QueueList(list_queue(self.store, state=state, domain=domain, limit=limit,
                                    include_finished=include_finished), self.ctx.now())

    def show(self, queue_id: str) -> QueuedMessage:
        detail = show_message(self.store, queue_id)
        if detail is None:
            raise NotFound(f"no queued message with id {queue_id}")
        return QueuedMessage(queue_id, dict(detail))

    def flush(self, domain: str | None = None) -> QueueAction:
        return QueueAction("due_now", admin.flush(self.store, self.ctx.now(), domain), domain=domain)

    def hold(self, queue_id: str) -> QueueAction:
        return QueueAction("held", admin.hold(self.store, queue_id), queue_id)

    def release(self, queue_id: str) -> QueueAction:
        return QueueAction("released", admin.release(self.store, queue_id, self.ctx.now()), queue_id)

    def delete(self, queue_id: str) -> QueueAction:
        return QueueAction("undelivered_recipients", admin.delete(self.store, queue_id, self.ctx.now()), queue_id)
