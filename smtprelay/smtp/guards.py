"""Per-client protections of the front end: connection caps and the AUTH lockout.

Owns: in-memory counters keyed by client IP address. Pure apart from the injected clock;
the SMTP server consults them and turns their answers into replies.
"""
from __future__ import annotations

from collections import defaultdict, deque

from smtprelay.clock import Clock


class ConnectionLimiter:
    """A total cap and a per-client-address cap on open connections.

    One address holding many idle connections reaches its own cap long before the total,
    so clients at other addresses keep getting in.
    """

    def __init__(self, max_total: int, max_per_client: int):
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self.per_client: dict[str, int] = defaultdict(int)

    def acquire(self, ip: str) -> str | None:
        """Take a slot; return None, or the reason the connection is refused."""
        if self.total >= self.max_total:
            return "total"
        if self.per_client[ip] >= self.max_per_client:
            return "per_client"
        self.total += 1
        self.per_client[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self.per_client[ip] - 1
        if left <= 0:
            del self.per_client[ip]
        else:
            self.per_client[ip] = left


class AuthLockout:
    """After `max_failures` failed AUTH attempts from one address within `window`
    seconds, that address is locked out for `lockout` seconds."""

    def __init__(self, clock: Clock, max_failures: int, window: float, lockout: float):
        self.clock = clock
        self.configure(max_failures, window, lockout)
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def configure(self, max_failures: int, window: float, lockout: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout

    def locked(self, ip: str) -> bool:
        until = self._locked_until.get(ip)
        if until is None:
            return False
        if self.clock.monotonic() >= until:
            del self._locked_until[ip]
            return False
        return True

    def failure(self, ip: str) -> bool:
        """Record a failure; True when this failure locks the address out."""
        now = self.clock.monotonic()
        times = self._failures.setdefault(ip, deque())
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.max_failures:
            del self._failures[ip]
            self._locked_until[ip] = now + self.lockout
            return True
        return False

    def success(self, ip: str) -> None:
        self._failures.pop(ip, None)

    def lock(self, ip: str) -> None:
        """Locked out by another node's count (cluster mode): from now, for `lockout`."""
        self._failures.pop(ip, None)
        self._locked_until[ip] = max(self._locked_until.get(ip, 0.0), self.clock.monotonic() + self.lockout)

    def prune(self) -> None:
        """Forget stale entries so the tables stay small under a long attack."""
        now = self.clock.monotonic()
        for ip in [ip for ip, t in self._failures.items() if not t or t[-1] <= now - self.window]:
            del self._failures[ip]
        for ip in [ip for ip, until in self._locked_until.items() if until <= now]:
            del self._locked_until[ip]
