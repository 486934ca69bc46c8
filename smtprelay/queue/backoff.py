"""Retry arithmetic: when a deferred recipient is tried again, and when it expires.

Pure: takes the attempt count, times and a random source. The schedule's last step
repeats (default 1m, 5m, 15m, 30m, 1h, 2h, 4h, 4h, ...); jitter spreads retries so a
destination that comes back is not hit by everything at once.
"""
from __future__ import annotations

import random
from typing import Callable


def retry_delay(attempts: int, schedule: tuple[float, ...], jitter: float,
                rand: Callable[[], float] = random.random) -> float:
    """Delay before the next try, after `attempts` failed tries (1 for the first failure)."""
    base = schedule[min(max(attempts, 1), len(schedule)) - 1]
    return base * (1 + jitter * (2 * rand() - 1))


def expired(created_at: float, now: float, max_lifetime: float) -> bool:
    return now - created_at >= max_lifetime


def next_attempt(created_at: float, now: float, attempts: int, schedule: tuple[float, ...], jitter: float,
                 max_lifetime: float, rand: Callable[[], float] = random.random) -> float | None:
    """When to try again, or None when the recipient has run out of lifetime."""
    if expired(created_at, now, max_lifetime):
        return None
    return now + retry_delay(attempts, schedule, jitter, rand)
