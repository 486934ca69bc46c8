"""The submission front end on aiosmtpd (the default `server.protocol`): one
`aiosmtpd.smtp.SMTP` per connection, with a handler whose hooks ask the FrontEnd.

Owns: the conversation as aiosmtpd runs it — its command loop, line limits, STARTTLS
(plaintext pipelined after STARTTLS is dropped: aiosmtpd clears its buffer after the
handshake), timeouts, AUTH exchanges (`auth_PLAIN`/`auth_LOGIN` with our `authenticator`),
plus the overrides below where aiosmtpd's own behaviour differs from what the README
promises:
  - the greeting waits for the gate's connection caps (`_handle_client`);
  - EHLO offers PIPELINING (commands are read in order from one buffer) and
    ENHANCEDSTATUSCODES;
  - every reply carries an enhanced status code (`push`: aiosmtpd's fixed texts mapped, as
    Postfix's smtpd does);
  - MAIL and RCPT parse addresses strictly through smtp.commands, shared with the native
    protocol (aiosmtpd's own parser silently drops source routes);
  - DATA is read in chunks up to each ".\r\n" (not line by line), the excess over the size
    limit is never buffered, lines split on CRLF only (bare LF never ends the message);
  - AUTH answers only after the gate's lockout has spoken (the authenticator itself is
    synchronous and only checks the in-memory credentials).
What a command means for the relay is the FrontEnd's (smtp.handler) to say, the same
FrontEnd the native protocol (smtp.server) uses: one policy path.

Must never: make policy decisions, block the event loop, or reply 250 to DATA before the
FrontEnd says the message is committed.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from typing import Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword
from aiosmtpd.smtp import Session as AioSession

from smtprelay.config import ListenerConfig, TlsMode
from smtprelay.smtp import commands as C
from smtprelay.smtp.handler import FrontEnd, SessionState

log = logging.getLogger("smtprelay.smtp")

# aiosmtpd's own reply texts → ours (enhanced status codes, RFC 2034; the native protocol's wording).
_FIXED = {
    "250 OK": "250 2.0.0 Ok",
    "221 Bye": "221 2.0.0 Bye",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "454 TLS not available": "454 4.7.0 TLS not available",
    "500 Command line too long": "500 5.5.2 Command line too long",
    "500 Error: bad syntax": "500 5.5.2 Error: bad syntax",
    "500 Error: strict ASCII mode": "500 5.6.7 Non-ASCII addresses are not supported",
    "502 EXPN not implemented": "502 5.5.1 EXPN not implemented",
    "554 Command refused due to lack of security": "554 5.7.0 Command refused due to lack of security",
}
_DEFAULT_STATUS = {"454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1",
                   "503": "5.5.1", "504": "5.5.4", "530": "5.7.0", "552": "5.3.4", "553": "5.1.3", "554": "5.7.0",
                   "555": "5.5.4"}


def enhance(status: str) -> str:
    """A reply with an enhanced status code: ours pass unchanged, aiosmtpd's get one."""
    fixed = _FIXED.get(status)
    if fixed is not None:
        return fixed
    if len(status) > 4 and status[3] == " " and not status[4].isdigit():
        code = status[:3]
        if code == "500" and status.startswith("500 Error: command "):
            return "500 5.5.1 " + status[4:]      # unknown command, as Postfix says it
        default = _DEFAULT_STATUS.get(code)
        if default is not None:
            return f"{code} {default} {status[4:]}"
    return status


def _hook_names(cls: type) -> list[str]:
    """The names aiosmtpd looks for when it builds a connection: smtp_* commands, auth_*
    mechanisms, handle_* hooks."""
    return sorted(n for n in dir(cls) if n.startswith(("smtp_", "auth_", "handle_")))


class RelayHandler:
    """aiosmtpd's handler for every connection of this worker: each hook asks the FrontEnd."""

    def __init__(self, frontend: FrontEnd):
        self.frontend = frontend

    def __dir__(self) -> list[str]:
        return _HANDLER_NAMES

    async def handle_HELO(self, server: SubmissionSMTP, session: AioSession, envelope: Envelope,
                          hostname: str) -> str:
        session.host_name = hostname
        self.frontend.helo(server, hostname)
        return f"250 {server.hostname}"

    def handle_STARTTLS(self, server: SubmissionSMTP, session: AioSession, envelope: Envelope) -> bool:
        """After the handshake (synchronous in aiosmtpd): the session starts over (RFC 3207)."""
        transport = server.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        server.tls_version = ssl_object.version() if ssl_object is not None else "TLS"
        if server.state is not None:
            self.frontend.reset(server.state)
        return True

    async def handle_MAIL(self, server: SubmissionSMTP, session: AioSession, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        reply = self.frontend.mail(server, address, options)
        if reply.startswith("250"):
            envelope.mail_from = address
            envelope.mail_options.extend(options)
        return reply

    async def handle_RCPT(self, server: SubmissionSMTP, session: AioSession, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        answer = self.frontend.rcpt(server, address)
        reply = answer if isinstance(answer, str) else await answer
        if reply.startswith("250") and address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SubmissionSMTP, session: AioSession, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        return await self.frontend.message(server, content)

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp: %r", error, exc_info=error)
        return C.LOCAL_PROBLEM


class SubmissionSMTP(SMTP):
    """One SMTP connection on aiosmtpd; `state` (handler.SessionState) is what the FrontEnd
    keeps about the session and the transaction."""

    # aiosmtpd finds commands, mechanisms and hooks by dir() and inspect.getmembers() on every
    # new connection (~0.2 ms of CPU for the ~150 attributes of an SMTP protocol): dir() here
    # lists only the names it looks for, computed once (a connection then costs ~0.06 ms).
    def __dir__(self) -> list[str]:
        return _SMTP_NAMES

    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"
    command_size_limit = C.COMMAND_LINE_MAX - 2      # aiosmtpd counts the line without its CRLF

    def __init__(self, frontend: FrontEnd, handler: RelayHandler, listener: ListenerConfig,
                 tls_context: ssl.SSLContext | None):
        config = frontend.config
        self.frontend = frontend
        self.listener = listener
        self.client_ip = ""
        self.trusted = False
        self.tls_version: str | None = None
        self.state: SessionState | None = None
        self.in_data = False                # receiving or finishing a message (shutdown lets it finish)
        self.auth_needs_tls = config.auth.require_tls and listener.tls is not TlsMode.IMPLICIT
        self._admitted = False
        self._admission: asyncio.Future[str | None] | None = None
        super().__init__(handler, data_size_limit=config.limits.max_message_bytes, hostname=config.server.hostname,
                         ident="ESMTP smtprelay",
                         tls_context=tls_context if listener.tls is TlsMode.STARTTLS else None,
                         timeout=config.limits.command_timeout, auth_require_tls=self.auth_needs_tls,
                         authenticator=self._authenticator, loop=frontend.loop)
        # aiosmtpd keeps these limits in a dict shared by all instances (and adds 26 for SIZE at
        # every EHLO); ours are per connection, MAIL and RCPT with RFC 1870's allowance.
        self.command_size_limits = collections.defaultdict(lambda: C.COMMAND_LINE_MAX - 2,
                                                           MAIL=C.MAIL_LINE_MAX - 2, RCPT=C.MAIL_LINE_MAX - 2)

    # -- connection lifecycle -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:                    # not the TLS layer after STARTTLS
            self.client_ip, self.trusted, self.tls_version = C.connection_facts(transport, self.listener)
        super().connection_made(transport)

    async def _handle_client(self) -> None:
        """The connection caps are counted across all workers: the greeting waits for the gate."""
        fe = self.frontend
        self._admission = fe.open(self)
        try:
            refused = await asyncio.shield(self._admission)   # a disconnect must not lose the gate's answer
        except asyncio.CancelledError:
            raise
        except Exception:
            refused = "unavailable"
        if refused is not None:
            self.refuse_and_close(C.refusal(self.hostname, refused))
            return
        self._admitted = True
        self.state = fe.new_session_state(self)
        fe.opened(self)
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        task = self._handler_coroutine
        if task is not None:
            task.add_done_callback(self._release)
        if self._admitted:
            self._admitted = False
            self.frontend.closed(self)
        elif self._admission is not None:     # the greeting was not sent: was a slot granted?
            if self._admission.done():
                self._left_before_greeting(self._admission)
            else:
                self._admission.add_done_callback(self._left_before_greeting)

    def _release(self, _task: object = None) -> None:
        """The connection is over and its task done: drop what it holds. aiosmtpd keeps bound
        methods of the protocol in its own dicts (commands, AUTH mechanisms, hooks), so every
        protocol object is in a reference cycle and waits for a full garbage collection — with
        its TLS layer (~300 KB of buffers), its streams and its last message. A long session
        reaches the oldest generation, and full collections are rare: the 30-minute soak saw a
        worker's heap grow 2.3 MB a minute in phases (issue 24). Cut loose, they are freed now."""
        for name in ("_tls_protocol", "_original_transport", "_reader", "_writer", "_stream_writer",
                     "_smtp_methods", "_auth_methods", "_handle_hooks", "_authenticator", "_client_connected_cb",
                     "_handler_coroutine", "_timeout_handle", "session", "envelope", "transport"):
            if name in self.__dict__:
                setattr(self, name, None)

    def _left_before_greeting(self, decision: asyncio.Future[str | None]) -> None:
        """The client left while the gate was deciding: give back the slot it was granted."""
        if not decision.cancelled() and decision.exception() is None and decision.result() is None:
            self.state = self.frontend.new_session_state(self)
            self.frontend.closed(self)

    def _timeout_cb(self) -> None:
        log.info("timeout after %s from [%s]", "DATA" if self.in_data else "command", self.client_ip)
        transport = cast(asyncio.Transport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
        super()._timeout_cb()

    def refuse_and_close(self, reply: str) -> None:
        """Write a final reply without waiting for the client, and close (used by shutdown)."""
        transport = cast(asyncio.Transport | None, self.transport)   # a socket or TLS transport
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")
            transport.close()

    def _set_rset_state(self) -> None:
        """RSET, HELO/EHLO, STARTTLS: the transaction is forgotten, its reservations returned."""
        super()._set_rset_state()
        if self.state is not None:
            self.frontend.reset(self.state)

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = enhance(status).encode("utf-8", "replace")
        await super().push(status)

    # -- checks aiosmtpd's commands call -----------------------------------------------------------
    async def check_helo_needed(self, helo: str = "HELO") -> bool:
        assert self.session is not None
        if not self.session.host_name:
            await self.push(C.NEED_HELO)
            return True
        return False

    async def check_auth_needed(self, caller_method: str) -> bool:
        """Trusted networks submit without AUTH (as their listener's account); others log in."""
        assert self.state is not None
        if not self.trusted and self.state.login is None:
            self.frontend.refuse_command(self, caller_method, C.AUTH_REQUIRED)
            await self.push(C.AUTH_REQUIRED)
            return True
        return False

    # -- commands where our replies differ from aiosmtpd's ------------------------------------------
    async def smtp_EHLO(self, hostname: str) -> None:
        """Our extensions (PIPELINING, ENHANCEDSTATUSCODES), in one write. Overridden rather than
        a handle_EHLO hook: aiosmtpd inspects that hook's signature on every connection."""
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        assert self.session is not None
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        self.frontend.helo(self, hostname)
        lines = C.ehlo_lines(self.hostname, self.frontend.config.limits.max_message_bytes,
                             self.tls_context is not None and self.tls_version is None,
                             self.tls_version is not None or not self.auth_needs_tls)
        await self.push("\r\n".join([f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]))

    async def _junk(self, command: str) -> bool:
        """Past limits.junk_command_limit: 421 and the session ends (aiosmtpd has no such limit)."""
        if self.state is not None and self.frontend.junk_command(self, command):
            await self.push(C.JUNK_LIMIT)
            if self.transport is not None:
                self.transport.close()
            return True
        return False

    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk("NOOP"):
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk("RSET"):
            await super().smtp_RSET(arg)

    async def smtp_HELP(self, arg: str) -> None:
        if await self._junk("HELP"):
            return
        if not await self.check_auth_needed("HELP"):
            await self.push(C.HELP)

    async def smtp_VRFY(self, arg: str) -> None:
        if await self._junk("VRFY") or await self.check_auth_needed("VRFY"):
            return
        await self.push(C.VRFY if arg else "501 5.5.4 Syntax: VRFY <address>")

    async def smtp_STARTTLS(self, arg: str) -> None:
        if not arg and self.tls_context and self.tls_version is not None:
            await self.push("503 5.5.1 Error: TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        assert self.session is not None and self.state is not None
        parsed = C.mail_argument(arg or "", self.session.extended_smtp, self.state.mail_from is not None,
                                 self.frontend.config.limits.max_message_bytes, self.client_ip)
        if isinstance(parsed, str):
            if parsed == C.TOO_BIG:
                self.frontend.refuse_command(self, "MAIL", parsed)
            await self.push(parsed)
            return
        await self.push(await self.event_handler.handle_MAIL(self, self.session, self.envelope, *parsed))

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        assert self.session is not None and self.state is not None
        if self.state.mail_from is None:
            await self.push(C.NEED_MAIL)
            return
        parsed = C.rcpt_argument(arg or "", self.session.extended_smtp, self.client_ip)
        if isinstance(parsed, str):
            await self.push(parsed)
            return
        await self.push(await self.event_handler.handle_RCPT(self, self.session, self.envelope, parsed[0], []))

    async def smtp_AUTH(self, arg: str | None) -> None:
        assert self.session is not None and self.state is not None
        if not self.session.host_name:
            await self.push("503 5.5.1 Error: send EHLO first")
        elif not self.session.extended_smtp:
            await self.push("502 5.5.1 Error: AUTH needs EHLO")
        elif self.auth_needs_tls and self.tls_version is None:
            await self.push(C.AUTH_NEEDS_TLS)
        elif self.state.login is not None:
            await self.push("503 5.5.1 Already authenticated")
        elif self.state.mail_from is not None:
            await self.push("503 5.5.1 Error: AUTH not allowed during a mail transaction")
        else:
            args = (arg or "").split()
            if not args:
                await self.push("501 5.5.4 Not enough value")
            elif len(args) > 2:
                await self.push("501 5.5.4 Too many values")
            elif args[0].upper() not in ("PLAIN", "LOGIN"):
                await self.push("504 5.5.4 Unrecognized authentication type")
            else:
                await self._auth(args[0].upper(), args[1:])

    async def _auth(self, mechanism: str, args: list[str]) -> None:
        """aiosmtpd's PLAIN/LOGIN exchange and our authenticator, then the gate's lockout."""
        exchange = self.auth_PLAIN if mechanism == "PLAIN" else self.auth_LOGIN
        result: AuthResult = await exchange(self, [mechanism, *args])
        if not result.success and result.handled:
            return        # aiosmtpd answered already: aborted with "*", bad base64, unsplittable
        username, found = cast(tuple[str, Any], result.auth_data)    # what _authenticator put there
        reply, close = await self.frontend.confirm(self, mechanism, username, found)
        assert self.session is not None
        self.session.authenticated = found is not None and reply == C.AUTH_OK
        await self.push(reply)
        if close and self.transport is not None:
            self.transport.close()

    def _authenticator(self, server: SMTP, session: AioSession, envelope: Envelope, mechanism: str,
                       auth_data: Any) -> AuthResult:
        """Called synchronously by aiosmtpd: the in-memory credential check only (no I/O).
        handled=False, so a failure is answered (535) rather than left hanging."""
        assert isinstance(auth_data, LoginPassword)
        username, found = self.frontend.verify(auth_data.login, auth_data.password)
        return AuthResult(success=found is not None, handled=False, auth_data=(username, found))

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.state is not None and self.envelope is not None
        if not self.state.recipients:
            await self.push(C.NEED_RCPT)
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        limits = self.frontend.config.limits
        await self.push(C.DATA_GO_AHEAD)
        self.in_data = True
        try:
            self._reset_timeout(limits.data_timeout)      # the whole DATA phase has its own budget
            raw = await self._read_message(limits.max_message_bytes)
            self._reset_timeout()
            content = C.TOO_BIG if raw is None else C.unstuff(raw)
            if isinstance(content, str):
                self.frontend.refuse_message(self, content)
                self._set_post_data_state()
                await self.push(content)
                return
            self.envelope.content = self.envelope.original_content = content
            status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
            self._set_post_data_state()
            await self.push(status)
        finally:
            self.in_data = False

    async def _read_message(self, limit: int) -> bytes | None:
        """The data up to <CRLF>.<CRLF> (without the dot line), or None if it was over `limit`
        (the rest is read and dropped, never buffered). Reads up to each ".\\r\\n" in whole
        chunks; it ends the message only at the start of a line (after CRLF: a bare LF never
        ends a line, so a smuggled end-of-data stays inside the message)."""
        reader = self._reader
        parts: list[bytes] = []
        size = 0
        tail = b"\r\n"      # the last two bytes before what is read next ("." at once: empty message)
        while True:
            end = False
            try:
                chunk = await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:   # no ".\r\n" within the reader's limit yet
                chunk = await reader.readexactly(exc.consumed)
            else:
                before = chunk[:-3]
                if (tail + before)[-2:] == b"\r\n":     # "." alone on a line: the end
                    chunk, end = before, True
            size += len(chunk)
            if size > limit:
                parts.clear()          # over the limit: read on, keep nothing
            elif chunk:
                parts.append(chunk)
            if end:
                return None if size > limit else b"".join(parts)
            tail = (tail + chunk)[-2:]


_HANDLER_NAMES = _hook_names(RelayHandler)
_SMTP_NAMES = _hook_names(SubmissionSMTP)
