"""The front end of one worker process: what SMTP commands mean for the relay, as the
pipeline's verdicts in SMTP replies. The SMTP protocol — smtp.submission on aiosmtpd (the
default) or smtp.server (`server.protocol = "native"`) — calls it for the connection, AUTH,
MAIL, RCPT and the message; both call the same methods, so there is one policy path.

Owns: the worker's view of the catalog (credential table, sender domains with their
signers, tracking settings), the sessions of this worker and their state. MAIL is answered
here from that view; what must be exact across all workers (connection caps, the AUTH
lockout, the recipient's blocklist entries and sending limits, the durable commit) is asked
of the back end's gate over the channel. After DATA it runs the content checks, stamps the
trace headers, signs (on this worker's own core), hands the message to the back end, and
replies 250 only once the back end says the commit is synced.

Must never: reply 250 before the commit, or decide what the gate decides.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

from smtprelay.accounts import check_password
from smtprelay.catalog.records import Login, SenderDomain
from smtprelay.clock import Clock
from smtprelay.config import Config, ListenerConfig
from smtprelay.dkim.signer import MalformedMessage, Signer
from smtprelay.events import tracking
from smtprelay.content.scan import Scanners
from smtprelay.policy import verdict as V
from smtprelay.policy.content import apply_display_name, check_subject, header_block, normalize_newlines, take_tag
from smtprelay.policy.sender import check_from_header, check_sender
from smtprelay.queue.ids import new_queue_id
from smtprelay.queue.store import QueuedMessage
from smtprelay.smtp.channel import Channel, ChannelClosed, RemoteError
from smtprelay.smtp.commands import AUTH_INVALID, AUTH_OK, LOCKED_OUT
from smtprelay.smtp.stamp import Trace, stamp
from smtprelay.smtp.templating import INLINE_BYTES, TemplateRefused, TemplateTable, Use

log = logging.getLogger("smtprelay.smtp")

BACKEND_GONE = "451 4.3.0 Error: the queue is not available right now; try again later"


class Session(Protocol):
    """One SMTP connection as the FrontEnd sees it, whichever protocol runs it
    (smtp.submission on aiosmtpd, or smtp.server)."""
    client_ip: str
    listener: ListenerConfig
    trusted: bool
    hostname: str
    tls_version: str | None
    state: SessionState | None

    @property
    def in_data(self) -> bool:
        """Receiving or finishing a message (shutdown lets these finish)."""

    def refuse_and_close(self, reply: str) -> None:
        """Write a final reply without waiting for the client, and close."""


class CredentialTable:
    """Who may log in, in memory; refreshed from the store (never I/O here)."""

    def __init__(self) -> None:
        self.logins: dict[str, Login] = {}
        self.accounts: dict[str, int] = {}
        self.version = -1

    def replace(self, logins: dict[str, Login], accounts: dict[str, int], version: int) -> None:
        self.logins, self.accounts, self.version = logins, accounts, version

    def verify(self, username: str, password: str) -> Login | None:
        login = self.logins.get(username)
        if login is None or not check_password(password, login.digest):
            return None
        return login


@dataclass(slots=True)
class SessionState:
    """What the front end keeps about one SMTP session and its current transaction."""
    client_ip: str
    listener: str
    trusted: bool
    helo: str = ""
    login: Login | None = None            # after a successful AUTH
    account: str | None = None
    account_id: int | None = None
    username: str | None = None
    sender_domain: str = ""
    mail_from: str | None = None          # the transaction: MAIL FROM given
    recipients: list[str] = field(default_factory=list)
    reservations: list[int] = field(default_factory=list)   # the gate's tokens for the recipients
    junk: int = 0                         # NOOP/RSET/VRFY/HELP since the last accepted message
    template: Use | None = None           # the send API rendered this transaction's message from it
    task: tuple[int, int, int] | None = None   # a sending task's (task, run, group row)


class SenderTable:
    """Sender domains, registered addresses and a ready signer per domain, in memory;
    replaced as a whole when the catalog changes."""

    def __init__(self) -> None:
        self.domains: dict[str, SenderDomain] = {}
        self.addresses: dict[str, str | None] = {}     # registered address → display name
        self.display_names: dict[str, str] = {}         # only those that have one
        self.signers: dict[str, Signer] = {}

    def replace(self, domains: dict[str, SenderDomain], addresses: dict[str, str | None]) -> None:
        signers = {}
        for name, domain in domains.items():
            if domain.signing_keys:
                try:
                    signers[name] = Signer(list(domain.signing_keys))
                except ValueError as exc:
                    log.error("dkim: %s", exc)
        self.domains, self.addresses, self.signers = domains, addresses, signers
        self.display_names = {a: n for a, n in addresses.items() if n}


class FrontEnd:
    def __init__(self, config: Config, link: Channel, clock: Clock):
        self.config = config
        self.link = link
        self.clock = clock
        self.loop = asyncio.get_running_loop()   # built on the worker's loop; kept (getpid per lookup)
        self.credentials = CredentialTable()
        self.senders = SenderTable()
        self.templates = TemplateTable()
        # Signing runs on this worker's loop by default: each worker has a core of its own, and
        # a thread would wait for the GIL after every RSA step (dkim.signing_threads > 0 opts in).
        threads = config.dkim.signing_threads
        self.sign_pool = ThreadPoolExecutor(threads, thread_name_prefix="dkim") if threads else None
        self.sessions: set[Session] = set()
        # Tracking/unsubscribe settings (per account, per sender domain) and the token key.
        self.tracking_accounts: dict[int, tracking.Settings] = {}
        self.tracking_domains: dict[str, tracking.Settings] = {}
        self.tracking_secret = b""
        # The worker's look-up "is this queue id in the store?" (after the back end died).
        self.committed: Callable[[str], bool] | None = None
        self.scanners = Scanners()      # clamd and rspamd clients (content.scanners)
        self.suspended_accounts: dict[int, str] = {}   # account id → why (content abuse)

    def apply(self, config: Config) -> None:
        """Take over the reloadable parts of a new configuration (SIGHUP)."""
        self.config = config

    def tracking_settings(self, state: SessionState) -> tracking.Settings:
        if self.config.tracking.base_url is None or state.account_id is None:
            return tracking.OFF
        found = self.tracking_domains.get(state.sender_domain)
        return found if found is not None else self.tracking_accounts.get(state.account_id, tracking.OFF)

    # -- the session, as the protocol reports it ----------------------------------------------
    def new_session_state(self, server: Session) -> SessionState:
        return SessionState(client_ip=server.client_ip, listener=server.listener.name, trusted=server.trusted)

    def open(self, server: Session) -> asyncio.Future[str | None]:
        """The gate's word on a new connection: None, or the cap that refuses it."""
        return self.link.call("open_connection", server.client_ip, server.listener.name)

    def opened(self, server: Session) -> None:
        self.sessions.add(server)
        log.info("connect from [%s] on %s%s", server.client_ip, server.listener.name,
                 " (trusted network)" if server.trusted else "")

    def closed(self, server: Session) -> None:
        """A connection the gate admitted has ended."""
        if server.state is not None:
            self.release(server.state)
        self.sessions.discard(server)
        self.link.notify("close_connection", server.client_ip)
        log.info("disconnect from [%s]", server.client_ip)

    def release(self, state: SessionState) -> None:
        """Give back the slots a transaction reserved but did not use."""
        if state.reservations:
            self.link.notify("release", state.reservations)
            state.reservations = []

    def reset(self, state: SessionState) -> None:
        """RSET, HELO/EHLO, STARTTLS: the transaction is forgotten, its reservations returned."""
        self.release(state)
        state.mail_from = None
        state.recipients = []
        state.template = None

    def helo(self, server: Session, name: str) -> None:
        assert server.state is not None
        server.state.helo = name

    def verify(self, login: bytes, password: bytes) -> tuple[str, Login | None]:
        """The credentials against the in-memory table (no I/O: aiosmtpd's authenticator calls
        this synchronously): the user name as given, and who it is if the password matches."""
        username = login.decode("utf-8", "replace")
        return username, self.credentials.verify(username, password.decode("utf-8", "replace"))

    async def authenticate(self, server: Session, mechanism: str, login: bytes,
                           password: bytes) -> tuple[str, bool]:
        """Credentials are checked here (in memory); the lockout is the gate's. Returns the
        reply and whether to close after it."""
        return await self.confirm(server, mechanism, *self.verify(login, password))

    async def confirm(self, server: Session, mechanism: str, username: str,
                      found: Login | None) -> tuple[str, bool]:
        """The gate's lockout has the last word on checked credentials (a locked address gets
        421 even with the right password). Returns the reply and whether to close after it."""
        assert server.state is not None
        ip = server.client_ip
        try:
            verdict = await self.link.call("auth", ip, found is not None)
        except (ChannelClosed, RemoteError):
            return BACKEND_GONE, True
        if verdict == "locked":
            return LOCKED_OUT, True
        if verdict == "locked_now":
            log.warning("[%s]: %s authentication failed for \"%s\"; address locked out for %ds",
                        ip, mechanism, username[:64], int(self.config.auth.lockout))
            return LOCKED_OUT, True
        if verdict == "failed" or found is None:
            log.warning("[%s]: %s authentication failed for \"%s\"", ip, mechanism, username[:64])
            return AUTH_INVALID, False
        server.state.login = found
        log.info("[%s]: sasl_method=%s, sasl_username=%s", ip, mechanism, username)
        return AUTH_OK, False

    def reject(self, state: SessionState, stage: str, verdict: V.Verdict, recipients: list[str],
               mail_from: str | None = None) -> str:
        """A refusal decided here: the gate counts it, records the event and logs it."""
        self.link.notify("rejected", state.client_ip, state.account_id,
                         mail_from if mail_from is not None else (state.mail_from or ""), stage, verdict.reply,
                         verdict.reason, recipients, state.task[:2] if state.task else None)
        return verdict.reply

    def mail(self, server: Session, address: str, options: list[str]) -> str:
        state = server.state
        assert state is not None
        verdict: V.Verdict | None
        if state.login is not None:
            login = state.login
            state.account, state.account_id, state.username = login.account, login.account_id, login.username
        elif server.trusted:
            name = server.listener.trusted_account
            account_id = self.credentials.accounts.get(name or "")
            if account_id is None:
                verdict = V.temporary(451, "4.3.5", f"Relay misconfigured: trusted account {name} does not exist",
                                      "trusted_account_missing")
                return self.reject(state, "MAIL", verdict, [], mail_from=address)
            state.account, state.account_id, state.username = name, account_id, None
        config = self.config
        senders = self.senders
        if state.account_id in self.suspended_accounts:
            verdict = V.reject(550, "5.7.1", f"Sending suspended for this account: {self.suspended_accounts[state.account_id]}"
                                             " (rule: content); the relay's operator lifts it", "account_suspended")
            return self.reject(state, "MAIL", verdict, [], mail_from=address)
        verdict = check_sender(state.account_id, address, senders.domains, senders.addresses, self.clock.now(),
                               config.domains.grace, config.policy.require_registered_address)
        if verdict is not None:
            return self.reject(state, "MAIL", verdict, [], mail_from=address)
        state.sender_domain = address.rpartition("@")[2].lower()
        if state.sender_domain not in senders.signers:
            verdict = V.temporary(451, "4.3.0", f"No DKIM key is available for {state.sender_domain}; see the relay "
                                                "log", "dkim_key_unavailable")
            return self.reject(state, "MAIL", verdict, [], mail_from=address)
        state.mail_from = address
        return V.MAIL_OK.reply

    def rcpt(self, server: Session, address: str) -> str | asyncio.Future[str]:
        state = server.state
        assert state is not None and state.mail_from is not None
        if address in state.recipients:
            return V.RCPT_OK.reply  # duplicate: one delivery, like Postfix
        if len(state.recipients) >= self.config.limits.max_recipients:
            return self.reject(state, "RCPT", V.TOO_MANY_RECIPIENTS, [address])
        assert state.account_id is not None  # MAIL refuses anyone without an account
        answer: asyncio.Future[str] = self.loop.create_future()

        def done(asked: asyncio.Future[tuple[str, int | None]]) -> None:
            if asked.exception() is not None:
                answer.set_result(BACKEND_GONE)
                return
            reply, token = asked.result()
            if token is not None:
                if state.mail_from is None:     # the transaction was reset meanwhile
                    self.link.notify("release", [token])
                else:
                    state.reservations.append(token)
                    state.recipients.append(address)
            answer.set_result(reply)
        self.link.call("rcpt", state.client_ip, state.account_id, state.mail_from, state.sender_domain,
                       address, state.task[:2] if state.task else None).add_done_callback(done)
        return answer

    def junk_command(self, server: Session, command: str) -> bool:
        """Count a NOOP/RSET/VRFY/HELP; True when the session has sent more than
        limits.junk_command_limit of them since its last accepted message: the caller answers
        JUNK_LIMIT and closes."""
        state = server.state
        assert state is not None
        state.junk += 1
        if state.junk <= self.config.limits.junk_command_limit:
            return False
        log.warning("[%s]: %d %s/NOOP/RSET/VRFY/HELP commands without a message: closing (limits.junk_command_limit)",
                    state.client_ip, state.junk, command)
        return True

    async def _was_committed(self, queue_id: str) -> bool:
        assert self.committed is not None
        try:
            return await asyncio.to_thread(self.committed, queue_id)
        except Exception as exc:     # the store cannot say either: the client must retry
            log.error("%s: could not tell whether the message was committed: %s", queue_id, exc)
            return False

    def refuse_command(self, server: Session, stage: str, reply: str) -> None:
        """A refusal the protocol decided before any policy (530 without AUTH, 552 for a SIZE=
        over the limit): counted, recorded and logged like every other."""
        state = server.state
        assert state is not None
        reason = {"530": "auth_required", "552": "message_size"}.get(reply[:3], "protocol")
        code, status, text = reply.split(" ", 2)
        self.reject(state, stage, V.reject(int(code), status, text, reason), [])

    def refuse_message(self, server: Session, reply: str) -> None:
        """The protocol refused the data itself (too big, a line too long): end the transaction."""
        state = server.state
        assert state is not None
        reason = "message_size" if reply.startswith("552") else "line_too_long"
        code, status, text = reply.split(" ", 2)
        self.reject(state, "END-OF-MESSAGE", V.reject(int(code), status, text, reason), list(state.recipients))
        self.reset(state)

    async def message(self, server: Session, raw: bytes) -> str:
        """The end of DATA: checks, stamping, signing, the durable commit; the reply."""
        state = server.state
        assert state is not None
        # The transaction now belongs to this task: a disconnect meanwhile must not release
        # reservations that the commit is about to use.
        tokens, state.reservations = state.reservations, []
        recipients, mail_from = tuple(state.recipients), state.mail_from or ""
        state.mail_from, state.recipients = None, []
        template, state.template = state.template, None
        committing = False
        try:
            prepared = await self._prepare(server, state, raw, mail_from, recipients, template)
            if isinstance(prepared, str):
                return prepared
            message, sign_seconds = prepared
            committing = True
            try:
                reply: str = await self.link.call("enqueue", message.fields(), tokens, sign_seconds,
                                                  state.client_ip)
            except (ChannelClosed, RemoteError) as exc:
                # The back end died with the commit in flight. Once it is gone nothing more can
                # commit, so the store says what happened: answering 451 for a message that was
                # committed makes the client send it twice (issue 24, item 4).
                if isinstance(exc, ChannelClosed) and self.committed is not None \
                        and await self._was_committed(message.id):
                    log.warning("%s: the back end went away after committing it; answered as queued", message.id)
                    reply = f"250 2.0.0 Ok: queued as {message.id}"
                else:
                    log.error("%s: the back end did not take the message: %s", message.id, exc)
                    return BACKEND_GONE
        finally:
            if not committing and tokens:
                self.link.notify("release", tokens)
        if reply.startswith("250"):
            state.junk = 0
            log.info("%s: client=[%s], %s, tls=%s, message-id=%s, from=<%s>, size=%d, nrcpt=%d (queue active)",
                     message.id, state.client_ip,
                     f"sasl_username={state.username}" if state.username else f"trusted_account={state.account}",
                     message.tls or "none", message.header_message_id, mail_from, len(message.body),
                     len(recipients), extra={"fields": {"queue_id": message.id, "account": state.account,
                                                        "size": len(message.body), "nrcpt": len(recipients)}})
        return reply

    async def _prepare(self, server: Session, state: SessionState, raw: bytes, mail_from: str,
                       recipients: tuple[str, ...], template: Use | None) -> tuple[QueuedMessage, float] | str:
        """The message ready for the queue (and the seconds signing took), or a refusal reply."""
        limits = self.config.limits
        content, verdict = normalize_newlines(raw, limits.bare_newline)
        if verdict is None and template is None and self.templates:   # X-Smtprelay-Template
            assert state.account_id is not None
            try:
                if len(content) <= INLINE_BYTES:
                    content, template = self.templates.apply_headers(state.account_id, content)
                else:
                    content, template = await asyncio.to_thread(self.templates.apply_headers, state.account_id,
                                                                content)
            except TemplateRefused as exc:
                verdict = exc.verdict
            if verdict is None and template is not None and len(content) > limits.max_message_bytes:
                verdict = V.reject(552, "5.3.4", "Message size exceeds fixed limit (after rendering the template)",
                                   "message_size")
        if verdict is None:
            headers = header_block(content)
            verdict = check_subject(headers, limits.max_subject_chars) or check_from_header(headers,
                                                                                           state.sender_domain)
        tag = None
        if verdict is None:
            content, tag, verdict = take_tag(content)   # before stamping and signing
            if self.senders.display_names:      # most relays register none: no parse per message
                content = apply_display_name(content, self.senders.display_names)
        signer = self.senders.signers.get(state.sender_domain)
        if verdict is None and signer is None:  # the key went away since MAIL (domain deleted)
            verdict = V.temporary(451, "4.3.0", f"No DKIM key is available for {state.sender_domain}",
                                  "dkim_key_unavailable")
        if verdict is not None:
            return self.reject(state, "END-OF-MESSAGE", verdict, list(recipients), mail_from=mail_from)
        assert signer is not None
        now = self.clock.now()
        queue_id = new_queue_id(now)
        tls = server.tls_version
        body, message_id = stamp(content, Trace(
            queue_id=queue_id, hostname=server.hostname, helo=state.helo, client_ip=state.client_ip, tls=tls,
            account=state.account, username=state.username, recipients=recipients, now=now,
            identity=self.config.auth.received_header))
        hold = None
        if self.config.content.scanning:
            judged = await self.scanners.judge(self.config.content, body, {
                "From": mail_from, "Rcpt": recipients[0] if recipients else "", "IP": state.client_ip,
                # Every session here is authenticated or trusted: rspamd judges it as outbound mail.
                "Helo": state.helo, "User": state.username or state.account or "", "Queue-Id": queue_id})
            for scanner in judged.failures:
                self.link.notify("content", scanner, "failure")
            if judged.verdict is not None:
                return self.reject(state, "END-OF-MESSAGE", judged.verdict, list(recipients), mail_from=mail_from)
            if judged.hold is not None:
                hold = judged.hold
                self.link.notify("content", "rspamd", "hold")
            if judged.header is not None:
                body = judged.header + body
        settings = self.tracking_settings(state)
        bodies: tuple[bytes, ...] | None = None
        started = time.perf_counter()
        try:
            if settings.any:
                # One copy per recipient, each with its own tokens, made before signing.
                cfg = self.config.tracking
                assert cfg.base_url is not None
                copies = [tracking.personalize(body, settings, cfg.base_url, self.tracking_secret, queue_id, rcpt,
                                               cfg.unsubscribe_mailto) for rcpt in recipients]
                bodies = tuple([await self._sign(signer, c) for c in copies])
                body = bodies[0]
            else:
                body = await self._sign(signer, body)
        except MalformedMessage as exc:
            verdict = V.reject(550, "5.6.0", f"Message header is malformed: {exc}"[:200], "malformed_header")
            return self.reject(state, "END-OF-MESSAGE", verdict, list(recipients), mail_from=mail_from)
        sign_seconds = time.perf_counter() - started
        return QueuedMessage(
            id=queue_id, account_id=state.account_id, username=state.username, mail_from=mail_from,
            recipients=recipients, body=body, created_at=now, client_address=state.client_ip, tls=tls,
            header_message_id=message_id, tag=tag, bodies=bodies,
            template=(template.id, template.version) if template is not None else None, task=state.task,
            hold=hold), sign_seconds

    async def _sign(self, signer: Signer, body: bytes) -> bytes:
        if self.sign_pool is None:
            return signer.sign(body)
        return await self.loop.run_in_executor(self.sign_pool, signer.sign, body)

