"""Cluster mode, the shared catalog (issue 20): two relay nodes on this machine share one catalog
in a real PostgreSQL (Debian's server, run as the `postgres` user from a data directory of the
test's, on a high port, started once for the module and stopped by PID). Each node mirrors it
into its own store. A domain verified through node 1's CLI (against a real DNS server) signs
and sends from node 2; a blocklist entry made on one node refuses on the other, whether an
operator made it or a bounce did; PostgreSQL stopped → 451 and 503, started → sending resumes."""
from __future__ import annotations

import base64
import os
import shutil
import smtplib
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from smtprelay.cluster.pg_schema import MIGRATIONS
from tests.dnsserver import DnsServer, records_from_cli
from tests.integration.test_cluster import RedisServer, accepting, health, redis, redis_server  # noqa: F401 (fixtures)
from tests.integration.test_limits import MSG, rcpt_reply, wait_for
from tests.mailservers import Receiver
from tests.pgserver import PgServer, binaries
from tests.support import Relay, client_tls, free_port, queued_id

pytestmark = pytest.mark.skipif(binaries() is None or shutil.which("dnsmasq") is None,
                                reason="Debian's postgresql and dnsmasq are installed by `make test`")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    server = PgServer().start()
    yield server
    server.remove()


@pytest.fixture
def pg(pg_server: PgServer) -> PgServer:
    """The module's PostgreSQL, running, with an empty catalog (each test migrates it)."""
    if pg_server.proc is None:
        pg_server.start()
    pg_server.reset()
    return pg_server


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    path.write_text(base64.b64encode(os.urandom(48)).decode() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path, ("example.com",))
    server.publish([])
    yield server
    server.stop()


def node(make_relay: Callable[..., Relay], pg: PgServer, key_file: Path, name: str, dns: DnsServer | None = None,
         route: str | None = None, **cluster: Any) -> Relay:
    conf: dict[str, dict[str, Any]] = {
        "cluster": {"node": name, "postgres": pg.url, "key_file": str(key_file), **cluster},
        "http": {"admin_token": "s3cret-token"},
        "server": {"public_ips": ["127.0.0.1"]},
        "delivery": {"routes": {"*": route or f"127.0.0.1:{free_port()}"}}}
    if dns is not None:
        conf["dns"] = {"nameservers": [dns.nameserver], "timeout": "2s"}
    return make_relay(conf, name=name, seed=False)


def pg_sql(pg: PgServer, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg
    with psycopg.connect(pg.url, autocommit=True) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


def seed_verified(one: Relay, pg: PgServer, account: str, domain: str, address: str) -> None:
    """A verified sender through node 1's CLI; verified by a statement (these tests are not about DNS)."""
    one.cli("account", "add", account, check=False)     # the trusted listener may have made it
    one.cli("domain", "add", account, domain)
    one.cli("address", "add", address)
    pg_sql(pg, "UPDATE domains SET status = 'verified', verified_at = extract(epoch FROM now()),"
           " last_checked_at = extract(epoch FROM now()) WHERE name = %s", domain)


def sending_pair(make_relay: Callable[..., Relay], pg: PgServer, key_file: Path, port: int) -> tuple[Relay, Relay]:
    """Two nodes delivering to 127.0.0.1:port, the catalog migrated, apps.example verified, both sending."""
    one = node(make_relay, pg, key_file, "relay-1", route=f"127.0.0.1:{port}")
    two = node(make_relay, pg, key_file, "relay-2", route=f"127.0.0.1:{port}")
    one.cli("cluster", "migrate")
    one.start()
    two.start()
    seed_verified(one, pg, "apps", "apps.example", "app@apps.example")
    for relay in (one, two):
        wait_for(lambda: rcpt_reply(relay, f"probe-{relay.http_port}@elsewhere.example")[0] == 250, 10)
    return one, two


def test_a_domain_verified_through_node_1_signs_and_sends_from_node_2(make_relay: Callable[..., Relay], pg: PgServer,
                                                                     key_file: Path, dns: DnsServer,
                                                                     tmp_path: Path) -> None:
    sink = Receiver(tmp_path).start()
    try:
        one = node(make_relay, pg, key_file, "relay-1", dns, route=f"127.0.0.1:{sink.port}")
        two = node(make_relay, pg, key_file, "relay-2", dns, route=f"127.0.0.1:{sink.port}")
        migrated = one.cli_json("cluster", "migrate")
        assert (migrated["schema_version_before"], migrated["schema_version"]) == (0, len(MIGRATIONS))
        assert one.cli_json("cluster", "migrate")["schema_version_before"] == len(MIGRATIONS)     # idempotent
        one.start()
        two.start()
        # Everything through node 1's CLI: the account, a credential, the domain and its address.
        one.cli("account", "add", "acme")
        cred = one.cli_json("credential", "add", "acme")
        one.cli("domain", "add", "acme", "example.com")
        one.cli("address", "add", "news@example.com")
        records = one.cli_json("domain", "records", "example.com")
        dns.publish(records_from_cli(records))
        assert [d["status"] for d in two.cli_json("domain", "list")["domains"]] == ["pending"]    # one catalog
        verified = one.cli_json("domain", "verify", "example.com")
        assert verified["status"] == "verified", verified
        started = time.monotonic()

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", two.starttls_port, local_hostname="c.test", timeout=10) as s:
                s.starttls(context=client_tls())
                s.login(cred["username"], cred["password"])
                code, reply = s.docmd("MAIL", "FROM:<news@example.com>")
                if code != 250:
                    return code, reply
                s.rcpt("friend@example.org")
                return s.data(b"From: News <news@example.com>\r\nTo: friend@example.org\r\nSubject: hi\r\n\r\n"
                              b"Hello from node 2.\r\n")
        wait_for(lambda: send()[0] == 250, 10)
        propagation = time.monotonic() - started
        print(f"verified on node 1 -> accepted on node 2 after {propagation:.2f} s")
        assert propagation < 2.5, propagation      # the 2 s, with the probe's own round trip
        wait_for(lambda: any(b"Hello from node 2" in t["data"] for t in sink.transactions()), 15)
        message = next(t["data"] for t in sink.transactions() if b"Hello from node 2" in t["data"])
        # Signed on node 2 with the key node 1 made: unsealed from PostgreSQL into node 2's data_dir.
        selectors = {r["selector"] for r in records.get("dkim", [])} or {
            n.split("._domainkey")[0] for t, n, _ in records_from_cli(records) if "._domainkey" in n}
        txt = {f"{n}.".encode(): v.encode() for t, n, v in records_from_cli(records) if t == "TXT"}
        assert dkim.verify(message, dnsfunc=lambda name, timeout=5: txt.get(name, b"")), message[:600]
        for selector in selectors:
            key = two.data_dir / "dkim" / "example.com" / f"{selector}.key"
            assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
        sealed = pg_sql(pg, "SELECT private_key FROM dkim_keys")
        assert sealed and all(row[0] and b"PRIVATE KEY" not in row[0].encode() for row in sealed)
        # Both nodes report their heartbeat.
        wait_for(lambda: {n["name"] for n in one.cli_json("cluster", "status")["nodes"]
                          if n["state"] == "up"} == {"relay-1", "relay-2"}, 10)

        def in_sync() -> bool:
            status = two.cli_json("cluster", "status")
            return all(n["catalog_version"] == status["catalog_version"] for n in status["nodes"])
        wait_for(in_sync, 10)
        assert "in sync" in two.cli("cluster", "status").stdout
        running = one.cli("cluster", "forget", "relay-2", check=False)
        assert running.returncode == 1 and "stop it first" in running.stderr, running.stderr
        assert "no node named relay-9" in one.cli("cluster", "forget", "relay-9", check=False).stderr
        assert two.metric("smtprelay_cluster_store_latency_seconds_count", 'store="postgres"') > 0
    finally:
        sink.stop()


def test_blocklist_entries_made_on_one_node_refuse_on_the_other(make_relay: Callable[..., Relay], pg: PgServer,
                                                                 key_file: Path, tmp_path: Path) -> None:
    bouncer = Receiver(tmp_path, "127.0.0.1", None, "--rcpt-reply", "gone=550 5.1.1 User unknown").start()
    try:
        one, two = sending_pair(make_relay, pg, key_file, bouncer.port)
        # An operator's entry, through node 2's CLI, refuses on node 1.
        two.cli("blocklist", "add", "blocked@target.example", "--note", "asked to stop")
        wait_for(lambda: rcpt_reply(one, "blocked@target.example")[0] == 550, 3)
        # A hard bounce on node 1 puts the address on node 1's blocklist, and so on node 2's.
        with smtplib.SMTP("127.0.0.1", one.trusted_port, local_hostname="app.test", timeout=10) as s:
            s.sendmail("app@apps.example", ["gone@target.example"], MSG)
        wait_for(lambda: rcpt_reply(one, "gone@target.example")[0] == 550, 20)
        query = ("SELECT type, origin_node FROM blocklist WHERE address = %s", "gone@target.example")
        wait_for(lambda: bool(pg_sql(pg, *query)), 3)       # pushed within a mirror cycle (1 s)
        assert pg_sql(pg, *query) == [("invalid", "relay-1")]

        # node 2's gate holds both entries (the operator's and the bounce's) before it is asked
        wait_for(lambda: two.metric("smtprelay_blocklist_entries") == 2, 3)
        code, reply = rcpt_reply(two, "gone@target.example")   # node 2 never sent there itself
        assert (code, b"type invalid" in reply) == (550, True), reply
        listed = {e["address"] for e in two.cli_json("blocklist", "list")["entries"]}
        assert {"blocked@target.example", "gone@target.example"} <= listed
        # A warm-up day set through node 1 applies to node 2's pair too.
        assert one.cli_json("warmup", "set-day", "apps.example", "gmail", "2")["day"] == 2

        def day_on_two() -> int | None:
            pairs = two.cli_json("warmup", "status", "--sender-domain", "apps.example")["pairs"]
            return next((p["day"] for p in pairs if p["provider"] == "gmail"), None)
        wait_for(lambda: day_on_two() == 2, 3)
        # Removed through node 1: node 2 accepts again.
        one.cli("blocklist", "remove", "gone@target.example")
        wait_for(lambda: rcpt_reply(two, "gone@target.example")[0] == 250, 3)
    finally:
        bouncer.stop()


def test_postgres_stopped_gives_451_and_503_and_sending_resumes_when_it_is_back(
        make_relay: Callable[..., Relay], pg: PgServer, key_file: Path) -> None:
    one = node(make_relay, pg, key_file, "relay-1")
    status = one.cli("account", "list", check=False)       # not migrated yet: the command says what to run
    assert status.returncode != 0 and "smtprelay cluster migrate" in status.stderr, status.stderr
    one.cli("cluster", "migrate")
    one.start()
    seed_verified(one, pg, "apps", "apps.example", "app@apps.example")
    wait_for(lambda: rcpt_reply(one, "a@target.example")[0] == 250, 10)
    pg.stop()
    wait_for(lambda: health(one)[0] == 503, 10)
    code, doc = health(one)
    assert doc["postgres"].startswith("failing"), doc
    code, reply = rcpt_reply(one, "b@target.example")
    assert (code, reply[:5]) == (451, b"4.3.0"), reply
    assert "PostgreSQL is not reachable" in one.log()
    failing = one.cli("account", "list", check=False)
    assert failing.returncode != 0 and "PostgreSQL could not be reached" in failing.stderr, failing.stderr
    # Mail accepted before the outage is still in the node's own spool.
    assert len(one.cli_json("queue", "list")["messages"]) >= 1
    pg.start()
    wait_for(lambda: rcpt_reply(one, "c@target.example")[0] == 250, 15)
    assert health(one)[0] == 200
    assert one.metric("smtprelay_cluster_store_errors_total", 'store="postgres"') >= 1


def test_a_single_node_moves_its_catalog_into_the_cluster(make_relay: Callable[..., Relay], pg: PgServer,
                                                          key_file: Path, tmp_path: Path) -> None:
    """`cluster migrate --import-local`: a single node's accounts, domains and DKIM keys go to
    PostgreSQL with their ids; a second node, empty, then sends as the first did."""
    single = make_relay(name="single")      # seeds apps.example and example.com in its own store
    single.start()
    single.stop()
    single.doc["cluster"] = {"node": "relay-1", "postgres": pg.url, "key_file": str(key_file)}
    single.write_config()
    imported = single.cli_json("cluster", "migrate", "--import-local")
    assert imported["imported"]["accounts"] == 2 and imported["imported"]["domains"] == 2, imported
    single.start()
    two = node(make_relay, pg, key_file, "relay-2")
    two.start()
    wait_for(lambda: rcpt_reply(two, "x@target.example")[0] == 250, 10)
    assert (two.data_dir / "dkim" / "apps.example").is_dir()
    again = single.cli("cluster", "migrate", "--import-local", check=False)
    assert again.returncode != 0 and "already has accounts" in again.stderr, again.stderr


def test_stats_and_status_answer_for_the_whole_cluster(make_relay: Callable[..., Relay], pg: PgServer,
                                                       key_file: Path, tmp_path: Path) -> None:
    """Each node forwards its events to PostgreSQL: `stats` and `status` on node 1 count and find
    node 2's mail too."""
    sink = Receiver(tmp_path).start()
    try:
        one, two = sending_pair(make_relay, pg, key_file, sink.port)
        ids = {}
        for relay, n in ((one, 2), (two, 3)):
            for i in range(n):
                with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
                    s.ehlo()
                    s.mail("app@apps.example")
                    s.rcpt("Reader@Target.Example")
                    code, reply = s.data(MSG)
                    assert code == 250
                    ids.setdefault(relay.doc["cluster"]["node"], []).append(queued_id(reply))

        def delivered_everywhere() -> bool:
            rows = one.cli_json("stats", "--recipient-domain", "target.example")["days"]
            return sum(r["delivered"] for r in rows) == 5
        wait_for(delivered_everywhere, 15)
        rows = one.cli_json("stats", "--recipient-domain", "target.example")["days"]
        assert sum(r["accepted"] for r in rows) == 5 and sum(r["requests"] for r in rows) == 5, rows
        # The quota used in 24 h (GET /usage, the console's overview) counts both nodes' mail.
        from tests.integration.test_admin_api import call
        everything = sum(r["accepted"] for r in one.cli_json("stats")["days"])
        status, usage = call(one, "GET", "/usage")
        assert status == 200 and {u["account"]: u["used_24h"] for u in usage["usage"]}["apps"] == everything >= 7
        # Node 2's message, asked on node 1: its node, its state, its events.
        doc = one.cli_json("status", ids["relay-2"][0])
        assert (doc["node"], doc["from"], doc["account"]) == ("relay-2", "app@apps.example", "apps"), doc
        assert [r["state"] for r in doc["recipients"]] == ["delivered"], doc
        assert [e["type"] for e in doc["recipients"][0]["events"]] == ["accepted", "delivered"], doc
        human = one.cli("status", ids["relay-2"][0]).stdout
        assert "on node relay-2" in human and "Reader@target.example: delivered" in human, human
        # A node's own message still comes from its store, with the attempt's details.
        mine = one.cli_json("status", ids["relay-1"][0])
        assert "node" not in mine and mine["recipients"][0]["history"], mine
        by_address = one.cli_json("status", "--recipient", "Reader@target.example")["messages"]
        assert sorted(m["queue_id"] for m in by_address) == sorted(ids["relay-1"] + ids["relay-2"])
        # A template made through node 1 renders in node 2's send API; stats name it everywhere.
        from tests.integration.test_templates import add_template, api
        template = add_template(one, tmp_path, account="apps", name="welcome", subject="Hi {{name}}")
        cred = one.cli_json("credential", "add", "apps")

        def sent() -> bool:
            status, doc, _ = api(two, {"from": "app@apps.example", "to": ["fan@target.example"],
                                       "template": {"id": "welcome", "data": {"name": "Fan", "order": {"id": 7},
                                                                              "footer": ""}}},
                                 (cred["username"], cred["password"]))
            return status == 202
        wait_for(sent, 5)
        wait_for(lambda: any(b"Subject: Hi Fan" in t["data"] for t in sink.transactions()), 15)
        assert [t["name"] for t in two.cli_json("template", "list")["templates"]] == ["welcome"]
        wait_for(lambda: any(r["template"] == "welcome" for r in one.cli_json(
            "stats", "--template", str(template["id"]))["days"]), 10)
    finally:
        sink.stop()


def test_a_link_from_one_nodes_mail_works_on_the_other(make_relay: Callable[..., Relay], pg: PgServer,
                                                        key_file: Path, tmp_path: Path) -> None:
    """Behind a load balancer an open, a click or an unsubscribe may reach any node: node 1
    records them for node 2's message (the tokens are signed with a key every node derives from
    the key file; the message's fields come from node 2's `accepted` event)."""
    import email
    import email.policy
    import re

    from tests.integration.test_tracking import HTML, get
    sink = Receiver(tmp_path).start()
    try:
        one, two = sending_pair(make_relay, pg, key_file, sink.port)
        for relay in (one, two):
            relay.doc["tracking"] = {"base_url": "http://t.example", "machine_window": "1ms"}
            relay.write_config()
            relay.stop()
            relay.start()
        one.cli("tracking", "set", "--account", "apps", "--opens", "on", "--clicks", "on", "--unsubscribe", "on")
        wait_for(lambda: rcpt_reply(two, "probe2@elsewhere.example")[0] == 250, 10)
        with smtplib.SMTP("127.0.0.1", two.trusted_port, local_hostname="app.test", timeout=10) as s:
            assert s.sendmail("app@apps.example", ["reader@d.test"], HTML) == {}
        wait_for(lambda: any("reader@d.test" in t["rcpts"] for t in sink.transactions()), 15)
        data = next(t["data"] for t in sink.transactions() if "reader@d.test" in t["rcpts"])
        msg = email.message_from_bytes(data, policy=email.policy.default)
        html = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_content()
        pixel = re.search(r'src="http://t\.example(/t/o/[^"]+)"', html).group(1)  # type: ignore[union-attr]
        unsub = re.search(r"<http://t\.example(/u/[^>]+)>", msg["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
        # (node 2's events reach PostgreSQL within its next cycle, a second at most)
        wait_for(lambda: bool(pg_sql(pg, "SELECT 1 FROM events WHERE recipient = %s AND type = 'accepted'",
                                     "reader@d.test")), 5)
        assert get(one, pixel).status == 200
        assert get(one, unsub, "POST", b"List-Unsubscribe=One-Click").status == 200     # node 1 never saw it

        def counted() -> bool:
            day = next((d for d in one.cli_json("stats")["days"] if d["tag"] == "spring"), None)
            return day is not None and (day["opened"], day["unsubscribed"]) == (1, 1)
        wait_for(counted, 10)
        # The unsubscribe's `reject` entry, made on node 1, refuses on node 2.
        wait_for(lambda: rcpt_reply(two, "reader@d.test")[0] == 550, 5)
    finally:
        sink.stop()


def test_a_complaint_received_by_one_node_is_applied_by_the_node_that_sent(make_relay: Callable[..., Relay],
                                                                           pg: PgServer, key_file: Path,
                                                                           tmp_path: Path) -> None:
    """The bounce MX of a sender domain may reach any node: node 1's feedback listener hands a
    complaint about node 2's mail to node 2 (through PostgreSQL), which applies it where the
    recipient is; its `reject` entry then refuses on both."""
    import email
    import email.policy

    from tests.integration.test_feedback import arf
    sink = Receiver(tmp_path).start()
    try:
        one, two = sending_pair(make_relay, pg, key_file, sink.port)
        for relay in (one, two):
            relay.feedback_port = free_port()  # type: ignore[attr-defined]
            relay.doc["listeners"].append({"name": "feedback", "address": "127.0.0.1",
                                           "port": relay.feedback_port, "tls": "none", "role": "feedback"})  # type: ignore[attr-defined]
            relay.write_config()
            relay.stop()
            relay.start()
        pg_sql(pg, "UPDATE domains SET return_path_ok = 1 WHERE name = 'apps.example'")

        def verp_on_two() -> bool:        # node 2's copy has it: its next message leaves with a VERP path
            with two.db() as conn:
                return conn.execute("SELECT return_path_ok FROM domains WHERE name = 'apps.example'").fetchone()[0]
        wait_for(verp_on_two, 5)
        wait_for(lambda: rcpt_reply(two, "probe3@elsewhere.example")[0] == 250, 10)
        with smtplib.SMTP("127.0.0.1", two.trusted_port, local_hostname="app.test", timeout=10) as s:
            assert s.sendmail("app@apps.example", ["angry@d.test"], MSG) == {}

        def delivered() -> dict[str, object] | None:
            return next((t for t in sink.transactions() if "angry@d.test" in t["rcpts"]), None)
        wait_for(lambda: delivered() is not None and str(delivered()["mail_from"]).startswith("bounces+"), 15)
        found = delivered()
        assert found is not None
        verp_path = str(found["mail_from"])
        message_id = email.message_from_bytes(found["data"], policy=email.policy.default)["Message-ID"]
        wait_for(lambda: bool(pg_sql(pg, "SELECT 1 FROM events WHERE recipient = 'angry@d.test'")), 5)
        with smtplib.SMTP("127.0.0.1", one.feedback_port, local_hostname="mx.d.test", timeout=10) as s:  # type: ignore[attr-defined]
            s.ehlo()
            s.mail("")
            assert s.rcpt(verp_path)[0] == 250
            code, reply = s.data(arf(verp_path, message_id, "angry@d.test"))
        assert (code, b"handed to node relay-2" in reply) == (250, True), reply
        wait_for(lambda: any(f["result"] == "applied" for f in two.cli_json("feedback", "list")["feedback"]), 10)
        wait_for(lambda: rcpt_reply(one, "angry@d.test")[0] == 550, 5)
        assert rcpt_reply(two, "angry@d.test")[0] == 550
        assert not pg_sql(pg, "SELECT 1 FROM feedback_relay")       # applied, then gone
    finally:
        sink.stop()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="Debian's redis-server is installed by `make test`")
def test_both_stores_together_a_cap_over_a_shared_catalog(make_relay: Callable[..., Relay], pg: PgServer,
                                                          key_file: Path, redis: RedisServer) -> None:
    """PostgreSQL and Redis at once, as a cluster runs: the account comes from the shared catalog
    (made through node 1), the hourly cap of 3 holds over both nodes, and `cluster status` shows
    each node's word on Redis."""
    one = node(make_relay, pg, key_file, "relay-1", redis=redis.url, lease="10s")
    two = node(make_relay, pg, key_file, "relay-2", redis=redis.url, lease="10s")
    for relay in (one, two):
        relay.doc["limits"] = {**relay.doc["limits"], "recipient_hourly_cap": 3}
        relay.write_config()
    one.cli("cluster", "migrate")
    one.start()
    two.start()
    seed_verified(one, pg, "apps", "apps.example", "app@apps.example")
    for relay in (one, two):
        accepting(relay)        # Redis's new epoch: 3 s of 451 first
    codes = [rcpt_reply((one, two)[i % 2], "popular@target.example")[0] for i in range(6)]
    assert codes == [250, 250, 250, 450, 450, 450], codes
    wait_for(lambda: [n["redis"] for n in one.cli_json("cluster", "status")["nodes"]] == ["ok", "ok"], 10)
