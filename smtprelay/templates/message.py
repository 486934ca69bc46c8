"""The MIME message a send becomes, built with the standard library's `email` package.

Owns: the body's structure — text/plain, or multipart/alternative (text, then HTML), inside
multipart/mixed when there are attachments — in UTF-8 quoted-printable (7-bit clean) with
RFC 2047 encoded header words and RFC 2231 file names; and, for an SMTP submission that names
a template, the same body put under the headers the client wrote (its attachments kept).

It uses the package's `email.mime` classes with the compat32 policy rather than
`EmailMessage`: the same standard MIME, over twice as fast (1.0 ms rather than 2.3 ms for the
send benchmark's 4 KB HTML message), because headers are written as given rather than parsed
and refolded through the header registry — and a submitted message's own headers stay exactly
as the client wrote them.

Pure: values in, bytes (CRLF line ends) out. Must never: add trace or signature headers
(the front end stamps and signs every message, whichever door it came through).
"""
from __future__ import annotations

import email.charset
import email.policy
import email.utils
from email import encoders, message_from_bytes
from email.header import Header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from typing import Iterable

from smtprelay.templates.compiled import Rendered
from smtprelay.templates.request import Attachment, SendRequest

POLICY = email.policy.compat32.clone(linesep="\r\n")
_UTF8 = email.charset.Charset("utf-8")
_UTF8.header_encoding = email.charset.QP      # Q-encoded words in headers (shorter for Latin text)
_UTF8.body_encoding = email.charset.QP
# Headers the rendered body replaces in a submitted message (SMTP with a template).
_BODY_HEADERS = frozenset({"mime-version", "content-type", "content-transfer-encoding", "content-disposition",
                           "x-smtprelay-template", "x-smtprelay-template-data"})


def mailbox(name: str, address: str) -> str:
    """An address for a header: the display name RFC 2047-encoded when not ASCII."""
    return email.utils.formataddr((name, address), charset=_UTF8) if name else address


def build(request: SendRequest, rendered: Rendered, subject: str) -> bytes:
    """A send request as a message: its headers, the rendered body, its attachments."""
    msg = _body(rendered, request.attachments)
    headers: list[tuple[str, str | Header]] = [("From", mailbox(*request.sender))]
    if request.to:
        headers.append(("To", ", ".join(mailbox(*m) for m in request.to)))
    if request.cc:
        headers.append(("Cc", ", ".join(mailbox(*m) for m in request.cc)))
    if request.reply_to:
        headers.append(("Reply-To", ", ".join(mailbox(*m) for m in request.reply_to)))
    headers.append(("Subject", _text_header(subject)))
    headers += [(name, _text_header(value)) for name, value in request.headers]
    if request.tag:
        headers.append(("X-Smtprelay-Tag", request.tag))   # the front end takes it out, as for SMTP
    return _with_headers(msg, headers)


def rebuild(submitted: bytes, rendered: Rendered) -> bytes:
    """A submitted message whose body is the rendered template: its own headers stay (less
    the body's and the template's), the template's subject replaces its own, and a
    multipart/mixed message keeps its attachments."""
    original = message_from_bytes(submitted, policy=POLICY)
    attachments: list[Message] = []
    if original.get_content_type() == "multipart/mixed":
        parts = original.get_payload()
        if isinstance(parts, list):
            attachments = [p for p in parts[1:] if isinstance(p, Message)]
    msg = _body(rendered, ())
    if attachments:
        mixed = MIMEMultipart("mixed", policy=POLICY)
        mixed.attach(msg)
        for part in attachments:
            mixed.attach(part)
        msg = mixed
    headers: list[tuple[str, str | Header]] = [
        (k, v) for k, v in original.items() if k.lower() not in _BODY_HEADERS
        and not (rendered.subject is not None and k.lower() == "subject")]
    if rendered.subject is not None:
        headers.append(("Subject", _text_header(rendered.subject)))
    return _with_headers(msg, headers)


# -- internals -------------------------------------------------------------------------------
def _text(body: str, subtype: str) -> Message:
    part = MIMENonMultipart("text", subtype, policy=POLICY)
    part.set_payload(body, charset=_UTF8)
    del part["MIME-Version"]           # once, on the message itself
    return part


def _body(rendered: Rendered, attachments: Iterable[Attachment]) -> Message:
    body: Message = _text(rendered.text, "plain")
    if rendered.html is not None:
        alternative = MIMEMultipart("alternative", policy=POLICY)
        alternative.attach(body)
        alternative.attach(_text(rendered.html, "html"))
        body = alternative
    files = list(attachments)
    if not files:
        return body
    mixed = MIMEMultipart("mixed", policy=POLICY)
    mixed.attach(body)
    for f in files:
        maintype, _, subtype = f.content_type.partition("/")
        part = MIMEBase(maintype, subtype, policy=POLICY)
        del part["MIME-Version"]
        part.set_payload(f.content)
        encoders.encode_base64(part)
        name: str | tuple[str, str, str] = f.filename if f.filename.isascii() else ("utf-8", "", f.filename)
        part.add_header("Content-Disposition", "attachment", filename=name)
        mixed.attach(part)
    return mixed


def _text_header(value: str) -> str | Header:
    """A header's text: as it is when ASCII, else RFC 2047 encoded words (folded)."""
    return value if value.isascii() else Header(value, _UTF8)


def _with_headers(msg: Message, headers: list[tuple[str, str | Header]]) -> bytes:
    """The message with these headers first, then its own MIME headers."""
    mime = [(k, v) for k, v in msg.items() if k.lower() != "mime-version"]
    for k in list(msg.keys()):
        del msg[k]
    for k, v in headers:
        msg[k] = v              # type: ignore[assignment]  # compat32 takes Header objects (RFC 2047)
    msg["MIME-Version"] = "1.0"
    for k, v in mime:
        msg[k] = v
    return msg.as_bytes(policy=POLICY)
