"""Wiring of the running relay (the back end process): start/stop order and signals.

Start: config → store (migrations) → trusted accounts → gate (caps, limits, blocklist) →
scheduler and webhooks → TLS files → listening sockets → front-end workers (each with a
channel to the gate and the shared sockets) → HTTP. SIGHUP reloads relay.toml, applies
what can change live and passes it on to the workers; it logs which changed sections need
a restart. SIGTERM (or SIGINT) drains: the workers stop accepting and let messages being
received finish for up to `server.shutdown_grace` (committing through the gate), then the
scheduler lets deliveries in flight finish, then the store commits what is pending.

Owns: the process lifecycle. Must never: hold policy or SQL of its own.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sqlite3
from pathlib import Path

import uvloop
from aiohttp import web

from smtprelay import __version__, logs
from smtprelay.logs import Outage
from smtprelay.accounts import evaluate_levels
from smtprelay.batch import progress as task_progress
from smtprelay.batch.runner import TaskRunner
from smtprelay.catalog import CatalogView
from smtprelay.content import suspension
from smtprelay.catalog.view import SqliteCatalogView
from smtprelay.cluster.lookup import ClusterEvents
from smtprelay.cluster.mirror import CatalogMirror
from smtprelay.clock import Clock, clock_from_environment
from smtprelay.config import Config, ConfigError, TlsMode, format_duration, load, reload_report
from smtprelay.http.metrics import Metrics
from smtprelay.services import Context, Services, open_services
from smtprelay.http.server import build_app
from smtprelay.queue import jobs, schema
from smtprelay.queue.readers import StoreReader
from smtprelay.queue.scheduler import Scheduler
from smtprelay.events import tracking
from smtprelay.events import types as events
from smtprelay.events.webhooks import Dispatcher
from smtprelay.events.webhooks import prune as prune_outbox
from smtprelay.queue.store import QueueStore, StoreUnavailable
from smtprelay.errors import StoreUnavailable as ServiceUnavailable
from smtprelay.smtp.gate import Gate
from smtprelay.policy.blocklist import BlocklistView, Entry
from smtprelay.smtp.pool import WorkerPool, bind
from smtprelay.smtp.tls import certificate_expiry, certificate_paths, server_context
from smtprelay.feedback.intake import FeedbackIntake
from smtprelay.feedback.listener import FeedbackServer
from smtprelay.feedback.receive import prune as prune_feedback

log = logging.getLogger("smtprelay")

CATALOG_REFRESH_SECONDS = 1.0  # account limits and blocklist changes reach the gate within 2 s


class StartError(Exception):
    """The relay cannot start (a port in use); said in one line, exit 1."""


class Relay:
    def __init__(self, config_path: Path, config: Config, clock: Clock | None = None, log_format: str | None = None):
        self.config_path = config_path
        self.config = config
        self.clock = clock or clock_from_environment()
        self.log_format = log_format
        self.metrics = Metrics()
        self._stop = asyncio.Event()
        self._sockets: dict[str, socket.socket] = {}           # submission: the workers serve them
        self._feedback_sockets: dict[str, socket.socket] = {}  # feedback: the back end serves them
        self.feedback: FeedbackServer | None = None
        self._http_socket: socket.socket | None = None
        self._reader: StoreReader | None = None
        self._catalog_view: CatalogView | None = None
        self._http: web.AppRunner | None = None
        self._catalog_version = -1
        self._blocklist_version = -1
        self._blocklist_rev = -1        # the last blocklist change the gate holds (-1: none read yet)
        self.pool: WorkerPool | None = None
        self.tasks: TaskRunner | None = None
        self._background: set[asyncio.Future[None]] = set()
        self.mirror: CatalogMirror | None = None       # cluster mode with PostgreSQL
        self.cluster_events: ClusterEvents | None = None   # and its lookups of other nodes' messages

    def _bind(self) -> None:
        """Every listening socket, before anything else starts: a port in use (a second `serve`)
        stops the start with the listener named, and nothing to undo."""
        def one(name: str, address: str, port: int) -> socket.socket:
            try:
                return bind(address, port)
            except OSError as exc:
                for sock in [*self._sockets.values(), *self._feedback_sockets.values()]:
                    sock.close()
                raise StartError(f"{name} cannot listen on {address}:{port}: {exc.strerror or exc}") from None
        for listener in self.config.submission_listeners:
            self._sockets[listener.name] = one(f"listener {listener.name}", listener.address, listener.port)
        for listener in self.config.feedback_listeners:
            sock = self._feedback_sockets[listener.name] = one(f"listener {listener.name}", listener.address,
                                                               listener.port)
            sock.set_inheritable(False)
        self._http_socket = one("http", self.config.http.address, self.config.http.port)
        self._http_socket.set_inheritable(False)   # the back end's own; the workers get the SMTP ones

    async def run(self) -> None:
        config = self.config
        self._bind()
        config.server.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_store()
        store = QueueStore(config.server.data_dir, config.server.store_busy_timeout, config.server.max_store_bytes,
                           on_commit=lambda ok: self.metrics.store_commits.labels(
                               result="success" if ok else "failure").inc(),
                           commit_window=config.server.commit_window)
        await store.open()
        self.store = store
        self._reader = await StoreReader.open(config.server.data_dir)
        self._catalog_view = SqliteCatalogView(self._reader)
        self.gate = Gate(config, store, self.metrics, self.clock)
        tracking.load_key(config)   # created here once, before the workers read it
        self.scheduler = Scheduler(config, store, self.clock, self.metrics)
        self.scheduler.on_blocklist_change = self.blocklist_changed
        self.scheduler.on_senders_change = self.senders_changed
        await self.scheduler.start()
        self.webhooks = Dispatcher(config.webhooks, store, schema.database_path(config.server.data_dir), self.clock,
                                   self.metrics)
        await self.webhooks.start()
        store.on_enqueued = self.scheduler.wake
        store.deferred_until = self.scheduler.dead.deferred_until
        self.gate.on_request = self.scheduler.throttle.note_request
        self.gate.on_content_abuse = self.content_abuse
        await self._refresh_catalog()
        await self._load_sends()
        await self._start_cluster()
        refresher = asyncio.create_task(self._refresh_loop(), name="catalog-refresh")
        maintenance = asyncio.create_task(self._maintenance_loop(), name="maintenance")
        rechecker = asyncio.create_task(self._recheck_loop(), name="domain-recheck")
        try:
            await self._start_workers()
            assert self.pool is not None
            pool = self.pool
            self.tasks = TaskRunner(lambda: self.config, store, config.server.data_dir, self.clock, self.gate,
                                    lambda request, account, row: pool.task(request, account, row), self.metrics)
            self.tasks.start()
            await self._start_http()
            await self._start_feedback()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
            log.info("smtprelay %s ready: %s; %d worker(s); http on %s:%d", __version__,
                     ", ".join(f"{l.name} {l.address}:{l.port} ({l.tls.value}"
                               f"{', feedback' if l.role == 'feedback' else ''})" for l in config.listeners),
                     config.server.worker_count, config.http.address, config.http.port)
            await self._stop.wait()
            if self.tasks is not None:
                await self.tasks.stop()     # no new rows; those in flight finish first
            # No new connections: the workers close their copies of the listening sockets, then
            # the back end its own (kept until now to start replacement workers).
            if self.pool is not None:
                await self.pool.close_listeners()
            for sock in self._sockets.values():
                sock.close()
            if self.feedback is not None:
                await self.feedback.stop()
            log.info("shutting down: no new connections; up to %ss for messages being received",
                     int(self.config.server.shutdown_grace))
            if self.pool is not None:
                await self.pool.stop(self.config.server.shutdown_grace)
            await self._flush_events()
            await self.scheduler.stop(self.config.server.shutdown_grace)
            await self.webhooks.stop()
        finally:
            refresher.cancel()
            rechecker.cancel()
            maintenance.cancel()
            if self.pool is not None and not self._stop.is_set():
                await self.pool.stop(0)
            if self.feedback is not None:
                await self.feedback.stop()
            for sock in [*self._sockets.values(), *self._feedback_sockets.values()]:
                sock.close()
            if self._http is not None:
                await self._http.cleanup()
            if self._http_socket is not None:
                self._http_socket.close()
            if self.gate.shared is not None:
                await self.gate.shared.close()
            if self.mirror is not None:
                await self.mirror.close()
            if self.cluster_events is not None:
                await self.cluster_events.close()
            await store.close()
            if self._reader is not None:
                await self._reader.close()
            log.info("smtprelay stopped")

    def _prepare_store(self) -> None:
        conn = schema.connect(self.config.server.data_dir, self.config.server.store_busy_timeout)
        services = self._services(conn)
        try:
            service = services.accounts
            for listener in self.config.listeners:
                if listener.trusted_account:
                    _, created = service.ensure(listener.trusted_account)
                    if created:
                        log.info("created account %s for the trusted networks of listener %s",
                                 listener.trusted_account, listener.name)
        except ServiceUnavailable as exc:     # cluster mode, PostgreSQL down: the node starts anyway
            log.error("the trusted networks' accounts could not be checked (%s); a missing one is made at the "
                      "next start, or by `smtprelay account add`", exc)
        finally:
            services.close()

    def _services(self, conn: sqlite3.Connection) -> Services:
        """The services over one connection of this thread (start-up, re-verification)."""
        from smtprelay.services.facade import make_catalog
        return Services(Context(self.config, make_catalog(self.config, conn), conn, self.clock))

    async def _refresh_catalog(self) -> None:
        """What the gate reads of the catalog: account limits and reputation levels, the blocklist."""
        view = self._catalog_view
        gate = self.gate
        assert view is not None
        versions = await view.versions()
        version = versions.get("catalog_version", 0)
        if version != self._catalog_version:
            gate.account_rows = await view.account_rows()
            self._catalog_version = version
        version = versions.get("blocklist_version", 0)
        if version != self._blocklist_version:
            # Only what changed since the last read (every entry the first time): a change to a
            # large list costs what the change is (store migration 17).
            now = self.clock.now()
            rows, allowed = await view.blocklist_changes(self._blocklist_rev, now)
            if self._blocklist_rev < 0:
                gate.blocklist = BlocklistView([], allowed)
            blocklist = gate.blocklist
            blocklist.allowed = allowed
            for row in rows:
                if row[2] is None:
                    blocklist.drop(row[1])
                else:
                    blocklist.put(Entry(*row[1:]))
                self._blocklist_rev = max(self._blocklist_rev, int(row[0]))
            self._blocklist_version = version
            self.metrics.blocklist_entries.set(len(blocklist))

    async def blocklist_changed(self) -> None:
        """The back end itself changed the blocklist (an unsubscribe, an automatic entry): the
        gate sees it before this returns, so the next RCPT is judged by it."""
        self._blocklist_version = -1
        try:
            await self._refresh_catalog()
        except sqlite3.Error as exc:
            log.error("could not refresh the blocklist from the store: %s", exc)

    def content_abuse(self, account_id: int, refusals: int) -> None:
        """The gate counted too many virus/spam refusals for an account: suspend it (the store
        job holds its queued mail and records the event), then the workers reload at once."""
        async def suspend() -> None:
            content = self.config.content
            reason = (f"{refusals} messages refused for viruses or spam within "
                      f"{format_duration(content.suspend_window)} (content.suspend_after {content.suspend_after})")
            try:
                done = await self.store.run(suspension.suspend(account_id, reason, refusals, self.clock.now()))
            except StoreUnavailable as exc:
                log.error("account %d: could not be suspended for content (%s); the next refusal tries again",
                          account_id, exc)
                return
            if done:
                self.metrics.account_suspensions.inc()
                log.warning("account %s suspended for content: %s; `smtprelay account resume` lifts it",
                            self.gate.account_rows[account_id].name if account_id in self.gate.account_rows
                            else account_id, reason)
                self.senders_changed()
        task = asyncio.ensure_future(suspend())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def senders_changed(self) -> None:
        """The back end itself changed the senders (a suspension): the workers reload now."""
        if self.pool is not None:
            self.pool.broadcast("catalog")

    async def _refresh_loop(self) -> None:
        refresh = Outage(log, "catalog refresh")
        while True:
            await asyncio.sleep(CATALOG_REFRESH_SECONDS)
            try:
                await self._refresh_catalog()
                self.gate.lockout.prune()
                self.gate.repeats.flush()
                refresh.ok()
            except sqlite3.Error as exc:
                refresh.failed(exc)
            await self._flush_events()

    async def _flush_events(self) -> None:
        """Write the front end's `rejected` events (kept for the next try if the store fails)."""
        rows = self.gate.pending_events
        if not rows:
            return
        self.gate.pending_events = []
        try:
            await self.store.run(events.insert_job(rows))
        except StoreUnavailable:
            self.gate.pending_events = rows + self.gate.pending_events

    async def _start_cluster(self) -> None:
        """`[cluster] redis`: the hourly cap and the quota are reserved in Redis too (exact across
        nodes). An unreachable Redis does not stop the start: RCPT answers 451 until it is back."""
        cluster = self.config.cluster
        if cluster.postgres is not None:
            await self._start_mirror()
        else:
            await self.store.run(lambda db: db.execute("UPDATE meta SET value = 0 WHERE key = 'cluster_push'"))
        if cluster.redis is None:
            return
        from smtprelay.cluster.counters import SharedLimits, sends_since

        def observe(op: str, seconds: float, ok: bool) -> None:
            self.metrics.cluster_store_latency.labels(store="redis").observe(seconds)
            if not ok:
                self.metrics.cluster_store_errors.labels(store="redis").inc()
        names = lambda: {a: row.name for a, row in self.gate.account_rows.items()}   # noqa: E731
        shared = SharedLimits(cluster.redis, cluster.node, cluster.lease, observe,
                              sends_since(schema.reader(self.config.server.data_dir), names))
        await shared.start()
        if not shared.healthy:
            log.error("cluster: Redis at %s is not reachable (%s); new recipients get 451 until it is",
                      cluster.redis, shared.error)
        self.gate.shared = shared
        self.scheduler.shared = shared      # warm-up budgets granted over every node
        if self.mirror is not None:
            self.mirror.redis_health = lambda: "ok" if shared.healthy else f"failing: {shared.error}"
        log.info("cluster: node %s shares its sending limits through Redis", cluster.node)

    async def _start_mirror(self) -> None:
        """`[cluster] postgres`: the catalog is PostgreSQL's; this node mirrors it into its store
        (cluster.mirror) and admits mail only while that copy is in sync (unless on_failure = local)."""
        from smtprelay.cluster.mirror import key_file_problem
        problem = key_file_problem(self.config)
        if problem is not None:
            raise StartError(problem)
        def observe(op: str, seconds: float, ok: bool) -> None:
            if ok:
                self.metrics.cluster_store_latency.labels(store="postgres").observe(seconds)
            else:
                self.metrics.cluster_store_errors.labels(store="postgres").inc()

        def depth() -> int:
            counts = self.queue_counts()
            return sum(counts.get(state, 0) for state in ("queued", "deferred", "throttled", "active", "hold"))

        async def applied() -> None:
            self.senders_changed()
            await self.blocklist_changed()      # the gate reads limits and blocklist before the next RCPT
        mirror = CatalogMirror(self.config, self.store, self._reader, self.clock.now, observe, depth)
        def on_applied() -> None:
            task = asyncio.ensure_future(applied())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        mirror.on_applied = on_applied
        await mirror.start()
        self.mirror = mirror
        assert self.config.cluster.postgres is not None
        self.cluster_events = ClusterEvents(self.config.cluster.postgres)
        if self.config.cluster.on_failure == "refuse":
            self.gate.catalog_available = lambda: mirror.available
        log.info("cluster: node %s mirrors the catalog of PostgreSQL", self.config.cluster.node)

    async def _load_sends(self) -> None:
        """The last 24 h of accepted recipients per account and minute, so quotas survive a
        restart (the hourly cap reads its history from the store as it goes)."""
        reader = self._reader
        assert reader is not None
        since = self.clock.now() - 86400
        rows = await reader.rows("SELECT account_id, CAST(at / 60 AS INTEGER) AS minute, count(*) FROM sends"
                                 " WHERE at > ? GROUP BY account_id, minute ORDER BY minute", (since,))
        self.gate.send_limits.load(rows)
        # Virus/spam refusals still counted toward a content suspension.
        self.gate.strikes.load(await reader.rows(suspension.RECENT_SQL,
                                                 (self.clock.now() - self.config.content.suspend_window,)))

    async def _maintenance_loop(self) -> None:
        """Every minute: judge finished days for reputation levels, forget old sends, drop
        expired blocklist entries, trim in-memory windows."""
        while True:
            try:
                now = self.clock.now()
                # Deletions go through the store's single writer, in chunks.
                while await self.store.run(prune_outbox(now - self.config.webhooks.retention)) >= 5000:
                    await asyncio.sleep(0)
                while await self.store.run(jobs.prune(now - 2 * 86400, now,
                                                           events_before=now - self.config.events.retention)) >= 5000:
                    await asyncio.sleep(0)
                while await self.store.run(task_progress.prune(now - self.config.events.retention)) >= 5000:
                    await asyncio.sleep(0)
                while await self.store.run(prune_feedback(now - self.config.feedback.retention)) >= 5000:
                    await asyncio.sleep(0)
                applied = self._blocklist_rev      # deletions the gate has applied are not needed again
                await self.store.run(lambda db: db.execute("DELETE FROM blocklist_deleted WHERE rev <= ?", (applied,)))
                changes = await asyncio.to_thread(self._evaluate_levels)
                for account, old, new, why in changes:
                    log.warning("account %s: reputation level %d → %d (%s)", account, old, new, why)
                self.gate.send_limits.prune()
            except sqlite3.OperationalError as exc:
                log.warning("maintenance postponed (%s); trying again in a minute", exc)
            except Exception:
                log.exception("maintenance failed; trying again in a minute")
            await asyncio.sleep(60)

    def _evaluate_levels(self) -> list[tuple[str, int, int, str]]:
        """Mostly reads; writes only once per account per day, so its own connection is fine."""
        conn = schema.connect(self.config.server.data_dir, self.config.server.store_busy_timeout)
        try:
            return evaluate_levels(conn, self.config, self.clock.now())
        finally:
            conn.close()

    async def _recheck_loop(self) -> None:
        """Check the domains that are due (DomainService.due_for_recheck: pending ones on their
        propagation schedule, the others every domains.recheck_interval)."""
        while True:
            try:
                changes = await asyncio.to_thread(self._recheck_due)
            except Exception:  # a DNS or store failure must not end the loop
                log.exception("domain re-verification failed")
                changes = []
            for status in changes:
                self.metrics.domain_status_changes.labels(status=status).inc()
            await asyncio.sleep(min(60.0, self.config.domains.recheck_interval))

    def _recheck_due(self) -> list[str]:
        conn = schema.connect(self.config.server.data_dir, self.config.server.store_busy_timeout)
        services = self._services(conn)
        try:
            exclusive = getattr(services.ctx.catalog, "try_exclusive", None)
            if exclusive is not None and not exclusive("domain-recheck"):
                return []       # cluster mode: another node is checking now (the due list is shared)
            service = services.domains
            results = [service.verify(name) for name in service.due_for_recheck()]
        finally:
            services.close()
        return [r.status for r in results if r.status != r.previous]

    async def _start_workers(self) -> None:
        """Hand the listening sockets (bound once, by `_bind`) to the front-end workers."""
        config = self.config
        tls_files = None
        if any(l.tls is not TlsMode.NONE for l in config.listeners):
            tls_files = certificate_paths(config)
            self.metrics.tls_certificate_expiry.set(certificate_expiry(tls_files[0]))
        self.pool = WorkerPool(self.config_path, config, self._sockets, tls_files, self.gate, self.log_format)
        await self.pool.start()

    async def _start_feedback(self) -> None:
        """The feedback listeners (role = "feedback"): served here, on aiosmtpd (issue 18)."""
        if not self._feedback_sockets:
            return
        assert self._reader is not None
        intake = FeedbackIntake(lambda: self.config, self.store, self._reader, self.clock, self.metrics,
                                self.scheduler.throttle, self.blocklist_changed, tracking.load_key(self.config))
        context = None
        if any(l.tls is not TlsMode.NONE for l in self.config.feedback_listeners):
            context = server_context(*certificate_paths(self.config))
        if self.mirror is not None and self.cluster_events is not None:     # cluster mode: reports travel
            intake.cluster = self.cluster_events
            self.mirror.on_feedback = intake.apply_handed
        self.feedback = FeedbackServer(lambda: self.config, intake.accepts, intake.apply)
        await self.feedback.start(self._feedback_sockets, context)

    async def _start_http(self) -> None:
        from smtprelay.http import send as send_http
        from smtprelay.http import tracking as tracking_http

        def endpoints(app: web.Application) -> None:
            assert self._reader is not None and self.pool is not None
            tracking_http.add_routes(app, lambda: self.config, self.store, tracking.load_key(self.config),
                                     self._reader, self.clock.now, self.blocklist_changed,
                                     self.cluster_events.accepted if self.cluster_events is not None else None)
            send_http.add_route(app, lambda: self.config, self.pool.send)
            if self.config.console.enabled:     # a restart turns it on or off, like the admin token
                from smtprelay.console.web import Console, add_routes as add_console
                add_console(app, Console(lambda: self.config,
                                         lambda: open_services(self.config_path, self.clock, self.config),
                                         self.clock, self.health, self.queue_counts))
        app = build_app(self.metrics, self.health, lambda: self.config.http.admin_token,
                        lambda: open_services(self.config_path, self.clock, self.config), endpoints,
                        client_max_size=send_http.body_limit(self.config))
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        assert self._http_socket is not None
        await web.SockSite(self._http, self._http_socket).start()

    def queue_counts(self) -> dict[str, int]:
        """Recipients by state, as the scheduler last measured them (its gauges, every 10 s)."""
        from smtprelay.queue.listing import STATES
        return {state: int(self.metrics.registry.get_sample_value("smtprelay_queue_messages", {"state": state}) or 0)
                for state in STATES}

    def health(self) -> dict[str, object]:
        ok = self.store.healthy
        workers = self.pool.alive if self.pool is not None else 0
        doc: dict[str, object] = {"status": "ok" if ok else "degraded", "store": "ok" if ok else "failing",
                                  "sessions": self.gate.sessions, "workers": workers, "version": __version__}
        mirror = self.mirror
        if mirror is not None:
            doc["postgres"] = ("ok" if mirror.available else f"failing: {mirror.error}" if mirror.error
                               else "ok, first copy of the catalog under way")
            if not mirror.available and self.config.cluster.on_failure == "refuse":
                doc["status"] = "degraded"
        shared = self.gate.shared
        if shared is not None:
            doc["redis"] = "ok" if shared.healthy else f"failing: {shared.error or 'not connected yet'}"
            if not shared.healthy and self.config.cluster.on_failure == "refuse":
                doc["status"] = "degraded"
        return doc

    def reload(self) -> None:
        try:
            new = load(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", "; ".join(exc.problems))
            return
        applied, restart = reload_report(self.config, new)
        self.gate.apply(new)
        if self.pool is not None:
            self.pool.reload(new)
        self.scheduler.apply(new)
        self.webhooks.config = new.webhooks
        logs.set_level(new.log.level)
        self.config = new
        log.info("reload: applied %s%s", ", ".join(applied) or "no changes",
                 f"; changed but needs a restart: {', '.join(restart)}" if restart else "")

def serve(config_path: Path, log_format: str | None = None) -> int:
    try:
        config = load(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=__import__("sys").stderr)
        return 2
    logs.setup(config.log.level, log_format or config.log.format)
    try:
        uvloop.run(Relay(config_path, config, log_format=log_format).run())   # libuv's loop: less CPU per socket event
    except (StartError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
