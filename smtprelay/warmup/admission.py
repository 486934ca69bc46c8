"""The scheduler's side of warm-up: asking the throttle before each transaction, recording
who waits (`throttled`), who is held (suspended domain) and who expired (`warmup.max_wait`),
writing a capped budget before the transaction, and reading operator changes (set-day,
resume) and complaints from the store.

Part of the Scheduler (a mixin, for size): it owns no state of its own; the throttle's
state belongs to the scheduler, and all SQL is in queue.jobs and warmup.ledger.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Callable


from smtprelay.clock import Clock
from smtprelay.cluster.counters import SharedLimits, SharedUnavailable
from smtprelay.config import Config
from smtprelay.delivery.mx import NextHop
from smtprelay.delivery.outcome import BounceClass, Reply, Result
from smtprelay.queue import jobs
from smtprelay.warmup import ledger
from smtprelay.queue.jobs import Outcome, Work
from smtprelay.warmup.providers import provider_for
from smtprelay.queue.store import QueueStore, StoreUnavailable, recipient_domain
from smtprelay.warmup.schedule import local_day
from smtprelay.warmup.throttle import Admission, Throttle

log = logging.getLogger("smtprelay.delivery")


class WarmupSeam:
    config: Config
    store: QueueStore
    clock: Clock
    throttle: Throttle
    in_window: int
    _reader: sqlite3.Connection | None
    _warmup_generation: int
    _feedback_id: int
    shared: SharedLimits | None         # cluster mode: the warm-up budget is granted by Redis

    if TYPE_CHECKING:
        on_senders_change: Callable[[], None] | None

        def wake(self) -> None: ...
        async def _body(self, message_id: str) -> bytes | None: ...
        async def _finish(self, batch: list[Work], decided: Any, relay: str | None, tls: str | None,
                          duration: float, now: float, body: bytes | None, text: str | None = None) -> None: ...

    async def _save_throttle(self) -> None:
        suspending = bool(self.throttle.new_suspensions)
        job = ledger.save(self.throttle, self.clock.now())
        if job is not None:
            await self.store.run(job)
        if suspending and self.on_senders_change is not None:
            self.on_senders_change()          # the workers refuse MAIL for it now, not at their next poll

    async def _lift_pauses(self, domain: str | None) -> None:
        """`queue flush [DOMAIN]`: the backoff pauses at DOMAIN's provider (None: all) end, and
        the throttled mail is looked at again (the throttle decides anew)."""
        lifted = self.throttle.lift_pauses(domain)
        if lifted:
            await self.store.run(jobs.wake_throttled(self.clock.now()))
        log.info("queue flush: dead destinations are tried again; %d backoff pause(s) lifted%s", lifted,
                 f" at the provider of {domain}" if domain else "")

    async def _check_warmup(self) -> None:
        """Operator changes (set-day, resume) and new complaints, read from the store."""
        assert self._reader is not None
        generation = ledger.generation(self._reader)
        if generation != self._warmup_generation:
            self._warmup_generation = generation
            if self.throttle.set_suspended(ledger.suspended(self._reader)):
                self.wake()
            for domain, provider, day in ledger.overrides(self._reader):
                self.throttle.apply_day_override(domain, provider, day)
                await self.store.run(ledger.clear_override(domain, provider, day, self.clock.now()))
                self.wake()
            for address, provider, day in ledger.ip_overrides(self._reader):
                self.throttle.ips.apply_day_override(address, provider, day)
                await self.store.run(ledger.clear_ip_override(address, provider, day, self.clock.now()))
                self.wake()
        since = self.clock.now() - 86400
        for feedback_id, domain, address, at in ledger.complaints_since(self._reader, self._feedback_id):
            self._feedback_id = feedback_id
            if at > since:
                self.throttle.note_complaint(domain, recipient_domain(address), at)

    def _provider(self, hop: NextHop, domain: str) -> str:
        providers = self.config.warmup.providers
        if hop.key.startswith("route:"):   # no MX was looked up: judge the recipient domain itself
            return provider_for([domain], providers)
        return provider_for([h.name for h in hop.hosts], providers)

    async def _admit(self, batch: list[Work]) -> list[Work]:
        """Ask the throttle; record who waits or is held; persist a capped budget before sending."""
        now = self.clock.now()
        grants, day = await self._grants(batch, now)
        admission = self.throttle.admit(batch, now, grants)
        if grants and self.shared is not None:      # what the throttle did not use goes back at once
            await self.shared.give_back(grants, day)
        if admission.wait or admission.hold or admission.expire:
            await self._not_admitted(admission, now)
        if admission.take and admission.persist:
            suspending = bool(self.throttle.new_suspensions)
            job = ledger.save(self.throttle, now)
            try:
                if job is not None:
                    await self.store.run(job)
                    if suspending and self.on_senders_change is not None:
                        self.on_senders_change()
            except StoreUnavailable as exc:
                self.throttle.refund(admission.take)
                log.error("could not record the warm-up budget (%s); deferring without an attempt", exc)
                await self._record_quietly([Outcome(w.rcpt_id, w.message_id, "deferred", now, now + 60.0,
                                                    "451 4.3.0 store unavailable", None, None, None, None, None,
                                                    0.0, attempted=False) for w in admission.take])
                self.in_window -= len(admission.take)
                return []
        return admission.take

    async def _grants(self, batch: list[Work], now: float) -> tuple[dict[tuple[str, str], int] | None, str]:
        """Cluster mode (`[cluster] redis`): the warm-up budget this batch may use, granted by
        Redis over every node; None on a single node (or, with on_failure = "local", while Redis
        is away: this node's own budget)."""
        day = local_day(now, self.config.warmup.timezone)
        if self.shared is None:
            return None, day
        wants = self.throttle.wants(batch, now)
        if not wants:
            return {}, day
        try:
            return await self.shared.grants(wants, day), day
        except SharedUnavailable:
            if self.config.cluster.on_failure == "local":
                return None, day
            return {}, day      # fail closed: capped pairs wait (throttled), as with no budget

    async def _record_quietly(self, outcomes: list[Outcome]) -> None:
        try:
            await self.store.run(jobs.record(outcomes, []))
        except StoreUnavailable as exc:  # leased: they come back when the lease expires
            log.error("could not record outcomes (%s); they will be retried", exc)

    async def _not_admitted(self, admission: Admission, now: float) -> None:
        """Waiting for budget or a backoff (throttled), or held for a suspension: no attempt."""
        outcomes = []
        for work, until, why in admission.wait:
            outcomes.append(Outcome(work.rcpt_id, work.message_id, "throttled", now, until, why, None, None, None,
                                    None, None, 0.0, attempted=False))
            log.info("%s: to=<%s>, relay=none, delay=%.1f, status=throttled (%s; next try %s)", work.message_id,
                     work.address, now - work.created_at, why, time.strftime("%Y-%m-%d %H:%M:%S",
                                                                            time.gmtime(until)),
                     extra={"fields": {"queue_id": work.message_id, "result": "throttled"}})
        for work, why in admission.hold:
            outcomes.append(Outcome(work.rcpt_id, work.message_id, "hold", now, None, f"held: {why}", None, None,
                                    None, None, None, 0.0, attempted=False))
            log.warning("%s: to=<%s>, status=hold (%s)", work.message_id, work.address, why)
        if outcomes:
            await self._record_quietly(outcomes)
            self.in_window -= len(outcomes)
        if admission.expire:
            body = await self._body(admission.expire[0][0].message_id)
            reply_of = {w.rcpt_id: why for w, why in admission.expire}
            works = [w for w, _ in admission.expire]
            await self._finish(works, [(w, Result.EXPIRED, Reply(451, f"4.4.7 {reply_of[w.rcpt_id]}"),
                                        BounceClass.OTHER) for w in works], None, None, 0.0, now, body)
