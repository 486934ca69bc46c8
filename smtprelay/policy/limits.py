"""Sending limits: the per-recipient hourly cap, the rolling 24 h account quota, and the
per-second rate (token bucket).

Owns: in-memory counters of the single front end, exact under concurrency because every
decision happens on the event loop without awaiting in between. A recipient takes a
*reservation* at RCPT; the reservation is committed when the message is queued and
released when the transaction fails, is reset, or the client goes away. Committed sends
are also written to the `sends` table in the enqueue transaction, and reloaded at start.

Must never: do I/O. Takes an injected clock.
"""
from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

from smtprelay.clock import Clock
from smtprelay.policy.verdict import Verdict, temporary

HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Reservation:
    account_id: int
    address: str


@dataclass(frozen=True, slots=True)
class AccountLimits:
    daily_quota: int
    rate_per_second: float


@dataclass(frozen=True, slots=True)
class Usage:
    hourly_used: int
    hourly_cap: int
    hourly_reset_at: float | None     # when the oldest send in the window leaves it
    quota_used: int
    daily_quota: int
    quota_reset_at: float | None


class SendLimiter:
    def __init__(self, clock: Clock, hourly_cap: int):
        self.clock = clock
        self.hourly_cap = hourly_cap
        self._hourly: dict[tuple[int, str], deque[float]] = {}
        self._daily: dict[int, deque[float]] = {}
        self._reserved_rcpt: Counter[tuple[int, str]] = Counter()
        self._reserved_acct: Counter[int] = Counter()
        self._buckets: dict[int, tuple[float, float]] = {}   # tokens, monotonic time of last refill

    def load(self, sends: list[tuple[int, str, float]]) -> None:
        """Committed sends of the last 24 h, oldest first (from the store at start)."""
        now = self.clock.now()
        for account_id, address, at in sends:
            if at > now - DAY:
                self._daily.setdefault(account_id, deque()).append(at)
            if at > now - HOUR:
                self._hourly.setdefault((account_id, address), deque()).append(at)

    # -- decisions ---------------------------------------------------------------------------
    def reserve(self, account_id: int, address: str, limits: AccountLimits) -> Reservation | Verdict:
        now = self.clock.now()
        key = (account_id, address)
        hourly = self._prune(self._hourly, key, now - HOUR)
        if len(hourly) + self._reserved_rcpt[key] >= self.hourly_cap:
            retry = _when(hourly[0] + HOUR) if hourly else "a few minutes"
            return temporary(450, "4.7.1", f"Recipient {address} has already been sent {self.hourly_cap} messages "
                                           f"by this account in the last hour; try again after {retry}",
                             "recipient_hourly_cap")
        daily = self._prune(self._daily, account_id, now - DAY)
        if len(daily) + self._reserved_acct[account_id] >= limits.daily_quota:
            retry = _when(daily[0] + DAY) if daily else "later"
            return temporary(454, "4.7.0", f"Throttling failure: Daily message quota exceeded "
                                           f"({limits.daily_quota} recipients per 24 hours; next slot after {retry})",
                             "account_daily_quota")
        if not self._take_token(account_id, limits.rate_per_second):
            return temporary(454, "4.7.0", f"Throttling failure: Maximum sending rate exceeded "
                                           f"({limits.rate_per_second:g} recipients per second)", "account_rate")
        self._reserved_rcpt[key] += 1
        self._reserved_acct[account_id] += 1
        return Reservation(account_id, address)

    def commit(self, reservations: list[Reservation], at: float) -> None:
        for r in reservations:
            self._unreserve(r)
            self._hourly.setdefault((r.account_id, r.address), deque()).append(at)
            self._daily.setdefault(r.account_id, deque()).append(at)

    def release(self, reservations: list[Reservation]) -> None:
        for r in reservations:
            self._unreserve(r)

    def usage(self, account_id: int, address: str, limits: AccountLimits) -> Usage:
        now = self.clock.now()
        hourly = self._prune(self._hourly, (account_id, address), now - HOUR)
        daily = self._prune(self._daily, account_id, now - DAY)
        return Usage(len(hourly) + self._reserved_rcpt[(account_id, address)], self.hourly_cap,
                     hourly[0] + HOUR if hourly else None,
                     len(daily) + self._reserved_acct[account_id], limits.daily_quota,
                     daily[0] + DAY if daily else None)

    def prune(self) -> None:
        """Drop empty windows so memory follows the active recipients, not all of history."""
        now = self.clock.now()
        for key in list(self._hourly):
            if not self._prune(self._hourly, key, now - HOUR) and not self._reserved_rcpt[key]:
                del self._hourly[key]
        for account_id in list(self._daily):
            if not self._prune(self._daily, account_id, now - DAY):
                del self._daily[account_id]

    # -- internals ---------------------------------------------------------------------------
    def _unreserve(self, r: Reservation) -> None:
        key = (r.account_id, r.address)
        self._reserved_rcpt[key] -= 1
        if self._reserved_rcpt[key] <= 0:
            del self._reserved_rcpt[key]
        self._reserved_acct[r.account_id] -= 1
        if self._reserved_acct[r.account_id] <= 0:
            del self._reserved_acct[r.account_id]

    @staticmethod
    def _prune(table: dict, key: object, cutoff: float) -> deque[float]:  # type: ignore[type-arg]
        times = table.get(key)
        if times is None:
            return deque()
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def _take_token(self, account_id: int, rate: float) -> bool:
        now = self.clock.monotonic()
        burst = max(1.0, rate)  # one second's worth
        tokens, last = self._buckets.get(account_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0 - 1e-9:  # tolerance: clock differences are floats
            self._buckets[account_id] = (tokens, now)
            return False
        self._buckets[account_id] = (tokens - 1.0, now)
        return True


def _when(ts: float) -> str:
    import datetime
    moment = datetime.datetime.fromtimestamp(math.ceil(ts), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
