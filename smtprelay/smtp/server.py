"""The SMTP server protocol for one connection (RFC 5321, 3207 STARTTLS, 4954 AUTH, 2920
PIPELINING, 1870 SIZE, 2034 enhanced status codes).

Owns: the conversation — reading command lines and message data from the socket, the
order of commands, syntax, replies, timeouts, TLS upgrades, AUTH exchanges. What a command
means for the relay (may this client connect, which sender, which recipient, what happens
to the message) is asked of the FrontEnd (smtp.handler), which answers with reply lines,
at once or later (when the back end's gate has spoken: the greeting waits for the
connection caps, RCPT for the recipient's limits, the end of DATA for the commit).

STARTTLS and AUTH live in smtp.secure (a mixin of RelaySMTP).

The faster option next to the default aiosmtpd front end (smtp.submission), chosen with
`server.protocol = "native"`: aiosmtpd reads through a StreamReader and a coroutine per
command (its layer costs about twice this one's CPU per message, bench/README.md). Here
command lines are handled synchronously straight from the receive buffer (pipelined
commands cost nothing extra) and the end of DATA is found by searching whole chunks. While
an answer is awaited the session is BUSY and input waits in the buffer. Argument syntax and
reply texts are smtp.commands', shared with the aiosmtpd front end; the same tests run
against both.

Must never: make policy decisions, block the event loop, or reply 250 to DATA before the
FrontEnd says the message is committed.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from typing import TYPE_CHECKING, Any, Awaitable, Callable, cast

from smtprelay.config import ListenerConfig, TlsMode
from smtprelay.smtp import commands as C
from smtprelay.smtp.commands import BOGUS_LIMIT, COMMAND_LINE_MAX, MAIL_LINE_MAX, TOO_BIG
from smtprelay.smtp.secure import Mode, SecureCommands

if TYPE_CHECKING:
    from smtprelay.smtp.handler import FrontEnd, SessionState

log = logging.getLogger("smtprelay.smtp")

BUFFER_PAUSE = 256 * 1024       # stop reading from a client that is this far ahead of us


class DataState(enum.Enum):
    NOMINAL = 1
    TOO_BIG = 2      # over limits.max_message_bytes: the rest is read and dropped, then 552


class RelaySMTP(SecureCommands, asyncio.Protocol):
    """One SMTP connection. `state` (handler.SessionState) carries what the FrontEnd keeps
    about the session and the transaction."""

    def __init__(self, frontend: FrontEnd, listener: ListenerConfig, tls_context: ssl.SSLContext | None):
        config = frontend.config
        self.frontend = frontend
        self.listener = listener
        self.hostname = config.server.hostname
        self.loop = frontend.loop
        self._starttls_context = tls_context if listener.tls is TlsMode.STARTTLS else None
        self._auth_needs_tls = config.auth.require_tls and listener.tls is not TlsMode.IMPLICIT
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.trusted = False
        self.tls_version: str | None = None
        self.state: SessionState | None = None
        self.extended = False              # EHLO (not HELO) was said
        self.greeted = False               # HELO/EHLO was said (again after STARTTLS)
        self._mode = Mode.COMMAND
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._slot_held = False
        self._bogus = 0
        self._verb = ""                # the command being handled (for refusal lines)
        self._discarding_line = False      # inside a command line that is too long
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._auth: tuple[str, bytes | None] | None = None   # mechanism, username (LOGIN)
        self._data_parts: list[bytes] = []
        self._data_size = 0
        self._data_tail = b""
        self._data_state = DataState.NOMINAL
        self._task: asyncio.Future[Any] | None = None

    # -- connection lifecycle -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's transports are not subclasses
        self.client_ip, self.trusted, self.tls_version = C.connection_facts(transport, self.listener)
        # The connection caps are counted across all workers: the greeting waits for the gate.
        self._mode = Mode.BUSY
        self.frontend.open(self).add_done_callback(self._admitted)

    def _admitted(self, decision: asyncio.Future[str | None]) -> None:
        fe = self.frontend
        refused = "unavailable" if decision.exception() is not None else decision.result()
        if self.transport is None:           # the client left before the gate answered
            if refused is None:
                self.state = fe.new_session_state(self)
                fe.closed(self)
            return
        if refused is not None:
            self._mode = Mode.CLOSED
            self.transport.write(C.refusal(self.hostname, refused).encode() + b"\r\n")
            self.transport.close()
            return
        self._slot_held = True
        self.state = fe.new_session_state(self)
        fe.opened(self)
        self._arm(fe.config.limits.command_timeout)
        self.transport.write(f"220 {self.hostname} ESMTP smtprelay\r\n".encode())
        self._mode = Mode.COMMAND
        if self._buffer:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._mode = Mode.CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._slot_held:
            self._slot_held = False
            self.frontend.closed(self)
        self.transport = None

    def eof_received(self) -> bool:
        return False   # the client closed its side: close ours

    def pause_writing(self) -> None:
        """The client is not reading our replies: stop reading its commands until it does."""
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if len(self._buffer) < BUFFER_PAUSE:
            self._resume_reading()

    @property
    def in_data(self) -> bool:
        """Receiving or finishing a message (shutdown lets these finish)."""
        return self._mode in (Mode.DATA, Mode.BUSY)

    def refuse_and_close(self, reply: str) -> None:
        """Write a final reply without waiting for the client, and close (used by shutdown)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")
            transport.close()
        self._mode = Mode.CLOSED

    def _close(self) -> None:
        self._flush()
        self._mode = Mode.CLOSED
        if self.transport is not None:
            self.transport.close()

    # -- timeouts ---------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        """Move the deadline; one timer per connection, re-armed lazily when it fires early."""
        self._deadline = self.loop.time() + seconds
        if self._timer is not None and self._timer.when() > self._deadline:
            self._timer.cancel()          # a shorter budget (DATA) than the one armed
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._mode is Mode.CLOSED:
            return
        now = self.loop.time()
        if self._mode in (Mode.BUSY, Mode.TLS):
            # Our own work (or the TLS layer's timeout) is running: not the client's idle time.
            self._deadline = max(self._deadline, now + self.frontend.config.limits.command_timeout)
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        log.info("timeout after %s from [%s]", "DATA" if self._mode is Mode.DATA else "command", self.client_ip)
        self._reply(f"421 4.4.2 {self.hostname} Error: timeout exceeded")
        self._close()

    # -- input -----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._mode is Mode.CLOSED:
            return
        self._buffer += data
        if len(self._buffer) >= BUFFER_PAUSE:
            self._pause_reading()
        if self._mode in (Mode.COMMAND, Mode.AUTH, Mode.DATA):
            self._process()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._writing_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _process(self) -> None:
        """Handle everything complete in the buffer, in order, until we must wait."""
        buffer = self._buffer
        while buffer and self._mode in (Mode.COMMAND, Mode.AUTH, Mode.DATA):
            if self._mode is Mode.DATA:
                self._data_chunk()
                continue
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > COMMAND_LINE_MAX * 2:
                    # No end of line in sight: drop what we have and answer once the line ends.
                    self._discarding_line = True
                    del buffer[:]
                break
            line = bytes(buffer[:end]).rstrip(b"\r")
            del buffer[:end + 1]
            if self._discarding_line:
                self._discarding_line = False
                self._reply("500 5.5.2 Command line too long")
                continue
            if self._mode is Mode.AUTH:
                self._auth_response(line)
            else:
                self._command(line)
        self._flush()
        if len(buffer) < BUFFER_PAUSE:
            self._resume_reading()

    def _answer(self, reply: str | Awaitable[str]) -> None:
        """Reply now, or when the answer arrives (the gate's, or the end of a message);
        meanwhile input waits in the buffer."""
        if isinstance(reply, str):
            self._reply(reply)
            return
        self._wait(reply, self._reply)

    def _wait(self, answer: Awaitable[Any], then: Callable[[Any], None]) -> None:
        self._mode = Mode.BUSY
        self._flush()
        self._task = asyncio.ensure_future(answer)     # a reference, so the task is not collected
        self._task.add_done_callback(lambda done: self._resume(done, then))

    def _resume(self, done: asyncio.Future[Any], then: Callable[[Any], None]) -> None:
        if self._mode is Mode.CLOSED:
            return
        if done.cancelled() or done.exception() is not None:
            if not done.cancelled():
                log.error("[%s]: %r", self.client_ip, done.exception())
            self._reply(C.LOCAL_PROBLEM)
        else:
            then(done.result())
        if self._mode is Mode.BUSY:
            self._mode = Mode.COMMAND
        self._process()

    def _reply(self, line: str) -> None:
        self._out.append(line.encode("utf-8", "replace") + b"\r\n")

    def _flush(self) -> None:
        if self._out:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(self._out))
            self._out.clear()

    # -- commands --------------------------------------------------------------------------------
    def _command(self, line: bytes) -> None:
        if not line:
            self._reply("500 5.5.2 Error: bad syntax")
            return
        name_bytes, _, arg_bytes = line.partition(b" ")
        try:
            name = name_bytes.upper().decode("ascii")
            arg = arg_bytes.strip().decode("ascii")
        except UnicodeDecodeError:
            self._reply("500 5.6.7 Non-ASCII addresses are not supported")
            return
        limit = MAIL_LINE_MAX if name in ("MAIL", "RCPT") and self.extended else COMMAND_LINE_MAX
        if len(line) + 2 > limit:
            self._reply("500 5.5.2 Command line too long")
            return
        handler = _COMMANDS.get(name)
        if handler is None:
            self._bogus += 1
            if self._bogus >= BOGUS_LIMIT:
                log.warning("[%s]: too many unrecognized commands", self.client_ip)
                self._reply("502 5.5.1 Too many unrecognized commands, goodbye")
                self._close()
                return
            self._reply(f'500 5.5.1 Error: command "{name[:32]}" not recognized')
            return
        self._arm(self.frontend.config.limits.command_timeout)
        self._verb = name
        handler(self, arg)

    def _needs_helo(self) -> bool:
        if not self.greeted:
            self._reply(C.NEED_HELO)
            return True
        return False

    def _needs_auth(self) -> bool:
        assert self.state is not None
        if not self.trusted and self.state.login is None:
            self.frontend.refuse_command(self, self._verb, C.AUTH_REQUIRED)
            self._reply(C.AUTH_REQUIRED)
            return True
        return False

    def _reset_transaction(self) -> None:
        assert self.state is not None
        self.frontend.reset(self.state)

    def _helo(self, arg: str) -> None:
        if not arg:
            self._reply("501 5.5.4 Syntax: HELO hostname")
            return
        self._reset_transaction()
        self.extended, self.greeted = False, True
        self.frontend.helo(self, arg)
        self._reply(f"250 {self.hostname}")

    def _ehlo(self, arg: str) -> None:
        if not arg:
            self._reply("501 5.5.4 Syntax: EHLO hostname")
            return
        self._reset_transaction()
        self.extended, self.greeted = True, True
        self.frontend.helo(self, arg)
        lines = C.ehlo_lines(self.hostname, self.frontend.config.limits.max_message_bytes,
                             self._starttls_context is not None and self.tls_version is None,
                             self.tls_version is not None or not self._auth_needs_tls)
        self._out.append("".join(f"250-{x}\r\n" for x in lines[:-1]).encode() + f"250 {lines[-1]}\r\n".encode())

    def _junk(self) -> bool:
        """Past limits.junk_command_limit: 421 and the session ends."""
        if self.state is not None and self.frontend.junk_command(self, self._verb):
            self._reply(C.JUNK_LIMIT)
            self._close()
            return True
        return False

    def _noop(self, arg: str) -> None:
        if self._junk():
            return
        self._reply("250 2.0.0 Ok")

    def _quit(self, arg: str) -> None:
        if arg:
            self._reply("501 5.5.4 Syntax: QUIT")
            return
        self._reply("221 2.0.0 Bye")
        self._close()

    def _rset(self, arg: str) -> None:
        if self._junk():
            return
        if arg:
            self._reply("501 5.5.4 Syntax: RSET")
            return
        self._reset_transaction()
        self._reply("250 2.0.0 Ok")

    def _help(self, arg: str) -> None:
        if self._junk() or self._needs_auth():
            return
        self._reply(C.HELP)

    def _vrfy(self, arg: str) -> None:
        if self._junk() or self._needs_auth():
            return
        if not arg:
            self._reply("501 5.5.4 Syntax: VRFY <address>")
            return
        self._reply(C.VRFY)

    def _expn(self, arg: str) -> None:
        self._reply("502 5.5.1 EXPN not implemented")

    # -- the transaction ---------------------------------------------------------------------------
    def _mail(self, arg: str) -> None:
        if self._needs_helo() or self._needs_auth():
            return
        assert self.state is not None
        parsed = C.mail_argument(arg, self.extended, self.state.mail_from is not None,
                                 self.frontend.config.limits.max_message_bytes, self.client_ip)
        if isinstance(parsed, str):
            if parsed == TOO_BIG:
                self.frontend.refuse_command(self, "MAIL", parsed)
            self._reply(parsed)
            return
        self._reply(self.frontend.mail(self, *parsed))

    def _rcpt(self, arg: str) -> None:
        if self._needs_helo() or self._needs_auth():
            return
        assert self.state is not None
        if self.state.mail_from is None:
            self._reply(C.NEED_MAIL)
            return
        parsed = C.rcpt_argument(arg, self.extended, self.client_ip)
        if isinstance(parsed, str):
            self._reply(parsed)
            return
        self._answer(self.frontend.rcpt(self, parsed[0]))

    def _data(self, arg: str) -> None:
        if self._needs_helo() or self._needs_auth():
            return
        assert self.state is not None
        if not self.state.recipients:
            self._reply(C.NEED_RCPT)
            return
        if arg:
            self._reply("501 5.5.4 Syntax: DATA")
            return
        self._reply(C.DATA_GO_AHEAD)
        self._mode = Mode.DATA
        self._data_parts = []
        self._data_size = 0
        self._data_tail = b"\r\n"         # as if a line had just ended: "." at once is an empty message
        self._data_state = DataState.NOMINAL
        self._arm(self.frontend.config.limits.data_timeout)   # the whole DATA phase has its own budget

    def _data_chunk(self) -> None:
        """Consume the buffer as message data; at <CRLF>.<CRLF> hand the message over."""
        chunk = bytes(self._buffer)
        del self._buffer[:]
        tail = self._data_tail
        end = (tail + chunk).find(b"\r\n.\r\n")
        if end < 0:
            self._take(chunk)
            self._data_tail = (tail + chunk)[-4:]
            return
        cut = end - len(tail) + 2        # the message ends with the CRLF before the dot
        if cut >= 0:
            self._take(chunk[:cut])
        elif self._data_state is DataState.NOMINAL:   # the CRLF (and more) arrived in the last chunk
            self._trim(-cut)
        rest = chunk[end - len(tail) + 5:]
        if rest:
            self._buffer += rest          # pipelined commands after the message
        self._mode = Mode.BUSY
        self._arm(self.frontend.config.limits.command_timeout)
        if self._data_state is DataState.TOO_BIG:
            self._message_refused(TOO_BIG)
            return
        raw = b"".join(self._data_parts)
        self._data_parts = []
        content = C.unstuff(raw)
        if isinstance(content, str):
            self._message_refused(content)
            return
        self._answer(self.frontend.message(self, content))

    def _take(self, data: bytes) -> None:
        if self._data_state is not DataState.NOMINAL or not data:
            return
        self._data_size += len(data)
        if self._data_size > self.frontend.config.limits.max_message_bytes:
            self._data_state = DataState.TOO_BIG     # the excess is not buffered
            self._data_parts = []
            return
        self._data_parts.append(data)

    def _trim(self, count: int) -> None:
        while count > 0 and self._data_parts:
            last = self._data_parts[-1]
            if len(last) <= count:
                count -= len(last)
                self._data_parts.pop()
            else:
                self._data_parts[-1] = last[:-count]
                count = 0

    def _message_refused(self, reply: str) -> None:
        assert self.state is not None
        self.frontend.refuse_message(self, reply)
        self._data_parts = []
        self._reply(reply)
        self._mode = Mode.COMMAND      # the _process loop goes on with what follows

_COMMANDS: dict[str, Callable[[RelaySMTP, str], None]] = {
    "HELO": RelaySMTP._helo, "EHLO": RelaySMTP._ehlo, "MAIL": RelaySMTP._mail, "RCPT": RelaySMTP._rcpt,
    "DATA": RelaySMTP._data, "RSET": RelaySMTP._rset, "NOOP": RelaySMTP._noop, "QUIT": RelaySMTP._quit,
    "STARTTLS": RelaySMTP._starttls, "AUTH": RelaySMTP._auth_command, "HELP": RelaySMTP._help,
    "VRFY": RelaySMTP._vrfy, "EXPN": RelaySMTP._expn,
}
