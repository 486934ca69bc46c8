"""Events as a tenant meets them: a mixed run (delivered, deferred, bounced by class, refused
at RCPT, a complaint) through the relay process and a real receiver, then `stats` and
`status` must say exactly what happened, and the tag header never leaves the relay."""
from __future__ import annotations

import csv
import io
import json
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

from smtprelay.events.feedback import record_feedback
from tests.integration.test_delivery import send, wait_for
from tests.mailservers import Receiver
from tests.support import Relay, queued_id


def test_mixed_run_stats_and_status(make_relay: Callable[..., Relay], tmp_path: Path) -> None:
    rx = Receiver(tmp_path, "127.0.0.1", None, "--rcpt-reply", "unknown=550 5.1.1 <unknown@d.test>: user unknown",
                  "--rcpt-reply", "spam=550 5.7.1 message rejected as spam",
                  "--rcpt-reply", "later=451 4.3.0 please try again").start()
    try:
        relay = make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{rx.port}"}}})
        relay.cli("blocklist", "add", "blocked@d.test")
        relay.start()
        rcpts = ["ok@d.test", "unknown@d.test", "spam@d.test", "later@d.test"]
        with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
            s.ehlo()
            s.mail("app@apps.example")
            for r in rcpts:
                assert s.rcpt(r)[0] == 250
            assert s.rcpt("blocked@d.test")[0] == 550
            code, reply = s.data(b"From: app@apps.example\r\nX-Smtprelay-Tag: welcome\r\nSubject: hi\r\n\r\nhi\r\n")
        assert code == 250
        qid = queued_id(reply)
        bad = smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10)
        bad.ehlo()
        bad.mail("app@apps.example")
        code, text = bad.data(b"From: app@apps.example\r\nX-Smtprelay-Tag: no spaces allowed\r\n\r\nx\r\n") \
            if bad.rcpt("x@d.test")[0] == 250 else (0, b"")
        bad.quit()
        assert code == 550 and b"5.6.0 X-Smtprelay-Tag" in text

        def settled() -> bool:
            doc = relay.cli_json("status", qid)
            return {r["address"]: r["state"] for r in doc["recipients"]} == {
                "ok@d.test": "delivered", "unknown@d.test": "bounced", "spam@d.test": "bounced",
                "later@d.test": "deferred"}
        wait_for(settled)
        [txn] = [t for t in rx.transactions() if "ok@d.test" in t["rcpts"]]
        assert b"X-Smtprelay-Tag" not in txn["data"] and b"DKIM-Signature" in txn["data"]
        with relay.db() as conn:
            apps_id = conn.execute("SELECT id FROM accounts WHERE name = 'apps'").fetchone()[0]
        conn = relay.db()
        record_feedback(conn, time.time(), apps_id, "apps.example", "ok@d.test", "complaint", queue_id=qid)
        conn.commit()
        conn.close()
        wait_for(lambda: relay.cli_json("stats")["days"] and
                 sum(d["rejected"] for d in relay.cli_json("stats")["days"]) == 2)   # the RCPT and the bad tag

        days = relay.cli_json("stats", "--sender-domain", "apps.example")["days"]
        tagged = [d for d in days if d["tag"] == "welcome"]
        assert len(tagged) == 1
        t = tagged[0]
        assert (t["accepted"], t["delivered"], t["bounced"], t["bounced_invalid"], t["bounced_spam"],
                t["bounced_other"]) == (4, 1, 2, 1, 1, 0)
        assert t["deferred"] >= 1 and t["recipient_domain"] == "d.test" and t["delivery_rate"] == 0.25
        untagged = [d for d in days if d["tag"] is None]
        assert sum(d["rejected"] for d in untagged) == 2
        # The complaint carries its message's tag (issue 23, item 5: it was counted untagged).
        assert t["complained"] == 1 and sum(d["complained"] for d in untagged) == 0
        assert sum(d["requests"] for d in days) == 6          # 4 accepted + 2 refused
        assert relay.cli_json("stats", "--recipient-domain", "nowhere.test")["days"] == []

        table = list(csv.reader(io.StringIO(relay.cli("stats", "--format", "csv").stdout)))
        assert table[0][:5] == ["day", "day_epoch_ms", "sender_domain", "recipient_domain", "tag"]
        row = next(r for r in table[1:] if r[4] == "welcome")
        assert row[0].endswith("T00:00:00Z") and int(row[1]) % 86_400_000 == 0

        doc = relay.cli_json("status", qid)
        by = {r["address"]: r for r in doc["recipients"]}
        assert [e["type"] for e in by["ok@d.test"]["events"]] == ["accepted", "delivered", "complained"]
        bounced = by["unknown@d.test"]["events"][-1]
        assert bounced["type"] == "bounced" and bounced["bounce_type"] == "invalid_address"
        assert "user unknown" in bounced["smtp_response"] and bounced["mx"].startswith("127.0.0.1[")
        later = by["later@d.test"]["events"][-1]
        assert later["type"] == "deferred" and later["next_attempt_at"].endswith("Z")
        mine = relay.cli_json("status", "--recipient", "ok@d.test")["messages"]
        assert [m["queue_id"] for m in mine] == [qid]
        assert [e["type"] for e in mine[0]["events"]] == ["accepted", "delivered", "complained"]
        human = relay.cli("status", qid).stdout
        assert "unknown@d.test: bounced" in human and "user unknown" in human
        by_header = relay.cli_json("status", doc["message_id"].strip("<>"))
        assert by_header["id"] == qid                                  # DESIGN: status MESSAGE_ID
        missing = relay.cli("status", "NOSUCHID", check=False)
        assert missing.returncode == 1 and "no message with queue id or Message-ID NOSUCHID" in missing.stderr
        bad_date = relay.cli("stats", "--from", "yesterday", check=False)
        assert bad_date.returncode == 2 and "\"yesterday\" is neither a date like 2026-12-31" in bad_date.stderr
    finally:
        rx.stop()


def test_webhooks_from_the_running_relay(make_relay: Callable[..., Relay], tmp_path: Path) -> None:
    from smtprelay.events.webhooks import verify
    from tests.test_webhooks_clock import Endpoint
    rx = Receiver(tmp_path).start()
    hooks = Endpoint(tmp_path)
    try:
        relay = make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{rx.port}"}}}).start()
        bad = relay.cli("webhook", "set", "ftp://127.0.0.1/x", "--account", "apps", check=False)
        assert bad.returncode == 2 and "must be http:// or https://" in bad.stderr   # bad usage (was 1)
        doc = relay.cli_json("webhook", "set", f"http://127.0.0.1:{hooks.port}/cb", "--account", "apps")
        assert doc["secret"].startswith("whsec_")
        assert relay.cli_json("webhook", "list")["webhooks"][0]["url"].endswith("/cb")
        qid = send(relay, ["friend@d.test"])
        wait_for(lambda: len(hooks.posts()) == 2)
        bodies = [json.loads(p["body"]) for p in hooks.posts()]
        assert [(b["type"], b["queue_id"], b["recipient"]) for b in bodies] == [
            ("accepted", qid, "friend@d.test"), ("delivered", qid, "friend@d.test")]
        for p in hooks.posts():
            header = p["headers"]["X-Smtprelay-Signature"]
            assert verify(header, p["body"].encode(), doc["secret"], time.time())
        rotated = relay.cli_json("webhook", "secret", "--account", "apps", "--rotate")["secret"]
        send(relay, ["second@d.test"])
        wait_for(lambda: len(hooks.posts()) == 4)
        header = hooks.posts()[-1]["headers"]["X-Smtprelay-Signature"]
        body = hooks.posts()[-1]["body"].encode()
        assert verify(header, body, rotated, time.time()) and verify(header, body, doc["secret"], time.time())
        assert relay.metric("smtprelay_webhook_deliveries_total", 'result="delivered"') == 4.0
        assert relay.cli_json("webhook", "failures")["failures"] == []
    finally:
        hooks.stop()
        rx.stop()
