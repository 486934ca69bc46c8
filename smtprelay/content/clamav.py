"""A clamd client: the INSTREAM command of clamd's documented socket protocol (clamd(8)).

Owns: one connection per scan (unix socket or TCP), the message streamed in chunks of at most
64 KiB each with its 4-byte length, a zero-length chunk to end it, and the one reply read back:
`stream: OK`, `stream: <name> FOUND`, or an error (`INSTREAM size limit exceeded`, ...).
Why not a client library: `clamd` on PyPI is synchronous and unmaintained since 2017, and the
protocol is four lines; this one is tested against the real daemon.

Must never: block the loop (asyncio streams), or wait past its timeout.
"""
from __future__ import annotations

import asyncio
import struct

CHUNK = 64 * 1024


class ScannerError(Exception):
    """The scanner could not give an answer (down, timed out, refused the stream)."""


async def ping(address: str, timeout: float) -> bool:
    try:
        return await asyncio.wait_for(_command(address, b"zPING\0", b""), timeout) == "PONG"
    except (OSError, asyncio.TimeoutError, ScannerError):
        return False


async def scan(address: str, data: bytes, timeout: float) -> str | None:
    """The name of the virus found in `data`, or None when it is clean."""
    try:
        reply = await asyncio.wait_for(_command(address, b"zINSTREAM\0", data), timeout)
    except asyncio.TimeoutError:
        raise ScannerError(f"clamd at {address} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise ScannerError(f"clamd at {address}: {exc.strerror or exc}") from None
    if reply.endswith(" FOUND"):
        return reply[len("stream: "):-len(" FOUND")] if reply.startswith("stream: ") else reply[:-6]
    if reply == "stream: OK":
        return None
    raise ScannerError(f"clamd at {address} answered {reply[:200]!r}")


async def _command(address: str, command: bytes, data: bytes) -> str:
    if address.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(address[5:])
    else:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(command)
        if command == b"zINSTREAM\0":
            view = memoryview(data)
            for i in range(0, len(view), CHUNK):
                piece = view[i:i + CHUNK]
                writer.write(struct.pack("!L", len(piece)))
                writer.write(piece)
                await writer.drain()
            writer.write(struct.pack("!L", 0))
        await writer.drain()
        try:
            reply = await reader.readuntil(b"\0")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ScannerError("clamd closed the connection without an answer") from None
            reply = exc.partial
        return reply.rstrip(b"\0").decode("utf-8", "replace").strip()
    finally:
        writer.close()
