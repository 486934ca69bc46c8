"""Recipient groups and sending tasks (issue 17), through the running relay and a real receiving
server: a 2 000-row group sent now arrives as 2 000 personalised messages, each To: only its
recipient and DKIM-valid; a daily quota of 500 pauses the task with its resume time and the
(file-injected) clock resumes it — exactly 2 000, none twice, an operator's pause survives the
automatic resume; kill -9 mid-task loses no row and makes none twice; a task every day runs
three times over three simulated days, and a run still going when the next is due is not
overlapped; the blocklist and an unverified sender apply to every row; bad CSVs are reported
by line; the admin API takes a multipart upload."""
from __future__ import annotations

import email
import email.policy
import functools
import json
import shutil
import sqlite3
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from dns.resolver import Resolver

from tests.dnsserver import DnsServer
from tests.integration.test_admin_api import call
from tests.integration.test_delivery import wait_for
from tests.integration.test_domains import VERIFIER, independent_verify, publish_domain
from tests.mailservers import Receiver
from tests.support import Relay

HTML = "<html><body><p>Hello {{first_name}},</p><p>your code is {{code}}.</p></body></html>"
DAY = 86400


def group_csv(tmp: Path, n: int, name: str = "list.csv", start: int = 0) -> Path:
    path = tmp / name
    with path.open("w", encoding="utf-8") as f:
        f.write("email,first_name,code\n")
        for i in range(start, start + n):
            f.write(f"user{i}@d.test,Üser {i},C{i:05d}\n")
    return path


def prepare(relay: Relay, tmp: Path, rows: int, account: str = "acme") -> None:
    """A group `list` of `rows` rows and a template `hello` in the account (made if missing)."""
    if relay.cli("account", "list", "--json").stdout.count(f'"name": "{account}"') == 0:
        relay.cli("account", "add", account)
    relay.cli("group", "add", account, "list", "--csv", str(group_csv(tmp, rows)))
    (tmp / "hello.html").write_text(HTML)
    relay.cli("template", "add", account, "hello", "--html", str(tmp / "hello.html"), "--subject",
              "Hi {{first_name}}")


def task(relay: Relay, task_id: int = 1) -> dict[str, Any]:
    return relay.cli_json("task", "show", str(task_id))  # type: ignore[no-any-return]


def run_counts(relay: Relay, task_id: int = 1) -> dict[int, dict[str, Any]]:
    return {r["run"]: r for r in task(relay, task_id)["runs"]}


def by_recipient(receiver: Receiver) -> Counter[str]:
    return Counter(r for t in receiver.transactions() for r in t["rcpts"])


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    rx = Receiver(tmp_path).start()
    yield rx
    rx.stop()


def relay_to(make_relay: Callable[..., Relay], receiver: Receiver, **sections: Any) -> Relay:
    return make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{receiver.port}"}},
                       # the fake clock jumps days: no re-verification against the test's silent DNS
                       "domains": {"recheck_interval": "3650d", "grace": "3650d"}, **sections})


@pytest.mark.skipif(shutil.which("dnsmasq") is None or not (VERIFIER.parent / "node_modules").is_dir(),
                    reason="dnsmasq and the mailauth verifier are installed by `make test`")
def test_a_group_of_2000_sent_now_arrives_personalised_once_each_and_signed(
        make_relay: Callable[..., Relay], tmp_path: Path, receiver: Receiver) -> None:
    dns = DnsServer(tmp_path, ("example.com",))
    try:
        relay = make_relay({"server": {"public_ips": ["127.0.0.1"]},
                            "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
                            "delivery": {"routes": {"*": f"127.0.0.1:{receiver.port}"}}}, seed=False)
        relay.cli("account", "add", "acme")
        relay.cli("domain", "add", "acme", "example.com")
        relay.cli("address", "add", "news@example.com")
        publish_domain(relay, dns, "example.com")
        relay.cli("domain", "verify", "example.com")
        prepare(relay, tmp_path, 2000)
        relay.start()
        added = relay.cli_json("task", "add", "acme", "--group", "list", "--template", "hello", "--from",
                               "News <news@example.com>", "--tag", "launch", "--now")
        assert added["type"] == "now" and added["group"]["name"] == "list"

        wait_for(lambda: len(receiver.transactions()) >= 2000, 120)
        transactions = receiver.transactions()
        assert len(transactions) == 2000
        assert all(len(t["rcpts"]) == 1 for t in transactions)
        assert len({t["rcpts"][0] for t in transactions}) == 2000           # 2 000 distinct recipients

        host, port = dns.nameserver.split(":")
        resolver = Resolver(configure=False)
        resolver.nameservers, resolver.port = [host], int(port)

        @functools.lru_cache(maxsize=None)
        def txt(name: bytes, timeout: int = 5) -> bytes:
            return b"".join(resolver.resolve(name.decode(), "TXT")[0].strings)
        for t in transactions:
            rcpt = t["rcpts"][0]
            i = int(rcpt[4:rcpt.index("@")])
            msg = email.message_from_bytes(t["data"], policy=email.policy.default)
            assert msg["To"] == rcpt and msg["Cc"] is None                 # only themselves
            assert msg["Subject"] == f"Hi Üser {i}" and msg["From"] == "News <news@example.com>"
            assert f"your code is C{i:05d}." in msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
            assert dkim.DKIM(t["data"]).verify(dnsfunc=txt), rcpt
        for t in transactions[:2]:          # and a verifier that is not dkimpy
            assert [line.split()[0] for line in independent_verify(dns, t["data"])] == ["pass"]

        wait_for(lambda: run_counts(relay)[1]["delivered"] == 2000, 30)
        doc = task(relay)
        assert doc["status"] == "finished" and doc["progress"] == 100.0
        run = doc["runs"][0]
        assert (run["requested"], run["accepted"], run["rejected"], run["delivered"]) == (2000, 2000, 0, 2000)
        assert relay.metric("smtprelay_task_recipients_total", 'result="accepted"') == 2000
        assert relay.metric("smtprelay_tasks", 'status="finished"') == 1
        # Events (and so webhooks and statistics) carry the task and its run.
        stats = relay.cli_json("stats", "--task", "1", "--run", "1")["days"]
        assert sum(r["accepted"] for r in stats) == 2000 and {r["tag"] for r in stats} == {"launch"}
        from smtprelay.events.webhooks import event_documents
        with sqlite3.connect(relay.data_dir / "relay.db") as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM events WHERE type = 'delivered' LIMIT 3")]
            docs = event_documents(conn, ids)
        assert {(d["task"], d["run"], d["template"]["name"]) for d in docs.values()} == {(1, 1, "hello")}
    finally:
        dns.stop()


def test_the_daily_quota_pauses_a_task_and_it_resumes_when_the_window_has_room(
        make_relay: Callable[..., Relay], tmp_path: Path, receiver: Receiver) -> None:
    relay = relay_to(make_relay, receiver).fake_clock()
    relay.cli("account", "add", "acme", "--daily-quota", "500")
    prepare(relay, tmp_path, 2000)
    relay.start()
    relay.cli("task", "add", "acme", "--group", "list", "--template", "hello", "--from", "a@example.com", "--now")

    for window in range(1, 5):
        wait_for(lambda: task(relay)["shown_status"].startswith("paused (daily quota") or
                 task(relay)["status"] == "finished", 60)
        doc = task(relay)
        run = doc["runs"][0]
        assert run["accepted"] == 500 * window and run["rejected"] == 0, doc
        if window < 4:
            assert doc["status"] == "paused" and "resumes at" in doc["status_detail"], doc
        wait_for(lambda: len(receiver.transactions()) == 500 * window, 30)   # delivered before time jumps
        if window == 2:
            # An operator's pause is never lifted by the automatic resume.
            relay.cli("task", "pause", "1")
            relay.advance(DAY + 120)
            wait_for(lambda: relay.log().count("the daily quota has room again") == 2)
            doc = task(relay)
            assert doc["shown_status"].startswith("paused (by an operator") and doc["runs"][0]["accepted"] == 1000
            assert relay.cli_json("task", "resume", "1")["status"] in ("running", "paused")
        elif window < 4:
            relay.advance(DAY + 120)
        if window < 4:
            wait_for(lambda: task(relay)["runs"][0]["accepted"] > 500 * window, 30)
    assert task(relay)["status"] == "finished"
    counts = by_recipient(receiver)
    assert len(counts) == 2000 and set(counts.values()) == {1}                 # exactly 2 000, none twice
    with relay.db() as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT row) FROM task_rows WHERE result = 'accepted'"
                            ).fetchone() == (2000, 2000)
        # Nothing was refused for the quota: the runner asked the gate before each row.
        assert conn.execute("SELECT count(*) FROM events WHERE type = 'rejected'").fetchone()[0] == 0


def test_kill_9_in_the_middle_of_a_task_loses_no_row_and_sends_none_twice(
        make_relay: Callable[..., Relay], tmp_path: Path, receiver: Receiver) -> None:
    relay = relay_to(make_relay, receiver)
    relay.cli("account", "add", "acme", "--rate", "250")       # about 12 s for the whole task
    prepare(relay, tmp_path, 3000)
    relay.start()
    relay.cli("task", "add", "acme", "--group", "list", "--template", "hello", "--from", "a@example.com", "--now")

    def accepted() -> int:
        with relay.db() as conn:
            return int(conn.execute("SELECT count(*) FROM task_rows").fetchone()[0])
    wait_for(lambda: accepted() >= 600, 60)
    relay.kill()
    at_kill = accepted()
    assert at_kill < 3000, "the task finished before the kill; slow it down"
    relay.start()
    wait_for(lambda: task(relay)["status"] == "finished", 90)
    assert "task 1 run 1: continuing after row" in relay.log()
    with relay.db() as conn:
        # One message per row, each row once.
        assert conn.execute("SELECT count(*), count(DISTINCT row) FROM task_rows WHERE result = 'accepted'"
                            ).fetchone() == (3000, 3000)
        per_address = conn.execute("SELECT r.address, count(*) FROM messages m JOIN recipients r ON"
                                   " r.message_id = m.id WHERE m.task_id = 1 GROUP BY r.address").fetchall()
    assert len(per_address) == 3000 and {n for _, n in per_address} == {1}
    wait_for(lambda: len(by_recipient(receiver)) == 3000, 60)
    # Delivery is at-least-once across SIGKILL (a delivery in flight may be repeated), but a
    # repeat is the same queued message — never a second message for a row.
    seen: dict[str, set[str]] = {}
    for t in receiver.transactions():
        msg = email.message_from_bytes(t["data"], policy=email.policy.default)
        seen.setdefault(t["rcpts"][0], set()).add(str(msg["Message-ID"]))
    assert len(seen) == 3000 and all(len(ids) == 1 for ids in seen.values())


def test_a_recurring_task_runs_every_day_and_a_late_run_waits_for_the_one_before(
        make_relay: Callable[..., Relay], tmp_path: Path, receiver: Receiver) -> None:
    relay = relay_to(make_relay, receiver).fake_clock()
    relay.cli("account", "add", "acme", "--rate", "3")     # a run takes 4 s: time to pause one
    prepare(relay, tmp_path, 12)
    relay.start()
    added = relay.cli_json("task", "add", "acme", "--group", "list", "--template", "hello", "--from",
                           "a@example.com", "--at", "1h", "--every", "1d")
    assert added["type"] == "recurring" and added["status"] == "scheduled" and added["every_days"] == 1
    assert added["runs"] == []
    relay.advance(3600 + 5)
    for n in (1, 2, 3):
        wait_for(lambda: n in run_counts(relay) and run_counts(relay)[n]["status"] == "finished", 30)
        wait_for(lambda: len(receiver.transactions()) == 12 * n, 30)
        assert task(relay)["status"] == "scheduled"
        if n < 3:
            relay.advance(DAY)
    runs = run_counts(relay)
    assert sorted(runs) == [1, 2, 3] and all(r["accepted"] == 12 for r in runs.values())
    assert set(by_recipient(receiver).values()) == {3}          # every row once per run

    # Run 4 is paused by an operator while it runs; run 5 falls due meanwhile and waits.
    relay.advance(DAY)
    wait_for(lambda: 4 in run_counts(relay) and run_counts(relay)[4]["requested"] >= 1, 30)
    relay.cli("task", "pause", "1")
    relay.advance(DAY)
    relay.wait_for_log("task 1: run 5 is due but run 4 has not finished; it waits for it")
    assert sorted(run_counts(relay)) == [1, 2, 3, 4] and run_counts(relay)[4]["status"] == "running"
    relay.cli("task", "resume", "1")
    wait_for(lambda: 5 in run_counts(relay) and run_counts(relay)[5]["status"] == "finished", 60)
    runs = run_counts(relay)
    assert runs[4]["status"] == "finished" and runs[4]["finished_at"] <= runs[5]["started_at"]
    assert [runs[n]["accepted"] for n in range(1, 6)] == [12] * 5
    wait_for(lambda: len(receiver.transactions()) == 60, 30)
    assert set(by_recipient(receiver).values()) == {5}


def test_every_row_meets_the_blocklist_and_the_sender_policy(
        make_relay: Callable[..., Relay], tmp_path: Path, receiver: Receiver) -> None:
    relay = relay_to(make_relay, receiver)
    prepare(relay, tmp_path, 30)
    relay.cli("blocklist", "add", "user7@d.test", "--note", "asked us")   # (a running gate sees it within 2 s)
    relay.start()
    relay.cli("task", "add", "acme", "--group", "list", "--template", "hello", "--from", "a@example.com", "--now")
    wait_for(lambda: task(relay)["status"] == "finished", 30)
    run = task(relay)["runs"][0]
    assert (run["requested"], run["accepted"], run["rejected"]) == (30, 29, 1)
    wait_for(lambda: len(receiver.transactions()) == 29)
    assert "user7@d.test" not in by_recipient(receiver)
    follow = relay.cli("task", "show", "1", "--follow")      # the run is over: the bar ends at once
    assert "finished" in follow.stdout and "100%" in follow.stdout
    with relay.db() as conn:
        assert conn.execute("SELECT reply FROM task_rows WHERE result = 'rejected'").fetchone()[0].startswith("550 5.7.1")
        wait_for(lambda: conn.execute("SELECT task_id, task_run FROM events WHERE type = 'rejected'").fetchall()
                 == [(1, 1)])

    # A sender domain that is not verified: the task waits, saying why, and goes on once it is.
    relay.seed_sender("acme", "other.example", ("b@other.example",))
    with relay.db() as conn:
        conn.execute("UPDATE domains SET status = 'pending', verified_at = NULL WHERE name = 'other.example'")
    relay.cli("task", "add", "acme", "--group", "list", "--template", "hello", "--from", "b@other.example", "--now")
    wait_for(lambda: task(relay, 2)["status"] == "paused", 30)
    doc = task(relay, 2)
    assert "sender refused: 550 5.7.1" in doc["status_detail"] and doc["runs"][0]["accepted"] == 0
    with relay.db() as conn:
        conn.execute("UPDATE domains SET status = 'verified', verified_at = 1 WHERE name = 'other.example'")
    wait_for(lambda: task(relay, 2)["status"] == "finished", 60)
    assert task(relay, 2)["runs"][0]["accepted"] == 29


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
    for name, (filename, content) in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                f"Content-Type: text/csv\r\n\r\n").encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(relay: Relay, fields: dict[str, str], csv: bytes) -> tuple[int, Any]:
    body, content_type = multipart(fields, {"csv": ("list.csv", csv)})
    req = urllib.request.Request(f"http://127.0.0.1:{relay.http_port}/api/v1/groups", data=body, method="POST",
                                 headers={"Content-Type": content_type, "Authorization": "Bearer s3cret-token"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


BAD = ("email,first_name,code\n"
       "ok1@d.test,A,1\n"
       "not-an-address,B,2\n"
       "ok2@d.test,C\n"
       "OK1@d.test,D,4\n").encode() + b"ok3@d.test,\xff\xfe,5\n" + b"ok4@d.test,F,6\n"


def test_groups_report_bad_rows_by_line_and_tasks_check_what_they_need(
        make_relay: Callable[..., Relay], tmp_path: Path) -> None:
    relay = make_relay({"http": {"admin_token": "s3cret-token"}, "batch": {"max_group_size": 3}})
    relay.start()
    (tmp_path / "bad.csv").write_bytes(BAD)
    proc = relay.cli("group", "add", "acme", "news", "--csv", str(tmp_path / "bad.csv"), check=False)
    assert proc.returncode == 2
    for line, text in ((3, "\"not-an-address\" is not a valid address"), (4, "has 2 columns, the header has 3"),
                       (5, "OK1@d.test is a duplicate of line 2"), (6, "is not UTF-8 text")):
        assert f"line {line}: {text}" in proc.stderr, proc.stderr
    assert "nothing was imported" in proc.stderr and relay.cli_json("group", "list")["groups"] == []

    skipped = relay.cli_json("group", "add", "acme", "news", "--csv", str(tmp_path / "bad.csv"), "--skip-invalid")
    assert skipped["size"] == 2 and [p["line"] for p in skipped["skipped_rows"]] == [3, 4, 5, 6]
    assert [r["email"] for r in relay.cli_json("group", "show", "news")["rows"]] == ["ok1@d.test", "ok4@d.test"]

    (tmp_path / "big.csv").write_text("\ufeffEMAIL,code\n" + "".join(f"u{i}@d.test,{i}\n" for i in range(5)))
    proc = relay.cli("group", "add", "acme", "big", "--csv", str(tmp_path / "big.csv"), check=False)
    assert proc.returncode == 2 and "line 5: the group would have more than 3 rows" in proc.stderr
    assert "line 6: the group would have more than 3 rows" in proc.stderr
    (tmp_path / "none.csv").write_text("address,code\nu@d.test,1\n")
    proc = relay.cli("group", "add", "acme", "none", "--csv", str(tmp_path / "none.csv"), check=False)
    assert proc.returncode == 2 and "line 1: the header has no \"email\" column" in proc.stderr
    (tmp_path / "sample.csv").write_text(relay.cli("group", "sample").stdout)   # the sample imports
    assert relay.cli_json("group", "add", "acme", "sample", "--csv", str(tmp_path / "sample.csv"))["size"] == 2

    # A task needs every template variable as a column or in --data.
    (tmp_path / "t.html").write_text("<p>{{first_name}} {{plan}} {{coupon.code}}</p>")
    relay.cli("template", "add", "acme", "promo", "--html", str(tmp_path / "t.html"), "--subject", "Hi")
    proc = relay.cli("task", "add", "acme", "--group", "news", "--template", "promo", "--from", "a@example.com",
                     "--now", check=False)
    assert proc.returncode == 2 and "uses variables plan, coupon.code that group news has no column for" \
        in proc.stderr, proc.stderr
    proc = relay.cli("task", "add", "acme", "--group", "news", "--template", "promo", "--from", "a@example.com",
                     "--at", "2020-01-01T00:00:00Z", "--data", '{"plan": "x", "coupon": {"code": "Y"}}', check=False)
    assert proc.returncode == 2 and "is in the past" in proc.stderr
    doc = relay.cli_json("task", "add", "acme", "--group", "news", "--template", "promo", "--from",
                         "a@example.com", "--at", "2031-06-01T09:00 Europe/Paris", "--data",
                         '{"plan": "x", "coupon": {"code": "Y"}}')
    assert doc["first_at"] == "2031-06-01T07:00:00Z" and doc["status"] == "scheduled"   # CEST is UTC+2

    # What a pending task uses cannot be deleted; after it is cancelled, it can.
    proc = relay.cli("group", "delete", "news", check=False)
    assert proc.returncode == 1 and "used by task 1" in proc.stderr
    proc = relay.cli("template", "delete", "promo", check=False)
    assert proc.returncode == 1 and "used by task 1" in proc.stderr
    assert relay.cli_json("task", "cancel", "1")["status"] == "cancelled"
    assert relay.cli("task", "resume", "1", check=False).returncode == 1
    relay.cli("group", "delete", "news")
    relay.cli("template", "delete", "promo")

    # The admin API: a multipart upload, the same line numbers, and tasks.
    status, doc = upload(relay, {"account": "acme", "name": "api-list"}, b"email,first_name,code\nz@d.test,Z,9\n")
    assert status == 200 and doc["size"] == 1 and doc["columns"] == ["email", "first_name", "code"]
    status, doc = upload(relay, {"account": "acme", "name": "api-bad"}, BAD)
    assert status == 400 and doc["field"] == "csv" and "line 3:" in doc["error"] and "line 6:" in doc["error"]
    status, doc = upload(relay, {"account": "acme", "name": "api-skip", "skip_invalid": "true"}, BAD)
    assert status == 200 and doc["size"] == 2
    (tmp_path / "h.html").write_text(HTML)
    relay.cli("template", "add", "acme", "hello", "--html", str(tmp_path / "h.html"), "--subject", "Hi")
    status, doc = call(relay, "POST", "/tasks", {"account": "acme", "group": "api-list", "template": "hello",
                                                 "from": "a@example.com", "at": "1d"})
    assert status == 200 and doc["status"] == "scheduled", doc
    status, doc = call(relay, "POST", f"/tasks/{doc['id']}/pause")
    assert status == 200 and doc["shown_status"].startswith("paused (by an operator")
    status, doc = call(relay, "GET", "/tasks/x")
    assert status == 400 and doc["field"] == "id"
    status, doc = call(relay, "GET", "/openapi.json")
    assert "multipart/form-data" in doc["paths"]["/groups"]["post"]["requestBody"]["content"]
    assert relay.metric("smtprelay_tasks", 'status="paused"') >= 0    # the gauge exists
    wait_for(lambda: relay.metric("smtprelay_tasks", 'status="cancelled"') == 1)
