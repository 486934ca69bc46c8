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


CLOCK_FILE_ENV = "SMTPRELAY_CLOCK_FILE"


class FileClock:
    """The system clock plus an offset in seconds read from a file: how integration tests move
    a running relay's time (a schedule, a rolling 24 h quota) without waiting. Only when
    $SMTPRELAY_CLOCK_FILE names the file (`clock_from_environment`); production never sets it.
    The file is re-read at most every 50 ms of real time."""

    def __init__(self, path: str):
        self.path = path
        self._offset = 0.0
        self._read_at = -1.0
        self._offset_now()

    def _offset_now(self) -> float:
        real = time.monotonic()
        if real - self._read_at >= 0.05:
            self._read_at = real
            try:
                with open(self.path, encoding="ascii") as f:
                    self._offset = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass        # a test writing it right now: keep the last offset
        return self._offset

    def now(self) -> float:
        return time.time() + self._offset_now()

    def monotonic(self) -> float:
        return time.monotonic() + self._offset_now()


def clock_from_environment() -> Clock:
    """The clock every process of the relay and the CLI uses: the system's, or a FileClock for
    tests (see FileClock)."""
    import os
    path = os.environ.get(CLOCK_FILE_ENV)
    return FileClock(path) if path else SystemClock()
