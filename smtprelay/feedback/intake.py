"""The back end's side of the feedback listener (issue 18): which recipients it takes, and
what an accepted mail does — parsed in a thread, kept and applied in one store job
(feedback.receive), then the metric, the throttle's reputation counts and the gate's
blocklist follow.

Owns: nothing stored. Must never: speak SMTP (feedback.listener does).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from smtprelay.clock import Clock
from smtprelay.config import Config, ListenerConfig
from smtprelay.feedback.keys import load_secrets
from smtprelay.cluster.lookup import ClusterEvents
from smtprelay.feedback import verp
from smtprelay.feedback.parse import Report, parse
from smtprelay.feedback.receive import Inbound, receive
from smtprelay.http.metrics import Metrics
from smtprelay.queue.jobs import AutoBlock
from smtprelay.queue.readers import StoreReader
from smtprelay.queue.store import QueueStore, StoreUnavailable
from smtprelay.warmup.throttle import Throttle

log = logging.getLogger("smtprelay.feedback")


class FeedbackIntake:
    def __init__(self, config: Callable[[], Config], store: QueueStore, reader: StoreReader, clock: Clock,
                 metrics: Metrics, throttle: Throttle, blocklist_changed: Callable[[], Awaitable[None]],
                 unsubscribe_secret: bytes):
        self.config = config
        self.store = store
        self.reader = reader
        self.clock = clock
        self.metrics = metrics
        self.throttle = throttle
        self.blocklist_changed = blocklist_changed
        self.unsubscribe_secret = unsubscribe_secret
        self.verp_secrets = load_secrets(config())
        self.cluster: ClusterEvents | None = None      # cluster mode: reports on other nodes' mail go there

    def _unsubscribe_mailbox(self, address: str) -> bool:
        mailto = self.config().tracking.unsubscribe_mailto
        return bool(mailto) and address.strip("<>").lower() == str(mailto).lower()

    async def accepts(self, address: str) -> bool:
        """A bounce address of a registered sender domain (verified, or failing in its grace),
        or the unsubscribe mailbox."""
        if self._unsubscribe_mailbox(address):
            return True
        local, _, domain = address.strip("<>").rpartition("@")
        host = self.config().domains.return_path_host.lower() + "."
        domain = domain.lower().rstrip(".")
        if not local or not domain.startswith(host):
            return False
        row = await self.reader.row("SELECT status FROM domains WHERE name = ?", (domain[len(host):],))
        return row is not None and row[0] in ("verified", "failing")

    async def apply(self, listener: ListenerConfig, peer: str, mail_from: str, rcpt_to: tuple[str, ...],
                    raw: bytes) -> str:
        return await self._apply(listener.name, peer, mail_from, rcpt_to, raw)

    async def apply_handed(self, from_node: str, peer: str, mail_from: str, rcpt_to: tuple[str, ...],
                           raw: bytes) -> str:
        """A report another node's feedback listener received about this node's mail (cluster.mirror)."""
        return await self._apply(f"node {from_node}", peer, mail_from, rcpt_to, raw)

    async def _apply(self, listener: str, peer: str, mail_from: str, rcpt_to: tuple[str, ...], raw: bytes) -> str:
        config = self.config()
        unsubscribe = any(self._unsubscribe_mailbox(r) for r in rcpt_to)
        report = None if unsubscribe else await asyncio.to_thread(parse, raw)
        now = self.clock.now()
        if report is not None and self.cluster is not None:
            relayed = await self._hand_over(report, peer, mail_from, rcpt_to, raw)
            if relayed is not None:
                return relayed
        mail = Inbound(listener, peer, mail_from, rcpt_to, raw, now)
        try:
            done = await self.store.run(receive(mail, report, self.unsubscribe_secret, self.verp_secrets,
                                                AutoBlock.of(config.blocklist)))
        except StoreUnavailable as exc:
            log.error("feedback: from [%s]: could not keep the mail (%s); the sender tries again", peer, exc)
            return "451 4.3.0 Cannot store the message now, try again later"
        self.metrics.feedback_messages.labels(type=done.type, result=done.result).inc()
        for sender_domain, address, klass, state in done.bounces:
            self.throttle.note_late_bounce(sender_domain, address.rpartition("@")[2].lower(), klass,
                                           state == "delivered", now)
        if done.blocklist_changed:
            await self.blocklist_changed()
        log.info("feedback %d: from=<%s> [%s] to=<%s>: %s, %s%s", done.feedback_id, mail_from, peer,
                 ",".join(rcpt_to), done.type, done.result,
                 f" ({done.queue_id} to=<{done.recipient}>)" if done.queue_id else "",
                 extra={"fields": {"feedback_id": done.feedback_id, "type": done.type, "result": done.result,
                                   "queue_id": done.queue_id}})
        return f"250 2.0.0 Ok: feedback {done.feedback_id}"

    async def _hand_over(self, report: Report, peer: str, mail_from: str, rcpt_to: tuple[str, ...],
                         raw: bytes) -> str | None:
        """Cluster mode: a report whose VERP token names a message another node accepted goes to
        that node (through PostgreSQL) to be applied there, where the recipient is; the reply, or
        None to apply it here."""
        assert self.cluster is not None
        for address in (*rcpt_to, report.original_return_path, report.original_mail_from):
            if not address or not verp.looks_like(address):
                continue
            found = verp.parse(address, self.verp_secrets)
            if found is None:
                continue
            queue_id = found[0]
            if await self.reader.row("SELECT 1 FROM messages WHERE id = ?", (queue_id,)) is not None:
                return None         # this node's own message
            me = self.config().cluster.node
            node = await self.cluster.node_of(queue_id)
            if node is None or node == me:
                return None         # not known elsewhere: applied (or kept as unmatched) here
            if not await self.cluster.hand_over(node, me, peer, mail_from, rcpt_to, raw):
                return "451 4.3.0 Cannot hand the report to its node now, try again later"
            self.metrics.feedback_messages.labels(type=report.kind, result="relayed").inc()
            log.info("feedback: from=<%s> [%s] to=<%s>: about %s, handed to node %s", mail_from, peer,
                     ",".join(rcpt_to), queue_id, node)
            return f"250 2.0.0 Ok: handed to node {node}"
        return None
