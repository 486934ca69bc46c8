"""The front end: what SMTP commands mean for the relay, as the pipeline's verdicts in
SMTP replies. The protocol (smtp.server) calls it for AUTH, MAIL, RCPT and the message.

Owns: the FrontEnd (shared state of all listeners: current config, credential table,
connection caps, lockout, limits, metrics) and the per-session state. MAIL and RCPT are
answered synchronously (every rule is in memory); after DATA it runs the content checks,
stamps the trace headers, signs off the loop, hands the message to the queue store and
replies 250 only once the store says the commit is synced.

Must never: make a policy decision itself (rules live in smtprelay.policy), block the
event loop, or reply 250 before the commit.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from smtprelay.accounts import Login, check_password
from smtprelay.clock import Clock
from smtprelay.config import Config
from smtprelay.dkim.signer import Signer
from smtprelay.domains.service import SenderDomain
from smtprelay.http.metrics import Metrics
from smtprelay.policy import verdict as V
from smtprelay.policy.blocklist import BlocklistView
from smtprelay.events import tracking
from smtprelay.events import types as events
from smtprelay.policy.content import check_subject, header_block, normalize_newlines, take_tag
from smtprelay.policy.limits import AccountLimits, Reservation, SendLimiter
from smtprelay.policy.reputation import AccountRow, effective_limits
from smtprelay.policy.sender import check_from_header, check_sender
from smtprelay.queue.ids import new_queue_id
from smtprelay.queue.store import QueuedMessage, QueueStore, StoreUnavailable
from smtprelay.smtp.guards import AuthLockout, ConnectionLimiter
from smtprelay.smtp.server import LOCKED_OUT, AUTH_INVALID, AUTH_OK, RelaySMTP
from smtprelay.smtp.stamp import Trace, stamp

log = logging.getLogger("smtprelay.smtp")

MAX_PENDING_EVENTS = 100_000   # if the store is down for long, refusals beyond this are not recorded


class CredentialTable:
    """Who may log in, in memory; refreshed from the store by the app (never I/O here)."""

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
    reservations: list[Reservation] = field(default_factory=list)


class SenderTable:
    """Sender domains, registered addresses and a ready signer per domain, in memory;
    replaced as a whole by the app when the catalog changes."""

    def __init__(self) -> None:
        self.domains: dict[str, SenderDomain] = {}
        self.addresses: set[str] = set()
        self.signers: dict[str, Signer] = {}

    def replace(self, domains: dict[str, SenderDomain], addresses: set[str]) -> None:
        signers = {}
        for name, domain in domains.items():
            if domain.signing_keys:
                try:
                    signers[name] = Signer(list(domain.signing_keys))
                except ValueError as exc:
                    log.error("dkim: %s", exc)
        self.domains, self.addresses, self.signers = domains, addresses, signers


class FrontEnd:
    def __init__(self, config: Config, store: QueueStore, metrics: Metrics, clock: Clock):
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.credentials = CredentialTable()
        self.senders = SenderTable()
        self.send_limits = SendLimiter(clock, config.limits.recipient_hourly_cap)
        self.blocklist = BlocklistView([], set())
        self.account_rows: dict[int, AccountRow] = {}
        # RSA is CPU work: it runs here, never on the event loop.
        self.sign_pool = ThreadPoolExecutor(config.dkim.signing_threads, thread_name_prefix="dkim")
        self.limiter = ConnectionLimiter(config.limits.max_connections, config.limits.max_connections_per_client)
        self.lockout = AuthLockout(clock, config.auth.max_failures, config.auth.failure_window, config.auth.lockout)
        self.sessions: set[RelaySMTP] = set()
        # Told of every recipient request (sender domain, refused by the blocklist?): the
        # scheduler's throttle judges sender-domain reputation from it.
        self.on_request: Callable[[str, bool], None] | None = None
        # `rejected` events, written by the app within a second (refusals change no stored state).
        self.pending_events: list[tuple[Any, ...]] = []
        # Tracking/unsubscribe settings (per account, per sender domain) and the token key.
        self.tracking_accounts: dict[int, tracking.Settings] = {}
        self.tracking_domains: dict[str, tracking.Settings] = {}
        self.tracking_secret = b""

    def apply(self, config: Config) -> None:
        """Take over the reloadable parts of a new configuration (SIGHUP)."""
        self.config = config
        self.limiter.max_total = config.limits.max_connections
        self.limiter.max_per_client = config.limits.max_connections_per_client
        self.lockout.configure(config.auth.max_failures, config.auth.failure_window, config.auth.lockout)
        self.send_limits.hourly_cap = config.limits.recipient_hourly_cap

    def tracking_settings(self, state: SessionState) -> tracking.Settings:
        if self.config.tracking.base_url is None or state.account_id is None:
            return tracking.OFF
        found = self.tracking_domains.get(state.sender_domain)
        return found if found is not None else self.tracking_accounts.get(state.account_id, tracking.OFF)

    def account_limits(self, account_id: int) -> AccountLimits:
        row = self.account_rows.get(account_id)
        if row is None:
            return AccountLimits(self.config.limits.account_daily_quota, self.config.limits.account_rate_per_second)
        return effective_limits(row, self.config)

    def release(self, state: SessionState) -> None:
        """Give back the slots a transaction reserved but did not use."""
        if state.reservations:
            self.send_limits.release(state.reservations)
            state.reservations = []

    # -- the session, as the protocol reports it ----------------------------------------------
    def new_session_state(self, server: RelaySMTP) -> SessionState:
        return SessionState(client_ip=server.client_ip, listener=server.listener.name, trusted=server.trusted)

    def connection_opened(self, server: RelaySMTP, refused: str | None) -> None:
        if refused is not None:
            self.metrics.smtp_connections_refused.labels(reason=refused).inc()
            log.warning("warning: [%s]: connection refused: too many connections (%s cap)",
                        server.client_ip, refused.replace("_", "-"))
            return
        self.sessions.add(server)
        self.metrics.smtp_connections.labels(listener=server.listener.name).inc()
        self.metrics.smtp_sessions_active.inc()
        log.info("connect from [%s] on %s%s", server.client_ip, server.listener.name,
                 " (trusted network)" if server.listener.is_trusted(server.client_ip) else "")

    def connection_closed(self, server: RelaySMTP) -> None:
        if server.state is not None:
            self.release(server.state)
        self.sessions.discard(server)
        self.metrics.smtp_sessions_active.dec()
        log.info("disconnect from [%s]", server.client_ip)

    def reset(self, state: SessionState) -> None:
        """RSET, HELO/EHLO, STARTTLS: the transaction is forgotten, its reservations returned."""
        self.release(state)
        state.mail_from = None
        state.recipients = []

    def helo(self, server: RelaySMTP, name: str) -> None:
        assert server.state is not None
        server.state.helo = name

    def authenticate(self, server: RelaySMTP, mechanism: str, login: bytes, password: bytes) -> tuple[str, bool]:
        """In-memory lookup only, never I/O. Returns the reply and whether to close after it."""
        assert server.state is not None
        username = login.decode("utf-8", "replace")
        found = self.credentials.verify(username, password.decode("utf-8", "replace"))
        ip = server.client_ip
        if found is None:
            self.metrics.auth_attempts.labels(result="failure").inc()
            if self.lockout.failure(ip):
                log.warning("warning: [%s]: %s authentication failed for \"%s\"; address locked out for %ds",
                            ip, mechanism, username[:64], int(self.lockout.lockout))
                return LOCKED_OUT, True
            log.warning("warning: [%s]: %s authentication failed for \"%s\"", ip, mechanism, username[:64])
            return AUTH_INVALID, False
        self.lockout.success(ip)
        self.metrics.auth_attempts.labels(result="success").inc()
        server.state.login = found
        log.info("[%s]: sasl_method=%s, sasl_username=%s", ip, mechanism, username)
        return AUTH_OK, False

    def reject(self, state: SessionState, stage: str, verdict: V.Verdict, rcpt: str = "",
               mail_from: str | None = None, recipients: list[str] | None = None) -> str:
        self.metrics.recipients_rejected.labels(reason=verdict.reason).inc()
        sender = mail_from if mail_from is not None else (state.mail_from or "")
        if state.account_id is not None and len(self.pending_events) < MAX_PENDING_EVENTS:
            now = self.clock.now()
            detail = events.data(stage=stage, smtp_response=verdict.reply, rule=verdict.reason,
                                 **{"from": sender or None})
            sender_domain = sender.rpartition("@")[2].lower() or None
            for address in ([rcpt] if rcpt else list(recipients if recipients is not None else state.recipients)
                            or [""]):
                self.pending_events.append(("rejected", now, state.account_id, None, address or None, sender_domain,
                                            address.rpartition("@")[2].lower() or None, None, None, detail))
        to = f" to=<{rcpt}>" if rcpt else ""
        log.info("NOQUEUE: reject: %s from [%s]: %s; from=<%s>%s", stage, state.client_ip, verdict.reply,
                 sender, to)
        return verdict.reply

    def mail(self, server: RelaySMTP, address: str, options: list[str]) -> str:
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
                return self.reject(state, "MAIL", verdict)
            state.account, state.account_id, state.username = name, account_id, None
        config = self.config
        senders = self.senders
        verdict = check_sender(state.account_id, address, senders.domains, senders.addresses, self.clock.now(),
                               config.domains.grace, config.policy.require_registered_address)
        if verdict is not None:
            return self.reject(state, "MAIL", verdict, mail_from=address)
        state.sender_domain = address.rpartition("@")[2].lower()
        if state.sender_domain not in senders.signers:
            verdict = V.temporary(451, "4.3.0", f"No DKIM key is available for {state.sender_domain}; see the relay "
                                                "log", "dkim_key_unavailable")
            return self.reject(state, "MAIL", verdict, mail_from=address)
        state.mail_from = address
        return V.MAIL_OK.reply

    def rcpt(self, server: RelaySMTP, address: str) -> str:
        state = server.state
        assert state is not None
        if address in state.recipients:
            return V.RCPT_OK.reply  # duplicate: one delivery, like Postfix
        if len(state.recipients) >= self.config.limits.max_recipients:
            return self.reject(state, "RCPT", V.TOO_MANY_RECIPIENTS, address)
        assert state.account_id is not None  # MAIL refuses anyone without an account
        now = self.clock.now()
        verdict = self.blocklist.check(address, state.account_id, state.sender_domain, now)
        if self.on_request is not None:
            self.on_request(state.sender_domain, verdict is not None)
        if verdict is not None:
            return self.reject(state, "RCPT", verdict, address)
        reserved = self.send_limits.reserve(state.account_id, address, self.account_limits(state.account_id))
        if isinstance(reserved, V.Verdict):
            return self.reject(state, "RCPT", reserved, address)
        state.reservations.append(reserved)
        state.recipients.append(address)
        return V.RCPT_OK.reply

    def refuse_message(self, server: RelaySMTP, reply: str) -> None:
        """The protocol refused the data itself (too big, a line too long): end the transaction."""
        state = server.state
        assert state is not None
        reason = "message_size" if reply.startswith("552") else "line_too_long"
        code, status, text = reply.split(" ", 2)
        self.reject(state, "END-OF-MESSAGE", V.reject(int(code), status, text, reason))
        self.reset(state)

    async def message(self, server: RelaySMTP, raw: bytes) -> str:
        """The end of DATA: checks, stamping, signing, the durable commit; the reply."""
        state = server.state
        assert state is not None
        # The transaction now belongs to this task: a disconnect meanwhile must not release
        # reservations that the commit below is about to use.
        reservations, state.reservations = state.reservations, []
        recipients, mail_from = tuple(state.recipients), state.mail_from or ""
        state.mail_from, state.recipients = None, []
        try:
            reply, committed = await self._message(server, state, raw, mail_from, recipients)
        except BaseException:
            self.send_limits.release(reservations)
            raise
        if committed is not None:
            self.send_limits.commit(reservations, committed)
        else:
            self.send_limits.release(reservations)
        return reply

    async def _message(self, server: RelaySMTP, state: SessionState, raw: bytes, mail_from: str,
                       recipients: tuple[str, ...]) -> tuple[str, float | None]:
        """(reply, commit time, or None if nothing was committed)."""
        limits = self.config.limits
        rejected = list(recipients)
        content, verdict = normalize_newlines(raw, limits.bare_newline)
        if verdict is None:
            headers = header_block(content)
            verdict = check_subject(headers, limits.max_subject_chars) or check_from_header(headers,
                                                                                           state.sender_domain)
        tag = None
        if verdict is None:
            content, tag, verdict = take_tag(content)   # before stamping and signing
        signer = self.senders.signers.get(state.sender_domain)
        if verdict is None and signer is None:  # the key went away since MAIL (domain deleted)
            verdict = V.temporary(451, "4.3.0", f"No DKIM key is available for {state.sender_domain}",
                                  "dkim_key_unavailable")
        if verdict is not None:
            return self.reject(state, "END-OF-MESSAGE", verdict, mail_from=mail_from, recipients=rejected), None
        now = self.clock.now()
        queue_id = new_queue_id(now)
        tls = server.tls_version
        body, message_id = stamp(content, Trace(
            queue_id=queue_id, hostname=server.hostname, helo=state.helo, client_ip=state.client_ip, tls=tls,
            account=state.account, username=state.username, recipients=recipients, now=now))
        assert signer is not None
        loop = asyncio.get_running_loop()
        settings = self.tracking_settings(state)
        bodies: tuple[bytes, ...] | None = None
        started = time.perf_counter()
        if settings.any:
            # One copy per recipient, each with its own tokens, made before signing.
            cfg = self.config.tracking
            assert cfg.base_url is not None
            copies = [tracking.personalize(body, settings, cfg.base_url, self.tracking_secret, queue_id, rcpt,
                                           cfg.unsubscribe_mailto) for rcpt in recipients]
            bodies = tuple(await asyncio.gather(*(loop.run_in_executor(self.sign_pool, signer.sign, c)
                                                  for c in copies)))
            body = bodies[0]
        else:
            body = await loop.run_in_executor(self.sign_pool, signer.sign, body)
        self.metrics.dkim_sign_seconds.observe(time.perf_counter() - started)
        message = QueuedMessage(
            id=queue_id, account_id=state.account_id, username=state.username, mail_from=mail_from,
            recipients=recipients, body=body, created_at=now, client_address=state.client_ip, tls=tls,
            header_message_id=message_id, tag=tag, bodies=bodies)
        try:
            await self.store.enqueue(message)
        except StoreUnavailable:
            return self.reject(state, "END-OF-MESSAGE", V.STORE_UNAVAILABLE, mail_from=mail_from,
                               recipients=rejected), None
        self.metrics.messages_accepted.inc()
        log.info("%s: client=[%s], %s, tls=%s, message-id=%s, from=<%s>, size=%d, nrcpt=%d (queue active)",
                 queue_id, state.client_ip,
                 f"sasl_username={state.username}" if state.username else f"trusted_account={state.account}",
                 tls or "none", message_id, mail_from, len(body), len(recipients),
                 extra={"fields": {"queue_id": queue_id, "account": state.account, "size": len(body),
                                   "nrcpt": len(recipients)}})
        return f"250 2.0.0 Ok: queued as {queue_id}", now
