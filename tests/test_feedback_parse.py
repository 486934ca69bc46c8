"""Reading bounces and complaint reports (issue 18), and VERP tokens: samples in the formats of
Postfix, Gmail, Microsoft, Yahoo, Exim and qmail bounces and of RFC 5965, Microsoft JMRP and
Yahoo CFL reports (tests/feedback_samples/, written to the published formats), and mutated
reports that must never make the parser raise."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.feedback import verp
from smtprelay.feedback.parse import parse

SAMPLES = Path(__file__).parent / "feedback_samples"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.mark.parametrize("name, address, status, klass, standard", [
    ("postfix_dsn.eml", "nobody@example.org", "5.1.1", "invalid_address", True),
    ("gmail_dsn.eml", "no.such.user@gmail.com", "5.1.1", "invalid_address", True),
    ("microsoft_ndr.eml", "full.box@outlook.com", "5.2.2", "mailbox_full", True),
    ("yahoo_bounce.eml", "gone.away@yahoo.com", None, "invalid_address", False),
    ("exim_bounce.eml", "spam.trap@exim.example", "5.7.1", "spam", False),
    ("qmail_bounce.eml", "blocked@qmail.example", "5.7.1", "reputation", False),
])
def test_bounces_name_the_recipient_and_the_class(name: str, address: str, status: str | None, klass: str,
                                                  standard: bool) -> None:
    report = parse(sample(name))
    assert report.kind == "dsn", report.why
    assert report.standard is standard
    assert [(r.address, r.action, r.status, r.bounce_class) for r in report.failed] == \
        [(address, "failed", status, klass)], report.doc()
    # The original is found: its Message-ID and its VERP return path tie the bounce to the recipient.
    assert report.original_message_id is not None and report.original_message_id.endswith("@relay.test>")
    assert report.original_return_path is not None and report.original_return_path.startswith("bounces+661BEC")


def test_a_gmail_diagnostic_keeps_the_reply_and_the_remote_mta() -> None:
    report = parse(sample("gmail_dsn.eml"))
    failed = report.failed[0]
    assert failed.diagnostic.startswith("smtp; 550-5.1.1 The email account that you tried to reach does not exist")
    assert failed.remote_mta is not None and failed.remote_mta.startswith("gmail-smtp-in.l.google.com.")
    assert report.reporter == "googlemail.com"


def test_a_delay_notice_is_no_failure() -> None:
    report = parse(sample("delayed_dsn.eml"))
    assert report.kind == "dsn" and report.failed == []
    assert [(r.address, r.action, r.status) for r in report.recipients] == [("slow@example.net", "delayed", "4.4.1")]


@pytest.mark.parametrize("name, agent, rcpt, mail_from, ip", [
    ("arf_rfc5965.eml", "SomeGenerator/1.0", "user@example.com", "somespammer@example.net", "192.0.2.1"),
    ("microsoft_jmrp.eml", "Microsoft Junk Mail Reporting Program", None,
     "bounces+661BEC30393E01DR5C-e-abcdefghijklmnop@bounce.apps.example", "127.0.8.1"),
    ("yahoo_cfl.eml", "Yahoo!-Mail-Feedback/2.0", "reader@yahoo.com",
     "bounces+661BEC30393E01DR5D-f-abcdefghijklmnop@bounce.apps.example", None),
])
def test_complaint_reports(name: str, agent: str, rcpt: str | None, mail_from: str, ip: str | None) -> None:
    report = parse(sample(name))
    assert report.kind == "arf", report.why
    assert (report.feedback_type, report.reporter, report.original_rcpt_to, report.original_mail_from,
            report.source_ip) == ("abuse", agent, rcpt, mail_from, ip)
    assert report.original_message_id is not None


def test_microsoft_redacts_the_recipient_but_the_original_says_where_it_went() -> None:
    report = parse(sample("microsoft_jmrp.eml"))
    assert report.original_rcpt_to is None
    assert report.original_to == "redacted@hotmail.com"
    assert report.original_return_path == "bounces+661BEC30393E01DR5C-e-abcdefghijklmnop@bounce.apps.example"


def test_other_mail_is_unparsed_with_the_reason() -> None:
    plain = b"From: friend@example.org\r\nTo: x@y.example\r\nSubject: lunch?\r\n\r\nAt noon?\r\n"
    assert parse(plain).kind == "unparsed"
    assert "neither a delivery report" in parse(plain).why
    no_recipient = sample("postfix_dsn.eml").replace(b"Final-Recipient: rfc822; nobody@example.org\n", b"") \
        .replace(b"Original-Recipient: rfc822;nobody@example.org\n", b"")
    assert parse(no_recipient).kind == "unparsed"
    assert parse(b"").kind == "unparsed"
    assert parse(b"\xff\xfe\x00garbage").kind == "unparsed"


SECRET = b"k" * 32


def test_verp_tokens_round_trip_and_refuse_forgeries() -> None:
    part = verp.local_part("bounces", SECRET, "661BEC30393E01DR54", 123456)
    assert len(part) <= 64
    address = verp.address("bounces", SECRET, "661BEC30393E01DR54", 123456, "Apps.Example", "bounce")
    assert address == f"{part}@bounce.apps.example"
    assert verp.parse(address, [SECRET]) == ("661BEC30393E01DR54", 123456)
    assert verp.parse(address.lower(), [SECRET]) == ("661BEC30393E01DR54", 123456)   # a lower-casing MTA
    assert verp.parse(f"<{address}>", [b"old" * 11, SECRET]) == ("661BEC30393E01DR54", 123456)  # a rotated secret
    assert verp.parse(address, [b"another secret"]) is None
    forged = address.replace("661BEC30393E01DR54", "661BEC30393E01DR55")
    assert verp.parse(forged, [SECRET]) is None                          # another message, same MAC
    other_rcpt = part.replace("-2n9c-", "-2n9d-") + "@bounce.apps.example"
    assert verp.parse(other_rcpt, [SECRET]) is None
    assert verp.parse("postmaster@bounce.apps.example", [SECRET]) is None
    with pytest.raises(ValueError, match="shorten feedback.return_path_prefix"):
        verp.local_part("a-very-long-return-path-prefix-here", SECRET, "661BEC30393E01DR54", 10 ** 12)


REPORTS = [sample(p.name) for p in sorted(SAMPLES.glob("*.eml"))]


def test_a_report_cut_after_final_recipient_names_no_one() -> None:
    """Found by the fuzzing test below: a DSN cut right after "Final-Recipient: rfc822;" gave a
    recipient with an empty address."""
    raw = sample("gmail_dsn.eml")
    cut = raw[:raw.index(b"Final-Recipient: rfc822;") + len(b"Final-Recipient: rfc822;")]
    report = parse(cut)
    assert report.kind == "unparsed" and "no recipient" in (report.why or "")


def test_every_truncation_of_every_sample_gives_a_result() -> None:
    """Deterministic beside the random test below: each sample cut at every byte of its second
    half parses to a result whose recipients all have an address."""
    for raw in REPORTS:
        for cut in range(len(raw) // 2, len(raw) + 1):
            report = parse(raw[:cut])
            assert report.kind in ("dsn", "arf", "unparsed")
            assert all(r.address for r in report.recipients), (raw[:60], cut)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REPORTS), st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=40)), max_size=6),
       st.integers(0, 10_000))
def test_mutated_reports_never_raise(raw: bytes, splices: list[tuple[int, bytes]], cut: int) -> None:
    """Insertions of random bytes anywhere, then a truncation: a result, never an exception."""
    data = raw
    for at, chunk in splices:
        at %= len(data) + 1
        data = data[:at] + chunk + data[at:]
    data = data[:max(cut, len(data) // 2)]
    report = parse(data)
    assert report.kind in ("dsn", "arf", "unparsed")
    assert all("@" in r.address or r.address for r in report.recipients)
    report.doc()
