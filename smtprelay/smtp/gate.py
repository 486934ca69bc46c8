"""The gate: the front end's state that must be exact across all worker processes, kept by
the back end and answered over the workers' channels.

Owns: the connection caps (total and per client address), the AUTH lockout, the sending
limits (per-recipient hourly reservations, rolling quota, per-second rate), the blocklist
check at RCPT and the sender-domain reputation notes it feeds the scheduler's throttle,
the `rejected` events, every front-end metric, and the hand-over of accepted messages to
the queue store. All of it runs on the back end's event loop without awaiting between a
check and its update, which is what makes 50 sessions on two workers get exactly 10 slots
of a recipient hourly cap of 10.

What each worker holds (open connections, reservation tokens) is tracked per channel, so a
worker that dies gives its connections and reservations back.

Must never: talk SMTP (the workers do), or block the loop.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from smtprelay.clock import Clock
from smtprelay.cluster.counters import Held, Refusal, SharedLimits, SharedUnavailable, send_id
from smtprelay.config import Config
from smtprelay.events import types as events
from smtprelay.http.metrics import Metrics
from smtprelay.logs import RepeatLimiter
from smtprelay.content.suspension import RULES, Strikes
from smtprelay.policy import verdict as V
from smtprelay.policy.blocklist import BlocklistView
from smtprelay.policy.limits import (AccountLimits, Reservation, SendLimiter, hourly_cap_verdict, quota_verdict,
                                     rate_verdict)
from smtprelay.policy.reputation import AccountRow, effective_limits
from smtprelay.queue import schema
from smtprelay.queue.store import QueuedMessage, QueueStore, SendsHistory, StoreUnavailable
from smtprelay.smtp.guards import AuthLockout, ConnectionLimiter

log = logging.getLogger("smtprelay.smtp")

MAX_PENDING_EVENTS = 100_000   # if the store is down for long, refusals beyond this are not recorded
OPS = frozenset({"open_connection", "close_connection", "auth", "rcpt", "release", "rejected", "enqueue", "content"})


@dataclass
class Peer:
    """What one worker holds: its open connections (by client address) and reservations."""
    name: str
    connections: dict[str, int] = field(default_factory=dict)
    tokens: set[int] = field(default_factory=set)
    gone: bool = False          # the worker died (an answer still on its way is given back)


class Gate:
    def __init__(self, config: Config, store: QueueStore, metrics: Metrics, clock: Clock):
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.limiter = ConnectionLimiter(config.limits.max_connections, config.limits.max_connections_per_client)
        self.lockout = AuthLockout(clock, config.auth.max_failures, config.auth.failure_window, config.auth.lockout)
        # Lines a client can repeat at will are summarized past a burst (a flood of 1 000
        # refused connections is 10 lines and a count, not 1 000 lines).
        self.repeats = RepeatLimiter(log, clock.monotonic)
        self.send_limits = SendLimiter(clock, config.limits.recipient_hourly_cap,
                                       SendsHistory(schema.reader(config.server.data_dir)))
        self.blocklist = BlocklistView([], set())
        self.account_rows: dict[int, AccountRow] = {}
        self.reservations: dict[int, Reservation] = {}
        self._next_token = 0
        # Told of every recipient request (sender domain, refused by the blocklist?): the
        # scheduler's throttle judges sender-domain reputation from it.
        self.on_request: Callable[[str, bool], None] | None = None
        # `rejected` events, written by the app within a second (refusals change no stored state).
        self.pending_events: list[tuple[Any, ...]] = []
        self.sessions = 0
        self.loop = asyncio.get_running_loop()   # built on the back end's loop; kept (getpid per lookup)
        # Virus/spam refusals per account (content.suspend_after within content.suspend_window):
        # past the threshold the app suspends the account (once; the strikes start over).
        self.strikes = Strikes()
        self.on_content_abuse: Callable[[int, int], None] | None = None
        # Cluster mode (`[cluster] redis`): the hourly cap and the quota are also reserved in
        # Redis, exact across nodes (cluster.counters); gate token → its reservation there.
        self.shared: SharedLimits | None = None
        self.catalog_available: Callable[[], bool] | None = None     # cluster mode: the mirror is in sync
        self.shared_held: dict[int, Held] = {}
        self._pending_asks: set[asyncio.Task[Any]] = set()

    def apply(self, config: Config) -> None:
        """Take over the reloadable parts of a new configuration (SIGHUP)."""
        self.config = config
        self.limiter.max_total = config.limits.max_connections
        self.limiter.max_per_client = config.limits.max_connections_per_client
        self.lockout.configure(config.auth.max_failures, config.auth.failure_window, config.auth.lockout)
        self.send_limits.hourly_cap = config.limits.recipient_hourly_cap

    def account_limits(self, account_id: int) -> AccountLimits:
        row = self.account_rows.get(account_id)
        if row is None:
            return AccountLimits(self.config.limits.account_daily_quota, self.config.limits.account_rate_per_second)
        return effective_limits(row, self.config)

    def quota_room(self, account_id: int) -> tuple[int, float | None]:
        """For a sending task (batch.runner), before each row: room left in the daily quota."""
        return self.send_limits.quota_room(account_id, self.account_limits(account_id))

    def rate(self, account_id: int) -> float:
        return self.account_limits(account_id).rate_per_second

    # -- calls from a worker (peer is that worker's bookkeeping) -----------------------------
    def handle(self, peer: Peer, op: str, args: tuple[Any, ...]) -> Any:
        if op not in OPS:
            raise ValueError(f"unknown operation {op}")
        return getattr(self, op)(peer, *args)

    def open_connection(self, peer: Peer, ip: str, listener: str) -> str | None:
        """None: go ahead; else the cap that refuses it ("per_client" or "total")."""
        refused = self.limiter.acquire(ip)
        if refused is not None:
            self.metrics.smtp_connections_refused.labels(reason=refused).inc()
            self.repeats.log(("connection", ip, refused), f"[{ip}]: connections refused ({refused.replace('_', '-')} cap)",
                             logging.WARNING, "[%s]: connection refused: too many connections (%s cap)", ip,
                             refused.replace("_", "-"))
            return refused
        peer.connections[ip] = peer.connections.get(ip, 0) + 1
        self.sessions += 1
        self.metrics.smtp_connections.labels(listener=listener).inc()
        self.metrics.smtp_sessions_active.inc()
        return None

    def close_connection(self, peer: Peer, ip: str) -> None:
        count = peer.connections.get(ip, 0)
        if count <= 0:
            return
        if count == 1:
            del peer.connections[ip]
        else:
            peer.connections[ip] = count - 1
        self.limiter.release(ip)
        self.sessions -= 1
        self.metrics.smtp_sessions_active.dec()

    def auth(self, peer: Peer, ip: str, valid: bool) -> str | asyncio.Future[str]:
        """The lockout's word on an AUTH attempt whose credentials were `valid`: "ok", "failed",
        "locked" (refused without looking: the address is locked out) or "locked_now". In
        cluster mode, a future of it: the failures and the lock are counted in Redis, on every
        node (this node's own lockout keeps counting too, and decides while Redis is away)."""
        if self.lockout.locked(ip):
            return self._auth_locked(ip)
        if self.shared is not None:
            return self._auth_shared(self.shared, ip, valid)
        return self._auth_local(ip, valid)

    def _auth_locked(self, ip: str) -> str:
        self.metrics.auth_attempts.labels(result="locked_out").inc()
        self.repeats.log(("locked", ip), f"[{ip}]: AUTH refused while locked out", logging.WARNING,
                         "[%s]: AUTH refused: the address is locked out after failed attempts (421 4.7.0)", ip)
        return "locked"

    def _auth_local(self, ip: str, valid: bool) -> str:
        if valid:
            self.lockout.success(ip)
            self.metrics.auth_attempts.labels(result="success").inc()
            return "ok"
        self.metrics.auth_attempts.labels(result="failure").inc()
        return "locked_now" if self.lockout.failure(ip) else "failed"

    def _auth_shared(self, shared: SharedLimits, ip: str, valid: bool) -> asyncio.Future[str]:
        answer: asyncio.Future[str] = self.loop.create_future()
        auth = self.config.auth

        async def ask() -> None:
            try:
                word = await shared.auth(ip, valid, auth.max_failures, auth.failure_window, auth.lockout)
            except SharedUnavailable:
                answer.set_result(self._auth_local(ip, valid))
                return
            if word == "locked":
                self.lockout.lock(ip)
                answer.set_result(self._auth_locked(ip))
                return
            self._auth_local(ip, valid)     # metrics, and this node's own count for an outage
            if word == "locked_now":
                self.lockout.lock(ip)
            answer.set_result(word)
        task_ = self.loop.create_task(ask())
        self._pending_asks.add(task_)
        task_.add_done_callback(self._pending_asks.discard)
        return answer

    def rcpt(self, peer: Peer, ip: str, account_id: int, mail_from: str, sender_domain: str,
             address: str, task: tuple[int, int] | None = None
             ) -> tuple[str, int | None] | asyncio.Future[tuple[str, int | None]]:
        """The reply to RCPT, and the reservation token when it is accepted. `task`: (task, run)
        when a sending task asks, for its refusals' events. In cluster mode, a future of it (the
        channel answers when it is done)."""
        now = self.clock.now()
        if self.catalog_available is not None and not self.catalog_available():
            self.repeats.log(("catalog", "down"), "catalog unavailable", logging.WARNING,
                             "RCPT refused: this node's copy of the cluster's catalog is not in sync "
                             "(PostgreSQL unreachable)")
            return self.reject(ip, account_id, mail_from, "RCPT", V.CATALOG_UNAVAILABLE, [address], rcpt=address,
                               task=task), None
        verdict = self.blocklist.check(address, account_id, sender_domain, now)
        if self.on_request is not None:
            self.on_request(sender_domain, verdict is not None)
        if verdict is not None:
            return self.reject(ip, account_id, mail_from, "RCPT", verdict, [address], rcpt=address, task=task), None
        limits = self.account_limits(account_id)
        reserved = self.send_limits.reserve(account_id, address, limits)
        if isinstance(reserved, V.Verdict):
            return self.reject(ip, account_id, mail_from, "RCPT", reserved, [address], rcpt=address, task=task), None
        if self.shared is not None:
            return self._rcpt_shared(peer, ip, account_id, mail_from, address, task, reserved, limits)
        return V.RCPT_OK.reply, self._hold(peer, reserved)

    def _hold(self, peer: Peer, reserved: Reservation, shared: Held | None = None) -> int:
        self._next_token += 1
        self.reservations[self._next_token] = reserved
        if shared is not None:
            self.shared_held[self._next_token] = shared
        peer.tokens.add(self._next_token)
        return self._next_token

    def _rcpt_shared(self, peer: Peer, ip: str, account_id: int, mail_from: str, address: str,
                     task: tuple[int, int] | None, reserved: Reservation,
                     limits: AccountLimits) -> asyncio.Future[tuple[str, int | None]]:
        """This node's limits passed: now the cluster's, in Redis (one round trip)."""
        shared = self.shared
        assert shared is not None
        answer: asyncio.Future[tuple[str, int | None]] = self.loop.create_future()
        row = self.account_rows.get(account_id)
        account = row.name if row is not None else str(account_id)

        async def ask() -> None:
            try:
                found = await shared.reserve(account, address, self.send_limits.hourly_cap, limits.daily_quota,
                                             limits.rate_per_second)
            except SharedUnavailable as exc:
                if self.config.cluster.on_failure == "local":
                    answer.set_result((V.RCPT_OK.reply, self._hold(peer, reserved)))
                    return
                self.send_limits.release([reserved])
                self.repeats.log(("shared", "down"), "shared limits unavailable", logging.WARNING,
                                 "RCPT refused: the cluster's shared limits are unavailable (%s)", exc)
                answer.set_result((self.reject(ip, account_id, mail_from, "RCPT", V.SHARED_UNAVAILABLE, [address],
                                               rcpt=address, task=task), None))
                return
            if isinstance(found, Refusal):
                self.send_limits.release([reserved])
                verdict = (hourly_cap_verdict(address, self.send_limits.hourly_cap, found.oldest)
                           if found.limit == "hourly" else quota_verdict(limits.daily_quota, found.oldest)
                           if found.limit == "quota" else rate_verdict(limits.rate_per_second))
                answer.set_result((self.reject(ip, account_id, mail_from, "RCPT", verdict, [address], rcpt=address,
                                               task=task), None))
                return
            if peer.gone:        # nobody will use or release it
                self.send_limits.release([reserved])
                await shared.release([found])
                answer.set_result((V.RCPT_OK.reply, None))
                return
            answer.set_result((V.RCPT_OK.reply, self._hold(peer, reserved, found)))
        task_ = self.loop.create_task(ask())
        self._pending_asks.add(task_)
        task_.add_done_callback(self._pending_asks.discard)
        return answer

    def release(self, peer: Peer, tokens: list[int]) -> None:
        found = [self.reservations.pop(t) for t in tokens if t in self.reservations]
        peer.tokens.difference_update(tokens)
        if found:
            self.send_limits.release(found)
        self._release_shared(tokens)

    async def _commit_shared(self, shared: SharedLimits, held: list[Held], at: float) -> None:
        """The message is on this node's disk: its reservations become sends, under the ids the
        node's `sends` rows give (so a rebuild after a Redis restart counts them once)."""
        node = self.config.cluster.node
        for h in held:
            await shared.commit(h, send_id(node, h.address, at), at)

    def _take_shared(self, tokens: list[int]) -> list[Held]:
        return [self.shared_held.pop(t) for t in tokens if t in self.shared_held]

    def _release_shared(self, tokens: list[int]) -> None:
        held = self._take_shared(tokens)
        if held and self.shared is not None:
            self._background(self.shared.release(held))

    def _background(self, work: Any) -> None:
        task = self.loop.create_task(work)
        self._pending_asks.add(task)
        task.add_done_callback(self._pending_asks.discard)

    def rejected(self, peer: Peer, ip: str, account_id: int | None, mail_from: str, stage: str, reply: str,
                 reason: str, recipients: list[str], task: tuple[int, int] | None = None) -> None:
        """A refusal the worker decided itself (MAIL, the message content, too many recipients)."""
        code, status, text = reply.split(" ", 2)
        self.reject(ip, account_id, mail_from, stage, V.Verdict(int(code), status, text, reason), recipients,
                    rcpt=recipients[0] if stage == "RCPT" and recipients else "", task=task)

    def enqueue(self, peer: Peer, fields: tuple[Any, ...], tokens: list[int], sign_seconds: float,
                ip: str) -> asyncio.Future[str]:
        """Commit the message (group commit); the answer is the reply to send after DATA."""
        message = QueuedMessage(*fields)
        answer: asyncio.Future[str] = self.loop.create_future()
        reserved = [self.reservations.pop(t) for t in tokens if t in self.reservations]
        shared_held = self._take_shared(tokens)
        peer.tokens.difference_update(tokens)
        self.metrics.dkim_sign_seconds.observe(sign_seconds)

        def done(commit: asyncio.Future[Any]) -> None:
            if shared_held and self.shared is not None:
                shared = self.shared
                if commit.exception() is None:
                    self._background(self._commit_shared(shared, shared_held, message.created_at))
                else:
                    self._background(shared.release(shared_held))
            if commit.exception() is None:
                self.send_limits.commit(reserved, message.created_at)
                self.metrics.messages_accepted.inc()
                answer.set_result(f"250 2.0.0 Ok: queued as {message.id}")
                return
            self.send_limits.release(reserved)
            if not isinstance(commit.exception(), StoreUnavailable):
                log.error("enqueue failed: %r", commit.exception())
            answer.set_result(self.reject(ip, message.account_id, message.mail_from, "END-OF-MESSAGE",
                                          V.STORE_UNAVAILABLE, list(message.recipients)))
        self.store.submit(message).add_done_callback(done)
        return answer

    def content(self, peer: Peer, scanner: str, result: str) -> None:
        """A worker's scan that was neither clean nor refused: a scanner failed (the message went
        on unscanned, or got 451), or a score held the message."""
        self.metrics.content_scans.labels(scanner=scanner, result=result).inc()

    def lost(self, peer: Peer) -> None:
        """The worker is gone: its connections are closed and its reservations returned."""
        peer.gone = True
        for ip, count in list(peer.connections.items()):
            for _ in range(count):
                self.close_connection(peer, ip)
        self.release(peer, list(peer.tokens))

    # -- refusals ---------------------------------------------------------------------------------
    def reject(self, ip: str, account_id: int | None, mail_from: str, stage: str, verdict: V.Verdict,
               recipients: list[str], rcpt: str = "", task: tuple[int, int] | None = None) -> str:
        self.metrics.recipients_rejected.labels(reason=verdict.reason).inc()
        if verdict.reason in RULES and account_id is not None:
            self.metrics.content_scans.labels(scanner="clamav" if verdict.reason == "virus" else "rspamd",
                                              result=verdict.reason).inc()
            content = self.config.content
            count = self.strikes.add(account_id, self.clock.now(), content.suspend_window)
            if content.suspend_after and count >= content.suspend_after and self.on_content_abuse is not None:
                self.strikes.clear(account_id)
                self.on_content_abuse(account_id, count)
        if account_id is not None and len(self.pending_events) < MAX_PENDING_EVENTS:
            now = self.clock.now()
            detail = events.data(stage=stage, smtp_response=verdict.reply, rule=verdict.reason,
                                 **{"from": mail_from or None})
            sender_domain = mail_from.rpartition("@")[2].lower() or None
            for address in recipients or [""]:
                self.pending_events.append(("rejected", now, account_id, None, address or None, sender_domain,
                                            address.rpartition("@")[2].lower() or None, None, None, detail,
                                            *(task or (None, None))))
        to = f" to=<{rcpt}>" if rcpt else ""
        self.repeats.log(("reject", ip, verdict.reason), f"[{ip}]: NOQUEUE rejects ({verdict.reason})", logging.INFO,
                         "NOQUEUE: reject: %s from [%s]: %s; from=<%s>%s", stage, ip, verdict.reply, mail_from, to)
        return verdict.reply
