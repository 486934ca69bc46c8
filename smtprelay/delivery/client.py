"""The SMTP client: one connection to a next hop, reused for several transactions.

Owns: sockets to remote servers (aiosmtplib ≥ 5.1.2), EHLO with `server.hostname`, TLS
policy, timeouts. `opportunistic`: STARTTLS when offered, no certificate check; if the
handshake fails, reconnect in plaintext (what Postfix's `may` level does). `required`:
STARTTLS with a certificate verified for the MX name, or no delivery (a temporary failure
with the reason). Returns replies; it never decides what they mean or touches the queue.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from smtprelay.config import DeliveryConfig, DeliveryTls
from smtprelay.delivery.mx import Host
from smtprelay.delivery.outcome import Reply

log = logging.getLogger("smtprelay.delivery")


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


def _tls_contexts(ca_file: Path | None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    verified = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    verified.minimum_version = ssl.TLSVersion.TLSv1_2
    loose = ssl.create_default_context()
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE
    return verified, loose


class Connection:
    def __init__(self, smtp: aiosmtplib.SMTP, host: Host, address: str, tls_version: str | None,
                 config: DeliveryConfig):
        self.smtp = smtp
        self.host = host
        self.address = address
        self.tls_version = tls_version
        self.config = config
        self.transactions = 0

    @property
    def relay(self) -> str:
        return f"{self.host.name}[{self.address}]:{self.host.port}"

    async def send(self, mail_from: str, recipients: list[str], body: bytes) -> TransactionResult:
        smtp = self.smtp
        replies: dict[str, Reply] = {}
        try:
            if self.transactions:
                await smtp.rset()
            self.transactions += 1
            options = [f"SIZE={len(body)}"] if smtp.supports_extension("size") else []
            response = await smtp.execute_command(b"MAIL", b"FROM:<" + mail_from.encode() + b">",
                                                  *[o.encode() for o in options])
            if response.code != 250:
                reply = Reply(response.code, response.message)
                return TransactionResult({r: reply for r in recipients}, None, response.code < 421)
            accepted = []
            for rcpt in recipients:
                response = await smtp.execute_command(b"RCPT", b"TO:<" + rcpt.encode() + b">")
                if response.code in (250, 251):
                    accepted.append(rcpt)
                else:
                    replies[rcpt] = Reply(response.code, response.message)
                if response.code == 421:
                    return TransactionResult(replies, f"{response.code} {response.message}", False)
            if not accepted:
                return TransactionResult(replies, None, True)
            try:
                response = await smtp.data(body, timeout=self.config.data_timeout)
                reply = Reply(response.code, response.message)
            except aiosmtplib.SMTPDataError as exc:
                reply = Reply(exc.code, exc.message)
            for rcpt in accepted:
                replies[rcpt] = reply
            return TransactionResult(replies, None, reply.code != 421)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            log.debug("%s: transaction failed: %r", self.relay, exc)
            return TransactionResult(replies, _describe(exc), False)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.smtp.quit(), timeout=5)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            pass
        finally:
            self.smtp.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return "conversation timed out"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "lost connection"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class SmtpTransport:
    def __init__(self, config: DeliveryConfig, helo: str):
        self.config = config
        self.helo = helo
        self._verified, self._loose = _tls_contexts(config.tls_ca_file)

    def reconfigure(self, config: DeliveryConfig) -> None:
        self.config = config

    async def connect(self, hosts: tuple[Host, ...], policy: DeliveryTls) -> Connection | ConnectFailure:
        """Try the hosts (and their addresses) in order; the first usable connection wins."""
        failure = ConnectFailure("no host to try")
        for host in hosts:
            for address in host.addresses:
                result = await self._connect_one(host, address, policy)
                if isinstance(result, Connection):
                    return result
                failure = result
                if result.reply is not None and result.reply.code >= 500:
                    return result  # a 5xx greeting is an answer for the whole destination
        return failure

    async def _connect_one(self, host: Host, address: str, policy: DeliveryTls,
                           plaintext: bool = False) -> Connection | ConnectFailure:
        cfg = self.config
        smtp = aiosmtplib.SMTP(hostname=address, port=host.port, local_hostname=self.helo,
                               timeout=cfg.command_timeout, start_tls=False, use_tls=False, validate_certs=False)
        where = f"{host.name}[{address}]:{host.port}"
        try:
            await smtp.connect(timeout=cfg.connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            smtp.close()
            return ConnectFailure(f"host {where} refused to talk to me: {exc.code} {exc.message}",
                                  Reply(exc.code, exc.message))
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            smtp.close()
            return ConnectFailure(f"connect to {where}: {_describe(exc)}")
        try:
            await smtp.ehlo()
            tls_version = None
            if not plaintext and (policy is DeliveryTls.REQUIRED or smtp.supports_extension("starttls")):
                if not smtp.supports_extension("starttls"):
                    smtp.close()
                    return ConnectFailure(f"TLS is required, but host {where} does not offer STARTTLS", tls=True)
                context = self._verified if policy is DeliveryTls.REQUIRED else self._loose
                try:
                    await smtp.starttls(tls_context=context, server_hostname=host.name,
                                        validate_certs=policy is DeliveryTls.REQUIRED)
                except (aiosmtplib.SMTPException, OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
                    smtp.close()
                    if policy is DeliveryTls.REQUIRED:
                        return ConnectFailure(f"TLS is required, but the handshake with {where} failed: "
                                              f"{_describe(exc)}", tls=True)
                    return await self._connect_one(host, address, policy, plaintext=True)
                obj = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
                tls_version = obj.version() if obj is not None else None
                await smtp.ehlo()  # RFC 3207: forget what was said before TLS, greet again
            return Connection(smtp, host, address, tls_version, cfg)
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            return ConnectFailure(f"host {where} refused EHLO: {exc.code} {exc.message}", Reply(exc.code, exc.message))
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            smtp.close()
            return ConnectFailure(f"conversation with {where} failed: {_describe(exc)}")
