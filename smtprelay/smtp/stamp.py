"""Trace and identity headers added to every accepted message.

Owns: the `Received:` header (with the TLS version and, as `auth.received_header` says, the
authenticated account and user; RFC 3848 protocol names), and `Message-ID:` / `Date:` when the client left them out.
Pure: takes the content and facts about the session, returns new bytes.
"""
from __future__ import annotations

import datetime
import email.utils
import re
from dataclasses import dataclass

from smtprelay.config import ReceivedHeader
from smtprelay.policy.content import header_block, header_values
from smtprelay.queue.ids import token

_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_\[\]:]")


@dataclass(frozen=True, slots=True)
class Trace:
    queue_id: str
    hostname: str
    helo: str
    client_ip: str
    tls: str | None
    account: str | None
    username: str | None
    recipients: tuple[str, ...]
    now: float
    identity: ReceivedHeader = ReceivedHeader.ACCOUNT


def rfc5322_date(now: float) -> str:
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(now, datetime.timezone.utc))


def stamp(content: bytes, trace: Trace) -> tuple[bytes, str]:
    """Prepend Received (and Message-ID/Date if missing); return the bytes and the Message-ID."""
    headers = header_block(content)
    protocol = "ESMTP" + ("S" if trace.tls else "") + ("A" if trace.username else "")
    helo = _UNSAFE.sub("?", trace.helo or "unknown")[:64]
    date = rfc5322_date(trace.now)
    lines = [f"Received: from {helo} ([{trace.client_ip}])",
             f"\tby {trace.hostname} (smtprelay) with {protocol} id {trace.queue_id}"]
    comments = []
    if trace.tls:
        comments.append(f"(using {trace.tls})")
    if trace.account and trace.identity is not ReceivedHeader.NONE:
        if not trace.username:
            comments.append(f"(authenticated as account {trace.account}, trusted network)")
        elif trace.identity is ReceivedHeader.FULL:
            comments.append(f"(authenticated as account {trace.account}, user {trace.username})")
        else:
            comments.append(f"(authenticated as account {trace.account})")
    if comments:
        lines.append("\t" + " ".join(comments))
    lines.append(f"\tfor <{trace.recipients[0]}>; {date}" if len(trace.recipients) == 1 else f"\t; {date}")
    existing = header_values(headers, b"message-id")
    if existing:
        message_id = existing[0].decode("ascii", "replace")
    else:
        message_id = f"<{trace.queue_id}.{token(48)}@{trace.hostname}>"
        lines.append(f"Message-ID: {message_id}")
    if not header_values(headers, b"date"):
        lines.append(f"Date: {date}")
    added = ("\r\n".join(lines) + "\r\n").encode("ascii")
    return added + content, message_id
