"""The SMTP syntax and reply texts both protocols share (smtp/commands.py), and the enhanced
status codes the aiosmtpd front end adds to aiosmtpd's own replies (smtp/submission.enhance)."""
from __future__ import annotations

import pytest

from smtprelay.smtp import commands as C
from smtprelay.smtp.submission import enhance


@pytest.mark.parametrize("aiosmtpd_says,we_say", [
    ("250 OK", "250 2.0.0 Ok"),
    ("221 Bye", "221 2.0.0 Bye"),
    ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
    ("500 Command line too long", "500 5.5.2 Command line too long"),
    ("500 Error: strict ASCII mode", "500 5.6.7 Non-ASCII addresses are not supported"),
    ('500 Error: command "XYZZY" not recognized', '500 5.5.1 Error: command "XYZZY" not recognized'),
    ("501 Syntax: QUIT", "501 5.5.4 Syntax: QUIT"),
    ("502 EXPN not implemented", "502 5.5.1 EXPN not implemented"),
    ("501 5.7.0 Auth aborted", "501 5.7.0 Auth aborted"),                  # already enhanced
    ("502 5.5.1 Too many unrecognized commands, goodbye.", "502 5.5.1 Too many unrecognized commands, goodbye."),
    ("220 relay.test ESMTP smtprelay", "220 relay.test ESMTP smtprelay"),    # the greeting has none
    ("250 relay.test", "250 relay.test"),                                    # HELO's reply neither
    ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
])
def test_aiosmtpd_replies_get_enhanced_codes(aiosmtpd_says: str, we_say: str) -> None:
    assert enhance(aiosmtpd_says) == we_say


def test_every_fixed_reply_of_ours_passes_unchanged() -> None:
    ours = [v for k, v in vars(C).items() if k.isupper() and isinstance(v, str) and v[:3].isdigit()]
    assert len(ours) > 15
    assert [enhance(r) for r in ours] == ours


@pytest.mark.parametrize("arg,extended,expected", [
    ("FROM:<a@example.com>", False, ("a@example.com", [])),
    ("FROM:<a@example.com> SIZE=100 BODY=8BITMIME", True, ("a@example.com", ["SIZE=100", "BODY=8BITMIME"])),
    ("FROM:<a@example.com> SIZE=100", False, C.MAIL_SYNTAX),               # parameters need EHLO
    ("FROM:<a@example.com> SIZE=5000001", True, C.TOO_BIG),
    ("FROM:<>", True, C.MAIL_SYNTAX),                                       # no null sender for submission
    ("FROM:<@relay.example:a@example.com>", True, C.BAD_ADDRESS),          # a source route
    ("FROM:<a%b@example.com>", True, C.BAD_ADDRESS),
    ("FROM:<a@example.com> SMTPUTF8", True, "555 5.6.7 SMTPUTF8 is not supported"),
    ("FROM:<a@example.com> BODY=BINARYMIME", True, "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"),
    ("FROM:<a@example.com> RET=HDRS", True, "555 5.5.4 MAIL FROM parameters not recognized or not implemented"),
    ("TO:<a@example.com>", True, C.MAIL_SYNTAX),
])
def test_mail_argument(arg: str, extended: bool, expected: object) -> None:
    assert C.mail_argument(arg, extended, False, 5_000_000, "127.0.0.1") == expected


def test_nested_mail_and_rcpt_argument() -> None:
    assert C.mail_argument("FROM:<a@example.com>", True, True, 1000, "127.0.0.1") == C.NESTED_MAIL
    assert C.rcpt_argument("TO:<B@Example.ORG>", True, "127.0.0.1") == ("B@example.org",)
    assert C.rcpt_argument("TO:<b@example.org> NOTIFY=NEVER", True, "127.0.0.1") == (
        "555 5.5.4 RCPT TO parameters not recognized or not implemented")
    assert C.rcpt_argument("TO:<user!host@example.org>", True, "127.0.0.1") == C.BAD_ADDRESS


@pytest.mark.parametrize("raw,content", [
    (b"", b""),
    (b"..leading dot\r\n", b".leading dot\r\n"),
    (b"a\r\n..\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
    (b"x" * 1000 + b"\r\n", b"x" * 1000 + b"\r\n"),                       # 1000 octets is the limit
    (b"x" * 1001 + b"\r\n", C.TOO_LONG_LINE),
])
def test_unstuff(raw: bytes, content: bytes | str) -> None:
    assert C.unstuff(raw) == content
