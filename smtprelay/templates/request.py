"""The send API's JSON body, validated: `SendRequest`, or `Invalid` naming the field.

    {"from": "Ann <ann@example.com>", "to": [...], "cc": [...], "bcc": [...], "reply_to": [...],
     "subject": "...", "template": {"id": 3 | "name", "data": {...}} | "html": "..." / "text": "...",
     "attachments": [{"filename", "content_type", "content_base64"}], "headers": {...}, "tag": "..."}

Addresses are parsed by the envelope parser the SMTP front end uses (policy.address), so the
API refuses what RCPT TO refuses. Custom headers may not replace what the relay or the body
builder writes (From, To, Subject, MIME, trace and signature headers), and no value may hold
a line break (header injection).

Pure: a dict in, a frozen value out (it crosses to a front-end worker by pickle).
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import re
from dataclasses import dataclass
from typing import Any

from smtprelay.errors import Invalid
from smtprelay.policy.address import AddressError, parse_address

FIELDS = ("from", "to", "cc", "bcc", "reply_to", "subject", "template", "html", "text", "attachments", "headers",
          "tag")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")        # RFC 5322 ftext
_RESERVED = frozenset({"from", "to", "cc", "bcc", "reply-to", "subject", "sender", "date", "mime-version",
                       "content-type", "content-transfer-encoding", "content-disposition", "received",
                       "dkim-signature", "return-path", "x-smtprelay-tag", "x-smtprelay-template",
                       "x-smtprelay-template-data"})
_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class SendRequest:
    sender: tuple[str, str]                 # (display name, address)
    to: tuple[tuple[str, str], ...]
    cc: tuple[tuple[str, str], ...]
    bcc: tuple[str, ...]
    reply_to: tuple[tuple[str, str], ...]
    subject: str | None
    template: str | None                    # id or name
    data: dict[str, Any]
    html: str | None
    text: str | None
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...]
    tag: str | None

    @property
    def recipients(self) -> list[str]:
        """Envelope recipients in order, each once (like repeated RCPT TO)."""
        seen: list[str] = []
        for address in [a for _, a in self.to] + [a for _, a in self.cc] + list(self.bcc):
            if address not in seen:
                seen.append(address)
        return seen


def parse(body: Any, max_recipients: int) -> SendRequest:
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise Invalid(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; the send API takes: "
                      f"{', '.join(FIELDS)}", unknown[0])
    if body.get("from") is None:
        raise Invalid("the field \"from\" is required", "from")
    sender = _mailbox(body["from"], "from")
    to, cc = _mailboxes(body, "to"), _mailboxes(body, "cc")
    bcc = tuple(a for _, a in _mailboxes(body, "bcc"))
    total = len(to) + len(cc) + len(bcc)
    if total == 0:
        raise Invalid("give at least one recipient in \"to\", \"cc\" or \"bcc\"", "to")
    if total > max_recipients:
        raise Invalid(f"{total} recipients: at most limits.max_recipients ({max_recipients}) per message", "to")
    subject = _string(body, "subject")
    if subject is not None and ("\r" in subject or "\n" in subject):
        raise Invalid("the subject is one line", "subject")
    template: str | None = None
    data: dict[str, Any] = {}
    html, text = _string(body, "html"), _string(body, "text")
    if body.get("template") is not None:
        template, data = _template(body["template"])
        if html is not None or text is not None:
            raise Invalid("give a template or html/text, not both", "template")
    elif html is None and text is None:
        raise Invalid("give \"template\", or \"html\" and/or \"text\"", "template")
    elif subject is None:
        raise Invalid("the field \"subject\" is required without a template", "subject")
    tag = _string(body, "tag")
    if tag is not None and not _TAG.fullmatch(tag):
        raise Invalid("a tag is 1-64 letters, digits, '.', '_' or '-'", "tag")
    return SendRequest(sender, to, cc, bcc, _mailboxes(body, "reply_to"), subject, template, data, html, text,
                       _attachments(body.get("attachments")), _headers(body.get("headers")), tag)


# -- fields ----------------------------------------------------------------------------------
def _string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise Invalid(f"the field \"{name}\" must be a string", name)
    return value


def _mailbox(value: Any, field: str) -> tuple[str, str]:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{field} must be an address, like \"Ann <ann@example.com>\" or \"ann@example.com\"", field)
    if "\r" in value or "\n" in value:
        raise Invalid(f"{field} holds a line break", field)
    name, address = email.utils.parseaddr(value)
    if not address:
        raise Invalid(f"{field}: \"{value}\" is not an address", field)
    try:
        parsed = parse_address(address)
    except AddressError as exc:
        raise Invalid(f"{field}: {address}: {exc}", field) from None
    return name, str(parsed)


def _mailboxes(body: dict[str, Any], name: str) -> tuple[tuple[str, str], ...]:
    value = body.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Invalid(f"the field \"{name}\" must be a list of addresses", name)
    return tuple(_mailbox(v, f"{name}[{i}]") for i, v in enumerate(value))


def _template(value: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(value, dict) or set(value) - {"id", "data"}:
        raise Invalid("\"template\" must be an object {\"id\": ID or name, \"data\": {...}}", "template")
    ref = value.get("id")
    if isinstance(ref, bool) or not isinstance(ref, (int, str)) or str(ref) == "":
        raise Invalid("template.id must be a template's id or name", "template.id")
    data = value.get("data", {})
    if not isinstance(data, dict):
        raise Invalid("template.data must be a JSON object of variable names and values", "template.data")
    return str(ref), data


def _attachments(value: Any) -> tuple[Attachment, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid("\"attachments\" must be a list", "attachments")
    result = []
    for i, item in enumerate(value):
        where = f"attachments[{i}]"
        if not isinstance(item, dict) or set(item) - {"filename", "content_type", "content_base64"}:
            raise Invalid(f"{where} must be an object with filename, content_type and content_base64", where)
        filename, content_type, encoded = item.get("filename"), item.get("content_type"), item.get("content_base64")
        if not isinstance(filename, str) or not filename.strip() or any(c in filename for c in "\r\n\0/\\"):
            raise Invalid(f"{where}.filename must be a file name (no path, no line break)", where + ".filename")
        if content_type is None:
            content_type = "application/octet-stream"
        if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(content_type):
            raise Invalid(f"{where}.content_type must be a MIME type like application/pdf", where + ".content_type")
        if not isinstance(encoded, str):
            raise Invalid(f"{where}.content_base64 is required (the file, base64-encoded)", where + ".content_base64")
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(f"{where}.content_base64 is not base64", where + ".content_base64") from None
        result.append(Attachment(filename, content_type.lower(), content))
    return tuple(result)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise Invalid("\"headers\" must be an object of header names and values", "headers")
    result = []
    for name, text in value.items():
        where = f"headers.{name}"
        if not _HEADER_NAME.fullmatch(name):
            raise Invalid(f"\"{name}\" is not a header name", where)
        if name.lower() in _RESERVED:
            raise Invalid(f"{name} is set by the relay or by the send API's own fields", where)
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise Invalid(f"{where} must be a string without line breaks", where)
        result.append((name, text))
    return tuple(result)
