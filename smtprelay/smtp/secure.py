"""STARTTLS (RFC 3207) and AUTH PLAIN/LOGIN (RFC 4954) for one SMTP connection: a mixin of
smtp.server.RelaySMTP, which owns the connection; the session modes both share live here.

Owns: the TLS upgrade (plaintext pipelined after STARTTLS is discarded, the session starts
over after the handshake) and the SASL exchange (base64, the LOGIN challenges, "*" to
abort). Whether the credentials are good is the FrontEnd's to say (smtp.handler), from its
in-memory table.

Must never: execute a command that arrived in plaintext after STARTTLS, or accept AUTH
without TLS where `auth.require_tls` says so.
"""
from __future__ import annotations

import asyncio
import binascii
import enum
import logging
import ssl
from base64 import b64decode
from typing import TYPE_CHECKING, Any, Awaitable, Callable, cast

if TYPE_CHECKING:
    from smtprelay.smtp.handler import FrontEnd, Session, SessionState

log = logging.getLogger("smtprelay.smtp")

HANDSHAKE_TIMEOUT = 30.0
USERNAME_CHALLENGE = "334 VXNlcm5hbWU6"   # "Username:"
PASSWORD_CHALLENGE = "334 UGFzc3dvcmQ6"   # "Password:"


class Mode(enum.Enum):
    COMMAND = 1      # reading command lines
    AUTH = 2         # the next line is an AUTH response, not a command
    DATA = 3         # reading message data until <CRLF>.<CRLF>
    BUSY = 4         # the FrontEnd is finishing a message; input waits in the buffer
    TLS = 5          # TLS handshake after STARTTLS; the socket belongs to the TLS layer
    CLOSED = 6



class SecureCommands:
    """STARTTLS and AUTH; the attributes and methods below are RelaySMTP's."""

    loop: asyncio.AbstractEventLoop
    frontend: FrontEnd
    transport: asyncio.Transport | None
    client_ip: str
    tls_version: str | None
    state: SessionState | None
    extended: bool
    greeted: bool
    _mode: Mode
    _buffer: bytearray
    _reading_paused: bool
    _starttls_context: ssl.SSLContext | None
    _auth_needs_tls: bool
    _auth: tuple[str, bytes | None] | None
    _task: asyncio.Future[Any] | None

    if TYPE_CHECKING:
        def _reply(self, line: str) -> None: ...
        def _flush(self) -> None: ...
        def _process(self) -> None: ...
        def _close(self) -> None: ...
        def _arm(self, seconds: float) -> None: ...
        def _reset_transaction(self) -> None: ...
        def _wait(self, answer: Awaitable[Any], then: Callable[[Any], None]) -> None: ...

    # -- STARTTLS ------------------------------------------------------------------------------------
    def _starttls(self, arg: str) -> None:
        if arg:
            self._reply("501 5.5.4 Syntax: STARTTLS")
            return
        if self._starttls_context is None:
            self._reply("454 4.7.0 TLS not available")
            return
        if self.tls_version is not None:
            self._reply("503 5.5.1 Error: TLS already active")
            return
        self._reply("220 2.0.0 Ready to start TLS")
        self._flush()
        # Anything the client sent after STARTTLS in plaintext is discarded, never executed
        # after the handshake (the command injection of CVE-2011-0411).
        del self._buffer[:]
        self._mode = Mode.TLS
        assert self.transport is not None
        self.transport.pause_reading()    # the ClientHello must reach the TLS layer, not us
        self._reading_paused = False
        self._task = asyncio.ensure_future(self._upgrade(self.transport, self._starttls_context))

    async def _upgrade(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            tls = await self.loop.start_tls(transport, cast(asyncio.BaseProtocol, self), context, server_side=True,
                                            ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info("[%s]: TLS handshake failed: %s", self.client_ip, exc)
            self._mode = Mode.CLOSED
            transport.close()
            return
        finally:
            self._task = None
        if tls is None or self._mode is Mode.CLOSED:
            return
        self.transport = tls
        ssl_object = tls.get_extra_info("ssl_object")
        self.tls_version = ssl_object.version() if ssl_object is not None else "TLS"
        # RFC 3207: forget everything said before TLS; the client greets again.
        self._reset_transaction()
        self.greeted = self.extended = False
        self._mode = Mode.COMMAND
        self._arm(self.frontend.config.limits.command_timeout)
        if self._buffer:
            self._process()

    # -- AUTH --------------------------------------------------------------------------------------
    def _auth_command(self, arg: str) -> None:
        assert self.state is not None
        if not self.greeted:
            self._reply("503 5.5.1 Error: send EHLO first")
            return
        if not self.extended:
            self._reply("502 5.5.1 Error: AUTH needs EHLO")
            return
        if self._auth_needs_tls and self.tls_version is None:
            self._reply("538 5.7.11 Encryption required for requested authentication mechanism")
            return
        if self.state.login is not None:
            self._reply("503 5.5.1 Already authenticated")
            return
        if self.state.mail_from is not None:
            self._reply("503 5.5.1 Error: AUTH not allowed during a mail transaction")
            return
        args = arg.split()
        if not args:
            self._reply("501 5.5.4 Not enough value")
            return
        if len(args) > 2:
            self._reply("501 5.5.4 Too many values")
            return
        mechanism = args[0].upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            self._reply("504 5.5.4 Unrecognized authentication type")
            return
        if len(args) == 1:
            self._auth = (mechanism, None)
            self._mode = Mode.AUTH
            self._reply("334 " if mechanism == "PLAIN" else USERNAME_CHALLENGE)
            return
        self._auth = (mechanism, None)
        self._auth_step(args[1].encode("ascii"))

    def _auth_response(self, line: bytes) -> None:
        self._mode = Mode.COMMAND
        if line.strip() == b"*":
            self._auth = None
            self._reply("501 5.7.0 Auth aborted")
            return
        self._auth_step(line.strip())

    def _auth_step(self, blob: bytes) -> None:
        assert self._auth is not None
        mechanism, username = self._auth
        try:
            decoded = b"" if blob == b"=" else b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            self._auth = None
            self._reply("501 5.5.2 Can't decode base64")
            return
        if mechanism == "LOGIN" and username is None:
            self._auth = (mechanism, decoded)
            self._mode = Mode.AUTH
            self._reply(PASSWORD_CHALLENGE)
            return
        self._auth = None
        if mechanism == "PLAIN":
            parts = decoded.split(b"\x00")
            if len(parts) != 3:
                self._reply("501 5.5.2 Can't split auth value")
                return
            login, password = parts[1], parts[2]
        else:
            assert username is not None
            login, password = username, decoded
        self._wait(self.frontend.authenticate(cast("Session", self), mechanism, login, password), self._authenticated)

    def _authenticated(self, outcome: tuple[str, bool]) -> None:
        reply, close = outcome
        self._reply(reply)
        if close:
            self._close()
