"""Which source address each recipient goes out from (issue 19), owned by the scheduler.

Owns: which configured pool addresses this host can bind (probed at start and on every
reload), each address's HELO name (relay.toml's, else its PTR when it has one, else
server.hostname), each address's open delivery connections (`max_connections`) and its
pace (`max_rate` messages per second, spaced evenly: no burst).

Choosing: a recipient is bound to a pool (its sender domain's, else its account's, else
"shared"). Among the pool's usable addresses (bindable, not paused at the provider by a
backoff, with warm-up budget left at the provider) it takes the one with the most budget
left after what is already waiting for it: addresses still warming use their daily
budget first (a ramp only advances on days it sends), warmed ones share the rest by what
they have waiting. With none usable it falls back to the shared pool when the binding
allows, else it waits (`throttled`, the reason named) until the soonest budget reset,
pause end or, for an address the host does not own, a few minutes. A pool without
addresses is the kernel's choice: no binding, no per-address limits.

Must never: touch the store, or await (the scheduler asks between two awaits).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from smtprelay.config import Config
from smtprelay.config.pools import SHARED, EgressAddress, EgressPool, unbindable
from smtprelay.queue.jobs import Work
from smtprelay.warmup.throttle import Throttle

log = logging.getLogger("smtprelay.delivery")

UNUSABLE_RETRY = 300.0    # an address the host does not own: its mail is routed again this often


@dataclass(frozen=True, slots=True)
class Source:
    """Where a recipient goes out from: an address of `pool`, or the kernel's choice (None)."""
    pool: str
    address: EgressAddress | None


@dataclass(frozen=True, slots=True)
class Wait:
    until: float
    reason: str


class Egress:
    def __init__(self, config: Config, throttle: Throttle):
        self.throttle = throttle
        self.unusable: dict[str, str] = {}        # address → why this host cannot send from it
        self.helo: dict[str, str] = {}            # address → the name it says in EHLO
        self.active: dict[str, int] = {}          # address → open delivery connections
        self._next_slot: dict[str, float] = {}    # address → when its next message may start (monotonic)
        self._pools: dict[str, EgressPool] = {}
        self.waiting: dict[tuple[str, str], int] = {}    # (address, provider) → routed, not sent yet
        self.config = config
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take relay.toml's pools (at start and on reload): probe every address again."""
        self.config = config
        self._pools = {a.address: pool for pool, a in config.egress.addresses()}
        before = dict(self.unusable)
        self.unusable = {}
        for pool, address in config.egress.addresses():
            why = unbindable(address)
            if why is not None:
                self.unusable[address.address] = why
                if before.get(address.address) != why:
                    log.warning("egress pool %s: %s; mail bound to the pool uses its other addresses, falls back "
                                "or waits", pool.name, why)
            elif address.address in before:
                log.info("egress pool %s: %s can be used again", pool.name, address.address)
            self.helo[address.address] = address.helo or self.helo.get(address.address) or config.server.hostname

    def set_ptr(self, address: str, name: str | None) -> None:
        """The PTR name of an address without a configured helo (looked up by the scheduler)."""
        configured = next((a for _, a in self.config.egress.addresses() if a.address == address), None)
        if configured is not None and configured.helo is None:
            self.helo[address] = name or self.config.server.hostname

    def needs_ptr(self) -> list[str]:
        return [a.address for _, a in self.config.egress.addresses() if a.helo is None]

    # -- choosing ----------------------------------------------------------------------------
    def routed(self, work: Work) -> None:
        """`work` waits in a destination of its source address."""
        if work.source:
            key = (work.source, work.provider)
            self.waiting[key] = self.waiting.get(key, 0) + 1

    def unrouted(self, works: list[Work]) -> None:
        """These left their destination's queue (taken for a transaction, or a dead destination's)."""
        for work in works:
            if work.source:
                key = (work.source, work.provider)
                left = self.waiting.get(key, 0) - 1
                if left > 0:
                    self.waiting[key] = left
                else:
                    self.waiting.pop(key, None)

    def choose(self, work: Work, waiting: dict[tuple[str, str], int] | None, now: float) -> Source | Wait:
        """The source for `work` (its provider set); `waiting`: recipients already routed to
        each (address, provider) and not sent yet (None: the ones `routed` counted)."""
        if waiting is None:
            waiting = self.waiting
        names = [work.pool] + ([SHARED] if work.fallback == SHARED and work.pool != SHARED else [])
        reasons: list[str] = []
        soonest: float | None = None
        for name in names:
            pool = self.config.egress.pools.get(name)
            if pool is None:
                reasons.append(f"egress pool {name} is not in relay.toml")
                continue
            if not pool.addresses:
                return Source(name, None)
            best: tuple[tuple[int, float], EgressAddress] | None = None
            for address in pool.addresses:
                why = self.unusable.get(address.address)
                if why is not None:
                    reasons.append(why)
                    soonest = min(soonest or now + UNUSABLE_RETRY, now + UNUSABLE_RETRY)
                    continue
                if not self.throttle.enabled:
                    left: int | None = None
                else:
                    left, until, why = self.throttle.ips.room(address.address, work.provider, now)
                    if left == 0:
                        reasons.append(why)
                        soonest = until if soonest is None else min(soonest, until)
                        continue
                queued = waiting.get((address.address, work.provider), 0)
                if left is None:
                    rank = (1, float(-queued))                 # warmed: share by what waits
                elif left > queued:
                    rank = (2, float(left - queued))           # warming: use today's budget first
                else:
                    rank = (0, float(left - queued))           # its budget is spoken for (may yet free up)
                if best is None or rank > best[0]:
                    best = (rank, address)
            if best is not None:
                return Source(name, best[1])
        reason = "no address of egress pool " + work.pool + " can send now" + \
                 (" (fallback: none)" if work.fallback != SHARED and work.pool != SHARED else "")
        return Wait(soonest if soonest is not None else now + UNUSABLE_RETRY,
                    reason + (": " + "; ".join(dict.fromkeys(reasons)) if reasons else ""))

    # -- connections and pace -----------------------------------------------------------------
    def connection_room(self, address: str | None) -> bool:
        if address is None:
            return True
        pool = self._pools.get(address)
        return pool is None or self.active.get(address, 0) < pool.max_connections

    def opened(self, address: str | None) -> None:
        if address is not None:
            self.active[address] = self.active.get(address, 0) + 1

    def closed(self, address: str | None) -> None:
        if address is not None:
            self.active[address] = self.active.get(address, 1) - 1

    def pace(self, address: str | None, monotonic: float) -> float:
        """Seconds to wait before the next message from `address` starts (its slot is taken):
        messages from one address start at least 1/max_rate apart."""
        if address is None:
            return 0.0
        pool = self._pools.get(address)
        if pool is None:
            return 0.0
        slot = max(self._next_slot.get(address, 0.0), monotonic)
        self._next_slot[address] = slot + 1.0 / pool.max_rate
        return slot - monotonic
