"""The scheduler's side of egress pools (issue 19): placing a recipient on a source address
(or making it wait), connecting from that address with its HELO name, and taking a reload of
the pools (names looked up, the waiting mail routed again).

Part of the Scheduler (a mixin, for size): the state is the scheduler's `Egress`
(delivery.egress), which decides without awaiting; this is the awaiting around it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import dns.exception
import dns.reversename

from smtprelay.clock import Clock
from smtprelay.config import Config
from smtprelay.delivery.client import ConnectFailure, Connection, SmtpTransport
from smtprelay.delivery.egress import Egress, Wait
from smtprelay.delivery.mx import MxResolver
from smtprelay.queue import jobs
from smtprelay.queue.destination import Destination
from smtprelay.queue.jobs import Work
from smtprelay.queue.store import QueueStore, StoreUnavailable

log = logging.getLogger("smtprelay.delivery")


class EgressSeam:
    config: Config
    store: QueueStore
    clock: Clock
    egress: Egress
    resolver: MxResolver
    transport: SmtpTransport

    if TYPE_CHECKING:
        def wake(self) -> None: ...

    def _place(self, work: Work, now: float, waits: list[tuple[Work, float, str]],
               expired: dict[str, list[tuple[Work, str]]]) -> bool:
        """Stamp the source address `work` goes out from; False when it must wait (added to
        `waits`) or waited past warmup.max_wait (added to `expired`, per message)."""
        source = self.egress.choose(work, None, now)
        if isinstance(source, Wait):     # no address of its pool can send (and no fallback)
            max_wait = self.config.warmup.max_wait
            if work.throttled_for >= max_wait:
                expired.setdefault(work.message_id, []).append(
                    (work, f"waited longer than warmup.max_wait for an egress address ({source.reason})"))
            else:
                waits.append((work, min(source.until, now + max_wait - work.throttled_for), source.reason))
            return False
        work.egress_pool = source.pool
        work.source = source.address.address if source.address is not None else ""
        return True

    async def _connect(self, dest: Destination) -> Connection | ConnectFailure:
        return await self.transport.connect(dest.hop.hosts, dest.policy, dest.source,
                                            self.egress.helo.get(dest.source) if dest.source else None)

    async def _egress_changed(self) -> None:
        """New pools or addresses (a host that now owns one): names looked up, and the mail
        waiting for an egress address routed again now rather than at its next look."""
        await self._egress_names()
        try:
            await self.store.run(jobs.wake_throttled(self.clock.now()))
        except StoreUnavailable as exc:
            log.error("egress reload: could not requeue the throttled mail now (%s); it is looked at when due", exc)
        self.wake()

    async def _egress_names(self) -> None:
        """The HELO name of each pool address without one in relay.toml: its PTR when it has
        one (receivers compare the two), else server.hostname."""
        for address in self.egress.needs_ptr():
            name = None
            try:
                answer = await self.resolver.resolver.resolve(dns.reversename.from_address(address), "PTR")
                name = str(answer[0].target).rstrip(".") or None   # type: ignore[attr-defined]
            except dns.exception.DNSException:
                pass
            self.egress.set_ptr(address, name)
            log.info("egress: %s says EHLO %s%s", address, self.egress.helo.get(address),
                     "" if name else " (no PTR record: server.hostname)")
