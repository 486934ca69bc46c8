"""The feedback listener (issue 18): `[[listeners]] role = "feedback"`, the MX of
`bounce.<sender domain>` (port 25 in production). Built on aiosmtpd, served by the back end
itself (low volume; the back end owns the store the mail is applied to).

- No AUTH. STARTTLS when the listener's `tls` is "starttls" (the relay's certificate).
- RCPT: only `*@<domains.return_path_host>.<registered, verified or failing sender domain>`
  and the unsubscribe mailbox (tracking.unsubscribe_mailto); anything else
  `550 5.7.1 relay not permitted`: the listener is never an open relay.
- Size: feedback.max_message_bytes (1 MiB), announced with SIZE; more is 552 5.3.4.
- Connections: limits.max_connections in total and limits.max_connections_per_client, as
  for submission; over either, `421 4.7.0` and the connection closes.
- DATA: the mail is parsed (in a thread), then kept and applied in one store job
  (feedback.receive); 250 only after that commit, 451 4.3.0 when the store cannot take it.

Owns: the inbound conversation. Must never: apply anything itself (feedback.receive does).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Awaitable, Callable

from aiosmtpd.smtp import SMTP, Envelope, Session

from smtprelay.config import Config, ListenerConfig, TlsMode
from smtprelay.smtp.guards import ConnectionLimiter
from smtprelay.smtp.submission import enhance

log = logging.getLogger("smtprelay.feedback")

Accepts = Callable[[str], Awaitable[bool]]
Apply = Callable[[ListenerConfig, str, str, tuple[str, ...], bytes], Awaitable[str]]


class FeedbackHandler:
    def __init__(self, server: "FeedbackServer"):
        self.server = server

    async def handle_MAIL(self, smtp: "FeedbackSMTP", session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        envelope.mail_from = address or "<>"    # "<>" (the null sender of bounces): aiosmtpd wants it truthy
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, smtp: "FeedbackSMTP", session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= 50:
            return "452 4.5.3 Too many recipients"
        try:
            accepted = await self.server.accepts(address)
        except Exception as exc:     # the store cannot answer now: the sender tries again
            log.warning("feedback: cannot check recipient %s: %s", address, exc)
            return "451 4.3.0 Try again later"
        if not accepted:
            log.info("feedback: from [%s]: recipient <%s> refused: not a bounce or unsubscribe address of ours",
                     smtp.client_ip, address)
            return "550 5.7.1 relay not permitted"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, smtp: "FeedbackSMTP", session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        mail_from = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        return await self.server.apply(smtp.listener, smtp.client_ip, mail_from,
                                         tuple(envelope.rcpt_tos), raw)


class FeedbackSMTP(SMTP):
    def __init__(self, server: "FeedbackServer", listener: ListenerConfig, tls_context: ssl.SSLContext | None):
        config = server.config()
        self.server = server
        self.listener = listener
        self.client_ip = ""
        self._counted = False
        super().__init__(FeedbackHandler(server), data_size_limit=config.feedback.max_message_bytes,
                         hostname=config.server.hostname, ident="ESMTP smtprelay feedback",
                         tls_context=tls_context if listener.tls is TlsMode.STARTTLS else None,
                         timeout=config.limits.command_timeout, auth_require_tls=True,
                         auth_exclude_mechanism=["LOGIN", "PLAIN"], enable_SMTPUTF8=True)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None      # not the TLS layer after STARTTLS
        if first:
            peer = transport.get_extra_info("peername")
            self.client_ip = str(peer[0]) if peer else ""
        super().connection_made(transport)
        if first:
            refused = self.server.open(self.client_ip)
            if refused:
                transport.write(f"421 4.7.0 {self.hostname} {refused}\r\n".encode())
                transport.close()
                return
            self._counted = True

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._counted:
            self._counted = False
            self.server.closed(self.client_ip)

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            if status.startswith("250-AUTH"):
                return          # no AUTH here, not even after STARTTLS
            status = enhance(status)
        await super().push(status)

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH is not offered here (this is the relay's feedback listener)")


class FeedbackServer:
    """The back end's feedback listeners: their sockets, connection counts and hooks."""

    def __init__(self, config: Callable[[], Config], accepts: Accepts, apply: Apply):
        self.config = config
        self.accepts = accepts
        self.apply = apply
        limits = config().limits
        self.limiter = ConnectionLimiter(limits.max_connections, limits.max_connections_per_client)
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self, sockets: dict[str, socket.socket], tls_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.config().feedback_listeners:
            sock = sockets[listener.name]
            implicit = listener.tls is TlsMode.IMPLICIT
            ctx = tls_context if listener.tls is not TlsMode.NONE else None
            server = await loop.create_server(lambda l=listener, c=ctx: FeedbackSMTP(self, l, c), sock=sock,
                                              ssl=ctx if implicit else None,
                                              ssl_handshake_timeout=30 if implicit else None)
            self._servers.append(server)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except (asyncio.TimeoutError, Exception):
                pass
        self._servers.clear()

    def open(self, ip: str) -> str | None:
        """A connection slot (the submission caps' limiter, with this listener's own counts)."""
        limits = self.config().limits
        self.limiter.max_total, self.limiter.max_per_client = limits.max_connections, limits.max_connections_per_client
        refused = self.limiter.acquire(ip)
        if refused == "total":
            return "Too many connections, try again later"
        if refused is not None:
            return "Too many connections from your address, try again later"
        return None

    def closed(self, ip: str) -> None:
        self.limiter.release(ip)
