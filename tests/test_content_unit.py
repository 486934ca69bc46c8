"""Content safety without daemons: which messages count as having an attachment, the quality
check's facts and score, the strike count, and the configuration's checks."""
from __future__ import annotations

import pytest

from smtprelay.config import ConfigError, parse
from smtprelay.content import quality
from smtprelay.content.scan import has_attachment
from smtprelay.content.suspension import Strikes

BASE = {"server": {"hostname": "relay.test"}, "listeners": [{"name": "s", "port": 1}]}


@pytest.mark.parametrize("message, expected", [
    (b"Subject: x\r\n\r\nhello\r\n", False),
    (b"Content-Type: text/plain\r\n\r\nfilename=x.exe in the text\r\n", False),
    (b"Content-Type: application/pdf\r\n\r\n%PDF\r\n", True),
    (b"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\nx\r\n"
     b"--a\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--a--\r\n", False),
    (b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\nx\r\n"
     b"--a\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nx\r\n--a--\r\n",
     True),
    (b"Content-Type: multipart/related; boundary=a\r\n\r\n--a\r\nContent-Type: image/png\r\n\r\nPNG\r\n--a--\r\n",
     True),
])
def test_what_counts_as_an_attachment(message: bytes, expected: bool) -> None:
    assert has_attachment(message) is expected


def test_the_quality_score_is_100_minus_the_findings_costs() -> None:
    good = quality.read(b"From: A <a@shop.example>\r\nSubject: Your order\r\nMIME-Version: 1.0\r\n"
                        b"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\n"
                        b"Your order ships today.\r\n--a\r\nContent-Type: text/html\r\n\r\n<p>Your order ships today. "
                        b"<a href=\"https://shop.example/o\">Track it at shop.example</a> any time you like.</p>\r\n"
                        b"--a--\r\n")
    assert (good.from_domain, good.has_text, good.has_html, good.links) == \
        ("shop.example", True, True, [("https://shop.example/o", "Track it at shop.example")])
    assert quality.judge(good, 1 << 20, True, True, None, 1.0, 15.0)[0].cost == 3     # spam 1/15 of 40
    assert quality.score(quality.judge(good, 1 << 20, True, True, None, None, None)) == 100

    bad = quality.read(b"From: x@other.example\r\nSubject: " + b"A" * 100 + b"\r\nList-Id: <l.example>\r\n"
                       b"Content-Type: text/html\r\n\r\n<a href=\"http://10.1.2.3/\">bank.example</a>"
                       b"<a href=\"https://evil.example/\">www.bank.example</a><a href=\"http://10.9.9.9/\">x</a>"
                       b"<img src=a.png>\r\n")
    findings = quality.judge(bad, 100, False, False, None, 20.0, 15.0)
    costs = {f.rule: f.cost for f in findings if f.rule != "links"}
    assert costs == {"spam_score": 40, "from_domain": 30, "size": 50, "subject_length": 5, "text_part": 10,
                     "image_ratio": 15, "list_unsubscribe": 10}
    assert sum(f.cost for f in findings if f.rule == "links") == 20       # three bad links, at most 20
    assert quality.score(findings) == 0
    virus = quality.judge(good, 1 << 20, True, True, "Eicar", None, None)
    assert quality.score(virus) == 0 and virus[0].rule == "virus"


def test_strikes_count_within_the_window() -> None:
    strikes = Strikes()
    assert [strikes.add(1, t, 100.0) for t in (0.0, 10.0, 50.0)] == [1, 2, 3]
    assert strikes.add(1, 105.0, 100.0) == 3          # the one at 0 left the window
    assert strikes.add(2, 105.0, 100.0) == 1
    strikes.clear(1)
    assert strikes.add(1, 106.0, 100.0) == 1


def test_content_configuration_is_checked_with_key_paths() -> None:
    with pytest.raises(ConfigError) as exc:
        parse({**BASE, "content": {"scanner_failure": "ignore", "scanners": {
            "clamav": {"address": "clamd.sock"},
            "rspamd": {"url": "http://127.0.0.1:11333", "reject_score": 5, "hold_score": 6}}}})
    assert exc.value.problems == [
        'content.scanner_failure: must be one of "tempfail", "accept", got "ignore"',
        "content.scanners.clamav.address: must be \"unix:/path\" or \"host:port\", got 'clamd.sock'",
        "content.scanners.rspamd.hold_score: must be below reject_score"]
    config = parse({**BASE, "content": {"scanners": {"rspamd": {"url": "http://127.0.0.1:11333/"}}}})
    assert config.content.scanning and config.content.clamav is None and config.content.rspamd is not None
    assert config.content.rspamd.url == "http://127.0.0.1:11333" and not parse(BASE).content.scanning
