"""Time as an injected dependency.

Owns: the Clock protocol and the system clock. Rules, lockouts and throttles take a
Clock so tests can move time by hand instead of sleeping.
"""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (for timestamps stored or shown)."""

    def monotonic(self) -> float:
        """Seconds that never go backwards (for windows and timeouts)."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to; for tests."""

    def __init__(self, start: float = 1_800_000_000.0):
        self._now = start
        self._mono = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds
