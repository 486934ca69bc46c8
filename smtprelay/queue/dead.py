"""Dead destinations: which next hops refuse connections, until when, and for which
recipient domains — kept by the scheduler (its only writer), read by the store at enqueue.

Owns: how long a dead destination is left alone. The first suspension lasts the first step
of `delivery.retry_schedule`; each time it is tried again and is still dead, the next step
(1 m, 5 m, 15 m, ... like Postfix's backoff), until a delivery succeeds or an operator runs
`queue flush`. So a destination that stays down for a day with a million recipients waiting
is looked at a handful of times, not every minute.

New mail for a domain whose destination is dead is queued already deferred until the
destination's next try (`deferred_until`), instead of being claimed only to be put back:
what Postfix's queue manager does with mail for a dead destination.

Must never: do I/O, or touch a Destination's window (the scheduler does).
"""
from __future__ import annotations

from typing import Sequence


class DeadDestinations:
    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}      # destination key → consecutive failures, last
        self._rounds: dict[str, int] = {}                     # destination key → times found dead in a row
        self._until: dict[str, float] = {}                    # destination key → suspended until
        self._why: dict[str, str] = {}                        # destination key → the failure
        self._domains: dict[str, tuple[float, str]] = {}      # recipient domain → (until, why)

    def failed(self, key: str, now: float, forget_after: float) -> int:
        """One more connection failure in a row; the count outlives the scheduler's Destination
        object (dropped whenever it has no work), and is forgotten after a quiet spell."""
        count, last = self._failures.get(key, (0, now))
        count = 1 if now - last > forget_after else count + 1
        self._failures[key] = (count, now)
        return count

    def suspend(self, key: str, domains: Sequence[str], now: float, schedule: Sequence[float], reason: str) -> float:
        """The destination failed again: suspend it for the next step of the schedule."""
        rounds = self._rounds.get(key, 0) + 1
        self._rounds[key] = rounds
        until = now + schedule[min(rounds, len(schedule)) - 1]
        self._until[key] = until
        self._why[key] = reason
        for domain in domains:
            self._domains[domain] = (until, reason)
        return until

    def until(self, key: str) -> float:
        return self._until.get(key, 0.0)

    def why(self, key: str) -> str:
        return self._why.get(key, "")

    def alive(self, key: str, domains: Sequence[str]) -> None:
        """A delivery succeeded: forget everything about its death."""
        self._failures.pop(key, None)
        self._rounds.pop(key, None)
        self._until.pop(key, None)
        self._why.pop(key, None)
        for domain in domains:
            self._domains.pop(domain, None)

    def forget(self) -> None:
        """`queue flush`: every destination is tried again at once, its backoff reset."""
        self._failures.clear()
        self._rounds.clear()
        self._until.clear()
        self._why.clear()
        self._domains.clear()

    def deferred_until(self, domain: str, now: float) -> tuple[float, str] | None:
        """For new mail: (the time to try, why) if the domain's destination is dead now."""
        found = self._domains.get(domain)
        if found is None:
            return None
        if found[0] <= now:
            del self._domains[domain]
            return None
        return found
