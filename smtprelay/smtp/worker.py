"""A front-end worker process: SMTP sessions on the listening sockets it shares with the
other workers, talking to the back end over its channel.

Owns: this process's lifecycle — its view of the catalog (reloaded within a second of a
change, like the back end's), its listeners, SIGHUP (reload) and SIGTERM (drain: stop
accepting, let messages being received finish for `server.shutdown_grace`, answer the
others 421, exit). The back end starts it (`smtprelay _worker`, never by hand) with the
channel and the listening sockets as inherited file descriptors, and starts a new one if it
dies. If the back end goes away, the worker stops at once: it could not commit anything.

Must never: write to the store (the back end is its only writer) or decide what the gate
decides.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sqlite3
import ssl
from collections.abc import Callable
from typing import Any
from pathlib import Path

import uvloop

from smtprelay import logs
from smtprelay.clock import Clock, clock_from_environment
from smtprelay.config import Config, ConfigError, ListenerConfig, Protocol, TlsMode, load
from smtprelay.catalog.sqlite import SqliteCatalog
from smtprelay.events import tracking
from smtprelay.queue import schema
from smtprelay.smtp import api
from smtprelay.smtp.channel import Channel
from smtprelay.smtp.handler import FrontEnd
from smtprelay.smtp.tls import server_context

log = logging.getLogger("smtprelay.worker")

CATALOG_REFRESH_SECONDS = 1.0   # credential revocations and domain changes reach sessions within 2 s
BACKEND_LOST_GRACE = 1.0        # seconds for sessions at their final dot to get the store's answer


class Worker:
    def __init__(self, config_path: Path, config: Config, channel_fd: int, listeners: dict[str, int],
                 tls_files: tuple[Path, Path] | None, clock: Clock | None = None):
        self.config_path = config_path
        self.config = config
        self.channel_fd = channel_fd
        self.listener_fds = listeners
        self.tls_files = tls_files
        self.clock = clock or clock_from_environment()
        self._stop = asyncio.Event()
        self._servers: list[asyncio.AbstractServer] = []
        self._reader: sqlite3.Connection | None = None
        self._backend_lost = False
        self._catalog_lock = asyncio.Lock()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        link = Channel(handler=self._from_backend, on_lost=self._on_backend_lost)
        await loop.create_unix_connection(lambda: link, sock=socket.socket(fileno=self.channel_fd))
        self.frontend = FrontEnd(self.config, link, self.clock)
        self.frontend.tracking_secret = tracking.load_key(self.config)
        self.frontend.committed = self._committed
        self._reader = schema.reader(self.config.server.data_dir)
        await asyncio.to_thread(self._load_catalog)
        refresher = asyncio.create_task(self._refresh_loop(), name="catalog-refresh")
        try:
            await self._start_listeners()
            link.notify("ready")
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
            await self._stop.wait()
            await self._drain()
        finally:
            refresher.cancel()
            for server in self._servers:
                server.close()
            if self.frontend.sign_pool is not None:
                self.frontend.sign_pool.shutdown(wait=False)
            await self.frontend.scanners.close()
            link.close()
            if self._reader is not None:
                self._reader.close()

    def _on_backend_lost(self) -> None:
        if not self._stop.is_set():
            log.error("worker: the back end is gone; stopping")
        self._backend_lost = True
        self._stop.set()

    # -- catalog --------------------------------------------------------------------------------
    def _load_catalog(self) -> None:
        """Credentials, sender domains with their signers (keys parsed here, off the loop) and
        tracking settings, when the catalog version moved."""
        reader = self._reader
        assert reader is not None
        frontend = self.frontend
        catalog = SqliteCatalog(reader)
        version = catalog.version()
        if version != frontend.credentials.version:
            logins, accounts = catalog.logins()
            domains, addresses = catalog.senders(self.config.server.data_dir)
            frontend.senders.replace(domains, addresses)
            frontend.tracking_accounts, frontend.tracking_domains = tracking.resolve(catalog.tracking_rows())
            frontend.templates.replace(catalog.templates())
            frontend.suspended_accounts = catalog.suspended_accounts()
            frontend.credentials.replace(logins, accounts, version)

    async def _refresh(self) -> None:
        try:
            async with self._catalog_lock:
                await asyncio.to_thread(self._load_catalog)
        except sqlite3.Error as exc:
            log.error("worker: could not refresh the catalog from the store: %s", exc)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(CATALOG_REFRESH_SECONDS)
            await self._refresh()

    def _committed(self, queue_id: str) -> bool:
        """Whether the store holds this message (asked in a thread once the back end is gone:
        nothing can commit after that), as a final answer: a commit the dead writer left
        unpublished is settled first (schema.settled_after_writer_died)."""
        return schema.settled_after_writer_died(self.config.server.data_dir,
                                                "SELECT 1 FROM messages WHERE id = ?", (queue_id,))

    def _from_backend(self, op: str, args: tuple[Any, ...]) -> Any:
        """The back end's notices and calls: "catalog" — it changed the senders itself (a
        suspension): reload now rather than at the next poll; "send" — a send API request
        (smtp.api), answered when its message is committed or refused; "task" — one row of a
        sending task (batch.runner), likewise."""
        if op == "catalog":
            asyncio.ensure_future(self._refresh())
        elif op == "send":
            return asyncio.ensure_future(api.run(self.frontend, args))
        elif op == "task":
            return asyncio.ensure_future(api.run_task(self.frontend, args))
        return None

    # -- listeners ------------------------------------------------------------------------------
    async def _start_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        context = server_context(*self.tls_files) if self.tls_files is not None else None
        for listener in self.config.submission_listeners:
            fd = self.listener_fds.get(listener.name)
            if fd is None:
                continue
            ctx = context if listener.tls is not TlsMode.NONE else None

            factory = self._protocol_factory(listener, ctx)
            implicit = listener.tls is TlsMode.IMPLICIT
            server = await loop.create_server(factory, sock=socket.socket(fileno=fd), ssl=ctx if implicit else None,
                                              ssl_handshake_timeout=30 if implicit else None)
            self._servers.append(server)

    def _protocol_factory(self, listener: ListenerConfig,
                          ctx: ssl.SSLContext | None) -> Callable[[], asyncio.BaseProtocol]:
        """The SMTP protocol of server.protocol for one listener (fixed until restart)."""
        frontend = self.frontend
        if self.config.server.protocol is Protocol.NATIVE:
            from smtprelay.smtp.server import RelaySMTP
            return lambda: RelaySMTP(frontend, listener, ctx)
        from smtprelay.smtp.submission import RelayHandler, SubmissionSMTP
        handler = RelayHandler(frontend)
        return lambda: SubmissionSMTP(frontend, handler, listener, ctx)

    # -- signals --------------------------------------------------------------------------------
    def reload(self) -> None:
        try:
            new = load(self.config_path)
        except ConfigError as exc:   # the back end logs the problems once
            log.debug("worker: reload refused: %s", "; ".join(exc.problems))
            return
        self.frontend.apply(new)
        logs.set_level(new.log.level)
        self.config = new

    async def _drain(self) -> None:
        sessions = self.frontend.sessions
        for server in self._servers:
            server.close()
        if not self._backend_lost:
            self.frontend.link.notify("closed")   # the back end waits for this before it says so
        # Nothing can be committed once the back end is lost, but a session whose message had
        # reached its final dot learns from the store whether it was (FrontEnd.message): a
        # moment for those answers, so a committed message is not answered "421" (issue 24.4).
        grace = BACKEND_LOST_GRACE if self._backend_lost else self.config.server.shutdown_grace
        deadline = self.clock.monotonic() + grace
        while True:
            # Idle sessions close at once; a session receiving DATA may finish it.
            for session in [s for s in sessions if not s.in_data]:
                session.refuse_and_close("421 4.3.2 Service shutting down")
            if not sessions or self.clock.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
        for session in list(sessions):
            session.refuse_and_close("421 4.3.2 Service shutting down")


def run(config_path: Path, channel_fd: int, listeners: dict[str, int], tls_files: tuple[Path, Path] | None,
        log_format: str | None) -> int:
    try:
        config = load(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    logs.setup(config.log.level, log_format or config.log.format)
    uvloop.run(Worker(config_path, config, channel_fd, listeners, tls_files).run())
    return 0
