"""The SMTP protocol for one connection: aiosmtpd's SMTP with the relay's rules of engagement.

Owns: per-connection protocol concerns aiosmtpd lacks — the connection caps (refused
with 421 before the greeting), the AUTH lockout (421 and close), trusted networks
(AUTH not required), a DATA timeout separate from the command timeout, strict address
syntax, and enhanced status codes on every reply aiosmtpd writes itself.

Must never: make policy decisions (the handler asks the pipeline) or do I/O besides the
socket.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from smtprelay.config import ListenerConfig, TlsMode
from smtprelay.policy.address import AddressError, parse_address, split_smtp_argument

if TYPE_CHECKING:
    from smtprelay.smtp.handler import FrontEnd

log = logging.getLogger("smtprelay.smtp")

# aiosmtpd writes these itself; DESIGN wants enhanced status codes on every reply.
_REWRITES = {
    "552 Error: message size exceeds fixed maximum message size": "552 5.3.4 Message size exceeds fixed limit",
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed limit",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6 allows 1000 octets)",
    "500 Command line too long": "500 5.5.2 Command line too long",
    "500 Error: bad syntax": "500 5.5.2 Error: bad syntax",
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Error: need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "503 Already authenticated": "503 5.5.1 Already authenticated",
    "553 5.1.3 Error: malformed address": "553 5.1.3 Bad address syntax",
    "500 Error: strict ASCII mode": "500 5.6.7 Non-ASCII addresses are not supported",
    "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]":
        "501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>] (the null sender is not accepted "
        "for submission)",
    "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]": "501 5.5.4 Syntax: RCPT TO:<address>",
    "555 MAIL FROM parameters not recognized or not implemented":
        "555 5.5.4 MAIL FROM parameters not recognized or not implemented",
    "555 RCPT TO parameters not recognized or not implemented":
        "555 5.5.4 RCPT TO parameters not recognized or not implemented",
    "250 OK": "250 2.0.0 Ok",
    "221 Bye": "221 2.0.0 Bye",
    "503 Error: send HELO first": "503 5.5.1 Error: send HELO/EHLO first",
    "503 Error: send EHLO first": "503 5.5.1 Error: send EHLO first",
}

LOCKED_OUT = "421 4.7.0 Too many failed authentication attempts from your address; try again later"


class RelaySMTP(SMTP):
    def __init__(self, frontend: FrontEnd, listener: ListenerConfig, tls_context: ssl.SSLContext | None):
        config = frontend.config
        self.frontend = frontend
        self.listener = listener
        # Implicit TLS: the whole connection is encrypted, so AUTH needs no STARTTLS first.
        require_tls = config.auth.require_tls and listener.tls is not TlsMode.IMPLICIT
        super().__init__(
            frontend.handler,
            data_size_limit=config.limits.max_message_bytes,
            enable_SMTPUTF8=False,
            decode_data=False,
            hostname=config.server.hostname,
            ident="ESMTP smtprelay",
            tls_context=tls_context if listener.tls is TlsMode.STARTTLS else None,
            timeout=config.limits.command_timeout,
            auth_required=False,
            auth_require_tls=require_tls,
            authenticator=frontend.authenticate,
        )
        # Decided per connection in connection_made: trusted networks need no AUTH.
        self._auth_required = True
        self._data_timeout = config.limits.data_timeout
        self.client_ip = ""
        self._slot_held = False
        self._refused: str | None = None
        self.close_after_reply = False
        self.trusted = False
        self.in_data = False

    # -- connection lifecycle -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            self.client_ip = peer[0] if peer else ""
            reason = self.frontend.limiter.acquire(self.client_ip)
            if reason is None:
                self._slot_held = True
                self.trusted = self.listener.is_trusted(self.client_ip)
                self._auth_required = not self.trusted
            else:
                self._refused = reason
            self.frontend.connection_opened(self, reason)
        super().connection_made(transport)
        assert self.session is not None
        self.session.relay = self.frontend.new_session_state(self)  # type: ignore[attr-defined]

    def connection_lost(self, error: Exception | None) -> None:
        if self._slot_held:
            self._slot_held = False
            self.frontend.limiter.release(self.client_ip)
            self.frontend.connection_closed(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refused is not None:
            what = "your address" if self._refused == "per_client" else "all clients"
            await self.push(f"421 4.7.0 {self.hostname} Too many connections from {what}; try again later")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    # -- replies --------------------------------------------------------------------------
    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = _REWRITES.get(status, status)
        await super().push(status)

    # -- commands -------------------------------------------------------------------------
    async def smtp_AUTH(self, arg: str) -> None:
        if self.frontend.lockout.locked(self.client_ip):
            self.frontend.metrics.auth_attempts.labels(result="locked_out").inc()
            await self.push(LOCKED_OUT)
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_AUTH(arg)
        if self.close_after_reply and self.transport is not None:
            self.transport.close()

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd arms one timer per command; the DATA phase gets its own, longer budget.
        self._reset_timeout(self._data_timeout)
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False

    def refuse_and_close(self, reply: str) -> None:
        """Write a final reply without waiting for the client, and close (used by shutdown)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
            self.transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Strict parsing: policy and delivery must see the same address (see policy.address)."""
        if not arg:
            return "", ""
        try:
            text, rest = split_smtp_argument(arg)
            if text == "":
                return "", rest  # the null sender; aiosmtpd answers with a syntax error
            address = parse_address(text)
        except AddressError as exc:
            assert self.session is not None
            log.info("reject: bad address syntax from [%s]: %s: %s", self.client_ip, exc, arg[:200])
            return None, None
        return str(address), rest

    @property
    def tls_version(self) -> str | None:
        if self.transport is None:
            return None
        obj = self.transport.get_extra_info("ssl_object")
        return obj.version() if obj is not None else None


def authenticate(frontend: FrontEnd, server: RelaySMTP, mechanism: str, auth_data: Any) -> AuthResult:
    """Called synchronously by aiosmtpd: in-memory lookup only, never I/O.

    A failed attempt returns handled=False so aiosmtpd sends 535 (handled=True would send
    nothing and leave the client hanging).
    """
    if not isinstance(auth_data, LoginPassword):
        return AuthResult(success=False, handled=False)
    username = auth_data.login.decode("utf-8", "replace")
    password = auth_data.password.decode("utf-8", "replace")
    login = frontend.credentials.verify(username, password)
    ip = server.client_ip
    if login is None:
        frontend.metrics.auth_attempts.labels(result="failure").inc()
        if frontend.lockout.failure(ip):
            log.warning("warning: [%s]: %s authentication failed for \"%s\"; address locked out for %ds",
                        ip, mechanism, username[:64], int(frontend.lockout.lockout))
            server.close_after_reply = True
            return AuthResult(success=False, handled=False, message=LOCKED_OUT)
        log.warning("warning: [%s]: %s authentication failed for \"%s\"", ip, mechanism, username[:64])
        return AuthResult(success=False, handled=False)
    frontend.lockout.success(ip)
    frontend.metrics.auth_attempts.labels(result="success").inc()
    log.info("[%s]: sasl_method=%s, sasl_username=%s", ip, mechanism, username)
    return AuthResult(success=True, auth_data=login)
