"""Tracking tokens and the per-recipient rewrite (pure)."""
from __future__ import annotations

import email
import email.policy

from hypothesis import given
from hypothesis import strategies as st

from smtprelay.events.tracking import Settings, make_token, personalize, read_token

KEY = b"k" * 32
MESSAGE = (b"From: app@apps.example\r\nSubject: hi\r\nList-Unsubscribe: <mailto:old@apps.example>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n"
           b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee https://shop.example/x\r\n"
           b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
           b"<html><body><a href=\"https://shop.example/x?a=1&amp;b=2\">Shop</a> caf\xc3\xa9</body></html>\r\n"
           b"--b--\r\n")


@given(st.text(min_size=1, max_size=40), st.emails(), st.text(max_size=80))
def test_tokens_round_trip_and_resist_forgery(queue_id: str, rcpt: str, url: str) -> None:
    token = make_token(KEY, "c", queue_id, rcpt, url)
    assert read_token(KEY, token, "c") == (queue_id, rcpt, url)
    assert read_token(KEY, token, "o") is None                    # a click token is not an open token
    assert read_token(b"x" * 32, token, "c") is None              # another key
    payload, _, mac = token.partition(".")
    forged = make_token(b"x" * 32, "c", queue_id, rcpt, "https://evil.example").partition(".")[0] + "." + mac
    assert read_token(KEY, forged, "c") is None                   # no open redirect by swapping the URL
    assert read_token(KEY, payload + ".AAAA", "c") is None and read_token(KEY, "garbage", "c") is None


def test_html_is_rewritten_per_recipient_and_text_is_untouched() -> None:
    out = personalize(MESSAGE, Settings(True, True, True), "https://t.example", KEY, "Q1", "a@d.test")
    assert out.startswith(b"List-Unsubscribe: <https://t.example/u/")
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in out
    assert out.count(b"List-Unsubscribe:") == 1 and b"old@apps.example" not in out   # ours replaces the client's
    msg = email.message_from_bytes(out, policy=email.policy.default)
    text, html = [p.get_content() for p in msg.walk() if p.get_content_maintype() == "text"]
    assert text.strip() == "See https://shop.example/x"
    assert "https://t.example/t/c/" in html and "shop.example" not in html and "café" in html
    assert '<img src="https://t.example/t/o/' in html and html.index("<img") < html.index("</body>")
    link = html.split("/t/c/")[1].split('"')[0]
    assert read_token(KEY, link, "c") == ("Q1", "a@d.test", "https://shop.example/x?a=1&b=2")
    other = personalize(MESSAGE, Settings(True, True, True), "https://t.example", KEY, "Q1", "b@d.test")
    assert other != out                                           # each recipient has its own tokens
    assert b"\r\n" in out and b"\n" not in out.replace(b"\r\n", b"")   # CRLF only, ready to sign


def test_only_what_is_on_is_applied() -> None:
    assert personalize(MESSAGE, Settings(unsubscribe=True), "https://t.example", KEY, "Q", "a@d.test").endswith(
        MESSAGE.split(b"MIME-Version", 1)[1])
    plain = b"From: a@b.example\r\nSubject: s\r\n\r\nhttps://x.example\r\n"
    assert personalize(plain, Settings(True, True, False), "https://t.example", KEY, "Q", "a@d.test") == plain
