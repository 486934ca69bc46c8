"""Reading what comes back after delivery (issue 18): delivery status notifications (RFC 3464
multipart/report, and the plain-text bounces older MTAs still send), and abuse feedback reports
(ARF, RFC 5965). Pure: bytes in, a `Report` out; nothing in a message can make it raise.

- A DSN gives one `Recipient` per per-recipient block: the final recipient, the action
  (`failed`, `delayed`, ...), the status, the diagnostic and, for a failure, the bounce class
  the relay uses for replies during the transaction (delivery.outcome.bounce_class), so a late
  bounce is judged exactly like an early one.
- A plain-text bounce (Exim's "Mail delivery failed", qmail's "failure notice", Postfix without
  DSN, Exchange's older NDRs) gives the addresses it names (X-Failed-Recipients first, else the
  addresses next to an SMTP reply) and the reply found after each.
- An ARF report gives the feedback type, the reported original recipient and sender, the source
  IP, and the original message's headers, when the provider kept them (many redact the
  recipient: then the original's Message-ID or its VERP return path finds it).
- Anything else is `unparsed`, with the reason.

Must never: touch the store, resolve names, or raise on any input.
"""
from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from typing import Any, TypedDict

from smtprelay.delivery.outcome import Reply, bounce_class

MAX_PARTS = 50                        # a report with more parts is not a report
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]+([245]\.\d{1,3}\.\d{1,3}))?\b(.*)")
_ADDRESS = re.compile(r"<?([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)>?")
_BOUNCE_SUBJECT = re.compile(r"undeliver|delivery (status|failure|has failed)|failure notice|mail delivery failed|"
                             r"returned mail|non[- ]?delivery|could not be delivered|delivery notification",
                             re.IGNORECASE)
_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery (sub)?system", re.IGNORECASE)
_ORIGINAL_MARKER = re.compile(r"^-+ ?(this is a copy of|original message|below this line|the original message|"
                              r"undelivered message)|^content-type: message/rfc822", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    action: str                        # failed, delayed, delivered, relayed, expanded
    status: str | None                 # "5.1.1"
    diagnostic: str                    # the remote server's reply, as reported
    remote_mta: str | None = None
    bounce_class: str | None = None    # for `failed`: invalid_address, mailbox_full, spam, reputation, other

    def doc(self) -> dict[str, Any]:
        return {"address": self.address, "action": self.action, "status": self.status,
                "diagnostic": self.diagnostic, "remote_mta": self.remote_mta, "bounce_class": self.bounce_class}


@dataclass(frozen=True, slots=True)
class Report:
    kind: str                                  # dsn, arf, unparsed
    recipients: tuple[Recipient, ...] = ()
    reporter: str | None = None                # Reporting-MTA, or the ARF User-Agent
    feedback_type: str | None = None           # ARF: abuse, fraud, virus, not-spam, other
    original_rcpt_to: str | None = None        # ARF
    original_mail_from: str | None = None      # ARF (or the DSN's Original-Envelope-Id when it is one)
    source_ip: str | None = None               # ARF
    original_message_id: str | None = None     # of the message that bounced or was reported
    original_return_path: str | None = None    # its Return-Path: a VERP address names the recipient
    original_to: str | None = None             # its To: header
    standard: bool = True                      # False: a plain-text bounce read by its wording
    why: str = ""                              # unparsed: why
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[Recipient]:
        return [r for r in self.recipients if r.action == "failed"]

    def doc(self) -> dict[str, Any]:
        return {"kind": self.kind, "standard": self.standard, "recipients": [r.doc() for r in self.recipients],
                "reporter": self.reporter, "feedback_type": self.feedback_type,
                "original_rcpt_to": self.original_rcpt_to, "original_mail_from": self.original_mail_from,
                "source_ip": self.source_ip, "original_message_id": self.original_message_id,
                "original_return_path": self.original_return_path, "original_to": self.original_to,
                "why": self.why or None}


def parse(raw: bytes) -> Report:
    """The report this message is; `unparsed` (with why) for anything else or anything broken."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        return _parse(message)
    except Exception as exc:          # the parsers must never take the listener down
        return Report("unparsed", why=f"could not read the message: {type(exc).__name__}: {exc}"[:300])


def _parse(message: email.message.Message) -> Report:
    ctype = message.get_content_type()
    report_type = (message.get_param("report-type") or "")
    report_type = report_type.lower() if isinstance(report_type, str) else ""
    if ctype == "multipart/report" or _part(message, "message/delivery-status") is not None \
            or _part(message, "message/feedback-report") is not None:
        if report_type == "feedback-report" or _part(message, "message/feedback-report") is not None:
            return _arf(message)
        if report_type == "delivery-status" or _part(message, "message/delivery-status") is not None:
            return _dsn(message)
    return _plain_bounce(message)


def _parts(message: email.message.Message) -> list[email.message.Message]:
    found: list[email.message.Message] = []
    for part in message.walk():
        found.append(part)
        if len(found) > MAX_PARTS:
            break
    return found


def _part(message: email.message.Message, ctype: str) -> email.message.Message | None:
    for part in _parts(message):
        if part.get_content_type() == ctype:
            return part
    return None


def _text(value: Any) -> str:
    """A header value as one clean line."""
    if value is None:
        return ""
    return " ".join(str(value).split())


def _address_of(value: str) -> str:
    """`rfc822; User@Example.org` → user@example.org-style address (local part kept)."""
    text = _text(value)
    if ";" in text:
        text = text.split(";", 1)[1]
    found = _ADDRESS.search(text)
    return found.group(1) if found else text.strip(" <>")


def _blocks(part: email.message.Message) -> list[email.message.Message]:
    """The field groups of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, email.message.Message)][:MAX_PARTS]
    text = payload if isinstance(payload, str) else ""
    blocks = []
    for chunk in re.split(r"\r?\n\s*\r?\n", text.strip())[:MAX_PARTS]:
        blocks.append(email.parser.HeaderParser(policy=email.policy.compat32).parsestr(chunk + "\n\n"))
    return blocks


def _original(message: email.message.Message) -> dict[str, str | None]:
    """Message-ID, Return-Path and To of the original, from a message/rfc822 or
    text/rfc822-headers part."""
    for part in _parts(message):
        ctype = part.get_content_type()
        headers: email.message.Message | None = None
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
                headers = payload[0]
        elif ctype in ("text/rfc822-headers", "text/rfc822"):
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(body)
        if headers is not None:
            return {"message_id": _text(headers.get("Message-ID")) or None,
                    "return_path": _address_of(_text(headers.get("Return-Path"))) or None,
                    "to": _address_of(_text(headers.get("To"))) or None}
    return {"message_id": None, "return_path": None, "to": None}


class _About(TypedDict):
    original_message_id: str | None
    original_return_path: str | None
    original_to: str | None


def _about(original: dict[str, str | None]) -> _About:
    """_original's findings as Report's fields."""
    return {"original_message_id": original["message_id"], "original_return_path": original["return_path"],
            "original_to": original["to"]}


def _reply(diagnostic: str, status: str | None) -> Reply:
    """The SMTP reply a DSN reports (its Diagnostic-Code, else made from its Status)."""
    text = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic[:20] else diagnostic.strip()
    found = _REPLY.search(text)
    if found is not None:
        code = int(found.group(1))
        enhanced = found.group(2) or status
        rest = text[found.end(1):].strip(" -")
        if enhanced and not rest.startswith(enhanced):
            rest = f"{enhanced} {rest}"
        return Reply(code, rest)
    klass = (status or "5")[0]
    return Reply(550 if klass == "5" else 450, f"{status or '5.0.0'} {text}".strip())


def _dsn(message: email.message.Message) -> Report:
    part = _part(message, "message/delivery-status")
    if part is None:
        return Report("unparsed", why="a delivery report without a message/delivery-status part")
    blocks = _blocks(part)
    if not blocks:
        return Report("unparsed", why="an empty message/delivery-status part")
    per_message = blocks[0] if not blocks[0].get("Final-Recipient") else email.message.Message()
    recipients = []
    for block in blocks:
        final = block.get("Final-Recipient") or block.get("Original-Recipient")
        address = _address_of(final) if final else ""
        if not address:         # no field, or one cut short ("rfc822;"): it names no one
            continue
        action = _text(block.get("Action")).lower() or "failed"
        status_text = _text(block.get("Status"))
        status_match = _STATUS.search(status_text)
        status = status_match.group(0) if status_match else None
        diagnostic = _text(block.get("Diagnostic-Code"))
        klass = None
        if action == "failed":
            klass = bounce_class(_reply(diagnostic, status)).value
        recipients.append(Recipient(address, action, status, diagnostic,
                                    _text(block.get("Remote-MTA")).split(";", 1)[-1].strip() or None, klass))
    if not recipients:
        return Report("unparsed", why="a delivery report naming no recipient (no Final-Recipient)")
    original = _original(message)
    return Report("dsn", tuple(recipients),
                  reporter=_text(per_message.get("Reporting-MTA")).split(";", 1)[-1].strip() or None,
                  original_mail_from=_text(per_message.get("Original-Envelope-Id")) or None, **_about(original))


def _arf(message: email.message.Message) -> Report:
    part = _part(message, "message/feedback-report")
    if part is None:
        return Report("unparsed", why="a feedback report without a message/feedback-report part")
    blocks = _blocks(part)
    if not blocks:
        return Report("unparsed", why="an empty message/feedback-report part")
    fields = blocks[0]
    feedback_type = _text(fields.get("Feedback-Type")).lower()
    if not feedback_type:
        return Report("unparsed", why="a feedback report without Feedback-Type (RFC 5965 3.1)")
    original = _original(message)
    rcpt = _text(fields.get("Original-Rcpt-To"))
    return Report("arf", reporter=_text(fields.get("User-Agent")) or None, feedback_type=feedback_type,
                  original_rcpt_to=_address_of(rcpt) if rcpt else None,
                  original_mail_from=_address_of(_text(fields.get("Original-Mail-From"))) or None,
                  source_ip=_text(fields.get("Source-IP")) or None, **_about(original),
                  extra={k: _text(fields.get(k)) for k in ("Reported-Domain", "Arrival-Date", "Version")
                         if fields.get(k)})


def _body_text(message: email.message.Message) -> str:
    """The first text/plain part (or the body), decoded as well as it can be."""
    for part in _parts(message):
        if part.get_content_maintype() == "multipart":
            continue
        if part.get_content_type() in ("text/plain", "text/html") or not part.get_content_type():
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    return raw.decode(charset, errors="replace")
                except LookupError:
                    return raw.decode("utf-8", errors="replace")
    payload = message.get_payload()
    return payload if isinstance(payload, str) else ""


def _plain_bounce(message: email.message.Message) -> Report:
    subject, sender = _text(message.get("Subject")), _text(message.get("From"))
    failed_header = _text(message.get("X-Failed-Recipients"))
    if not (failed_header or _BOUNCE_SUBJECT.search(subject) or _BOUNCE_SENDER.search(sender)):
        return Report("unparsed", why="neither a delivery report, a feedback report nor a bounce")
    text = _body_text(message)
    cut = _ORIGINAL_MARKER.search(text)
    notice, quoted = (text[:cut.start()], text[cut.start():]) if cut else (text, "")
    lines = notice.splitlines()
    addresses: list[str] = [a.strip() for a in failed_header.split(",") if "@" in a] if failed_header else []
    recipients = []
    for address in addresses or _named_addresses(lines):
        reply = _reply_after(lines, address)
        permanent = reply is not None and reply.code >= 500 or reply is None and \
            re.search(r"permanent|given up|giving up|does not exist|unknown", notice, re.IGNORECASE) is not None
        if reply is None:
            reply = Reply(550 if permanent else 450, "5.0.0 " + _first_reason(lines) if permanent else
                          "4.0.0 " + _first_reason(lines))
        action = "failed" if reply.code >= 500 else "delayed"
        recipients.append(Recipient(address, action, reply.enhanced, str(reply),
                                    bounce_class=bounce_class(reply).value if action == "failed" else None))
    if not recipients:
        return Report("unparsed", why="a bounce naming no recipient it failed for")
    original = _original(message)
    if original["message_id"] is None and quoted:
        headers = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(
            re.sub(r"^[^\n]*\n", "", quoted, count=1).lstrip("\n"))
        original = {"message_id": _text(headers.get("Message-ID")) or None,
                    "return_path": _address_of(_text(headers.get("Return-Path"))) or None,
                    "to": _address_of(_text(headers.get("To"))) or None}
    return Report("dsn", tuple(recipients), reporter=_address_of(sender) or None, standard=False,
                  **_about(original))


def _named_addresses(lines: list[str]) -> list[str]:
    """Addresses a plain-text notice names on a line of their own or next to a reply."""
    found: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        for match in _ADDRESS.finditer(stripped):
            address = match.group(1)
            alone = stripped.strip("<>:").strip() == address
            near_reply = any(_REPLY.search(x) and _STATUS.search(x) or re.search(r"\b[45]\d\d\b", x)
                             for x in lines[i:i + 4])
            if (alone or near_reply) and address not in found and not re.search(
                    r"mailer-daemon|postmaster", address, re.IGNORECASE):
                found.append(address)
    return found[:100]


def _reply_after(lines: list[str], address: str) -> Reply | None:
    """The first SMTP reply within a few lines from where `address` is named."""
    for i, line in enumerate(lines):
        if address.lower() in line.lower():
            for candidate in [line.split(address, 1)[-1], *lines[i + 1:i + 8]]:
                found = _REPLY.search(candidate.strip())
                if found is not None and (found.group(2) or re.match(r"\s*[245]\d\d\b", candidate.strip())
                                          or "said" in candidate.lower() or "error" in candidate.lower()):
                    code = int(found.group(1))
                    rest = candidate.strip()[candidate.strip().find(found.group(1)) + 3:].strip(" -")
                    return Reply(code, rest)
    return None


def _first_reason(lines: list[str]) -> str:
    for line in lines:
        if re.search(r"unknown|does not exist|no such|not found|rejected|quota|full", line, re.IGNORECASE):
            return line.strip()[:200]
    return "the remote server did not accept the message"
