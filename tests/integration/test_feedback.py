"""Inbound feedback through real processes (issue 18): the relay delivers with a VERP return
path to a private Postfix instance acting as the recipient's MX. Postfix accepts, then its
local delivery bounces the unknown user with Postfix's own DSN generator, and sends that DSN
to the return path: through its relayhost (the relay's feedback listener, no DNS). ARF reports,
unsubscribe mail and stray mail come in over smtplib.

Fixture shortcut: the sender domain's bounce records are marked verified in the store
(`return_path_ok`), like `seed_sender` marks the domain verified; test_domains verifies them
through a real DNS server."""
from __future__ import annotations

import json
import smtplib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smtprelay.events import tracking
from smtprelay.feedback import verp
from tests.integration.test_admin_api import call
from tests.integration.test_delivery import send, wait_for
from tests.mailservers import PostfixMx
from tests.support import Relay, free_port
from tests.test_webhooks_clock import Endpoint

SECRET = "feedback-test-secret-0123456789"
TRACKING_SECRET = "tracking-test-secret-0123456789"
UNSUBSCRIBE = "unsubscribe@relay.test"


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    e = Endpoint(tmp_path)
    yield e
    e.stop()


def feedback_relay(make_relay: Callable[..., Relay], mx_port: int, feedback_port: int,
                   **overrides: dict[str, object]) -> Relay:
    conf: dict[str, dict[str, object]] = {
        "delivery": {"routes": {"example.net": f"127.0.0.1:{mx_port}"}},
        "feedback": {"secret": SECRET},
        "tracking": {"secret": TRACKING_SECRET, "unsubscribe_mailto": UNSUBSCRIBE}}
    for key, value in overrides.items():
        conf.setdefault(key, {}).update(value)
    relay = make_relay(conf)
    relay.doc["listeners"].append({"name": "feedback", "address": "127.0.0.1", "port": feedback_port,
                                   "tls": "none", "role": "feedback"})
    relay.write_config()
    relay.feedback_port = feedback_port  # type: ignore[attr-defined]
    return relay


def verp_on(relay: Relay, domain: str = "apps.example") -> None:
    with relay.db() as conn:
        conn.execute("UPDATE domains SET return_path_ok = 1 WHERE name = ?", (domain,))


def states(relay: Relay, qid: str) -> dict[str, str]:
    return {r["address"]: r["state"] for r in relay.cli_json("status", qid)["recipients"]}


def mail_to_feedback(relay: Relay, rcpt: str, body: bytes, mail_from: str = "") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", relay.feedback_port, local_hostname="mx.example.net",  # type: ignore[attr-defined]
                      timeout=10) as s:
        s.ehlo()
        s.mail(mail_from)
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code, text
        return s.data(body)


def arf(original_return_path: str, message_id: str, rcpt: str) -> bytes:
    """An abuse report as RFC 5965 writes it (and as the big providers' loops send it)."""
    return (f"From: Feedback Loop <fbl@isp.example>\r\nTo: {original_return_path}\r\n"
            f"Subject: FW: spam report\r\nMessage-ID: <report-1@isp.example>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/report; report-type=feedback-report; boundary=\"arf\"\r\n\r\n"
            f"--arf\r\nContent-Type: text/plain\r\n\r\n"
            f"This is an email abuse report for an email message received from IP 127.0.0.1.\r\n\r\n"
            f"--arf\r\nContent-Type: message/feedback-report\r\n\r\n"
            f"Feedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
            f"Original-Mail-From: <{original_return_path}>\r\nOriginal-Rcpt-To: <{rcpt}>\r\n"
            f"Source-IP: 127.0.0.1\r\nArrival-Date: Thu, 3 Dec 2026 10:00:00 +0000\r\n\r\n"
            f"--arf\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"Return-Path: <{original_return_path}>\r\nFrom: app@apps.example\r\nTo: {rcpt}\r\n"
            f"Message-ID: {message_id}\r\nSubject: hello\r\n\r\n--arf--\r\n").encode()


def test_a_late_bounce_from_postfix_and_a_complaint_reach_the_relay(make_relay: Callable[..., Relay],
                                                                     endpoint: Endpoint) -> None:
    feedback_port = free_port()
    mx = PostfixMx("example.net", f"127.0.0.1:{feedback_port}", users=("ok",)).start()
    try:
        relay = feedback_relay(make_relay, mx.port, feedback_port)
        relay.start()
        verp_on(relay)
        relay.cli("webhook", "set", f"http://127.0.0.1:{endpoint.port}/hooks", "--account", "apps")
        qid = send(relay, ["ok@example.net", "nosuchuser@example.net"], subject="late bounce")
        # Postfix accepts both (no recipient map): the relay records both delivered...
        wait_for(lambda: set(states(relay, qid).values()) <= {"delivered", "bounced"} and
                 len(states(relay, qid)) == 2, 30)
        # ... and Postfix's own DSN for the unknown user comes back to the VERP address.
        wait_for(lambda: states(relay, qid) == {"ok@example.net": "delivered", "nosuchuser@example.net": "bounced"}, 60)
        log = mx.log()
        # One transaction per recipient, each with its own signed return path.
        senders = {line.split("from=<", 1)[1].split(">", 1)[0] for line in log.splitlines()
                   if "from=<bounces+" in line}
        assert len(senders) == 2 and all(s.endswith("@bounce.apps.example") for s in senders)
        assert {verp.parse(s, [SECRET.encode()])[0] for s in senders} == {qid}  # type: ignore[index]
        assert 'unknown user: "nosuchuser"' in log and "status=sent (250 2.0.0 Ok: feedback" in log

        doc = relay.cli_json("status", qid)
        bounced = next(r for r in doc["recipients"] if r["address"] == "nosuchuser@example.net")
        assert bounced["bounce_class"] == "invalid_address" and "late bounce" in bounced["last_reply"]
        check = relay.cli_json("blocklist", "check", "nosuchuser@example.net", "--account", "apps")
        assert any(e["type"] == "invalid" and e["applies"] for e in check["entries"])
        # The webhook fires `bounced` (late), and the delivery is not counted twice.
        wait_for(lambda: any(json.loads(p["body"])["type"] == "bounced" for p in endpoint.posts()), 30)
        hook = next(json.loads(p["body"]) for p in endpoint.posts() if json.loads(p["body"])["type"] == "bounced")
        assert hook["recipient"] == "nosuchuser@example.net" and hook["bounce_type"] == "invalid_address"
        day = next(d for d in relay.cli_json("stats", "--sender-domain", "apps.example")["days"]
                   if d["recipient_domain"] == "example.net")
        assert (day["accepted"], day["delivered"], day["bounced"], day["bounced_invalid"]) == (2, 1, 1, 1)

        listed = relay.cli_json("feedback", "list", "--type", "dsn")["feedback"]
        assert len(listed) == 1 and listed[0]["result"] == "applied" and listed[0]["mail_from"] == ""
        assert listed[0]["queue_id"] == qid and listed[0]["recipient"] == "nosuchuser@example.net"
        shown = relay.cli_json("feedback", "show", str(listed[0]["id"]))
        assert shown["report"]["kind"] == "dsn" and shown["report"]["reporter"] == "mx.example.net"
        assert shown["actions"][0]["action"] == "bounced" and "X-Postfix-Queue-ID" in shown["raw"]
        assert relay.metric("smtprelay_feedback_messages_total", 'type="dsn",result="applied"') == 1

        # A complaint (ARF) about the delivered recipient, addressed to its VERP return path.
        with relay.db() as conn:
            ok_id = conn.execute("SELECT id FROM recipients WHERE address = 'ok@example.net'").fetchone()[0]
            message_id = conn.execute("SELECT header_message_id FROM messages WHERE id = ?", (qid,)).fetchone()[0]
        ok_path = next(s for s in senders if verp.parse(s, [SECRET.encode()])[1] == ok_id)  # type: ignore[index]
        code, reply = mail_to_feedback(relay, ok_path, arf(ok_path, message_id, "ok@example.net"))
        assert code == 250, reply
        wait_for(lambda: any(json.loads(p["body"])["type"] == "complained" for p in endpoint.posts()), 30)
        check = relay.cli_json("blocklist", "check", "ok@example.net", "--account", "apps",
                               "--sender-domain", "apps.example")
        assert any(e["type"] == "reject" and e["applies"] for e in check["entries"])
        day = next(d for d in relay.cli_json("stats", "--sender-domain", "apps.example")["days"]
                   if d["recipient_domain"] == "example.net")
        assert day["complained"] == 1
        # The same report again is kept but changes nothing.
        assert mail_to_feedback(relay, ok_path, arf(ok_path, message_id, "ok@example.net"))[0] == 250
        results = [e["result"] for e in relay.cli_json("feedback", "list", "--type", "arf")["feedback"]]
        assert results == ["duplicate", "applied"]
        # A forged token (one character of the MAC changed) finds nothing.
        forged = ok_path[:ok_path.index("@") - 1] + ("a" if ok_path[ok_path.index("@") - 1] != "a" else "b") + \
            ok_path[ok_path.index("@"):]
        assert mail_to_feedback(relay, forged, arf(forged, "<other@x>", "ok@example.net"))[0] == 250
        assert relay.cli_json("feedback", "list", "--type", "arf", "--limit", "1")["feedback"][0]["result"] \
            == "unmatched"
    finally:
        print(mx.log()[-6000:])
        mx.stop()


def test_the_listener_refuses_strangers_and_keeps_what_it_cannot_read(make_relay: Callable[..., Relay]) -> None:
    feedback_port = free_port()
    relay = feedback_relay(make_relay, free_port(), feedback_port, feedback={"max_message_bytes": 4096},
                           http={"admin_token": "s3cret-token"}, limits={"max_connections_per_client": 2})
    relay.start()
    # Only bounce.<registered verified domain> and the unsubscribe mailbox.
    for stranger in ("someone@bounce.unknown.example", "postmaster@apps.example", "x@bounce.example.net"):
        code, text = mail_to_feedback(relay, stranger, b"Subject: x\r\n\r\nx\r\n")
        assert (code, text[:5]) == (550, b"5.7.1"), (stranger, text)
        assert b"relay not permitted" in text
    with smtplib.SMTP("127.0.0.1", feedback_port, timeout=10) as s:
        code, text = s.ehlo()
        assert code == 250 and b"AUTH" not in text and b"SIZE 4096" in text
        assert s.docmd("AUTH", "PLAIN AHVzZXIAcGFzcw==")[0] == 502
        s.mail("")
        assert s.rcpt("anything@bounce.apps.example")[0] == 250
        code, text = s.data(b"Subject: x\r\n\r\n" + (b"y" * 98 + b"\r\n") * 50)
        assert code == 552 and text.startswith(b"5.3.4")
    # Mail nobody can read is kept, counted, and listed with --unparsed.
    code, _ = mail_to_feedback(relay, "anything@bounce.apps.example",
                               b"From: someone@isp.example\r\nSubject: hello there\r\n\r\nJust words.\r\n")
    assert code == 250
    listed = relay.cli_json("feedback", "list", "--unparsed")["feedback"]
    assert len(listed) == 1 and listed[0]["result"] == "kept"
    assert "Just words." in relay.cli("feedback", "show", str(listed[0]["id"])).stdout
    assert relay.metric("smtprelay_feedback_messages_total", 'type="unparsed",result="kept"') == 1
    # The admin API lists the same.
    status, doc = call(relay, "GET", "/feedback?type=unparsed")
    assert doc["feedback"][0]["id"] == listed[0]["id"]
    status, doc = call(relay, "GET", f"/feedback/{listed[0]['id']}")
    assert status == 200 and "Just words." in doc["raw"]
    assert call(relay, "GET", "/feedback/abc")[1]["field"] == "id"
    assert call(relay, "GET", "/feedback/999")[0] == 404
    assert relay.cli("feedback", "list", "--type", "nonsense", check=False).returncode == 2
    # Connection caps as for submission: a third connection from one address is refused.
    held = [smtplib.SMTP("127.0.0.1", feedback_port, timeout=10) for _ in range(2)]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", feedback_port, timeout=10)
        assert refused.value.smtp_code == 421 and b"4.7.0" in refused.value.smtp_error
    finally:
        for conn in held:
            conn.quit()


def test_mail_to_the_unsubscribe_mailbox_unsubscribes(make_relay: Callable[..., Relay]) -> None:
    relay = feedback_relay(make_relay, free_port(), free_port())
    relay.start()
    qid = send(relay, ["reader@example.org"], subject="newsletter")
    token = tracking.make_token(TRACKING_SECRET.encode(), "u", qid, "reader@example.org")
    body = (f"From: reader@example.org\r\nTo: {UNSUBSCRIBE}\r\nSubject: unsubscribe {token}\r\n\r\n\r\n").encode()
    code, reply = mail_to_feedback(relay, UNSUBSCRIBE, body, "reader@example.org")
    assert code == 250, reply
    check = relay.cli_json("blocklist", "check", "reader@example.org", "--account", "apps",
                           "--sender-domain", "apps.example")
    assert any(e["type"] == "reject" and e["applies"] for e in check["entries"])
    with sqlite3.connect(relay.data_dir / "relay.db") as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE type = 'unsubscribed' AND queue_id = ?",
                            (qid,)).fetchone()[0] == 1
    # The next RCPT to that address from that domain is refused at once.
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        s.mail("app@apps.example")
        assert s.rcpt("reader@example.org")[0] == 550
    # A bad token is kept as unmatched; a second valid one is a duplicate.
    assert mail_to_feedback(relay, UNSUBSCRIBE, body.replace(token.encode(), b"abc.def"))[0] == 250
    assert mail_to_feedback(relay, UNSUBSCRIBE, body)[0] == 250
    results = [e["result"] for e in relay.cli_json("feedback", "list", "--type", "unsubscribe")["feedback"]]
    assert results == ["duplicate", "unmatched", "applied"]
