"""Sending limits: the per-recipient hourly cap, the rolling 24 h account quota, and the
per-second rate (token bucket).

Owns: the decisions and the counters of transactions in flight, exact under concurrency
because every decision happens on the back end's event loop without awaiting in between.
A recipient takes a *reservation* at RCPT; the reservation is committed when the message is
queued and released when the transaction fails, is reset, or the client goes away.

Memory follows the accounts, not the recipients (issue 8: a million distinct recipients in
an hour took ~1 GB as one deque per recipient):
- committed sends to one recipient are read through `SendHistory` (the store's `sends`
  rows, written in the enqueue transaction, indexed by account and address);
- the rolling daily quota counts committed sends per account in one-minute buckets (at most
  1440 per account), so a send leaves the 24 h window at the end of its minute: never
  early, at most 60 s late.

Must never: do I/O itself (the history is injected). Takes an injected clock.
"""
from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Protocol

from smtprelay.clock import Clock
from smtprelay.policy.verdict import Verdict, temporary

HOUR = 3600.0
DAY = 86400.0
MINUTE = 60


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


class SendHistory(Protocol):
    def recent(self, account_id: int, address: str, since: float) -> tuple[int, float | None]:
        """Committed sends by `account_id` to `address` after `since`: how many, and the oldest."""

    def committed(self, reservations: list[Reservation], at: float) -> None:
        """These sends were committed (the store's history wrote them itself: nothing to do)."""


class MemoryHistory:
    """A SendHistory kept in memory (tests, and `explain` on rows read from the store)."""

    def __init__(self) -> None:
        self._sends: dict[tuple[int, str], list[float]] = {}

    def add(self, account_id: int, address: str, at: float) -> None:
        self._sends.setdefault((account_id, address), []).append(at)

    def committed(self, reservations: list[Reservation], at: float) -> None:
        for r in reservations:
            self.add(r.account_id, r.address, at)

    def recent(self, account_id: int, address: str, since: float) -> tuple[int, float | None]:
        times = [t for t in self._sends.get((account_id, address), ()) if t > since]
        return len(times), (min(times) if times else None)


class SendLimiter:
    def __init__(self, clock: Clock, hourly_cap: int, history: SendHistory):
        self.clock = clock
        self.hourly_cap = hourly_cap
        self.history = history
        self._daily: dict[int, deque[list[int]]] = {}        # account → [minute, sends] oldest first
        self._daily_total: Counter[int] = Counter()          # account → sends in those minutes
        self._reserved_rcpt: Counter[tuple[int, str]] = Counter()
        self._reserved_acct: Counter[int] = Counter()
        self._buckets: dict[int, tuple[float, float]] = {}   # tokens, monotonic time of last refill

    def load(self, per_minute: list[tuple[int, int, int]]) -> None:
        """Committed sends of the last 24 h as (account, minute, count), oldest first (at start)."""
        for account_id, minute, count in per_minute:
            self._add(account_id, minute, count)

    # -- decisions ---------------------------------------------------------------------------
    def reserve(self, account_id: int, address: str, limits: AccountLimits) -> Reservation | Verdict:
        now = self.clock.now()
        key = (account_id, address)
        sent, oldest = self.history.recent(account_id, address, now - HOUR)
        if sent + self._reserved_rcpt[key] >= self.hourly_cap:
            return hourly_cap_verdict(address, self.hourly_cap, oldest)
        daily, first_minute = self._daily_used(account_id, now)
        if daily + self._reserved_acct[account_id] >= limits.daily_quota:
            return quota_verdict(limits.daily_quota, first_minute * MINUTE if first_minute is not None else None)
        if not self._take_token(account_id, limits.rate_per_second):
            return rate_verdict(limits.rate_per_second)
        self._reserved_rcpt[key] += 1
        self._reserved_acct[account_id] += 1
        return Reservation(account_id, address)

    def commit(self, reservations: list[Reservation], at: float) -> None:
        """The message is queued: its sends count. (The recipient's send is already in the
        history: the enqueue transaction wrote it.)"""
        minute = int(at // MINUTE)
        for r in reservations:
            self._unreserve(r)
            self._add(r.account_id, minute, 1)
        self.history.committed(reservations, at)

    def release(self, reservations: list[Reservation]) -> None:
        for r in reservations:
            self._unreserve(r)

    def usage(self, account_id: int, address: str, limits: AccountLimits) -> Usage:
        now = self.clock.now()
        sent, oldest = self.history.recent(account_id, address, now - HOUR)
        daily, first_minute = self._daily_used(account_id, now)
        return Usage(sent + self._reserved_rcpt[(account_id, address)], self.hourly_cap,
                     oldest + HOUR if oldest is not None else None,
                     daily + self._reserved_acct[account_id], limits.daily_quota,
                     (first_minute + 1) * MINUTE + DAY if first_minute is not None else None)

    def quota_room(self, account_id: int, limits: AccountLimits) -> tuple[int, float | None]:
        """How many more recipients the account's rolling 24 h quota takes now (reservations
        count), and when the oldest counted minute leaves the window. No I/O: a sending task
        asks before each row."""
        daily, first_minute = self._daily_used(account_id, self.clock.now())
        return (limits.daily_quota - daily - self._reserved_acct[account_id],
                (first_minute + 1) * MINUTE + DAY if first_minute is not None else None)

    def prune(self) -> None:
        """Drop minutes that left the 24 h window, and accounts with none left."""
        now = self.clock.now()
        for account_id in list(self._daily):
            self._daily_used(account_id, now)
            if not self._daily[account_id]:
                del self._daily[account_id]
                self._daily_total.pop(account_id, None)

    # -- internals ---------------------------------------------------------------------------
    def _add(self, account_id: int, minute: int, count: int) -> None:
        self._daily_total[account_id] += count
        minutes = self._daily.setdefault(account_id, deque())
        if minutes and minutes[-1][0] == minute:
            minutes[-1][1] += count
        elif minutes and minutes[-1][0] > minute:    # out of order (a clock step): keep it sorted
            for entry in minutes:
                if entry[0] == minute:
                    entry[1] += count
                    return
            minutes.append([minute, count])
            self._daily[account_id] = deque(sorted(minutes))
        else:
            minutes.append([minute, count])

    def _daily_used(self, account_id: int, now: float) -> tuple[int, int | None]:
        """Sends in the rolling 24 h (by whole minutes) and the oldest minute still counted."""
        minutes = self._daily.get(account_id)
        if not minutes:
            return 0, None
        while minutes and (minutes[0][0] + 1) * MINUTE <= now - DAY:
            self._daily_total[account_id] -= minutes.popleft()[1]
        return self._daily_total[account_id], (minutes[0][0] if minutes else None)

    def _unreserve(self, r: Reservation) -> None:
        key = (r.account_id, r.address)
        self._reserved_rcpt[key] -= 1
        if self._reserved_rcpt[key] <= 0:
            del self._reserved_rcpt[key]
        self._reserved_acct[r.account_id] -= 1
        if self._reserved_acct[r.account_id] <= 0:
            del self._reserved_acct[r.account_id]

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


def hourly_cap_verdict(address: str, cap: int, oldest: float | None) -> Verdict:
    """The refusal when `address` has had `cap` messages in the hour; `oldest`: the first of them."""
    retry = _when(oldest + HOUR) if oldest is not None else "a few minutes"
    return temporary(450, "4.7.1", f"Recipient {address} has already been sent {cap} messages "
                                   f"by this account in the last hour; try again after {retry}", "recipient_hourly_cap")


def quota_verdict(quota: int, oldest: float | None) -> Verdict:
    """The refusal when the rolling 24 h quota is used; `oldest`: the oldest send counted."""
    retry = _when((int(oldest // MINUTE) + 1) * MINUTE + DAY) if oldest is not None else "later"
    return temporary(454, "4.7.0", f"Throttling failure: Daily message quota exceeded "
                                   f"({quota} recipients per 24 hours; next slot after {retry})", "account_daily_quota")


def rate_verdict(rate: float) -> Verdict:
    """The refusal when the account sends faster than its per-second rate."""
    return temporary(454, "4.7.0", f"Throttling failure: Maximum sending rate exceeded "
                                   f"({rate:g} recipients per second)", "account_rate")


def _when(ts: float) -> str:
    import datetime
    moment = datetime.datetime.fromtimestamp(math.ceil(ts), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
