"""The back end's side of the front-end workers: starting them, their channels, and
replacing one that dies.

Owns: the worker processes. Each gets one end of a fresh socketpair (its channel to the
gate) and the listening sockets the back end bound, as inherited file descriptors; the
kernel hands each new connection to whichever worker accepts it first. A worker that exits
without being asked is logged and replaced (after 1 s, doubling up to 30 s while it keeps
failing at start); the gate gives back whatever it held. SIGHUP is passed on to every
worker; stopping sends SIGTERM and waits for them to drain.

Must never: talk SMTP, or hold policy of its own.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtprelay.config import Config
from smtprelay.smtp.channel import Channel, ChannelClosed
from smtprelay.smtp.gate import Gate, Peer

log = logging.getLogger("smtprelay.workers")

READY_TIMEOUT = 60.0
RESTART_DELAY = (1.0, 30.0)      # first delay, maximum (doubling while a worker dies young)
YOUNG = 10.0                     # a worker that dies sooner than this after starting "keeps failing"


@dataclass
class Slot:
    number: int
    proc: subprocess.Popen[bytes] | None = None
    channel: Channel | None = None
    peer: Peer | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY[0]
    ready: asyncio.Future[None] | None = None
    exited: asyncio.Future[int] | None = None
    closed: asyncio.Future[None] | None = None     # its listeners are closed (it is stopping)
    restart: asyncio.TimerHandle | None = field(default=None, repr=False)


def bind(address: str, port: int) -> socket.socket:
    """A listening socket the workers will share (inheritable, non-blocking)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(1024)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class WorkerPool:
    def __init__(self, config_path: Path, config: Config, sockets: dict[str, socket.socket],
                 tls_files: tuple[Path, Path] | None, gate: Gate, log_format: str | None):
        self.config_path = config_path
        self.config = config
        self.sockets = sockets
        self.tls_files = tls_files
        self.gate = gate
        self.log_format = log_format
        self.slots = [Slot(i) for i in range(config.server.worker_count)]
        self._stopping = False
        self._turn = 0

    @property
    def alive(self) -> int:
        return sum(1 for s in self.slots if s.proc is not None and s.proc.poll() is None)

    async def start(self) -> None:
        """Start every worker and wait until each has its listeners up."""
        for slot in self.slots:
            await self._spawn(slot)
        for slot in self.slots:
            assert slot.ready is not None and slot.exited is not None
            waiting: list[asyncio.Future[Any]] = [slot.ready, slot.exited]
            done, _ = await asyncio.wait(waiting, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if slot.ready not in done:
                raise OSError("a front-end worker did not start (see its lines above)")
        log.info("%d front-end worker(s) ready: pids %s", len(self.slots),
                 ", ".join(str(s.proc.pid) for s in self.slots if s.proc is not None))

    async def _spawn(self, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", "smtprelay", "_worker", "--config", str(self.config_path),
                "--channel", str(theirs.fileno())]
        for name, sock in self.sockets.items():
            argv += ["--listener", f"{name}={sock.fileno()}"]
        if self.tls_files is not None:
            argv += ["--tls", str(self.tls_files[0]), str(self.tls_files[1])]
        if self.log_format:
            argv += ["--log-format", self.log_format]
        try:
            proc = subprocess.Popen(argv, pass_fds=[theirs.fileno(), *(s.fileno() for s in self.sockets.values())],
                                    stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        peer = Peer(f"worker {proc.pid}")
        slot.proc, slot.peer, slot.started = proc, peer, time.monotonic()
        slot.ready = loop.create_future()
        slot.exited = loop.create_future()
        slot.closed = loop.create_future()
        ready, exited, closed = slot.ready, slot.exited, slot.closed

        def handle(op: str, args: tuple[Any, ...]) -> Any:
            if op in ("ready", "closed"):
                done = ready if op == "ready" else closed
                if not done.done():
                    done.set_result(None)
                return None
            return self.gate.handle(peer, op, args)

        channel = Channel(handler=handle, on_lost=lambda: self._lost(slot, proc, peer, exited))
        await loop.create_unix_connection(lambda: channel, sock=ours)
        slot.channel = channel

    def _lost(self, slot: Slot, proc: subprocess.Popen[bytes], peer: Peer, exited: asyncio.Future[int]) -> None:
        """The worker's channel closed: it exited (or is about to)."""
        self.gate.lost(peer)
        asyncio.ensure_future(self._reap(slot, proc, exited))

    async def _reap(self, slot: Slot, proc: subprocess.Popen[bytes], exited: asyncio.Future[int]) -> None:
        try:
            status = await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = await asyncio.to_thread(proc.wait)
        if not exited.done():
            exited.set_result(status)
        if self._stopping or slot.proc is not proc:
            return
        lived = time.monotonic() - slot.started
        slot.delay = slot.delay * 2 if lived < YOUNG else RESTART_DELAY[0]
        slot.delay = min(slot.delay, RESTART_DELAY[1])
        log.error("front-end worker %d exited with status %s after %.0f s; starting another in %.0f s",
                  proc.pid, status, lived, slot.delay)
        slot.restart = asyncio.get_running_loop().call_later(slot.delay, self._restart, slot)

    def _restart(self, slot: Slot) -> None:
        if not self._stopping:
            asyncio.ensure_future(self._spawn(slot))

    def reload(self, config: Config) -> None:
        self.config = config
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGHUP)

    async def close_listeners(self) -> None:
        """SIGTERM every worker: each closes its copies of the listening sockets at once (and
        says so), then lets messages being received finish. Returns when every live worker
        has closed them (or after a few seconds); the back end then closes its own copies, and
        only then does the port refuse connections."""
        self._stopping = True
        for slot in self.slots:
            if slot.restart is not None:
                slot.restart.cancel()
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        waiting = [s.closed for s in self.slots if s.closed is not None and not s.closed.done()
                   and s.exited is not None and not s.exited.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=5.0)

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """A send API request (smtp.api) to the next running worker, round robin: the future
        holds its Answer (ChannelClosed when no worker is up)."""
        return self.call("send", *args)

    def task(self, *args: Any) -> asyncio.Future[Any]:
        """One row of a sending task (smtp.api.submit_task): the future holds (stage, reply)."""
        return self.call("task", *args)

    def call(self, op: str, *args: Any) -> asyncio.Future[Any]:
        live = [s for s in self.slots if s.channel is not None and not s.channel.closed
                and s.ready is not None and s.ready.done()]
        if not live:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_exception(ChannelClosed("no front-end worker is running"))
            return future
        self._turn = (self._turn + 1) % len(live)
        channel = live[self._turn].channel
        assert channel is not None
        return channel.call(op, *args)

    def broadcast(self, op: str, *args: Any) -> None:
        """A notice to every running worker (no answer)."""
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.notify(op, *args)

    async def stop(self, grace: float) -> None:
        """Stop every worker (close_listeners first if not done): messages being received may
        finish (their commits still go through the gate meanwhile), then they exit."""
        if not self._stopping:
            await self.close_listeners()
        waiting = [s.exited for s in self.slots if s.exited is not None and not s.exited.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=grace + 10)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                log.warning("front-end worker %d did not stop; killing it", slot.proc.pid)
                slot.proc.kill()
                await asyncio.to_thread(slot.proc.wait)
