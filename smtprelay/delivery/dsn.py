"""Delivery status notifications (RFC 3464): the bounce a sender gets for recipients that
bounced or expired, and the warning (`delayed`, delivery.delay_warning) for recipients still
being retried.

Pure: builds the bytes. From MAILER-DAEMON@<hostname>, sent with the null return path so
that it can never cause a bounce itself; includes the original headers (not the body).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from smtprelay.policy.content import header_block
from smtprelay.smtp.stamp import rfc5322_date


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    status: str            # enhanced code, e.g. 5.1.1 or 4.4.7 for expiry
    diagnostic: str        # the remote reply, or our reason
    remote_mta: str | None
    expired: bool


def build_dsn(*, hostname: str, queue_id: str, original_from: str, original: bytes, failed: list[FailedRecipient],
              arrival: float, now: float, retry_until: float | None = None) -> tuple[bytes, str]:
    """Return the DSN message and its Message-ID. `retry_until` set: a delay warning (Action:
    delayed, as Postfix's delay_warning_time sends), the recipients are still being retried."""
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    message_id = f"<{queue_id}.dsn.{secrets.token_hex(6)}@{hostname}>"
    expired = all(f.expired for f in failed)
    delayed = retry_until is not None
    subject = ("Delayed Mail (still being retried)" if delayed else
               "Undelivered Mail Returned to Sender" if not expired else "Undelivered Mail (delivery time expired)")
    human = [
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. It's attached below.",
        "",
    ] if not delayed else [
        f"This is the mail system at host {hostname}.",
        "",
        "####################################################################",
        "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
        "####################################################################",
        "",
        "Your message could not be delivered for some time. The mail system",
        f"will keep trying until {rfc5322_date(retry_until or now)}.",
        "",
    ]
    for f in failed:
        why = "still being retried" if delayed else "delivery time expired" if f.expired else "permanent failure"
        host = f" (host {f.remote_mta} said)" if f.remote_mta else ""
        human.append(f"<{f.address}>: {why}{host}: {f.diagnostic}")
    per_message = [f"Reporting-MTA: dns; {hostname}", f"X-Postfix-Queue-ID: {queue_id}",
                   f"X-Smtprelay-Queue-ID: {queue_id}", f"Arrival-Date: {rfc5322_date(arrival)}"]
    per_recipient = []
    for f in failed:
        block = [f"Final-Recipient: rfc822; {f.address}", f"Original-Recipient: rfc822; {f.address}",
                 f"Action: {'delayed' if delayed else 'failed'}", f"Status: {f.status}"]
        if f.remote_mta:
            block.append(f"Remote-MTA: dns; {f.remote_mta}")
        block.append(f"Diagnostic-Code: smtp; {f.diagnostic}")
        block.append(f"Last-Attempt-Date: {rfc5322_date(now)}")
        if delayed:
            block.append(f"Will-Retry-Until: {rfc5322_date(retry_until or now)}")
        per_recipient.append("\r\n".join(block))
    headers = header_block(original).rstrip(b"\r\n")
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{original_from}>",
        f"Subject: {subject}",
        f"Date: {rfc5322_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        "\r\n".join(per_message),
        "",
        "\r\n\r\n".join(per_recipient),
        "",
        f"--{boundary}",
        "Content-Description: " + ("Delayed" if delayed else "Undelivered") + " Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    body = "\r\n".join(lines).encode("utf-8", "replace") + b"\r\n" + headers + \
        f"\r\n\r\n--{boundary}--\r\n".encode("ascii")
    return body, message_id
