"""Cluster mode's shared limits (issue 20): two relay nodes on this machine share the
per-recipient hourly cap, the account quota (100, exactly) and rate, the AUTH lockout and a
warm-up budget through a real Redis (Debian's redis-server, started once for the module on a
high port, stopped by PID). Here each node keeps its own catalog (the shared one is
test_cluster_catalog's); the counters are keyed by account name."""
from __future__ import annotations

import shutil
import smtplib
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_limits import MSG, rcpt_reply, wait_for
from tests.support import Relay, free_port

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="Debian's redis-server is installed by `make test`")


class RedisServer:
    def __init__(self, directory: Path):
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "RedisServer":
        # No persistence: a restart loses every counter, the case the rebuild is for.
        self.proc = subprocess.Popen([str(REDIS), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
                                     stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.ping(), 10)
        return self

    def ping(self) -> bool:
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The module's Redis, emptied (each test starts with no counters), running."""
    if redis_server.proc is None:
        redis_server.start()
    import redis as redis_py
    redis_py.Redis(port=redis_server.port).flushall()
    return redis_server


def node(make_relay: Callable[..., Relay], redis: RedisServer, name: str, **limits: Any) -> Relay:
    base = {"recipient_hourly_cap": 10, "account_daily_quota": 500, "account_rate_per_second": 1000.0}
    base.update(limits)
    return make_relay({"limits": base, "delivery": {"routes": {"*": f"127.0.0.1:{free_port()}"}},
                       "cluster": {"node": name, "redis": redis.url, "lease": "10s"}})


def accepting(relay: Relay) -> None:
    """A new epoch makes every node refuse for 3 s (the rebuild's grace): wait it out."""
    wait_for(lambda: rcpt_reply(relay, f"probe-{relay.http_port}@probe.example")[0] == 250, 15)


def health(relay: Relay) -> tuple[int, dict[str, Any]]:
    import json
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.http_port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_50_sessions_over_two_nodes_to_one_address_get_exactly_10(make_relay: Callable[..., Relay],
                                                                   redis: RedisServer) -> None:
    one, two = node(make_relay, redis, "relay-1").start(), node(make_relay, redis, "relay-2").start()
    accepting(one)
    accepting(two)
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def session(relay: Relay) -> None:
        with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=30) as s:
            s.ehlo()
            s.mail("app@apps.example")
            barrier.wait()     # every session on both nodes reaches RCPT together
            code, reply = s.rcpt("Popular@Target.Example")
            if code == 250:
                code, reply = s.data(MSG)
            with lock:
                results.append((code, reply))
    threads = [threading.Thread(target=session, args=((one, two)[i % 2],)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 50
    assert sum(1 for c, _ in results if c == 250) == 10, results
    refused = [r for c, r in results if c != 250]
    assert all(r.startswith(b"4.7.1 Recipient Popular@target.example has already been sent 10 messages") for r in
               refused), refused[:3]
    # Each node's own spool holds what it accepted (the 10, and its probe).
    per_node = [len(r.cli_json("queue", "list")["messages"]) for r in (one, two)]
    assert sum(per_node) == 12 and one.metric("smtprelay_messages_accepted_total") == per_node[0]
    assert one.metric("smtprelay_cluster_store_latency_seconds_count", 'store="redis"') > 0


def test_an_account_quota_holds_across_nodes_and_a_redis_restart_is_rebuilt(make_relay: Callable[..., Relay],
                                                                             redis: RedisServer) -> None:
    import concurrent.futures
    one = node(make_relay, redis, "relay-1", account_daily_quota=100).start()
    two = node(make_relay, redis, "relay-2", account_daily_quota=100).start()
    accepting(one)        # 1 of 100 used (the probe)
    accepting(two)        # 2 of 100
    # 110 recipients at once, 20 sessions at a time over both nodes: exactly 98 more.
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda i: rcpt_reply((one, two)[i % 2], f"q{i}@target.example")[0], range(110)))
    assert (codes.count(250), codes.count(454), len(codes)) == (98, 12, 110), codes
    accepted = [len(r.cli_json("queue", "list", "--all")["messages"]) for r in (one, two)]
    assert sum(accepted) == 100 and min(accepted) > 0, accepted
    # Redis loses everything (a restart without persistence): each node adds its own sends of
    # the last 24 h again, and the quota still holds; nothing is admitted in between.
    redis.stop()
    status, doc = health(one)
    wait_for(lambda: health(one)[0] == 503, 10)
    status, doc = health(one)
    assert doc["redis"].startswith("failing") and doc["status"] == "degraded"
    code, reply = rcpt_reply(two, "during@target.example")
    assert (code, reply[:5]) == (451, b"4.3.0"), reply
    redis.start()
    wait_for(lambda: health(one)[0] == 200 and health(two)[0] == 200, 15)
    # (refused with 451 during the rebuild's grace, then judged on the rebuilt counters)
    wait_for(lambda: rcpt_reply(one, "after@target.example")[0] != 451, 15)
    assert rcpt_reply(one, "after@target.example")[0] == 454
    assert rcpt_reply(two, "after2@target.example")[0] == 454
    assert "adding this node's sends of the last 24 h again" in one.log() + two.log()


def test_a_dead_node_holds_its_reservations_only_until_the_lease(make_relay: Callable[..., Relay],
                                                                 redis: RedisServer) -> None:
    one = node(make_relay, redis, "relay-1", recipient_hourly_cap=1).start()
    two = node(make_relay, redis, "relay-2", recipient_hourly_cap=1).start()
    accepting(one)
    accepting(two)
    s = smtplib.SMTP("127.0.0.1", one.trusted_port, local_hostname="app.test", timeout=10)
    s.ehlo()
    s.mail("app@apps.example")
    assert s.rcpt("held@target.example")[0] == 250          # reserved in Redis by node 1
    assert rcpt_reply(two, "held@target.example")[0] == 450  # the other node sees the reservation
    one.kill()                                               # kill -9 mid-transaction
    s.close()
    started = time.monotonic()
    wait_for(lambda: rcpt_reply(two, "held@target.example")[0] == 250, 30)
    assert time.monotonic() - started >= 5    # freed by the lease (10 s from RCPT), not at once


def test_the_account_rate_and_the_auth_lockout_hold_across_nodes(make_relay: Callable[..., Relay],
                                                                  redis: RedisServer) -> None:
    one = node(make_relay, redis, "relay-1", account_rate_per_second=1.0)
    two = node(make_relay, redis, "relay-2", account_rate_per_second=1.0)
    for relay in (one, two):
        relay.doc["auth"] = {"max_failures": 3, "failure_window": "10m", "lockout": "10m"}
        relay.write_config()
    user, password = one.add_account_with_credential("acme")
    two.cli("account", "add", "acme")      # each node's own catalog here: the names match
    one.start()
    two.start()
    accepting(one)
    accepting(two)
    # One recipient per second for the account, however many nodes: each node's own bucket
    # would let one through on each. Bounded by the time the burst took (Redis's clock).
    wait_for(lambda: rcpt_reply((one, two)[0], "wait@target.example")[0] == 250, 5)
    started = time.monotonic()
    codes = [rcpt_reply((one, two)[i % 2], f"r{i}@target.example")[0] for i in range(6)]
    elapsed = time.monotonic() - started
    assert codes.count(250) <= 1 + int(elapsed) and set(codes) <= {250, 454}, (codes, elapsed)
    assert codes.count(454) >= 6 - 1 - int(elapsed), codes

    # Three failed logins, spread over both nodes, lock the address out on both.
    def login(relay: Relay, secret: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="c.test", timeout=10) as s:
            from tests.support import client_tls
            s.starttls(context=client_tls())
            s.ehlo()
            s.user, s.password = user, secret
            try:
                s.auth("PLAIN", s.auth_plain)     # one mechanism: one attempt (login() tries several)
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code, exc.smtp_error
            except smtplib.SMTPServerDisconnected:
                return 421, b""
            return 235, b""
    assert login(one, "wrong-1")[0] == 535
    assert login(two, "wrong-2")[0] == 535
    assert login(one, password)[0] == 235       # a success resets the count
    assert [login(r, "wrong")[0] for r in (one, two, one)] == [535, 535, 421]
    assert login(two, password)[0] == 421       # locked on the node that did not count the third
    assert "authentication failed" in two.log()


def test_a_warm_up_budget_holds_across_nodes(make_relay: Callable[..., Relay], redis: RedisServer,
                                             tmp_path: Path) -> None:
    """Day 1 of the schedule allows 3 a day for apps.example at a provider: 3 over both nodes,
    not 3 on each; the rest waits as `throttled`."""
    from tests.mailservers import Receiver
    rx = Receiver(tmp_path).start()
    try:
        relays = []
        for name in ("relay-1", "relay-2"):
            relay = node(make_relay, redis, name)
            relay.doc["warmup"] = {"enabled": True, "schedule": [3, 10]}
            relay.doc["delivery"] = {"routes": {"*": f"127.0.0.1:{rx.port}"}}
            relay.write_config()
            relays.append(relay.start())
        one, two = relays
        for relay in (one, two):
            accepting(relay)
            with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
                for i in range(4):
                    s.sendmail("app@apps.example", [f"w{relay.http_port}-{i}@target.example"], MSG)

        def throttled(relay: Relay) -> int:
            return sum(len(m["recipients"]) for m in relay.cli_json("queue", "list", "--state", "throttled")["messages"])
        wait_for(lambda: throttled(one) + throttled(two) == 5, 20)
        delivered = [r for t in rx.transactions() for r in t["rcpts"] if r.endswith("@target.example")
                     and not r.startswith("probe")]
        assert len(delivered) == 3, delivered
        for relay in (one, two):
            for m in relay.cli_json("queue", "list", "--state", "throttled")["messages"]:
                last = relay.cli_json("queue", "show", m["id"])["recipients"][0]["last_reply"]
                assert "warm-up budget used" in last, last
    finally:
        rx.stop()
