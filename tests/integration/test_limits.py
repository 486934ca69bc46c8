"""Sending limits and the blocklist against a running relay, as tenants meet them."""
from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smtprelay.events.feedback import record_feedback
from tests.mailservers import Receiver, port_free_on
from tests.support import Relay, client_tls, free_port

MSG = b"From: app@apps.example\r\nSubject: limits\r\n\r\nhi\r\n"


def wait_for(predicate: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)  # polling the running relay


def rcpt_reply(relay: Relay, rcpt: str, sender: str = "app@apps.example",
               login: tuple[str, str] | None = None) -> tuple[int, bytes]:
    """One transaction: the trusted listener (account apps), or AUTH over STARTTLS with `login`."""
    with smtplib.SMTP("127.0.0.1", relay.starttls_port if login else relay.trusted_port, local_hostname="app.test",
                      timeout=10) as s:
        if login:
            s.starttls(context=client_tls())
            s.login(*login)
        s.ehlo()
        s.mail(sender)
        code, reply = s.rcpt(rcpt)
        if code == 250:
            s.data(f"From: {sender}\r\nSubject: x\r\n\r\nhi\r\n".encode())
        return code, reply


def limited(make_relay: Callable[..., Relay], **limits: Any) -> Relay:
    base = {"recipient_hourly_cap": 10, "account_daily_quota": 500, "account_rate_per_second": 1000.0}
    base.update(limits)
    # Recipients go to a port where nothing listens: delivery defers and never bounces.
    return make_relay({"limits": base, "delivery": {"routes": {"*": f"127.0.0.1:{free_port()}"}}})


def test_50_concurrent_sessions_to_one_address_yield_exactly_10(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = limited(make_relay)
    relay.cli("account", "add", "acme")
    cred = relay.cli_json("credential", "add", "acme")
    relay.start()
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def session() -> None:
        with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=30) as s:
            s.ehlo()
            s.mail("app@apps.example")
            barrier.wait()  # every session reaches RCPT together
            code, reply = s.rcpt("Popular@Target.Example")
            if code == 250:
                code, reply = s.data(MSG)
            with lock:
                results.append((code, reply))
    threads = [threading.Thread(target=session) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(1 for c, _ in results if c == 250) == 10
    refused = [r for c, r in results if c != 250]
    assert len(refused) == 40 and all(r.startswith(b"4.7.1 Recipient Popular@target.example has already been sent "
                                                   b"10 messages") and b"try again after" in r for r in refused)
    # Another account has its own cap for the same address.
    assert rcpt_reply(relay, "Popular@target.example", "a@example.com", (cred["username"], cred["password"]))[0] == 250
    assert relay.metric("smtprelay_recipients_rejected_total", 'reason="recipient_hourly_cap"') == 40


def test_reservations_come_back_on_reset_and_disconnect(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = limited(make_relay, recipient_hourly_cap=1).start()
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        s.mail("app@apps.example")
        assert s.rcpt("one@target.example")[0] == 250
        assert rcpt_reply(relay, "one@target.example")[0] == 450     # held by the open transaction
        s.rset()
        assert rcpt_reply(relay, "one@target.example")[0] == 250     # released by RSET, then used
    assert rcpt_reply(relay, "two@target.example")[0] == 250
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        s.mail("app@apps.example")
        assert s.rcpt("three@target.example")[0] == 250
        s.close()  # the client goes away without QUIT
    wait_for(lambda: rcpt_reply(relay, "three@target.example")[0] == 250)


def test_daily_quota_and_rate(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = limited(make_relay)
    relay.start()
    relay.cli("account", "set", "apps", "--daily-quota", "3")
    time.sleep(1.2)  # the running server re-reads accounts every second (the contract is 2 s)
    codes = [rcpt_reply(relay, f"q{i}@target.example") for i in range(4)]
    assert [c for c, _ in codes] == [250, 250, 250, 454]
    assert codes[3][1].startswith(b"4.7.0 Throttling failure: Daily message quota exceeded (3 recipients")
    relay.cli("account", "set", "apps", "--daily-quota", "1000", "--rate", "2")
    time.sleep(1.2)
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        s.mail("app@apps.example")
        replies = [s.rcpt(f"fast{i}@target.example") for i in range(4)]
    assert [c for c, _ in replies][:2] == [250, 250]
    assert replies[2] == (454, b"4.7.0 Throttling failure: Maximum sending rate exceeded (2 recipients per second)")


def test_hard_bounce_blocks_globally_allow_and_removal_rules(make_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rx = Receiver(tmp_path, "127.0.0.1", None, "--rcpt-reply", "ghost=550 5.1.1 User unknown").start()
    try:
        relay = make_relay({"delivery": {"routes": {"target.example": f"127.0.0.1:{rx.port}",
                                                    "*": f"127.0.0.1:{free_port()}"}}}).start()
        assert rcpt_reply(relay, "ghost@target.example")[0] == 250     # apps' mail bounces: 5.1.1
        wait_for(lambda: any(e["type"] == "invalid" for e in relay.cli_json("blocklist", "list")["entries"]))
        entry = relay.cli_json("blocklist", "list", "--origin", "apps")["entries"][0]
        assert entry["address"] == "ghost@target.example" and entry["origin_account"] == "apps"
        assert entry["expires_at"] is not None and "5.1.1" in entry["reason"]
        wait_for(lambda: rcpt_reply(relay, "ghost@target.example")[0] == 550, seconds=5)
        code, reply = rcpt_reply(relay, "ghost@target.example")
        assert code == 550 and reply.startswith(b"5.1.1 Recipient ghost@target.example is on the blocklist "
                                                b"(type invalid")
        assert relay.metric("smtprelay_recipients_rejected_total", 'reason="blocklist_invalid"') >= 1
        # acme may not remove apps' invalid entry, only allow it for itself.
        refused = relay.cli("blocklist", "remove", "ghost@target.example", "--account", "acme", check=False)
        assert refused.returncode == 1 and "only the account whose mail bounced" in refused.stderr
        relay.cli("blocklist", "allow", "ghost@target.example", "--account", "acme")
        check = relay.cli_json("blocklist", "check", "ghost@target.example", "--account", "acme",
                               "--sender-domain", "example.com")
        assert check["blocked"] is False and check["allowed"] is True
        check = relay.cli_json("blocklist", "check", "ghost@target.example", "--account", "apps",
                               "--sender-domain", "apps.example")
        assert check["blocked"] is True and check["reply"].startswith("550 5.1.1")
        # The origin account may remove it.
        relay.cli("blocklist", "remove", "ghost@target.example", "--account", "apps")
        wait_for(lambda: rcpt_reply(relay, "nobody-else@target.example")[0] == 250)
        wait_for(lambda: relay.cli_json("blocklist", "list")["entries"] == [] or
                 all(e["address"] != "ghost@target.example" for e in relay.cli_json("blocklist", "list")["entries"]))
    finally:
        rx.stop()


def test_full_inbox_auto_block(make_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rx = Receiver(tmp_path, "127.0.0.1", None, "--rcpt-reply", "full=452 4.2.2 Mailbox full").start()
    try:
        relay = make_relay({"blocklist": {"auto_block_full_inbox": True, "full_inbox_failures": 2},
                            "delivery": {"routes": {"*": f"127.0.0.1:{rx.port}"}}}).start()
        for _ in range(2):
            assert rcpt_reply(relay, "full@target.example")[0] == 250
        wait_for(lambda: any(e["type"] == "full_inbox" for e in relay.cli_json("blocklist", "list")["entries"]))
        wait_for(lambda: rcpt_reply(relay, "full@target.example")[0] == 550, seconds=5)
        code, reply = rcpt_reply(relay, "full@target.example")
        assert reply.startswith(b"5.7.1 Recipient full@target.example is on the blocklist (type full_inbox")
    finally:
        rx.stop()


def test_reject_entries_from_feedback_are_scoped_to_the_sender_domain(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{free_port()}"}}})
    relay.start()
    relay.seed_sender("apps", "news.example", ("app@news.example",))
    # Feed an unsubscribe directly, as the events side will (issue 7).
    with relay.db() as conn:
        record_feedback(conn, time.time(), 2, "apps.example", "Reader@Target.Example", "unsubscribe")
    wait_for(lambda: rcpt_reply(relay, "Reader@target.example")[0] == 550)
    code, reply = rcpt_reply(relay, "Reader@target.example")
    assert reply.startswith(b"5.7.1 Recipient Reader@target.example is on the blocklist (type reject")
    wait_for(lambda: rcpt_reply(relay, "Reader@target.example", "app@news.example")[0] == 250)


def test_custom_entries_csv_import_export_and_expiry(make_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    relay = make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{free_port()}"}}}).start()
    relay.cli("blocklist", "add", "boss@target.example", "--account", "apps", "--note", "asked us to stop",
              "--expires", "30d")
    past = relay.cli("blocklist", "add", "x@target.example", "--expires", "2020-01-01", check=False)
    assert past.returncode == 2 and "must be in the future" in past.stderr   # bad usage (was 1)
    wait_for(lambda: rcpt_reply(relay, "boss@target.example")[0] == 550)
    assert rcpt_reply(relay, "boss@target.example")[1].startswith(b"5.7.1 Recipient boss@target.example is on the "
                                                                  b"blocklist (type custom")
    csv_file = tmp_path / "import.csv"
    csv_file.write_text("address,type,account,sender_domain,expires_at,note\n"
                        "one@target.example,custom,apps,,2099-01-01,ok\n"
                        "not an address,custom,,,,\n"
                        "two@target.example,bogus,,,,\n"
                        "three@target.example,custom,nosuchaccount,,,\n"
                        "four@target.example,custom,,,tomorrow-ish,\n"
                        "five@target.example,reject,,apps.example,,\n"
                        "six@target.example,,,,,\n")
    proc = relay.cli("blocklist", "import", str(csv_file), "--json", check=False)
    assert proc.returncode == 1
    doc = __import__("json").loads(proc.stdout)
    assert doc["imported"] == 3
    assert [r["line"] for r in doc["bad_rows"]] == [3, 4, 5, 6]
    assert "not a valid address" in doc["bad_rows"][0]["error"] and "type must be" in doc["bad_rows"][1]["error"]
    assert 'no account named "nosuchaccount"' in doc["bad_rows"][2]["error"]
    exported = relay.cli("blocklist", "export").stdout.splitlines()
    assert exported[0] == "address,type,account,sender_domain,expires_at,note"
    assert {line.split(",")[0] for line in exported[1:]} == {"boss@target.example", "one@target.example",
                                                            "five@target.example", "six@target.example"}
    assert relay.cli_json("blocklist", "list", "--type", "reject")["entries"][0]["sender_domain"] == "apps.example"


def test_blocklist_set_bulk_remove_import_defaults_export_accounts_and_notes(make_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 23, item 9, through the CLI against a running relay."""
    relay = make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{free_port()}"}}}).start()
    relay.cli("blocklist", "add", "boss@target.example", "--account", "apps", "--expires", "30d", "--note", "asked")
    again = relay.cli("blocklist", "add", "boss@target.example", "--account", "apps", check=False)
    assert again.returncode == 1 and "blocklist set" in again.stderr                   # no second row
    changed = relay.cli_json("blocklist", "set", "boss@target.example", "--expires", "never", "--note", "forever")
    assert [(e["expires_at"], e["note"]) for e in changed["entries"]] == [(None, "forever")]
    assert len(relay.cli_json("blocklist", "list", "--address", "boss@target.example")["entries"]) == 1
    assert "forever" in relay.cli("blocklist", "list").stdout                          # notes are shown
    assert "note: forever" in relay.cli("blocklist", "check", "boss@target.example", "--account", "apps").stdout
    relay.cli("blocklist", "set", "boss@target.example", "--expires", "2d")
    until = relay.cli_json("blocklist", "list", "--address", "boss@target.example")["entries"][0]["expires_at"]
    assert until is not None and until > __import__("time").strftime("%Y-%m-%dT%H:%M:%SZ", __import__("time").gmtime())

    # Entries apps' mail triggered (invalid and reject rows), imported as a CSV: an invalid row
    # without an expiry gets blocklist.invalid_address_days; reject rows keep their account.
    csv_file = tmp_path / "triggered.csv"
    csv_file.write_text("address,type,account,sender_domain,expires_at,note\n"
                        "gone1@target.example,invalid,apps,,,\n"
                        "gone2@target.example,invalid,apps,,,\n"
                        "quit@target.example,reject,apps,apps.example,,unsubscribed\n")
    assert relay.cli_json("blocklist", "import", str(csv_file))["imported"] == 3
    invalid = relay.cli_json("blocklist", "list", "--type", "invalid")["entries"]
    assert all(e["expires_at"] and e["origin_account"] == "apps" for e in invalid) and len(invalid) == 2
    exported = {line.split(",")[0]: line for line in relay.cli("blocklist", "export").stdout.splitlines()[1:]}
    assert exported["quit@target.example"].startswith("quit@target.example,reject,apps,apps.example,")
    bulk = relay.cli_json("blocklist", "remove", "--origin", "apps", "--type", "invalid")
    assert bulk["removed"] == 2 and relay.cli_json("blocklist", "list", "--type", "invalid")["entries"] == []
    assert "1 entry removed" in relay.cli("blocklist", "remove", "--origin", "apps", "--type", "reject").stdout
    both = relay.cli("blocklist", "remove", "boss@target.example", "--origin", "apps", check=False)
    assert both.returncode == 2 and "not both" in both.stderr


def test_explain_shows_every_policy_and_the_verdict(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = limited(make_relay, recipient_hourly_cap=2).start()
    for _ in range(2):
        assert rcpt_reply(relay, "fan@target.example")[0] == 250
    doc = relay.cli_json("explain", "--account", "apps", "--from", "app@apps.example", "--to", "fan@target.example")
    by_name = {p["policy"]: p for p in doc["policies"]}
    assert by_name["sender domain"]["status"] == "verified" and by_name["sender domain"]["owner"] == "this account"
    assert by_name["sender address"]["registered"] is True
    assert by_name["recipient hourly cap"]["used"] == 2 and by_name["recipient hourly cap"]["remaining"] == 0
    assert by_name["account daily quota"]["used"] == 2 and by_name["account daily quota"]["quota"] == 500
    assert by_name["account rate"]["per_second"] == 1000.0
    assert doc["accepted"] is False and doc["verdict"].startswith("450 4.7.1 ")
    assert rcpt_reply(relay, "fan@target.example")[1].decode() == doc["verdict"][4:]  # the server agrees
    other = relay.cli_json("explain", "--account", "apps", "--from", "app@apps.example", "--to", "new@target.example")
    assert other["accepted"] is True
    foreign = relay.cli_json("explain", "--account", "apps", "--from", "a@example.com", "--to", "new@target.example")
    assert foreign["verdict"].startswith("550 5.7.1 Sender domain example.com is not a sending domain")
    human = relay.cli("explain", "--account", "apps", "--from", "app@apps.example", "--to", "fan@target.example")
    assert "recipient hourly cap:" in human.stdout and "verdict: 450 4.7.1" in human.stdout
    # Words, not Python values (issue 23, item 17).
    for literal in (": None", ": True", ": False", ": []", ": {}", "'"):
        assert literal not in human.stdout, literal


def test_levels_are_visible_in_account_list(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = make_relay({"reputation": {"levels": [5, 50, 500]}, "limits": {"account_daily_quota": 500}})
    relay.cli("account", "add", "fresh")
    accounts = {a["name"]: a for a in relay.cli_json("account", "list")["accounts"]}
    assert accounts["fresh"]["level"] == 0 and accounts["fresh"]["daily_quota"] == 5
    assert accounts["fresh"]["quota_source"] == "reputation level"
    text = relay.cli("account", "list").stdout
    assert "LEVEL" in text.splitlines()[0]
    # The rule is printed with the list (issue 23, item 10), and is in the JSON too.
    assert "reputation levels (recipients per day): 5 → 50 → 500" in text and "moves up one" in " ".join(text.split())
    assert relay.cli_json("account", "list")["reputation"]["levels"] == [5, 50, 500]
