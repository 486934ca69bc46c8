"""The MIME message a send becomes, built with the standard library's `email` package.

Owns: the body's structure — text/plain, or multipart/alternative (text, then HTML), inside
multipart/mixed when there are attachments — in UTF-8 with RFC 2047 encoded header words and
RFC 2231 file names; and, for an SMTP submission that names a template, the same body put
under the headers the client wrote (its attachments kept).

Pure: values in, bytes (CRLF line ends) out. Must never: add trace or signature headers
(the front end stamps and signs every message, whichever door it came through).
"""
from __future__ import annotations

import email.policy
import email.utils
from email import message_from_bytes
from email.message import EmailMessage, Message
from typing import Any, Iterable

from smtprelay.templates.compiled import Rendered
from smtprelay.templates.request import Attachment, SendRequest

POLICY = email.policy.SMTP.clone(max_line_length=78)
# Headers the rendered body replaces in a submitted message (SMTP with a template).
_BODY_HEADERS = frozenset({"mime-version", "content-type", "content-transfer-encoding", "content-disposition",
                           "x-smtprelay-template", "x-smtprelay-template-data"})


def mailbox(name: str, address: str) -> str:
    """An address for a header: the display name RFC 2047-encoded when not ASCII."""
    return email.utils.formataddr((name, address), charset="utf-8") if name else address


def build(request: SendRequest, rendered: Rendered, subject: str) -> bytes:
    """A send request as a message: its headers, the rendered body, its attachments."""
    msg = _body(rendered, request.attachments)
    headers: list[tuple[str, str]] = [("From", mailbox(*request.sender))]
    if request.to:
        headers.append(("To", ", ".join(mailbox(*m) for m in request.to)))
    if request.cc:
        headers.append(("Cc", ", ".join(mailbox(*m) for m in request.cc)))
    if request.reply_to:
        headers.append(("Reply-To", ", ".join(mailbox(*m) for m in request.reply_to)))
    headers.append(("Subject", subject))
    headers += list(request.headers)
    if request.tag:
        headers.append(("X-Smtprelay-Tag", request.tag))   # the front end takes it out, as for SMTP
    return _with_headers(msg, headers)


def rebuild(submitted: bytes, rendered: Rendered) -> bytes:
    """A submitted message whose body is the rendered template: its own headers stay (less
    the body's and the template's), the template's subject replaces its own, and a
    multipart/mixed message keeps its attachments."""
    original = message_from_bytes(submitted, policy=POLICY)
    attachments: list[Any] = []
    if original.get_content_type() == "multipart/mixed":
        parts = original.get_payload()
        if isinstance(parts, list):
            attachments = [p for p in parts[1:] if isinstance(p, Message)]
    msg = _body(rendered, ())
    if attachments:
        msg.make_mixed()
        for part in attachments:
            msg.attach(part)
    headers = [(k, str(v)) for k, v in original.items() if k.lower() not in _BODY_HEADERS
               and not (rendered.subject is not None and k.lower() == "subject")]
    if rendered.subject is not None:
        headers.append(("Subject", rendered.subject))
    return _with_headers(msg, headers)


# -- internals -------------------------------------------------------------------------------
def _body(rendered: Rendered, attachments: Iterable[Attachment]) -> EmailMessage:
    body = EmailMessage(policy=POLICY)
    body.set_content(rendered.text, subtype="plain", charset="utf-8", cte=_cte(rendered.text))
    if rendered.html is not None:
        body.add_alternative(rendered.html, subtype="html", charset="utf-8", cte=_cte(rendered.html))
    for f in attachments:      # the first makes the body multipart/mixed
        maintype, _, subtype = f.content_type.partition("/")
        body.add_attachment(f.content, maintype=maintype, subtype=subtype, filename=f.filename)
    return body


def _cte(text: str) -> str:
    """8bit would need the receiving side's 8BITMIME: quoted-printable keeps mail 7-bit clean,
    and base64 is shorter for mostly non-ASCII text."""
    non_ascii = sum(1 for c in text if ord(c) > 127)
    return "base64" if non_ascii > len(text) // 4 else "quoted-printable"


def _with_headers(msg: EmailMessage, headers: list[tuple[str, str]]) -> bytes:
    """The message with these headers first, then its own MIME headers."""
    mime = [(k, v) for k, v in msg.items()]
    for k in list(msg.keys()):
        del msg[k]
    for k, v in headers:
        msg[k] = v
    if "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"
    for k, v in mime:
        if k.lower() != "mime-version":
            msg[k] = v
    return msg.as_bytes(policy=POLICY)

