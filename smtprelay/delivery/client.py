"""The SMTP client: one connection to a next hop, reused for several transactions.

Owns: sockets to remote servers, EHLO with `server.hostname`, TLS policy, timeouts, the
SMTP conversation (RFC 5321, 2920 PIPELINING, 1870 SIZE, 3207 STARTTLS).
`opportunistic`: STARTTLS when offered, no certificate check; if the handshake fails,
reconnect in plaintext (what Postfix's `may` level does). `required`: STARTTLS with a
certificate verified for the MX name, or no delivery (a temporary failure with the
reason). Returns replies; it never decides what they mean or touches the queue.

Why not aiosmtplib: a StreamReader, a lock and several coroutines per command made each
delivered message cost about as much CPU as receiving it. Here one protocol object parses
replies and hands a waiting task N replies at once; with PIPELINING a transaction is two
round trips (MAIL+RCPT+DATA, then the data), and no RSET is sent after a clean transaction.
The two security fixes that made aiosmtplib 5.1.2 necessary are kept by construction:
commands are built only from addresses that passed strict parsing (no CR/LF can enter
them, and `_command` refuses them anyway), and nothing the server sent before the TLS
handshake is ever read as a reply after it (STARTTLS response injection).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from smtprelay.config import BareNewline, DeliveryConfig, DeliveryTls
from smtprelay.delivery.mx import Host
from smtprelay.delivery.outcome import Reply
from smtprelay.policy.content import has_bare_newlines, normalize_newlines

log = logging.getLogger("smtprelay.delivery")

MAX_REPLY_LINE = 4096       # longer reply lines are a broken (or hostile) server
MAX_REPLY_LINES = 200
HANDSHAKE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    reason: str
    reply: Reply | None = None     # the server's own 4xx/5xx greeting or EHLO reply, if any
    tls: bool = False              # failed because TLS was required and not possible


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """Replies of one transaction: per recipient, or a session-level failure."""
    recipients: dict[str, Reply]   # final reply for each recipient (RCPT refusal or end-of-DATA reply)
    session_failure: str | None    # connection lost / timeout: every recipient without a reply is deferred
    usable: bool                   # the connection can carry another transaction


class SessionError(Exception):
    """The conversation cannot go on: connection lost, timeout, or a reply we cannot parse."""


def _tls_contexts(ca_file: Path | None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    verified = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    verified.minimum_version = ssl.TLSVersion.TLSv1_2
    loose = ssl.create_default_context()
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE
    return verified, loose


class _ReplyProtocol(asyncio.Protocol):
    """Parses the server's replies and hands them, in order, to the one waiting reader."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self.replies: deque[Reply] = deque()
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self.error: str | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's transports are not subclasses
        self.loop = asyncio.get_running_loop()   # kept: each lookup costs a getpid() system call

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0 or end > MAX_REPLY_LINE:
                if len(buffer) > MAX_REPLY_LINE:
                    self._fail("the server sent a reply line that is too long")
                return
            line = bytes(buffer[:end]).rstrip(b"\r")
            del buffer[:end + 1]
            mark = line[3:4]
            if len(line) < 3 or not line[:3].isdigit() or mark not in (b"", b" ", b"-"):
                self._fail(f"the server sent a malformed reply: {line[:80]!r}")
                return
            self._lines.append(line[4:].decode("utf-8", "replace"))
            if mark == b"-":
                if len(self._lines) > MAX_REPLY_LINES:
                    self._fail("the server sent a reply with too many lines")
                    return
                continue
            self.replies.append(Reply(int(line[:3]), "\n".join(self._lines)))
            self._lines = []
            if self._waiter is not None and len(self.replies) >= self._want and not self._waiter.done():
                self._waiter.set_result(None)

    @property
    def pending_input(self) -> bool:
        return bool(self._buffer or self._lines or self.replies)

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = "lost connection"
        self._wake()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        if self._paused and self.error is None:
            self._drained = self.loop.create_future()
            await self._drained

    async def read(self, count: int = 1) -> list[Reply]:
        """The next `count` replies (the caller bounds the wait with a timeout)."""
        while len(self.replies) < count:
            if self.error is not None:
                raise SessionError(self.error)
            self._want = count
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return [self.replies.popleft() for _ in range(count)]

    async def read_available(self, count: int) -> list[Reply]:
        """Like read(), but if the connection fails first: the replies that did arrive (maybe none)."""
        try:
            return await self.read(count)
        except SessionError:
            got = list(self.replies)[:count]
            self.replies.clear()
            return got


def _command(*parts: bytes) -> bytes:
    line = b" ".join(parts)
    if b"\r" in line or b"\n" in line:
        raise ValueError("a command line cannot contain CR or LF")
    return line + b"\r\n"


def wire_format(body: bytes) -> bytes:
    """The DATA payload: CRLF line endings, dot-stuffed (RFC 5321 4.5.2), and the final dot."""
    if has_bare_newlines(body):   # never on stored mail (the front end normalises); a safety net
        body, _ = normalize_newlines(body, BareNewline.NORMALIZE)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    if b"\r\n." in body or body[:1] == b".":
        body = (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:]
    return body + b".\r\n"


class Connection:
    def __init__(self, protocol: _ReplyProtocol, host: Host, address: str, tls_version: str | None,
                 extensions: dict[str, str], config: DeliveryConfig, source: str | None = None):
        self._protocol = protocol
        self.host = host
        self.source = source         # the local address it was bound to (an egress pool's), or None
        self.address = address
        self.tls_version = tls_version
        self.extensions = extensions
        self.config = config
        self.transactions = 0
        self._dirty = False          # the last transaction did not end cleanly: RSET first

    @property
    def relay(self) -> str:
        return f"{self.host.name}[{self.address}]:{self.host.port}"

    def _write(self, data: bytes) -> None:
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            raise SessionError(self._protocol.error or "lost connection")
        transport.write(data)

    async def send(self, mail_from: str, recipients: list[str], body: bytes) -> TransactionResult:
        replies: dict[str, Reply] = {}
        proto = self._protocol
        cfg = self.config
        self.transactions += 1
        try:
            mail = _command(b"MAIL", b"FROM:<" + mail_from.encode() + b">",
                            *([f"SIZE={len(body)}".encode()] if "size" in self.extensions else []))
            rcpts = [_command(b"RCPT", b"TO:<" + r.encode() + b">") for r in recipients]
            async with asyncio.timeout(cfg.command_timeout):
                mail_reply, rcpt_replies, data_reply = await self._envelope(mail, rcpts)
        except (SessionError, OSError, TimeoutError) as exc:
            self._dirty = True
            return TransactionResult(replies, _describe(exc), False)
        if mail_reply is None:
            self._dirty = True
            return TransactionResult(replies, proto.error or "lost connection", False)
        if mail_reply.code != 250:
            self._dirty = True
            if data_reply is not None and data_reply.code == 354:
                await self._end_empty_data()
            return TransactionResult({r: mail_reply for r in recipients}, None, mail_reply.code != 421)
        accepted = []
        for rcpt, reply in zip(recipients, rcpt_replies):
            if reply.code in (250, 251):
                accepted.append(rcpt)
            else:
                replies[rcpt] = reply
            if reply.code == 421:
                self._dirty = True
                return TransactionResult(replies, str(reply), False)
        if len(rcpt_replies) < len(recipients):   # the connection broke in the middle
            self._dirty = True
            return TransactionResult(replies, proto.error or "lost connection", False)
        if not accepted:
            self._dirty = True
            if data_reply is not None and data_reply.code == 354:
                await self._end_empty_data()
            return TransactionResult(replies, None, True)
        try:
            if data_reply is None:
                async with asyncio.timeout(cfg.command_timeout):
                    self._write(_command(b"DATA"))
                    data_reply = (await proto.read(1))[0]
            if data_reply.code != 354:
                self._dirty = True
                for rcpt in accepted:
                    replies[rcpt] = data_reply
                return TransactionResult(replies, None, data_reply.code != 421)
            async with asyncio.timeout(cfg.data_timeout):
                self._write(wire_format(body))
                await proto.drain()
                reply = (await proto.read(1))[0]
        except (SessionError, OSError, TimeoutError) as exc:
            log.debug("%s: transaction failed: %r", self.relay, exc)
            self._dirty = True
            return TransactionResult(replies, _describe(exc), False)
        for rcpt in accepted:
            replies[rcpt] = reply
        return TransactionResult(replies, None, reply.code != 421)

    async def _envelope(self, mail: bytes, rcpts: list[bytes]) -> tuple[Reply | None, list[Reply], Reply | None]:
        """MAIL, RCPT... (and DATA when pipelining): the replies that arrived, in that order.
        A connection that breaks midway leaves the later ones missing, never invented."""
        proto = self._protocol
        skip = 0
        if self._dirty:
            self._dirty = False
            self._write(_command(b"RSET"))
            if "pipelining" in self.extensions:
                skip = 1                  # its reply comes first among the pipelined ones
            else:
                await proto.read(1)
        if "pipelining" in self.extensions:
            self._write(mail + b"".join(rcpts) + _command(b"DATA"))
            got = (await proto.read_available(skip + 2 + len(rcpts)))[skip:]
            if not got:
                return None, [], None
            data = got[-1] if len(got) == 2 + len(rcpts) else None
            return got[0], got[1:1 + len(rcpts)], data
        self._write(mail)
        got = await proto.read_available(1)
        if not got or got[0].code != 250:
            return (got[0] if got else None), [], None
        rcpt_replies: list[Reply] = []
        for line in rcpts:
            self._write(line)
            reply = await proto.read_available(1)
            if not reply:
                break
            rcpt_replies.append(reply[0])
            if reply[0].code == 421:
                break
        return got[0], rcpt_replies, None

    async def _end_empty_data(self) -> None:
        """DATA was accepted though no recipient was: end it with no content (RFC 2920 3.1)."""
        async with asyncio.timeout(self.config.command_timeout):
            self._write(b".\r\n")
            await self._protocol.read(1)

    async def close(self) -> None:
        transport = self._protocol.transport
        if transport is None:
            return
        try:
            if not transport.is_closing() and self._protocol.error is None:
                async with asyncio.timeout(5):
                    transport.write(b"QUIT\r\n")
                    await self._protocol.read(1)
        except (SessionError, OSError, TimeoutError):
            pass
        finally:
            transport.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "conversation timed out"
    if isinstance(exc, SessionError):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "Connection refused"
    if isinstance(exc, ConnectionError):
        return "lost connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _extensions(reply: Reply) -> dict[str, str]:
    found = {}
    for line in reply.text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            found[keyword.lower()] = params
    return found


class SmtpTransport:
    def __init__(self, config: DeliveryConfig, helo: str):
        self.config = config
        self.helo = helo.encode("ascii")
        self._verified, self._loose = _tls_contexts(config.tls_ca_file)

    def reconfigure(self, config: DeliveryConfig) -> None:
        self.config = config

    async def connect(self, hosts: tuple[Host, ...], policy: DeliveryTls, source: str | None = None,
                      helo: str | None = None) -> Connection | ConnectFailure:
        """Try the hosts (and their addresses) in order; the first usable connection wins.
        `source`: the local address to send from (an egress pool's; only the hosts' addresses
        of its family are tried), with `helo`, the name it says in EHLO."""
        failure = ConnectFailure("no host to try")
        family = None if source is None else (":" in source)
        for host in hosts:
            for address in host.addresses:
                if family is not None and (":" in address) != family:
                    failure = ConnectFailure(f"{host.name} has no IPv{6 if family else 4} address for source "
                                             f"{source}")
                    continue
                result = await self._connect_one(host, address, policy, source=source,
                                                  helo=None if helo is None else helo.encode("ascii"))
                if isinstance(result, Connection):
                    return result
                failure = result
                if result.reply is not None and result.reply.code >= 500:
                    return result  # a 5xx greeting is an answer for the whole destination
        return failure

    async def _connect_one(self, host: Host, address: str, policy: DeliveryTls, plaintext: bool = False,
                           source: str | None = None, helo: bytes | None = None) -> Connection | ConnectFailure:
        cfg = self.config
        loop = asyncio.get_running_loop()
        where = f"{host.name}[{address}]:{host.port}"
        name = helo or self.helo
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                transport, proto = await loop.create_connection(
                    _ReplyProtocol, address, host.port, local_addr=None if source is None else (source, 0))
        except (OSError, TimeoutError) as exc:
            return ConnectFailure(f"connect to {where}" + (f" from {source}" if source else "") +
                                  f": {_describe(exc)}")
        try:
            async with asyncio.timeout(cfg.command_timeout):
                greeting = (await proto.read(1))[0]
                if greeting.code != 220:
                    transport.close()
                    return ConnectFailure(f"host {where} refused to talk to me: {greeting}", greeting)
                ehlo = await self._ehlo(transport, proto, name)
            if ehlo.code != 250:
                transport.close()
                return ConnectFailure(f"host {where} refused EHLO: {ehlo}", ehlo)
            extensions = _extensions(ehlo)
            tls_version = None
            if not plaintext and (policy is DeliveryTls.REQUIRED or "starttls" in extensions):
                if "starttls" not in extensions:
                    transport.close()
                    return ConnectFailure(f"TLS is required, but host {where} does not offer STARTTLS", tls=True)
                context = self._verified if policy is DeliveryTls.REQUIRED else self._loose
                try:
                    async with asyncio.timeout(cfg.command_timeout):
                        transport.write(b"STARTTLS\r\n")
                        reply = (await proto.read(1))[0]
                    if reply.code != 220:
                        raise SessionError(f"STARTTLS refused: {reply}")
                    if proto.pending_input:   # sent before the handshake: never to be read as a reply after it
                        raise SessionError("the server sent data after its STARTTLS reply")
                    tls = await loop.start_tls(transport, proto, context, server_hostname=host.name,
                                               ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
                    if tls is None:
                        raise SessionError("lost connection")
                    transport = tls
                    proto.transport = tls
                    obj = tls.get_extra_info("ssl_object")
                    tls_version = obj.version() if obj is not None else "TLS"
                    async with asyncio.timeout(cfg.command_timeout):
                        ehlo = await self._ehlo(transport, proto, name)   # RFC 3207: forget what was said before TLS
                    if ehlo.code != 250:
                        raise SessionError(f"EHLO after STARTTLS refused: {ehlo}")
                    extensions = _extensions(ehlo)
                except (SessionError, OSError, ssl.SSLError, TimeoutError) as exc:
                    transport.close()
                    if policy is DeliveryTls.REQUIRED:
                        return ConnectFailure(f"TLS is required, but the handshake with {where} failed: "
                                              f"{_describe(exc)}", tls=True)
                    return await self._connect_one(host, address, policy, plaintext=True, source=source, helo=helo)
            return Connection(proto, host, address, tls_version, extensions, cfg, source)
        except (SessionError, OSError, TimeoutError) as exc:
            transport.close()
            return ConnectFailure(f"conversation with {where} failed: {_describe(exc)}")

    async def _ehlo(self, transport: asyncio.Transport, proto: _ReplyProtocol, name: bytes) -> Reply:
        """EHLO, or HELO when the server does not know EHLO (RFC 5321 3.2)."""
        transport.write(b"EHLO " + name + b"\r\n")
        reply = (await proto.read(1))[0]
        if 500 <= reply.code < 600 and reply.code != 554:
            transport.write(b"HELO " + name + b"\r\n")
            helo = (await proto.read(1))[0]
            return Reply(helo.code, helo.text.split("\n", 1)[0]) if helo.code == 250 else helo
        return reply
