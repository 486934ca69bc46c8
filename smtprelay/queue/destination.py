"""One destination of the scheduler: an MX set (or a route) with its TLS policy, and the
work waiting for it.

Owns nothing by itself: the scheduler alone changes a destination's window, failures and
dead-until (Postfix's per-destination queue state); this module is its shape and the
batching of its waiting recipients.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from smtprelay.config import DeliveryTls
from smtprelay.delivery.client import Connection
from smtprelay.delivery.mx import NextHop
from smtprelay.queue.jobs import Work


@dataclass(slots=True)
class Destination:
    key: str
    hop: NextHop
    policy: DeliveryTls
    domains: set[str]
    max_concurrency: int
    max_per_connection: int
    window: int
    active: int = 0
    failures: int = 0
    dead_until: float = 0.0
    dead_reason: str = ""
    provider: str | None = None     # mailbox provider of an MX destination (None: a route)
    source: str | None = None       # the egress address its connections are bound to (None: the kernel's choice)
    pending: "OrderedDict[str, list[Work]]" = field(default_factory=OrderedDict)
    idle: list[tuple[Connection, float]] = field(default_factory=list)   # cached connections, expiry

    def has_work(self) -> bool:
        return bool(self.pending)

    def pop_batch(self, limit: int) -> list[Work]:
        """Recipients of one message (the oldest waiting), up to `limit`, for one transaction."""
        if not self.pending:
            return []
        message_id, works = next(iter(self.pending.items()))
        if works[0].personal or works[0].verp:
            limit = 1   # every recipient has its own copy (tracking tokens) or return path (VERP)
        batch, rest = works[:limit], works[limit:]
        if rest:
            self.pending[message_id] = rest
        else:
            del self.pending[message_id]
        return batch

    def take_all(self) -> list[Work]:
        works = [w for ws in self.pending.values() for w in ws]
        self.pending.clear()
        return works
