"""Warm-up per (source address, mailbox provider) (issue 19): a pool address is a new IP to
each provider and ramps on `egress.warmup_schedule` (default: the domain schedule), beside
the sender domain's own ramp; a recipient goes out only when both budgets allow. A
provider's reputation reply (421, 4.7.x) pauses the pair of the address it came on.

Owned by the throttle (warmup.throttle), so by the scheduler: the same arithmetic as the
domain pairs (warmup.schedule, on a WarmupConfig whose schedule is the egress one), with
the address in PairState.sender_domain. Persisted in `ip_warmup` by warmup.ledger.

Must never: do I/O, or await.
"""
from __future__ import annotations

import dataclasses
import logging
import math

from smtprelay.clock import Clock
from smtprelay.config import Config
from smtprelay.config.model import WarmupConfig
from smtprelay.http.metrics import Metrics
from smtprelay.warmup import schedule as W

log = logging.getLogger("smtprelay.warmup")


def ip_warmup_config(config: Config) -> WarmupConfig:
    """The [warmup] settings with the egress schedule in place of every provider's own: the
    caps and days of an address's ramp (max_daily, the time zone and backoff stay [warmup]'s)."""
    warmup = config.warmup
    schedule = config.egress.warmup_schedule or warmup.schedule
    overrides = {name: dataclasses.replace(o, schedule=None) for name, o in warmup.overrides.items()}
    return dataclasses.replace(warmup, schedule=schedule, overrides=overrides)


class IpWarmup:
    def __init__(self, config: Config, clock: Clock, metrics: Metrics):
        self.clock = clock
        self.metrics = metrics
        self.pairs: dict[tuple[str, str], W.PairState] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.settings = ip_warmup_config(config)

    def load(self, pair: W.PairState) -> None:
        self.pairs[(pair.sender_domain, pair.provider)] = pair

    def pair(self, address: str, provider: str, now: float) -> W.PairState:
        key = (address, provider)
        today = W.local_day(now, self.settings.timezone)
        found = self.pairs.get(key)
        if found is None:
            found = self.pairs[key] = W.PairState(address, provider, day_date=today)
            self.dirty.add(key)
        elif found.day_date != today:
            if W.roll(found, today):
                log.info("warm-up: address %s at %s is on day %d", address, provider, found.day)
            self.dirty.add(key)
        return found

    def room(self, address: str, provider: str, now: float) -> tuple[int | None, float, str]:
        """(recipients left today, None: uncapped; 0 with until and why when it cannot send now)."""
        pair = self.pair(address, provider, now)
        if pair.paused_until > now:
            return 0, pair.paused_until, f"{address} paused at {provider} by backoff: {pair.pause_reason}"
        left = W.remaining(pair, self.settings)
        if left == 0:
            return 0, W.next_day_start(now, self.settings.timezone), \
                (f"warm-up budget of {address} at {provider} used: day {pair.day} cap "
                 f"{W.cap_today(pair, self.settings)}")
        return left, 0.0, ""

    def take(self, address: str, provider: str, now: float) -> bool:
        """One recipient goes out from `address`; True when its budget is capped (persist first)."""
        pair = self.pair(address, provider, now)
        pair.used += 1
        self.dirty.add((address, provider))
        return W.remaining(pair, self.settings) is not None

    def refund(self, address: str, provider: str) -> None:
        pair = self.pairs.get((address, provider))
        if pair is not None and pair.used > 0:
            pair.used -= 1
            self.dirty.add((address, provider))

    def backoff(self, address: str, provider: str, reply: str, now: float) -> float:
        """A reputation reply on this address: pause the pair (doubling on repeats); the pause."""
        pair = self.pair(address, provider, now)
        warmup = self.config.warmup
        pair.backoff_step += 1
        pause = W.backoff_pause(pair.backoff_step, warmup.backoff_initial, warmup.backoff_max)
        pair.paused_until = now + pause
        pair.pause_reason = f"{provider} answered {reply}"[:300]
        self.dirty.add((address, provider))
        log.warning("warm-up: address %s at %s paused for %ds (backoff step %d): %s", address, provider, int(pause),
                    pair.backoff_step, pair.pause_reason)
        return pause

    def succeeded(self, address: str, provider: str) -> None:
        pair = self.pairs.get((address, provider))
        if pair is not None and pair.backoff_step:
            pair.backoff_step = 0
            self.dirty.add((address, provider))

    def lift_pauses(self, provider: str | None, now: float) -> int:
        lifted = 0
        for key, pair in self.pairs.items():
            if pair.paused_until > now and (provider is None or key[1] == provider):
                pair.paused_until, pair.backoff_step = 0.0, 0
                self.dirty.add(key)
                lifted += 1
        return lifted

    def apply_day_override(self, address: str, provider: str, day: int) -> None:
        pair = self.pair(address, provider, self.clock.now())
        pair.day = day
        self.dirty.add((address, provider))
        log.info("warm-up: address %s at %s set to day %d by an operator", address, provider, day)

    def update_gauges(self) -> None:
        """warmup_remaining{ip,provider} for named providers (bounded cardinality)."""
        now = self.clock.now()
        for (address, provider), pair in list(self.pairs.items()):
            if provider in self.config.warmup.providers:
                self.pair(address, provider, now)
                left = W.remaining(pair, self.settings)
                self.metrics.warmup_remaining.labels(sender_domain="", provider=provider, ip=address).set(
                    math.inf if left is None else left)
