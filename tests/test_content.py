from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.config import BareNewline, ReceivedHeader
from smtprelay.policy.content import check_subject, has_bare_newlines, header_values, normalize_newlines
from smtprelay.smtp.stamp import Trace, stamp


def test_clean_content_is_returned_unchanged() -> None:
    content = b"Subject: a\r\n\r\nbody\r\n"
    out, verdict = normalize_newlines(content, BareNewline.NORMALIZE)
    assert out is content and verdict is None


def test_normalize_and_reject() -> None:
    content = b"Subject: a\r\n\r\nx\n.\ny\r.\rz\x00\r\n"
    out, verdict = normalize_newlines(content, BareNewline.NORMALIZE)
    assert verdict is None and out == b"Subject: a\r\n\r\nx\r\n.\r\ny\r\n.\r\nz\r\n"
    _, verdict = normalize_newlines(content, BareNewline.REJECT)
    assert verdict is not None and verdict.reply.startswith("550 5.6.0")


@given(st.binary(max_size=200))
def test_normalized_content_has_only_crlf(data: bytes) -> None:
    out, _ = normalize_newlines(data, BareNewline.NORMALIZE)
    assert not has_bare_newlines(out)


def test_header_values_unfold_and_ignore_body() -> None:
    headers = b"Subject: one\r\n two\r\nX: y\r\nsubject: again\r\n"
    assert header_values(headers, b"Subject") == [b"one two", b"again"]


def test_subject_limits() -> None:
    assert check_subject(b"Subject: " + b"a" * 998 + b"\r\n", 998) is None
    assert check_subject(b"Subject: " + b"a" * 999 + b"\r\n", 998) is not None
    assert check_subject(b"Subject: =?unknown-charset?q?x?=\r\n", 998) is not None
    assert check_subject(b"From: a@b.example\r\n", 998) is None  # no Subject is fine


def test_stamp_adds_received_message_id_and_date() -> None:
    trace = Trace(queue_id="Q1", hostname="relay.test", helo="evil\r\nInjected: x", client_ip="127.0.0.1",
                  tls="TLSv1.3", account="acme", username="acme-1", recipients=("a@b.example",), now=0.0)
    out, message_id = stamp(b"Subject: s\r\n\r\nbody\r\n", trace)
    head = out.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("Received: from evil??Injected:?x ([127.0.0.1])")  # HELO cannot inject headers
    assert "with ESMTPSA id Q1" in head and "for <a@b.example>; Thu, 01 Jan 1970 00:00:00 +0000" in head
    assert message_id.startswith("<Q1.") and f"Message-ID: {message_id}" in head
    assert "Date: Thu, 01 Jan 1970 00:00:00 +0000" in head


@pytest.mark.parametrize("identity,username,comment", [
    ("account", "acme-1", "(authenticated as account acme)"),
    ("full", "acme-1", "(authenticated as account acme, user acme-1)"),
    ("none", "acme-1", None),
    ("account", None, "(authenticated as account acme, trusted network)"),
])
def test_received_names_what_auth_received_header_allows(identity: str, username: str | None,
                                                          comment: str | None) -> None:
    trace = Trace(queue_id="Q1", hostname="relay.test", helo="c.test", client_ip="127.0.0.1", tls=None,
                  account="acme", username=username, recipients=("a@b.example",), now=0.0,
                  identity=ReceivedHeader(identity))
    head = stamp(b"Subject: s\r\n\r\nbody\r\n", trace)[0].split(b"\r\n\r\n")[0].decode()
    if comment is None:
        assert "authenticated as" not in head and "acme" not in head
    else:
        assert comment in head
    assert ("acme-1" in head) is (identity == "full")
    assert ("with ESMTPA id" if username else "with ESMTP id") in head   # RFC 3848 either way


def test_the_tag_header_is_taken_out_whole_even_folded() -> None:
    from smtprelay.policy.content import take_tag
    content = b"From: a@b.example\r\nX-Smtprelay-Tag:\r\n welcome\r\nSubject: s\r\n\r\nX-Smtprelay-Tag: body\r\n"
    out, tag, verdict = take_tag(content)
    assert verdict is None and tag == "welcome"
    assert out == b"From: a@b.example\r\nSubject: s\r\n\r\nX-Smtprelay-Tag: body\r\n"   # the body is untouched
    assert take_tag(b"Subject: s\r\n\r\nx") == (b"Subject: s\r\n\r\nx", None, None)
    _, _, twice = take_tag(b"X-Smtprelay-Tag: a\r\nX-Smtprelay-Tag: b\r\n\r\nx")
    assert twice is not None and twice.reply.startswith("550 5.6.0")


def test_a_registered_display_name_fills_a_bare_from_only() -> None:
    from smtprelay.policy.content import apply_display_name
    names = {"news@example.com": "Example News", "plain@example.com": None}
    bare = b"Subject: x\r\nFrom:\r\n news@Example.com\r\nTo: a@b.example\r\n\r\nbody\r\n"
    assert apply_display_name(bare, names) == \
        b"Subject: x\r\nFrom: Example News <news@Example.com>\r\nTo: a@b.example\r\n\r\nbody\r\n"   # in place
    named = b"From: \"Me\" <news@example.com>\r\n\r\nb"
    assert apply_display_name(named, names) == named                     # the client named someone
    assert apply_display_name(b"From: plain@example.com\r\n\r\nb", names) == b"From: plain@example.com\r\n\r\nb"
    two = b"From: news@example.com, other@example.com\r\n\r\nb"
    assert apply_display_name(two, names) == two                         # only one bare address
    quoted = apply_display_name(b"From: news@example.com\r\n\r\nb", {"news@example.com": "News, Inc."})
    assert quoted.startswith(b'From: "News, Inc." <news@example.com>')
