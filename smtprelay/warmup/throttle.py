"""The warm-up throttle: sending budget, reputation and backoff per (sender domain,
mailbox provider), owned by the scheduler.

Owns (in memory, persisted through the store by the scheduler): every pair's warm-up day,
today's usage, freeze and pause; the rolling 24 h reputation counters per sender domain
and per pair; which sender domains are suspended; the per-provider hourly counters and
connection counts. The scheduler is its only caller, on the event loop, with no await
between a decision and its bookkeeping: that is what makes the budget exact with any
number of delivery workers. The front end only reports RCPT requests to it.

Decisions:
- admit: a recipient goes out only while its pair has budget left today (and its provider
  hour, with `max_per_hour`); otherwise it waits as `throttled` until the budget resets.
  Waiting recipients get tickets per (pair, account) spaced 0.1 ms apart past the reset,
  so after the reset the accounts take turns, each oldest first.
- reputation: hard-bounce or complaint rate above the hold thresholds (per domain or per
  pair, with `reputation.min_sample`) freezes the pair's ramp and halves today's rest;
  blocklisted recipients at or above `blocklisted_suspend` of requests suspend the domain.
- backoff: a 4xx reply of class reputation (421, 4.7.x, the configured phrases) pauses the
  pair for a time that doubles on repeats and resets after a success.

Must never: do I/O, or await.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from smtprelay.clock import Clock
from smtprelay.config import Config
from smtprelay.delivery.outcome import BounceClass, Reply, Result, is_greylisting
from smtprelay.http.metrics import Metrics
from smtprelay.warmup import schedule as W
from smtprelay.warmup.ip_pairs import IpWarmup
from smtprelay.queue.jobs import Work

log = logging.getLogger("smtprelay.warmup")

ATTEMPTS, INVALID, DELIVERED, COMPLAINTS, REQUESTS, BLOCKLISTED = range(6)
TICKET_SPACING = 0.0001   # seconds between waiting recipients' turns after a reset
REROUTE_SECONDS = 5.0     # a pool address out of budget: its recipient is routed again this soon
WINDOW_HOURS = 24


class Rolling:
    """Counts in hourly buckets over the last 24 hours."""
    __slots__ = ("buckets", "totals", "_expired_at")

    def __init__(self) -> None:
        self.buckets: dict[int, list[int]] = {}
        self.totals = [0] * 6
        self._expired_at = -1

    def add(self, hour: int, index: int, n: int = 1) -> None:
        bucket = self.buckets.get(hour)
        if bucket is None:
            bucket = self.buckets[hour] = [0] * 6
        bucket[index] += n
        self.totals[index] += n

    def expire(self, hour: int) -> None:
        if hour == self._expired_at:
            return
        self._expired_at = hour
        for old in [h for h in self.buckets if h <= hour - WINDOW_HOURS]:
            for i, n in enumerate(self.buckets.pop(old)):
                self.totals[i] -= n

    def total(self, index: int, hour: int) -> int:
        self.expire(hour)
        return self.totals[index]


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of a pair's or domain's warm-up state: an event, a log line and a metric."""
    kind: str                  # frozen, unfrozen, paused, suspended, resumed, day_advanced
    sender_domain: str
    provider: str | None
    at: float
    reason: str


@dataclass(slots=True)
class Admission:
    take: list[Work] = field(default_factory=list)
    wait: list[tuple[Work, float, str]] = field(default_factory=list)    # until, why
    hold: list[tuple[Work, str]] = field(default_factory=list)           # sender domain suspended
    expire: list[tuple[Work, str]] = field(default_factory=list)         # waited past warmup.max_wait
    persist: bool = False      # a capped budget was consumed: write it before sending


def is_backoff_reply(reply: Reply, klass: BounceClass | None, patterns: tuple[str, ...]) -> bool:
    if not 400 <= reply.code < 500 or is_greylisting(reply):
        return False
    if reply.code == 421 or klass is BounceClass.REPUTATION or (reply.enhanced or "").startswith("4.7."):
        return True
    text = reply.text.lower()
    return any(p in text for p in patterns)


class Throttle:
    def __init__(self, config: Config, clock: Clock, metrics: Metrics):
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.pairs: dict[tuple[str, str], W.PairState] = {}
        self.pair_stats: dict[tuple[str, str], Rolling] = {}
        self.domain_stats: dict[str, Rolling] = {}
        self.domain_breach: dict[str, str | None] = {}
        self.suspended: dict[str, str] = {}
        self.hours: dict[str, list[int]] = {}               # provider → [hour, used]
        self.provider_active: dict[str, int] = {}
        self.domain_providers: dict[str, str] = {}          # recipient domain → provider (complaints)
        self._tickets: dict[tuple[str, str, int | None], int] = {}
        self._ticket_day = ""
        # What the scheduler must write (it drains these into store jobs).
        self.dirty_pairs: set[tuple[str, str]] = set()
        self.dirty_hours: set[str] = set()
        self.dirty_requests: set[tuple[str, int]] = set()
        self.transitions: list[Transition] = []
        self.new_suspensions: list[tuple[str, str]] = []
        self.ips = IpWarmup(config, clock, metrics)      # per source address (issue 19)

    @property
    def enabled(self) -> bool:
        return self.config.warmup.enabled

    # -- loading -----------------------------------------------------------------------------
    def load_pair(self, pair: W.PairState) -> None:
        self.pairs[(pair.sender_domain, pair.provider)] = pair

    def load_hour(self, provider: str, hour: int, used: int) -> None:
        self.hours[provider] = [hour, used]

    def load_attempt(self, sender_domain: str, provider: str | None, result: str, bounce_class: str | None,
                     at: float) -> None:
        hour = W.hour_index(at)
        for stats in self._stats(sender_domain, provider):
            stats.add(hour, ATTEMPTS)
            if result == "delivered":
                stats.add(hour, DELIVERED)
            elif result == "bounced" and bounce_class == BounceClass.INVALID_ADDRESS.value:
                stats.add(hour, INVALID)

    def load_requests(self, sender_domain: str, hour: int, requests: int, blocklisted: int) -> None:
        stats = self._domain_stats(sender_domain)
        stats.add(hour, REQUESTS, requests)
        stats.add(hour, BLOCKLISTED, blocklisted)

    def set_suspended(self, suspended: dict[str, str]) -> list[str]:
        """The store's view of suspended domains (after `domain resume`); returns the resumed ones."""
        pending = {d for d, _ in self.new_suspensions}   # decided here, not saved yet: still suspended
        resumed = [d for d in self.suspended if d not in suspended and d not in pending]
        for domain in resumed:
            # A fresh sample after an operator's resume: the old requests no longer count.
            stats = self._domain_stats(domain)
            for hour, bucket in list(stats.buckets.items()):
                stats.add(hour, REQUESTS, -bucket[REQUESTS])
                stats.add(hour, BLOCKLISTED, -bucket[BLOCKLISTED])
                self.dirty_requests.add((domain, hour))
            self._transition("resumed", domain, None, "an operator ran 'smtprelay domain resume'")
        self.suspended = {**{d: self.suspended[d] for d in pending if d in self.suspended}, **suspended}
        return resumed

    def apply_day_override(self, sender_domain: str, provider: str, day: int) -> None:
        pair = self._pair(sender_domain, provider, W.local_day(self.clock.now(), self.config.warmup.timezone))
        pair.day = day
        self.dirty_pairs.add((sender_domain, provider))
        log.info("warm-up: %s at %s set to day %d by an operator", sender_domain, provider, day)

    # -- admission ---------------------------------------------------------------------------
    def wants(self, works: list[Work], now: float) -> dict[tuple[str, str], tuple[int, int]]:
        """Cluster mode: the capped budget this batch could use per pair, with the pair's cap today
        (what to ask Redis for before `admit`)."""
        if not self.enabled:
            return {}
        cfg = self.config.warmup
        today = W.local_day(now, cfg.timezone)
        wanted: dict[tuple[str, str], tuple[int, int]] = {}
        for work in works:
            if not work.sender_domain or work.sender_domain in self.suspended:
                continue
            pair = self._pair(work.sender_domain, work.provider, today)
            cap = W.cap_today(pair, cfg)
            if cap is not None:
                key = (work.sender_domain, work.provider)
                wanted[key] = (wanted.get(key, (0, cap))[0] + 1, cap)
        return wanted

    def admit(self, works: list[Work], now: float, grants: dict[tuple[str, str], int] | None = None) -> Admission:
        """`grants` (cluster mode): the capped budget Redis granted this batch per pair, used
        first-come and decremented here; a capped pair without one waits as if its budget were used."""
        result = Admission()
        if not self.enabled:
            result.take = works
            return result
        cfg = self.config.warmup
        today = W.local_day(now, cfg.timezone)
        if today != self._ticket_day:
            self._tickets.clear()
            self._ticket_day = today
        for work in works:
            domain = work.sender_domain
            if not domain:            # bounces (null sender) are not anybody's warm-up
                result.take.append(work)
                continue
            if domain in self.suspended:
                result.hold.append((work, f"sending for {domain} is suspended: {self.suspended[domain]}"))
                continue
            pair = self._pair(domain, work.provider, today)
            wait: tuple[float, str] | None = None
            ip_left: int | None = None
            if work.source:
                ip_left, ip_until, ip_why = self.ips.room(work.source, work.provider, now)
            if pair.paused_until > now:
                wait = (pair.paused_until, f"paused by backoff: {pair.pause_reason}")
            elif work.source and ip_left == 0:
                # Looked at again soon: routing picks another address of the pool, falls back,
                # or keeps it waiting until the budget resets.
                wait = (min(ip_until, now + REROUTE_SECONDS), ip_why)
            else:
                left = W.remaining(pair, cfg)
                if grants is not None and left is not None:
                    left = min(left, grants.get((domain, work.provider), 0))
                hour = self._hour(work.provider, now)
                per_hour = cfg.settings(work.provider).max_per_hour
                if left == 0:
                    wait = (W.next_day_start(now, cfg.timezone),
                            f"warm-up budget used: day {pair.day} cap {W.cap_today(pair, cfg)} for {domain} at "
                            f"{work.provider}")
                elif per_hour is not None and hour[1] >= per_hour:
                    wait = ((hour[0] + 1) * 3600.0, f"{work.provider} max_per_hour {per_hour} reached")
                else:
                    pair.used += 1
                    if grants is not None and left is not None:
                        grants[(domain, work.provider)] -= 1
                    hour[1] += 1
                    self.dirty_pairs.add((domain, work.provider))
                    if per_hour is not None:
                        self.dirty_hours.add(work.provider)
                    ip_capped = bool(work.source) and self.ips.take(work.source, work.provider, now)
                    result.persist = result.persist or left is not None or per_hour is not None or ip_capped
                    result.take.append(work)
                    continue
            until, why = wait
            waited = work.throttled_for
            if waited >= cfg.max_wait:
                result.expire.append((work, f"waited longer than warmup.max_wait for sending budget ({why})"))
                continue
            key = (domain, work.provider, work.account_id)
            ticket = self._tickets.get(key, 0) + 1
            self._tickets[key] = ticket
            until = min(until + ticket * TICKET_SPACING, now + (cfg.max_wait - waited))
            result.wait.append((work, until, why))
        return result

    def refund(self, works: list[Work]) -> None:
        """Give back budget taken for recipients that were not sent after all (store failure)."""
        today = W.local_day(self.clock.now(), self.config.warmup.timezone)
        for work in works:
            pair = self.pairs.get((work.sender_domain, work.provider))
            if pair is not None and pair.day_date == today and pair.used > 0:
                pair.used -= 1
                self.dirty_pairs.add((work.sender_domain, work.provider))
            if work.source:
                self.ips.refund(work.source, work.provider)

    def connection_room(self, provider: str | None) -> bool:
        if provider is None:
            return True
        limit = self.config.warmup.settings(provider).max_connections
        return limit is None or self.provider_active.get(provider, 0) < limit

    # -- outcomes ----------------------------------------------------------------------------
    def observe(self, decided: list[tuple[Work, Result, Reply, BounceClass | None]], now: float) -> bool:
        """Count one transaction's outcomes; True when a pair went into backoff (cut concurrency)."""
        if not self.enabled:
            return False
        hour = W.hour_index(now)
        backed_off = False
        touched: set[tuple[str, str]] = set()
        backoff: dict[tuple[str, str], Reply] = {}
        delivered: set[tuple[str, str]] = set()
        patterns = self.config.warmup.backoff_patterns
        domains_only: set[str] = set()
        ip_backoff: dict[tuple[str, str], Reply] = {}
        ip_delivered: set[tuple[str, str]] = set()
        for work, result, reply, klass in decided:
            if not work.sender_domain:
                continue
            provider = work.provider or None   # None: never routed (unroutable domain)
            for stats in self._stats(work.sender_domain, provider):
                stats.add(hour, ATTEMPTS)
                if result is Result.DELIVERED:
                    stats.add(hour, DELIVERED)
                elif result is Result.BOUNCED and klass is BounceClass.INVALID_ADDRESS:
                    stats.add(hour, INVALID)
            if provider is None:
                domains_only.add(work.sender_domain)
                continue
            key = (work.sender_domain, provider)
            touched.add(key)
            if work.source:   # a pool address: the provider judged the address, and it alone pauses
                if result is Result.DELIVERED:
                    ip_delivered.add((work.source, provider))
                elif result in (Result.DEFERRED, Result.EXPIRED) and is_backoff_reply(reply, klass, patterns):
                    ip_backoff[(work.source, provider)] = reply
                continue
            if result is Result.DELIVERED:
                delivered.add(key)
            elif result in (Result.DEFERRED, Result.EXPIRED) and is_backoff_reply(reply, klass, patterns):
                backoff[key] = reply
        today = W.local_day(now, self.config.warmup.timezone)
        for key, reply in backoff.items():   # once per transaction, not once per recipient
            pair = self._pair(key[0], key[1], today)
            pair.backoff_step += 1
            pause = W.backoff_pause(pair.backoff_step, self.config.warmup.backoff_initial,
                                    self.config.warmup.backoff_max)
            pair.paused_until = now + pause
            pair.pause_reason = f"{key[1]} answered {reply}"[:300]
            self.dirty_pairs.add(key)
            backed_off = True
            self._transition("paused", key[0], key[1], f"for {int(pause)}s (backoff step {pair.backoff_step}): "
                                                       f"{pair.pause_reason}")
        for (address, provider), reply in ip_backoff.items():
            self.ips.backoff(address, provider, str(reply), now)
            backed_off = True
        for address, provider in ip_delivered - set(ip_backoff):
            self.ips.succeeded(address, provider)
        for key in delivered - set(backoff):
            succeeded = self.pairs.get(key)
            if succeeded is not None and succeeded.backoff_step:
                succeeded.backoff_step = 0
                self.dirty_pairs.add(key)
        for key in touched:
            self._evaluate(key[0], key[1], now)
        for domain in domains_only - {k[0] for k in touched}:
            self._evaluate(domain, None, now)
        return backed_off

    def lift_pauses(self, recipient_domain: str | None) -> int:
        """`queue flush [DOMAIN]`: backoff pauses end now — every pair's, or those at the mailbox
        provider DOMAIN's mail goes to (known from earlier deliveries; else DOMAIN's own key).
        Returns how many pairs were paused."""
        now = self.clock.now()
        provider = None if recipient_domain is None else self.domain_providers.get(recipient_domain,
                                                                                    recipient_domain)
        lifted = 0
        for key, pair in self.pairs.items():
            if pair.paused_until > now and (provider is None or key[1] == provider):
                pair.paused_until, pair.backoff_step = 0.0, 0
                self.dirty_pairs.add(key)
                lifted += 1
                self._transition("resumed", key[0], key[1], "backoff pause lifted by queue flush")
        return lifted + self.ips.lift_pauses(provider, now)

    def note_request(self, sender_domain: str, blocklisted: bool) -> None:
        """A RCPT for mail from this domain (from the front end); blocklisted when refused so."""
        if not self.enabled or not sender_domain:
            return
        hour = W.hour_index(self.clock.now())
        stats = self._domain_stats(sender_domain)
        stats.add(hour, REQUESTS)
        if blocklisted:
            stats.add(hour, BLOCKLISTED)
        self.dirty_requests.add((sender_domain, hour))
        if blocklisted and sender_domain not in self.suspended:
            rep = self.config.reputation
            requests = stats.total(REQUESTS, hour)
            listed = stats.total(BLOCKLISTED, hour)
            if requests >= rep.min_sample and listed / requests >= rep.blocklisted_suspend:
                why = (f"{listed} of {requests} recipients in 24 h were blocklisted ({listed / requests:.1%}, "
                       f"reputation.blocklisted_suspend {rep.blocklisted_suspend:.0%})")
                self.suspended[sender_domain] = why
                self.new_suspensions.append((sender_domain, why))
                self._transition("suspended", sender_domain, None, why)

    def note_complaint(self, sender_domain: str, recipient_domain: str, at: float) -> None:
        provider = self.domain_providers.get(recipient_domain)
        hour = W.hour_index(at)
        for stats in self._stats(sender_domain, provider):
            stats.add(hour, COMPLAINTS)
        if self.enabled:
            self._evaluate(sender_domain, provider, self.clock.now())

    def note_late_bounce(self, sender_domain: str, recipient_domain: str, bounce_class: str | None,
                         was_delivered: bool, at: float) -> None:
        """A bounce that came back after the transaction (issue 18): a delivery counted earlier
        is taken back, and a hard bounce counts toward the bounce rate as during delivery."""
        provider = self.domain_providers.get(recipient_domain)
        hour = W.hour_index(at)
        for stats in self._stats(sender_domain, provider):
            if was_delivered:
                stats.add(hour, DELIVERED, -1)
            else:
                stats.add(hour, ATTEMPTS)
            if bounce_class == BounceClass.INVALID_ADDRESS.value:
                stats.add(hour, INVALID)
        if self.enabled:
            self._evaluate(sender_domain, provider, self.clock.now())

    # -- reputation --------------------------------------------------------------------------
    def _breach(self, stats: Rolling, hour: int) -> str | None:
        rep = self.config.reputation
        attempts, invalid = stats.total(ATTEMPTS, hour), stats.total(INVALID, hour)
        if attempts >= rep.min_sample and invalid / attempts > rep.bounce_hold:
            return (f"hard-bounce rate {invalid / attempts:.1%} ({invalid} of {attempts} in 24 h) above "
                    f"reputation.bounce_hold {rep.bounce_hold:.1%}")
        delivered, complaints = stats.total(DELIVERED, hour), stats.total(COMPLAINTS, hour)
        if delivered >= rep.min_sample and complaints / delivered > rep.complaint_hold:
            return (f"complaint rate {complaints / delivered:.2%} ({complaints} of {delivered} in 24 h) above "
                    f"reputation.complaint_hold {rep.complaint_hold:.2%}")
        return None

    def _evaluate(self, sender_domain: str, provider: str | None, now: float) -> None:
        hour = W.hour_index(now)
        domain_why = self._breach(self._domain_stats(sender_domain), hour)
        keys: list[tuple[str, str]] = []
        if domain_why != self.domain_breach.get(sender_domain):
            self.domain_breach[sender_domain] = domain_why
            keys = [k for k in self.pairs if k[0] == sender_domain]   # the domain's verdict changed
        elif provider is not None:
            keys = [(sender_domain, provider)]
        today = W.local_day(now, self.config.warmup.timezone)
        for key in keys:
            stats = self.pair_stats.get(key)
            why = (self._breach(stats, hour) if stats is not None else None) or \
                (f"sender domain {sender_domain}: {domain_why}" if domain_why else None)
            pair = self._pair(key[0], key[1], today)
            if why is not None and pair.frozen is None:
                W.freeze(pair, self.config.warmup, why)
                self.dirty_pairs.add(key)
                self._transition("frozen", key[0], key[1], why + "; today's remaining budget halved")
            elif why is None and pair.frozen is not None:
                pair.frozen = None
                self.dirty_pairs.add(key)
                self._transition("unfrozen", key[0], key[1], "rates back under the hold thresholds")

    # -- internals ---------------------------------------------------------------------------
    def _pair(self, sender_domain: str, provider: str, today: str) -> W.PairState:
        key = (sender_domain, provider)
        pair = self.pairs.get(key)
        if pair is None:
            pair = self.pairs[key] = W.PairState(sender_domain, provider, day_date=today)
            self.dirty_pairs.add(key)
        elif pair.day_date != today:
            if W.roll(pair, today):
                self._transition("day_advanced", sender_domain, provider, f"warm-up day {pair.day}")
            self.dirty_pairs.add(key)
        return pair

    def _hour(self, provider: str, now: float) -> list[int]:
        hour = W.hour_index(now)
        state = self.hours.get(provider)
        if state is None or state[0] != hour:
            state = self.hours[provider] = [hour, 0]
        return state

    def _domain_stats(self, sender_domain: str) -> Rolling:
        stats = self.domain_stats.get(sender_domain)
        if stats is None:
            stats = self.domain_stats[sender_domain] = Rolling()
        return stats

    def _stats(self, sender_domain: str, provider: str | None) -> list[Rolling]:
        result = [self._domain_stats(sender_domain)]
        if provider is not None:
            key = (sender_domain, provider)
            stats = self.pair_stats.get(key)
            if stats is None:
                stats = self.pair_stats[key] = Rolling()
            result.append(stats)
        return result

    def update_gauges(self) -> None:
        """warmup_remaining for named providers only (bounded cardinality); called every 10 s."""
        if not self.enabled:
            return
        today = W.local_day(self.clock.now(), self.config.warmup.timezone)
        for (domain, provider), pair in list(self.pairs.items()):
            if provider in self.config.warmup.providers:
                self._pair(domain, provider, today)   # roll over first: a new day has a new budget
                left = W.remaining(pair, self.config.warmup)
                self.metrics.warmup_remaining.labels(sender_domain=domain, provider=provider, ip="").set(
                    math.inf if left is None else left)
        self.ips.update_gauges()

    def _transition(self, kind: str, sender_domain: str, provider: str | None, reason: str) -> None:
        self.transitions.append(Transition(kind, sender_domain, provider, self.clock.now(), reason))
        self.metrics.warmup_transitions.labels(transition=kind).inc()
        level = logging.INFO if kind in ("day_advanced", "unfrozen", "resumed") else logging.WARNING
        log.log(level, "warm-up: %s%s %s: %s", sender_domain, f" at {provider}" if provider else "", kind, reason,
                extra={"fields": {"sender_domain": sender_domain, "provider": provider, "transition": kind}})
