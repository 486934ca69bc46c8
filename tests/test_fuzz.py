"""Fuzzing the parsers (issue 24, item 7), bounded so that `make test` stays fast: the SMTP
argument parsers and the address parser, dot-unstuffing, the DKIM header parse, and the
tracking rewrite of MIME. Properties: no exception escapes; a refusal is a well-formed SMTP
reply with an enhanced status code; what is accepted parses back to itself."""
from __future__ import annotations

import email
import email.policy
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.policy.address import AddressError, parse_address
from smtprelay.smtp import commands as C

REPLY = re.compile(r"^[245]\d\d [245]\.\d{1,3}\.\d{1,3} \S")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that matter to address and argument parsing, mixed with arbitrary text.
_PIECES = st.sampled_from(["<", ">", "@", "%", "!", ":", ",", ";", '"', "\\", "[", "]", "(", ")", " ", ".", "..",
                           "a", "B", "0", "-", "_", "+", "=", "SIZE=", "BODY=8BITMIME", "SMTPUTF8", "é", "\t", "\x00",
                           "example.com", "[127.0.0.1]", "[IPv6:::1]", "postmaster", "FROM:", "TO:", "<>"])
_TEXT = st.one_of(st.lists(_PIECES, max_size=16).map("".join), st.text(max_size=60))


@FUZZ
@given(_TEXT, st.booleans(), st.booleans())
def test_mail_argument_never_raises_and_answers_well_formed(arg: str, extended: bool, nested: bool) -> None:
    result = C.mail_argument(arg, extended, nested, 1000, "192.0.2.1")
    if isinstance(result, str):
        assert REPLY.match(result), result
    else:
        address, options = result
        assert address == str(parse_address(address))                  # canonical: parses to itself
        assert all(o == o.upper() for o in options)


@FUZZ
@given(_TEXT, st.booleans())
def test_rcpt_argument_never_raises_and_answers_well_formed(arg: str, extended: bool) -> None:
    result = C.rcpt_argument(arg, extended, "192.0.2.1")
    if isinstance(result, str):
        assert REPLY.match(result), result
    else:
        (address,) = result
        parsed = parse_address(address)
        assert str(parsed) == address and "%" not in parsed.local and "!" not in parsed.local


@FUZZ
@given(_TEXT)
def test_parse_address_accepts_or_refuses_cleanly(text: str) -> None:
    try:
        parsed = parse_address(text)
    except AddressError:
        return
    assert parse_address(str(parsed)) == parsed
    assert parsed.domain == parsed.domain.lower() and "@" not in parsed.domain


_LINES = st.sampled_from([b"", b".", b"..", b"...x", b".x", b"x", b"x" * 998, b"x" * 999, b"a.b", b" .", b"\xff"])


@FUZZ
@given(st.lists(_LINES, max_size=30))
def test_unstuff_undoes_dot_stuffing_or_refuses_long_lines(lines: list[bytes]) -> None:
    raw = b"".join(line + b"\r\n" for line in lines)
    result = C.unstuff(raw)
    if isinstance(result, str):
        assert REPLY.match(result) and any(len(line.removeprefix(b".")) > 998 for line in lines)
        return
    expected = b"".join(line[1:] + b"\r\n" if line.startswith(b".") else line + b"\r\n" for line in lines)
    assert result == expected


_HEADER_PIECES = st.sampled_from([b"Subject", b"X-A", b":", b" ", b"\t", b"\r\n", b"\r\n ", b"\n", b"\r", b"v",
                                  b"From ", b"\xc3\xa9", b"=?utf-8?q?x?=", b"\x00"])


@FUZZ
@given(st.lists(_HEADER_PIECES, max_size=40).map(b"".join))
def test_dkim_header_parse_refuses_cleanly(head: bytes) -> None:
    from smtprelay.dkim.signer import MalformedMessage, RelaxedHeaders, rfc822_headers
    try:
        headers = rfc822_headers(head + b"\r\n")
    except MalformedMessage:
        return
    for name, value in RelaxedHeaders.canonicalize_headers(headers):
        assert value.endswith(b"\r\n") and b"\r\n" not in value[:-2]


_HTML = st.lists(st.sampled_from(["<p>", "</p>", "<a href=\"https://shop.example/x?a=1&b=2\">", "</a>",
                                  "<a href='mailto:x@y.example'>", "<img src=\"https://img.example/i.png\">",
                                  "text ", "é", "<!-- c -->", "<a href=", "\"", "&amp;", "\r\n", "=", "=3D"]),
                 max_size=30).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_HTML, st.sampled_from(["7bit", "quoted-printable", "base64", "8bit"]), st.booleans())
def test_tracking_rewrite_keeps_a_parseable_message(html: str, encoding: str, multipart: bool) -> None:
    """Whatever the HTML and its transfer encoding, the personalised copy is a message the
    standard library parses, with its text intact and every link still a link."""
    from smtprelay.events import tracking
    part = email.message.EmailMessage()
    if encoding == "7bit" and not (html or "x").isascii():
        encoding = "quoted-printable"          # 7bit cannot carry it (the test's input, not the relay's)
    part.set_content(html or "x", subtype="html", cte=encoding)
    if multipart:
        outer = email.message.EmailMessage()
        outer.make_mixed()
        outer.attach(part)
        message = outer
    else:
        message = part
    message["From"] = "news@example.com"
    message["Subject"] = "s"
    raw = message.as_bytes(policy=email.policy.SMTP)
    settings_ = tracking.Settings(opens=True, clicks=True, unsubscribe=True)
    out = tracking.personalize(raw, settings_, "https://t.example", b"k" * 32, "QID", "r@d.example")
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    bodies = [p.get_content() for p in parsed.walk() if p.get_content_type() == "text/html"]
    assert bodies and bodies[0].count("text ") == (html or "x").count("text ")
    assert parsed["List-Unsubscribe"] and parsed["From"] == "news@example.com"
