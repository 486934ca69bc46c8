"""The channel between a front-end worker process and the back end.

Owns: framing (a 4-byte length, then a pickle), request ids, replies and one-way notices.
Each worker gets one end of a socketpair that the back end created and handed over when it
started the worker, so no other process can connect to it, and both ends run the same
trusted code (which is what makes pickle acceptable here).

A call returns a future; the other side's handler may answer at once or with a future of
its own (the back end's enqueue answers after the group commit). Notices get no answer.

Must never: block the loop, or decide anything: it only carries calls.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import pickle
import struct
from typing import Any, Callable, cast

log = logging.getLogger("smtprelay.channel")

_LENGTH = struct.Struct("!I")
MAX_FRAME = 1 << 30           # a corrupt length, not a message (a message is at most 50 copies of 4 MiB)
CALL, REPLY, NOTICE = 1, 2, 3

Handler = Callable[[str, tuple[Any, ...]], Any]


class ChannelClosed(Exception):
    """The other process is gone."""


class RemoteError(Exception):
    """The other side's handler raised; the text says what."""


class Channel(asyncio.Protocol):
    def __init__(self, handler: Handler | None = None, on_lost: Callable[[], None] | None = None):
        self.transport: asyncio.Transport | None = None
        self._handler = handler
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self.closed = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- transport ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Kept: asyncio.get_running_loop() costs a getpid() system call each time.
        self.loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed("the other process closed the channel"))
                # A caller that went away meanwhile (its session closed) will never look: mark
                # it seen, or asyncio logs "Future exception was never retrieved" for each.
                future.exception()
        self._waiting.clear()
        if self._on_lost is not None:
            self._on_lost()

    def close(self) -> None:
        if self.transport is not None:
            self._flush()     # what this iteration queued still goes out
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        size = len(buffer)
        while size - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > MAX_FRAME:
                log.error("channel: a frame of %d bytes is not ours; closing", length)
                self.close()
                return
            end = start + 4 + length
            if end > size:
                break
            message = pickle.loads(memoryview(buffer)[start + 4:end])
            start = end
            self._dispatch(message)
        if start:
            del buffer[:start]

    # -- messages ----------------------------------------------------------------------------
    def _send(self, message: tuple[Any, ...]) -> None:
        """Frames of one loop iteration leave together, in one write (many sessions share a
        channel, so under load this saves a system call on both ends per call)."""
        if self.transport is None or self.transport.is_closing():
            raise ChannelClosed("the channel is closed")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._out.append(_LENGTH.pack(len(data)))
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self.loop is not None
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def call(self, op: str, *args: Any) -> asyncio.Future[Any]:
        """Ask the other side; the future holds its answer (or ChannelClosed / RemoteError)."""
        future: asyncio.Future[Any] = (self.loop or asyncio.get_running_loop()).create_future()
        if self.closed:
            future.set_exception(ChannelClosed("the channel is closed"))
            return future
        self._next += 1
        self._waiting[self._next] = future
        self._send((CALL, self._next, op, args))
        return future

    def notify(self, op: str, *args: Any) -> None:
        """Tell the other side; no answer. Dropped if the channel is already closed."""
        if not self.closed:
            try:
                self._send((NOTICE, 0, op, args))
            except ChannelClosed:
                pass

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind, number = message[0], message[1]
        if kind == REPLY:
            future = self._waiting.pop(number, None)
            if future is not None and not future.done():
                if message[2]:
                    future.set_result(message[3])
                else:
                    future.set_exception(RemoteError(message[3]))
            return
        assert self._handler is not None, "this end takes no calls"
        try:
            result = self._handler(message[2], message[3])
        except Exception as exc:
            log.exception("channel: %s failed", message[2])
            if kind == CALL:
                self._reply(number, False, f"{type(exc).__name__}: {exc}")
            return
        if kind != CALL:
            return
        if isinstance(result, asyncio.Future):
            result.add_done_callback(functools.partial(self._answer_later, number))
        else:
            self._reply(number, True, result)

    def _answer_later(self, number: int, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._reply(number, False, "cancelled")
        elif future.exception() is not None:
            exc = future.exception()
            self._reply(number, False, f"{type(exc).__name__}: {exc}")
        else:
            self._reply(number, True, future.result())

    def _reply(self, number: int, ok: bool, value: Any) -> None:
        try:
            self._send((REPLY, number, ok, value))
        except ChannelClosed:
            pass   # the caller is gone; nothing to tell
