"""Checks and repairs on the message content received after DATA.

Owns: SMTP smuggling protection (bare CR, bare LF, NUL) and the Subject rules. Runs
before anything is added to or signed over the message, because a body that still holds
a bare LF would be rewritten by the sending client later and break the DKIM signature.

Must never: do I/O.
"""
from __future__ import annotations

import email.header
import email.utils
import re
from collections.abc import Mapping

from smtprelay.config import BareNewline
from smtprelay.policy.verdict import Verdict, reject

_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")
BARE_NEWLINE = reject(550, "5.6.0", "Message contains bare CR, bare LF or NUL characters, which are "
                      "refused to prevent SMTP smuggling", "bare_newline")


def has_bare_newlines(content: bytes) -> bool:
    crlf = content.count(b"\r\n")
    return content.count(b"\r") != crlf or content.count(b"\n") != crlf or b"\x00" in content


def normalize_newlines(content: bytes, mode: BareNewline) -> tuple[bytes, Verdict | None]:
    """Return the content with every line ending CRLF and no NUL, or a rejection."""
    if not has_bare_newlines(content):
        return content, None
    if mode is BareNewline.REJECT:
        return content, BARE_NEWLINE
    return _ANY_NEWLINE.sub(b"\r\n", content.replace(b"\x00", b"")), None


def header_block(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def header_values(headers: bytes, name: bytes) -> list[bytes]:
    """Raw (unfolded) values of every header called `name` (case-insensitive)."""
    values: list[bytes] = []
    current: bytearray | None = None
    lower = name.lower() + b":"
    for line in headers.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current += line
            continue
        if current is not None:
            values.append(bytes(current))
            current = None
        if line[: len(lower)].lower() == lower:
            current = bytearray(line[len(lower):])
    if current is not None:
        values.append(bytes(current))
    return [v.strip() for v in values]


def decode_subject(raw: bytes) -> str:
    """RFC 2047-decode a Subject value; raise ValueError if it is not valid text."""
    text = raw.decode("utf-8")  # raw 8-bit headers must be UTF-8 (RFC 6532)
    parts = []
    for chunk, charset in email.header.decode_header(text):
        if isinstance(chunk, str):
            parts.append(chunk)
        else:
            try:
                # Without a charset the chunk is plain text that decode_header re-encoded.
                parts.append(chunk.decode(charset) if charset else chunk.decode("raw-unicode-escape"))
            except LookupError:
                raise ValueError(f"unknown charset {charset}") from None
    return "".join(parts)


def check_subject(headers: bytes, max_chars: int) -> Verdict | None:
    for raw in header_values(headers, b"subject"):
        try:
            subject = decode_subject(raw)
        except (UnicodeDecodeError, ValueError):
            return reject(550, "5.6.0", "Subject is not valid UTF-8 (after RFC 2047 decoding)",
                          "bad_subject")
        if len(subject) > max_chars:
            return reject(550, "5.6.0", f"Subject is longer than {max_chars} characters", "subject_too_long")
    return None


_TAG = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


def take_tag(content: bytes) -> tuple[bytes, str | None, Verdict | None]:
    """Remove every X-Smtprelay-Tag header (it is for statistics, never delivered or signed);
    return the content without it, the tag, or a refusal for a malformed tag."""
    headers = header_block(content)
    values = header_values(headers, b"x-smtprelay-tag")
    if not values:
        return content, None, None
    tag = values[0].strip()
    if len(values) > 1 or not _TAG.match(tag):
        return content, None, reject(550, "5.6.0", "X-Smtprelay-Tag must appear once and be 1-64 letters, digits,"
                                                  " '.', '_' or '-'", "tag_invalid")
    return remove_headers(content, (b"x-smtprelay-tag:",)), tag.decode("ascii"), None


def remove_headers(content: bytes, names: tuple[bytes, ...]) -> bytes:
    """The content without every header whose lower-cased "name:" is in `names` (folded lines too)."""
    headers = header_block(content)
    kept, skipping = [], False
    for line in headers.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(names)
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + content[len(headers):]


def apply_display_name(content: bytes, names: Mapping[str, str | None]) -> bytes:
    """A From: header that holds one bare address (no display name) gets the display name
    registered for that address (`address add --name`), before stamping and signing. A From:
    that already names someone is the client's choice and stays as it is."""
    headers = header_block(content)
    values = header_values(headers, b"from")
    if len(values) != 1:
        return content
    pairs = email.utils.getaddresses([values[0].decode("utf-8", "replace")])
    if len(pairs) != 1 or pairs[0][0] or "@" not in pairs[0][1]:
        return content
    local, _, domain = pairs[0][1].rpartition("@")
    name = names.get(f"{local}@{domain.lower()}")
    if not name:
        return content
    header = b"From: " + email.utils.formataddr((name, pairs[0][1]), charset="utf-8").encode("ascii")
    lines, in_from = [], False
    for line in headers.split(b"\r\n"):              # in place: the header keeps its position
        if line[:1] in (b" ", b"\t"):
            if not in_from:
                lines.append(line)
            continue
        in_from = line[:5].lower() == b"from:"
        lines.append(header if in_from else line)
    return b"\r\n".join(lines) + content[len(headers):]
