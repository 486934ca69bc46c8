"""Content safety (issue 22) through the running relay, with real clamd and rspamd started once
for this module (tests/scanners.py): an EICAR attachment gets 554 and nothing is stored; GTUBE
gets 550; a normal message passes and is DKIM-valid; a score over hold_score is held for an
operator; a stopped clamd gives 451 (tempfail) or lets mail through (accept); 20 virus
refusals suspend the account until `account resume`; the send API gets the same verdicts;
`check-message` reports the documented fields."""
from __future__ import annotations

import base64
import json
import signal
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from tests.integration.test_admin_api import call
from tests.integration.test_delivery import wait_for
from tests.integration.test_templates import api
from tests.scanners import EICAR, EICAR_NAME, GTUBE, Clamd, Rspamd, available
from tests.support import Relay

pytestmark = pytest.mark.skipif(not available(), reason="clamav-daemon and rspamd are installed by `make test`")


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Clamd, Rspamd]]:
    tmp = tmp_path_factory.mktemp("scanners")
    clamd, rspamd = Clamd(tmp), Rspamd(tmp)
    try:
        clamd.start()
        rspamd.start()
        yield clamd, rspamd
    finally:
        clamd.stop()
        rspamd.stop()


def scanning(clamd: Clamd, spam: Rspamd, **extra: Any) -> dict[str, dict[str, Any]]:
    content: dict[str, Any] = {"scanners": {"clamav": {"address": clamd.address, "timeout": "5s"},
                                            "rspamd": {"url": spam.url, "reject_score": 15, "timeout": "5s"}}}
    for key, value in extra.items():
        if key in ("clamav", "rspamd"):
            content["scanners"][key].update(value)
        else:
            content[key] = value
    return {"content": content, "http": {"admin_token": "s3cret-token"}}


def plain(subject: str = "Your invoice for December", body: bytes = b"Hello Ann,\r\n\r\nyour invoice is ready.\r\n"
          ) -> bytes:
    return (f"From: App <app@apps.example>\r\nTo: ann@example.org\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n").encode() + body


def with_attachment(payload: bytes, name: str = "tool.com") -> bytes:
    return (b"From: App <app@apps.example>\r\nTo: ann@example.org\r\nSubject: the file\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
            b"See the attachment.\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"" + name.encode() + b"\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(payload).replace(b"\n", b"\r\n")
            + b"--b1--\r\n")


def send(relay: Relay, message: bytes, rcpt: str = "ann@example.org") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=30) as s:
        s.ehlo()
        code, reply = s.docmd("MAIL", "FROM:<app@apps.example>")
        if code != 250:
            return code, reply
        s.rcpt(rcpt)
        return s.data(message)


def with_credential(relay: Relay) -> tuple[str, str]:
    """acme's credential, made before the relay starts (a running relay knows a new one within 2 s,
    and AUTH attempts before that would count toward the lockout)."""
    relay.cli("account", "add", "acme")
    cred = relay.cli_json("credential", "add", "acme")
    return cred["username"], cred["password"]


def rejected_rules(relay: Relay) -> list[str]:
    with relay.db() as conn:
        return [r[0] for r in conn.execute("SELECT json_extract(data, '$.rule') FROM events WHERE type = 'rejected'"
                                           " ORDER BY id")]


def test_viruses_and_spam_are_refused_and_clean_mail_passes_signed(
        make_relay: Callable[..., Relay], daemons: tuple[Clamd, Rspamd]) -> None:
    clamd, rspamd = daemons
    relay = make_relay(scanning(clamd, rspamd, rspamd={"add_header": True}))
    login = with_credential(relay)
    relay.start()

    code, reply = send(relay, with_attachment(EICAR))
    assert (code, reply) == (554, f"5.7.1 Message rejected: virus {EICAR_NAME} found".encode())
    code, reply = send(relay, plain(body=GTUBE + b"\r\n"))
    assert code == 550 and reply.startswith(b"5.7.1 Message rejected as spam (score 15.0)")
    assert relay.queued_ids() == set()                              # neither was stored
    wait_for(lambda: rejected_rules(relay) == ["virus", "spam"])
    assert relay.metric("smtprelay_recipients_rejected_total", 'reason="virus"') == 1
    assert relay.metric("smtprelay_content_scans_total", 'result="spam",scanner="rspamd"') == 1

    # A clean attachment and a clean text message go through, scored and signed.
    code, reply = send(relay, with_attachment(b"%PDF-1.4 an ordinary document\n" * 50, "report.pdf"))
    assert code == 250, reply
    code, reply = send(relay, plain())
    assert code == 250, reply
    body = relay.body(reply.decode().rsplit(" ", 1)[-1])
    assert b"\r\nX-Smtprelay-Spam-Score: " in body or body.startswith(b"X-Smtprelay-Spam-Score: ")
    records = relay.cli_json("domain", "records", "apps.example")["records"]
    txt = {r["fqdn"].rstrip(".") + ".": r["value"].encode() for r in records if r["type"] == "TXT"}
    assert dkim.DKIM(body).verify(dnsfunc=lambda name, timeout=5: txt[name.decode()])
    # The send API gets the same verdicts: 422 with the SMTP reply.
    status, doc, _ = api(relay, {"from": "a@example.com", "to": ["ann@example.org"], "subject": "the file",
                                 "text": "see the attachment", "attachments": [
                                     {"filename": "tool.com", "content_base64": base64.b64encode(EICAR).decode()}]},
                         login)
    assert status == 422 and doc["smtp_reply"] == f"554 5.7.1 Message rejected: virus {EICAR_NAME} found"


def test_a_score_over_hold_score_is_held_for_an_operator(
        make_relay: Callable[..., Relay], daemons: tuple[Clamd, Rspamd]) -> None:
    clamd, rspamd = daemons
    # An ordinary message scores about 0: with hold_score -5 every message is held.
    relay = make_relay(scanning(clamd, rspamd, rspamd={"hold_score": -5})).start()
    code, reply = send(relay, plain())
    assert code == 250, reply
    queue_id = reply.decode().rsplit(" ", 1)[-1]
    held = relay.cli_json("queue", "list", "--state", "hold")
    assert [m["id"] for m in held["messages"]] == [queue_id]
    with relay.db() as conn:
        assert conn.execute("SELECT state, hold_reason FROM recipients").fetchone()[1].startswith("spam score")
    assert relay.metric("smtprelay_content_scans_total", 'result="hold",scanner="rspamd"') == 1
    relay.cli("queue", "release", queue_id)
    with relay.db() as conn:
        assert conn.execute("SELECT state FROM recipients").fetchone()[0] in ("queued", "active", "delivered")


def test_a_scanner_that_is_down_tempfails_or_lets_mail_through(
        make_relay: Callable[..., Relay], tmp_path: Path, daemons: tuple[Clamd, Rspamd]) -> None:
    _, rspamd = daemons
    down = Clamd(tmp_path)          # configured, never started: its socket does not exist
    relay = make_relay(scanning(down, rspamd, clamav={"scan": "all", "timeout": "2s"}))
    login = with_credential(relay)
    relay.start()
    code, reply = send(relay, plain())
    assert (code, reply) == (451, b"4.7.1 Content scanner unavailable; try again later")
    assert relay.queued_ids() == set()
    assert relay.metric("smtprelay_content_scans_total", 'result="failure",scanner="clamav"') == 1
    # The send API answers 503 for it.
    status, doc, _ = api(relay, {"from": "a@example.com", "to": ["ann@example.org"], "subject": "hi", "text": "hi"},
                         login)
    assert status == 503 and doc["smtp_reply"].startswith("451 4.7.1")

    relay.doc["content"]["scanner_failure"] = "accept"
    relay.write_config()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_for_log("reload: applied")
    wait_for(lambda: send(relay, plain())[0] == 250)
    assert "content: clamav failed" in relay.log() and "goes on unscanned" in relay.log()
    assert relay.metric("smtprelay_content_scans_total", 'result="failure",scanner="clamav"') >= 2


def test_twenty_virus_refusals_suspend_the_account_until_resume(
        make_relay: Callable[..., Relay], daemons: tuple[Clamd, Rspamd]) -> None:
    clamd, rspamd = daemons
    relay = make_relay(scanning(clamd, rspamd, suspend_after=20)).start()
    code, reply = send(relay, plain())                 # queued before: it will be held
    assert code == 250
    first = reply.decode().rsplit(" ", 1)[-1]

    def deferred() -> bool:         # its first attempt is over (the test's DNS does not answer)
        with relay.db() as conn:
            return conn.execute("SELECT state, attempts > 0 FROM recipients WHERE message_id = ?",
                                (first,)).fetchone() == ("queued", 1)
    wait_for(deferred)
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=30) as s:
        s.ehlo()
        for i in range(20):
            s.mail("app@apps.example")
            s.rcpt(f"v{i}@example.org")
            code, reply = s.data(with_attachment(EICAR))
            assert code == 554, (i, reply)
    relay.wait_for_log("account apps suspended for content")
    # Each of the two workers reloads the senders on the back end's notice, one after the other:
    # wait until several sessions in a row (spread over both workers) are refused.
    wait_for(lambda: all(send(relay, plain())[0] == 550 for _ in range(4)))
    code, reply = send(relay, plain())
    assert code == 550 and b"Sending suspended for this account" in reply and b"(rule: content)" in reply
    doc = next(a for a in relay.cli_json("account", "list")["accounts"] if a["name"] == "apps")
    assert doc["suspended_at"] is not None and "20 messages refused" in doc["suspended_reason"]
    assert relay.metric("smtprelay_account_suspensions_total") == 1
    with relay.db() as conn:
        assert conn.execute("SELECT type, json_extract(data, '$.refusals') FROM events WHERE type LIKE 'account.%'"
                            ).fetchall() == [("account.suspended", 20)]
    with relay.db() as conn:        # the message queued before was held with the account
        assert conn.execute("SELECT state, hold_reason FROM recipients WHERE message_id = ?", (first,)).fetchall() \
            == [("hold", "account suspended")]
    status, body = call(relay, "POST", "/accounts/apps/resume")
    assert status == 200 and body["suspended_at"] is None and body["released"] >= 1
    with relay.db() as conn:
        assert conn.execute("SELECT type FROM events WHERE type LIKE 'account.%' ORDER BY id").fetchall() == \
            [("account.suspended",), ("account.resumed",)]
        assert conn.execute("SELECT state FROM recipients WHERE message_id = ?", (first,)).fetchone()[0] != "hold"
    assert relay.cli("account", "resume", "apps", check=False).returncode == 1      # not suspended any more
    wait_for(lambda: send(relay, plain())[0] == 250)


def test_check_message_reports_the_documented_fields(
        make_relay: Callable[..., Relay], tmp_path: Path, daemons: tuple[Clamd, Rspamd]) -> None:
    clamd, rspamd = daemons
    relay = make_relay(scanning(clamd, rspamd))
    relay.start()
    good = tmp_path / "good.eml"
    good.write_bytes(b"From: App <app@apps.example>\r\nTo: ann@example.org\r\nSubject: Your December invoice\r\n"
                     b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n--a\r\n"
                     b"Content-Type: text/plain\r\n\r\nHello Ann, your invoice is ready at https://apps.example/i.\r\n"
                     b"--a\r\nContent-Type: text/html\r\n\r\n<p>Hello Ann, your invoice is <a href=\"https://apps."
                     b"example/i\">ready at apps.example</a>. Thank you for being with us this year.</p>\r\n--a--\r\n")
    doc = relay.cli_json("check-message", str(good), "--account", "apps")
    assert doc["score"] >= 95 and [f["level"] for f in doc["findings"]] in ([], ["info"]), doc["findings"]
    assert doc["from_domain_verified"] and doc["dkim_aligned"]
    assert doc["virus_scan"] == {"result": "clean"} and doc["spam"]["score"] < 5
    assert doc["message"]["link_domains"] == ["apps.example"] and doc["message"]["text_part"]

    bad = tmp_path / "bad.eml"
    bad.write_bytes(b"From: Someone <x@unknown.example>\r\nTo: ann@example.org\r\nSubject: " + b"S" * 120
                    + b"\r\nPrecedence: bulk\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n"
                    b"<a href=\"http://192.0.2.7/x\">bank.example</a><img src=\"a.png\">" + GTUBE + b"\r\n")
    proc = relay.cli("check-message", str(bad), "--json", check=False)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    rules = {f["rule"]: f for f in doc["findings"]}
    assert set(rules) >= {"spam_score", "from_domain", "subject_length", "text_part", "links", "list_unsubscribe"}
    assert rules["spam_score"]["level"] == "error" and rules["subject_length"]["level"] == "warning"
    assert doc["score"] == max(0, 100 - sum(f["cost"] for f in doc["findings"])) and doc["score"] < 30
    assert doc["spam"]["rules"][0]["name"] == "GTUBE" or any(r["name"] == "GTUBE" for r in doc["spam"]["rules"])
    eicar = tmp_path / "eicar.eml"
    eicar.write_bytes(with_attachment(EICAR))
    doc = json.loads(relay.cli("check-message", str(eicar), "--json", check=False).stdout)
    assert doc["virus_scan"] == {"result": "found", "name": EICAR_NAME} and doc["score"] == 0
    status, body = call(relay, "POST", "/check-message", {"message": good.read_text(), "account": "apps"})
    assert status == 200 and body["score"] >= 95 and body["from_domain_verified"]
