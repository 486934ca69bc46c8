"""The scheduler: picks ready recipients, groups them per destination, and runs
deliveries with per-destination concurrency feedback (Postfix's qmgr is the model).

Owns: all per-destination state (concurrency window, consecutive failures, dead-until)
and the bounded in-memory window of claimed recipients (`delivery.active_limit`, like
qmgr_message_active_limit): a million queued recipients stay in SQLite, never in memory.
Wakes on enqueue (coalesced) and every `delivery.scan_interval`, so a missed wake-up only
delays mail. Delivery tasks do I/O through the transport and hand back replies; every
state change happens here and is written through the store's group commit.

Warm-up (issue 6): the scheduler owns a `Throttle` (warmup.throttle) and asks it before
each transaction which recipients may go; the others wait as `throttled` (not an attempt,
not lifetime) or are held when their sender domain is suspended. A capped budget is
written to the store before the transaction starts, so a restart can never grant it twice.

Must never: hold SQL (queue.jobs has it) or block the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Awaitable, Callable


from smtprelay.clock import Clock
from smtprelay.cluster.counters import SharedLimits
from smtprelay.config import Config, DeliveryTls, ReturnPath
from smtprelay.feedback import verp
from smtprelay.feedback.keys import load_secrets
from smtprelay.delivery.client import ConnectFailure, Connection, SmtpTransport, TransactionResult
from smtprelay.delivery.dsn import FailedRecipient, build_dsn
from smtprelay.delivery.egress import UNUSABLE_RETRY, Egress
from smtprelay.delivery.mx import MxResolver, NextHop, Unroutable
from smtprelay.delivery.outcome import BounceClass, Reply, Result, classify
from smtprelay.logs import Outage
from smtprelay.http.metrics import Metrics
from smtprelay.queue import backoff, jobs, schema
from smtprelay.queue.listing import STATES
from smtprelay.warmup import ledger
from smtprelay.queue.ids import new_queue_id
from smtprelay.queue.jobs import Outcome, Work
from smtprelay.queue.store import QueuedMessage, QueueStore, StoreUnavailable
from smtprelay.queue.egress_seam import EgressSeam
from smtprelay.warmup.admission import WarmupSeam
from smtprelay.queue.dead import DeadDestinations
from smtprelay.queue.destination import Destination
from smtprelay.queue.readers import StoreReader
from smtprelay.warmup.throttle import Admission, Throttle

log = logging.getLogger("smtprelay.delivery")

CLAIM_BATCH = 500
CONNECTION_CACHE_SECONDS = 2.0  # like Postfix's smtp_connection_cache_time_limit
RECLAIM_EVERY = 60.0
GAUGES_EVERY = 10.0            # and at most 60 s: a count slowed by a busy loop never leaves them staler


class Scheduler(WarmupSeam, EgressSeam):
    def __init__(self, config: Config, store: QueueStore, clock: Clock, metrics: Metrics,
                 resolver: MxResolver | None = None, transport: SmtpTransport | None = None):
        self.config = config
        self.store = store
        self.clock = clock
        self.shared: SharedLimits | None = None     # cluster mode: warm-up budgets in Redis (app sets it)
        self.metrics = metrics
        self.resolver = resolver or MxResolver(config)
        self.transport = transport or SmtpTransport(config.delivery, config.server.hostname)
        self.throttle = Throttle(config, clock, metrics)
        self.egress = Egress(config, self.throttle)
        self.dead = DeadDestinations()
        self._verp_secret = load_secrets(config)[0] if config.feedback_listeners else b""
        self._warmup_generation = -1
        self._feedback_id = 0
        self.destinations: dict[str, Destination] = {}
        self.in_window = 0
        self.active = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._reader: sqlite3.Connection | None = None       # point look-ups on the loop
        self._gauge_reader: StoreReader | None = None         # the gauges' index scans (aiosqlite)
        self._flush_generation = -1
        self._outage = Outage(log, "scheduler: scans")
        self._record_outage = Outage(log, "scheduler: recording delivery outcomes (the recipients are retried)")
        # The app's hooks: blocklist or sender changes made here reach gate and workers at once.
        self.on_blocklist_change: Callable[[], Awaitable[None]] | None = None
        self.on_senders_change: Callable[[], None] | None = None
        self._last_reclaim = 0.0
        self._last_probe = 0.0
        self._last_gauges = -GAUGES_EVERY
        self._gauges_every = GAUGES_EVERY

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Recover interrupted work; after this, `scan()` may be called (tests drive it directly)."""
        # Small indexed reads (a body, a generation number) are done here, on the loop: in WAL
        # mode they never wait for the writer, and a thread hop would cost more than the read.
        self._reader = schema.reader(self.config.server.data_dir)
        returned = await self.store.run(jobs.reclaim(self.clock.now(), everything=True))
        if returned:
            log.warning("recovered %d recipient(s) whose delivery was interrupted; they are queued again", returned)
        self._last_reclaim = self.clock.monotonic()
        now = self.clock.now()
        ledger.load(self._reader, self.throttle, now)
        self._feedback_id = ledger.last_feedback_id(self._reader, now - 86400)
        await self._check_warmup()
        await self._egress_names()

    async def start(self) -> None:
        await self.open()
        self._loop_task = asyncio.create_task(self._loop(), name="scheduler")

    async def idle(self) -> None:
        """Wait until no delivery task is running (for tests and benchmarks)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def wake(self) -> None:
        self._wake.set()

    @property
    def _verp_on(self) -> bool:
        """VERP return paths need somewhere for the bounces to land (issue 18)."""
        return self.config.feedback.return_path is ReturnPath.AUTO and bool(self.config.feedback_listeners)

    def _return_path(self, work: Work) -> str:
        """The envelope sender of a delivery: the VERP address naming this recipient, or the
        submitted sender."""
        if not work.verp or not self._verp_on or not work.sender_domain:
            return work.mail_from
        cfg = self.config
        return verp.address(cfg.feedback.return_path_prefix, self._verp_secret, work.message_id, work.rcpt_id,
                            work.sender_domain, cfg.domains.return_path_host)

    def apply(self, config: Config) -> None:
        egress_changed = config.egress != self.config.egress
        self.config = config
        self.resolver.config = config
        self.throttle.config = config
        self.throttle.ips.reconfigure(config)
        self.egress.reconfigure(config)      # addresses probed again: one the host now owns is used
        self.transport.reconfigure(config.delivery)
        if self._reader is not None and egress_changed:     # running: on its loop
            task = asyncio.get_running_loop().create_task(self._egress_changed(), name="egress reloaded")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self, grace: float) -> None:
        """Stop starting deliveries; let running ones finish for `grace` seconds."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        self._close_idle(everything=True)
        if self._tasks:
            log.info("waiting up to %ss for %d delivery task(s)", int(grace), len(self._tasks))
            done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()  # their recipients stay leased and are retried after restart
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._reader is not None:
            self._reader.close()
        if self._gauge_reader is not None:
            await self._gauge_reader.close()

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.delivery.scan_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.scan()
                self._outage.ok()
            except Exception as exc:   # one line when scans start failing, one when they recover
                self._outage.failed(exc, expected=isinstance(exc, StoreUnavailable))

    # -- picking work ----------------------------------------------------------------------
    async def scan(self) -> None:
        cfg = self.config.delivery
        now = self.clock.now()
        await self._check_flush()
        # Operator changes first: mail released by `domain resume` must not meet a stale suspension.
        await self._save_throttle()
        await self._check_warmup()
        if self.egress.unusable and self.clock.monotonic() - self._last_probe >= UNUSABLE_RETRY:
            self._last_probe = self.clock.monotonic()
            self.egress.reconfigure(self.config)      # an address the host did not own may be added by now
        if self.clock.monotonic() - self._last_reclaim >= RECLAIM_EVERY:
            self._last_reclaim = self.clock.monotonic()
            await self.store.run(jobs.reclaim(now, everything=False))
        room = cfg.active_limit - self.in_window
        while room > 0 and not self._stopping:
            works = await self.store.run(jobs.claim(now, min(room, CLAIM_BATCH), now + cfg.lease, self._verp_on))
            if not works:
                break
            room -= len(works)
            self.in_window += len(works)
            await self._route(works, now)
            if len(works) < CLAIM_BATCH:
                break
        self._close_idle()
        self._dispatch()
        await self._save_throttle()
        if self.clock.monotonic() - self._last_gauges >= self._gauges_every:
            self._last_gauges = self.clock.monotonic()
            started = time.perf_counter()
            await self._update_gauges(now)
            # Counting scans an index as long as the queue: at most ~1 % of a core on it
            # (a million recipients: every ~10-30 s rather than every 10 s).
            self._gauges_every = min(60.0, max(GAUGES_EVERY, 100 * (time.perf_counter() - started)))

    async def _check_flush(self) -> None:
        assert self._reader is not None
        meta = dict(self._reader.execute("SELECT key, value FROM meta WHERE key IN ('flush_generation',"
                                         " 'flush_scope')").fetchall())
        generation = int(meta.get("flush_generation", 0))
        if generation != self._flush_generation:
            if self._flush_generation != -1:
                for dest in self.destinations.values():
                    dest.dead_until, dest.failures = 0.0, 0
                self.dead.forget()
                # Two flushes within one scan: every pause is lifted rather than guessing which.
                scope = str(meta.get("flush_scope", "*"))
                await self._lift_pauses(None if scope == "*" or generation - self._flush_generation > 1 else scope)
            self._flush_generation = generation

    async def _route(self, works: list[Work], now: float) -> None:
        by_domain: dict[str, list[Work]] = {}
        for work in works:
            by_domain.setdefault(work.domain, []).append(work)
        hops = await asyncio.gather(*(self.resolver.next_hop(d) for d in by_domain))
        for (domain, group), hop in zip(by_domain.items(), hops):
            if isinstance(hop, Unroutable):
                await self._unroutable(group, hop, now)
                continue
            suspended: dict[str, tuple[Destination, list[Work]]] = {}
            provider = self._provider(hop, domain)
            self.throttle.domain_providers[domain] = provider
            waits: list[tuple[Work, float, str]] = []
            expired: dict[str, list[tuple[Work, str]]] = {}
            for work in group:
                work.provider = provider
                if not self._place(work, now, waits, expired):
                    continue
                dest = self._destination(hop, self._policy(work, hop), domain, provider, work.source or None)
                if dest.dead_until > now:
                    suspended.setdefault(dest.key, (dest, []))[1].append(work)
                    continue
                dest.pending.setdefault(work.message_id, []).append(work)
                self.egress.routed(work)
            for dest, works in suspended.values():  # one store job per destination, not per recipient
                await self._suspend(works, dest, now)
            if waits:
                await self._not_admitted(Admission(wait=waits), now)
            for lapsed in expired.values():      # one message at a time: its DSN carries its own body
                await self._not_admitted(Admission(expire=lapsed), now)

    def _policy(self, work: Work, hop: NextHop) -> DeliveryTls:
        if work.account_tls:
            return DeliveryTls(work.account_tls)
        return hop.tls or self.config.delivery.tls

    def _destination(self, hop: NextHop, policy: DeliveryTls, domain: str, provider: str,
                     source: str | None = None) -> Destination:
        key = f"{hop.key}|{policy.value}" + (f"|{source}" if source else "")
        dest = self.destinations.get(key)
        if dest is None:
            cfg = self.config.delivery
            limits = cfg.domains.get(domain)
            max_conc = (limits.max_concurrency if limits and limits.max_concurrency else cfg.max_concurrency)
            per_conn = (limits.max_messages_per_connection if limits and limits.max_messages_per_connection
                        else cfg.max_messages_per_connection)
            owner = None if hop.key.startswith("route:") else provider
            if owner is not None and self.config.warmup.enabled:   # per-provider shaping
                shaping = self.config.warmup.settings(owner)
                max_conc = min(max_conc, shaping.max_connections or max_conc)
                per_conn = min(per_conn, shaping.max_messages_per_connection or per_conn)
            dest = Destination(key, hop, policy, {domain}, max_conc, per_conn, min(cfg.initial_concurrency, max_conc),
                               provider=owner, source=source)
            dest.dead_until = self.dead.until(key)   # still suspended from an earlier life
            dest.dead_reason = self.dead.why(key)
            self.destinations[key] = dest
        else:
            dest.hop = hop  # fresher DNS answer
            dest.domains.add(domain)
        return dest

    def _dispatch(self) -> None:
        if self._stopping:
            return
        now = self.clock.now()
        for dest in list(self.destinations.values()):
            while (dest.has_work() and dest.active < dest.window and dest.dead_until <= now
                   and self.active < self.config.delivery.max_connections
                   and self.throttle.connection_room(dest.provider) and self.egress.connection_room(dest.source)):
                dest.active += 1
                self.active += 1
                self.egress.opened(dest.source)
                if dest.provider is not None:
                    active = self.throttle.provider_active
                    active[dest.provider] = active.get(dest.provider, 0) + 1
                task = asyncio.create_task(self._deliver(dest), name=f"deliver {dest.key}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not dest.has_work() and dest.active == 0 and dest.dead_until <= now and not dest.idle:
                del self.destinations[dest.key]  # idle destinations cost nothing

    # -- delivering ------------------------------------------------------------------------
    def _close_later(self, conn: Connection) -> None:
        """Close in the background, keeping a reference so the task is not collected mid-way."""
        task = asyncio.create_task(conn.close(), name="close cached connection")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cached_connection(self, dest: Destination) -> Connection | None:
        while dest.idle:
            conn, expires = dest.idle.pop()
            if expires > time.monotonic():
                return conn
            self._close_later(conn)
        return None

    def _close_idle(self, everything: bool = False) -> None:
        now = time.monotonic()
        for dest in self.destinations.values():
            keep = []
            for conn, expires in dest.idle:
                if everything or expires <= now:
                    self._close_later(conn)
                else:
                    keep.append((conn, expires))
            dest.idle = keep

    async def _deliver(self, dest: Destination) -> None:
        cfg = self.config.delivery
        conn: Connection | None = self._cached_connection(dest)
        reused = conn is not None
        try:
            while not self._stopping:
                batch = dest.pop_batch(cfg.max_recipients_per_transaction)
                if not batch:
                    break
                self.egress.unrouted(batch)
                batch = await self._admit(batch)
                if not batch:
                    continue
                if conn is None:
                    result = await self._connect(dest)
                    if isinstance(result, ConnectFailure):
                        await self._connect_failed(dest, batch, result)
                        break
                    conn = result
                body = await self._body(batch[0].message_id, batch[0].rcpt_id if batch[0].personal else None)
                if body is None:  # deleted by an operator meanwhile
                    self.in_window -= len(batch)
                    continue
                pause = self.egress.pace(dest.source, time.monotonic())
                if pause > 0:     # the address's max_rate: messages start 1/max_rate apart
                    await asyncio.sleep(pause)
                started = time.monotonic()
                outcome = await conn.send(self._return_path(batch[0]), [w.address for w in batch], body)
                if outcome.session_failure and not outcome.recipients and reused:
                    # A cached connection the server had already dropped: not a delivery failure.
                    await conn.close()
                    result = await self._connect(dest)
                    if isinstance(result, ConnectFailure):
                        conn = None
                        await self._connect_failed(dest, batch, result)
                        break
                    conn = result
                    outcome = await conn.send(self._return_path(batch[0]), [w.address for w in batch], body)
                reused = False
                await self._transaction_done(dest, conn, batch, outcome, time.monotonic() - started, body)
                if not outcome.usable or conn.transactions >= dest.max_per_connection:
                    await conn.close()
                    conn = None
        finally:
            if conn is not None:
                if self._stopping:
                    await conn.close()
                else:  # keep it a moment: the next message for this destination may come soon
                    dest.idle.append((conn, time.monotonic() + CONNECTION_CACHE_SECONDS))
            dest.active -= 1
            self.active -= 1
            self.egress.closed(dest.source)
            if dest.provider is not None:
                self.throttle.provider_active[dest.provider] -= 1
            self._dispatch()

    async def _body(self, message_id: str, rcpt_id: int | None = None) -> bytes | None:
        assert self._reader is not None
        sql, arg = (("SELECT body FROM messages WHERE id = ?", message_id) if rcpt_id is None else
                    ("SELECT body FROM recipients WHERE id = ? AND body IS NOT NULL", rcpt_id))
        row = self._reader.execute(sql, (arg,)).fetchone()
        return None if row is None else bytes(row[0])

    async def _connect_failed(self, dest: Destination, batch: list[Work], failure: ConnectFailure) -> None:
        now = self.clock.now()
        if failure.reply is not None and failure.reply.code >= 500:
            reply = failure.reply
            decided = [(w, Result.BOUNCED, reply, classify(reply)[1]) for w in batch]
            self.throttle.observe(decided, now)
            await self._finish(batch, decided, None, None, 0.0, now, body=None)
            return
        dest.failures = self.dead.failed(dest.key, now, self.config.delivery.retry_schedule[0] * 2)
        dest.window = max(1, dest.window - 1)
        if failure.reply is not None:  # e.g. "421 too many connections" at the greeting: a backoff signal
            klass = classify(failure.reply)[1]
            if self.throttle.observe([(w, Result.DEFERRED, failure.reply, klass) for w in batch], now):
                dest.window = max(1, dest.window // 2)
        reply = failure.reply or Reply(451, f"4.4.1 {failure.reason}")
        await self._finish(batch, [(w, Result.DEFERRED, reply, BounceClass.OTHER) for w in batch], None, None, 0.0,
                           now, body=None, text=failure.reason)
        if dest.failures >= self.config.delivery.dead_after_failures and dest.dead_until <= now:
            reason = f"delivery temporarily suspended: {failure.reason}"
            dest.dead_until = self.dead.suspend(dest.key, sorted(dest.domains), now,
                                                self.config.delivery.retry_schedule, failure.reason)
            dest.dead_reason = failure.reason
            log.warning("destination %s marked dead until %s after %d failure(s): %s", dest.key,
                        time.strftime("%H:%M:%S", time.gmtime(dest.dead_until)), dest.failures, failure.reason)
            taken = dest.take_all()
            self.egress.unrouted(taken)
            await self._suspend(taken, dest, now)
            # Its waiting mail is pushed past the suspension a chunk per commit, so the loop and
            # the commits of everyone else never wait for a million-row statement.
            while await self.store.run(jobs.defer_domains(sorted(dest.domains), dest.dead_until, reason, now)) \
                    >= jobs.DEFER_CHUNK and not self._stopping:
                pass

    async def _suspend(self, works: list[Work], dest: Destination, now: float) -> None:
        """Defer without trying: the destination is dead. No attempt is counted."""
        if not works:
            return
        reason = f"delivery temporarily suspended: {dest.dead_reason}"
        outcomes = [Outcome(w.rcpt_id, w.message_id, "deferred", now, max(dest.dead_until, now), reason, None,
                            None, None, None, None, 0.0, attempted=False) for w in works]
        await self.store.run(jobs.record(outcomes, []))
        self.in_window -= len(works)

    async def _transaction_done(self, dest: Destination, conn: Connection, batch: list[Work],
                                result: TransactionResult, duration: float, body: bytes) -> None:
        now = self.clock.now()
        decided = []
        for work in batch:
            reply = result.recipients.get(work.address)
            if reply is None:  # the session broke before this recipient had an answer
                reply = Reply(451, f"4.4.2 {result.session_failure or 'lost connection'}")
            outcome, klass = classify(reply)
            decided.append((work, outcome, reply, klass))
        if result.session_failure is not None:
            dest.window = max(1, dest.window - 1)
        elif any(o is Result.DELIVERED for _, o, _, _ in decided):
            dest.failures = 0
            dest.window = min(dest.max_concurrency, dest.window + 1)
            self.dead.alive(dest.key, sorted(dest.domains))
        if self.throttle.observe(decided, now):   # a provider's reputation reply: back off, halve concurrency
            dest.window = max(1, dest.window // 2)
        self.metrics.delivery_duration_seconds.observe(duration)
        await self._finish(batch, decided, conn.relay, conn.tls_version, duration, now, body)

    async def _unroutable(self, works: list[Work], hop: Unroutable, now: float) -> None:
        reply = Reply(550 if hop.permanent else 451, f"{hop.status} {hop.reason}")
        result = Result.BOUNCED if hop.permanent else Result.DEFERRED
        klass = BounceClass.INVALID_ADDRESS if hop.permanent else BounceClass.OTHER
        for message_id in sorted({w.message_id for w in works}):
            group = [w for w in works if w.message_id == message_id]
            # The body is only needed for a DSN: a bounce, or a deferral that reaches its lifetime.
            needs_dsn = hop.permanent or any(backoff.expired(w.lifetime_start, now, self.config.delivery.max_lifetime)
                                             for w in group)
            body = await self._body(message_id) if needs_dsn else None
            decided: list[tuple[Work, Result, Reply, BounceClass | None]] = [(w, result, reply, klass) for w in group]
            if hop.permanent:
                self.throttle.observe(decided, now)   # mail to domains that do not exist counts as hard bounces
            await self._finish(group, decided, None, None, 0.0, now, body)

    async def _finish(self, batch: list[Work], decided: list[tuple[Work, Result, Reply, BounceClass | None]],
                      relay: str | None, tls: str | None, duration: float, now: float, body: bytes | None,
                      text: str | None = None) -> None:
        cfg = self.config.delivery
        outcomes, failed, delayed = [], [], []
        for work, result, reply, klass in decided:
            next_at = None
            if result is Result.DEFERRED:
                next_at = backoff.next_attempt(work.lifetime_start, now, work.attempts + 1, cfg.retry_schedule,
                                               cfg.retry_jitter, cfg.max_lifetime)
                if next_at is None:
                    result = Result.EXPIRED
                else:
                    next_at = min(next_at, work.lifetime_start + cfg.max_lifetime)  # the last try is at expiry
            shown = text or str(reply)
            outcomes.append(Outcome(work.rcpt_id, work.message_id, result.value, now, next_at, str(reply), reply.code,
                                    reply.enhanced, klass.value if klass and result is not Result.DELIVERED else None,
                                    relay, tls, duration, attempted=True, sender_domain=work.sender_domain or None,
                                    provider=work.provider or None, source=work.source or None))
            if result in (Result.BOUNCED, Result.EXPIRED):
                failed.append(FailedRecipient(work.address, reply.enhanced or ("4.4.7" if result is Result.EXPIRED
                                                                              else "5.0.0"),
                                              shown, relay.split("[")[0] if relay else None, result is Result.EXPIRED))
            elif result is Result.DEFERRED and cfg.delay_warning and not work.delay_warned \
                    and now - work.created_at >= cfg.delay_warning:
                work.delay_warned = True
                delayed.append(FailedRecipient(work.address, reply.enhanced or "4.0.0", shown,
                                               relay.split("[")[0] if relay else None, False))
            status = {"delivered": "sent"}.get(result.value, result.value)
            log.info("%s: to=<%s>, relay=%s, delay=%.1f, tls=%s, %sstatus=%s (%s)", work.message_id, work.address,
                     relay or "none", now - work.created_at, tls or "none",
                     f"source={work.source} (pool {work.egress_pool}), " if work.source else "", status, shown,
                     extra={"fields": {"queue_id": work.message_id, "result": result.value,
                                       "bounce_class": klass.value if klass else None,
                                       "source": work.source or None}})
            self.metrics.deliveries.labels(result=result.value, pool=work.egress_pool or work.pool).inc()
        dsns = self._dsns(batch[0], failed, body, now) if failed else []
        warned: tuple[int, ...] = ()
        if delayed:
            if body is None:
                body = await self._body(batch[0].message_id)
            warnings = self._dsns(batch[0], delayed, body, now,
                                  retry_until=batch[0].lifetime_start + cfg.max_lifetime)
            dsns += warnings
            warned = tuple(w.rcpt_id for w, r, _, _ in decided if r is Result.DEFERRED and w.address in
                           {d.address for d in delayed}) if warnings else ()
        auto = jobs.AutoBlock.of(self.config.blocklist)
        try:
            await self.store.run(jobs.record(outcomes, dsns, auto, warned))
        except StoreUnavailable as exc:
            # The recipients stay leased and go back to the queue when the lease expires.
            self._record_outage.failed(exc)
        else:
            self._record_outage.ok()
            # An automatic blocklist entry applies to the next RCPT, not the next poll.
            if self.on_blocklist_change is not None and any(
                    o.bounce_class in ("invalid_address", "mailbox_full") and o.result != "delivered"
                    for o in outcomes):
                await self.on_blocklist_change()
        self.in_window -= len(batch)
        if dsns:
            self.wake()

    def _dsns(self, work: Work, failed: list[FailedRecipient], body: bytes | None, now: float,
              retry_until: float | None = None) -> list[QueuedMessage]:
        sender = work.mail_from
        if not sender or sender.lower().startswith("mailer-daemon@"):
            return []  # never a bounce for a bounce
        hostname = self.config.server.hostname
        queue_id = new_queue_id(now)
        dsn, message_id = build_dsn(hostname=hostname, queue_id=work.message_id, original_from=sender,
                                    original=body or b"", failed=failed, arrival=work.created_at, now=now,
                                    retry_until=retry_until)
        log.info("%s: sender %s notification: %s", work.message_id,
                 "delay" if retry_until is not None else "non-delivery", queue_id)
        return [QueuedMessage(id=queue_id, account_id=work.account_id, username=None, mail_from="",
                              recipients=(sender,), body=dsn, created_at=now, client_address="127.0.0.1", tls=None,
                              header_message_id=message_id)]

    async def _update_gauges(self, now: float) -> None:
        if self._gauge_reader is None:
            self._gauge_reader = await StoreReader.open(self.config.server.data_dir)
        row = await self._gauge_reader.row(jobs.COUNTS_SQL)
        # The age at the answer, not at the question: the count can take seconds on a long queue.
        counts, oldest = jobs.counts(row, max(now, self.clock.now()))
        for state in STATES:          # every state `queue list --state` knows
            self.metrics.queue_messages.labels(state=state).set(counts.get(state, 0))
        self.metrics.queue_oldest_age_seconds.set(oldest)
        self.throttle.update_gauges()
