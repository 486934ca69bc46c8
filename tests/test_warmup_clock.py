"""Warm-up through the real scheduler and store on a fake clock: MX records from a real DNS
server (dnsmasq) decide the provider, a real receiving server counts what arrives. Exactly
the cap goes out per provider, the rest waits as `throttled`, a restart grants nothing
twice, the next day goes out on the next step of the ramp, and `warmup.max_wait` expires."""
from __future__ import annotations

import datetime
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from smtprelay.clock import FakeClock
from smtprelay.config import Config, parse
from smtprelay.http.metrics import Metrics
from smtprelay.catalog.sqlite import SqliteCatalog
from smtprelay.warmup import schedule as W
from smtprelay.queue.ids import new_queue_id
from smtprelay.queue.scheduler import Scheduler
from smtprelay.queue.listing import list_queue
from smtprelay.queue.store import QueuedMessage, QueueStore
from tests.dnsserver import DnsServer
from tests.mailservers import Receiver

pytestmark = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is installed by `make test`")

START = datetime.datetime(2027, 3, 1, 1, 0, tzinfo=datetime.timezone.utc).timestamp()
MIDNIGHT = START + 23 * 3600

MX = {"gmail.test": "gmail-smtp-in.l.google.com", "corp.test": "aspmx.l.google.com",   # both Google
      "hotmail.test": "hotmail-test.olc.protection.outlook.com", "other.test": "mx.other-mx.net"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Receiver, DnsServer]]:
    rx = Receiver(tmp_path).start()
    dns = DnsServer(tmp_path, ("gmail.test", "corp.test", "hotmail.test", "other.test", "google.com",
                               "outlook.com", "other-mx.net", "apps.example"))
    try:
        dns.publish([("MX", d, f"10 {h}") for d, h in MX.items()] + [("A", h, "127.0.0.1") for h in MX.values()])
        yield rx, dns
    finally:
        dns.stop()
        rx.stop()


def config_for(tmp_path: Path, rx: Receiver, dns: DnsServer, **warmup: Any) -> Config:
    return parse({
        "server": {"hostname": "relay.test", "data_dir": str(tmp_path / "var")},
        "listeners": [{"name": "s", "port": 1}],
        "dns": {"nameservers": [dns.nameserver], "timeout": "1s"},
        "delivery": {"mx_port": rx.port, "initial_concurrency": 2},
        "warmup": warmup,
    })


class Relay:
    """An in-process store and scheduler that can be restarted on the same clock."""

    def __init__(self, config: Config, clock: FakeClock):
        self.config, self.clock = config, clock

    async def start(self) -> "Relay":
        self.store = QueueStore(self.config.server.data_dir)
        await self.store.open()
        self.scheduler = Scheduler(self.config, self.store, self.clock, Metrics())
        await self.scheduler.open()
        return self

    async def stop(self) -> None:
        await self.scheduler.stop(5)
        await self.store.close()

    async def send(self, *rcpts: str) -> None:
        for rcpt in rcpts:
            now = self.clock.now()
            await self.store.enqueue(QueuedMessage(
                id=new_queue_id(now), account_id=None, username=None, mail_from="app@apps.example",
                recipients=(rcpt,), body=b"From: app@apps.example\r\nSubject: hi\r\n\r\nhello\r\n", created_at=now,
                client_address="127.0.0.1", tls=None, header_message_id=None))

    async def settle(self) -> None:
        for _ in range(4):   # claim, route, deliver, record: until nothing more is ready
            await self.scheduler.scan()
            await self.scheduler.idle()

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.config.server.data_dir / "relay.db")


def arrived(rx: Receiver) -> Counter[str]:
    return Counter(r.rpartition("@")[2] for t in rx.transactions() for r in t["rcpts"])


async def test_exact_caps_per_provider_across_a_restart_then_the_next_step(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rx, dns = world
    clock = FakeClock(start=START)
    relay = await Relay(config_for(tmp_path, rx, dns, schedule=[3, 5, 8]), clock).start()
    await relay.send(*[f"u{i}@gmail.test" for i in range(4)], *[f"u{i}@corp.test" for i in range(4)],
                     *[f"u{i}@hotmail.test" for i in range(6)], *[f"u{i}@other.test" for i in range(2)])
    await relay.settle()
    got = arrived(rx)
    assert got["gmail.test"] + got["corp.test"] == 3        # Google Workspace counts toward Gmail's budget
    assert got["hotmail.test"] == 3 and got["other.test"] == 2
    with relay.db() as conn:
        throttled = conn.execute("SELECT attempts, next_attempt_at, last_reply FROM recipients"
                                 " WHERE throttled_since IS NOT NULL AND state = 'queued'").fetchall()
        conn.row_factory = sqlite3.Row
        shown = list_queue(conn, state="throttled")
    assert len(throttled) == 8 and len(shown) == 8
    assert all(attempts == 0 for attempts, _, _ in throttled)          # waiting is not an attempt
    assert all(MIDNIGHT <= at < MIDNIGHT + 1 for _, at, _ in throttled)  # they go when the budget resets
    assert any("day 1 cap 3 for apps.example at gmail" in reply for _, _, reply in throttled)

    # A restart in the middle of the day: the budget was written before sending.
    await relay.stop()
    relay = await Relay(relay.config, clock).start()
    await relay.settle()
    assert arrived(rx) == got
    with relay.db() as conn:
        conn.row_factory = sqlite3.Row
        pairs = SqliteCatalog(conn).warmup_pairs("apps.example")
    views = {p.provider: W.view(p, relay.config.warmup, clock.now(), None) for p in pairs}
    assert views["gmail"]["used"] == 3 and views["gmail"]["remaining"] == 0 and views["gmail"]["day"] == 1
    assert views["other-mx.net"]["remaining"] == 1                   # an unknown MX is its own provider

    clock.advance(MIDNIGHT - clock.now() + 1)                        # the next day: step 2 of the ramp
    await relay.settle()
    got = arrived(rx)
    assert got["gmail.test"] + got["corp.test"] == 8 and got["hotmail.test"] == 6
    with relay.db() as conn:
        left = conn.execute("SELECT count(*) FROM recipients WHERE state NOT IN ('delivered')").fetchone()[0]
        pairs = SqliteCatalog(conn).warmup_pairs("apps.example")
    assert left == 0
    views = {p.provider: W.view(p, relay.config.warmup, clock.now(), None) for p in pairs}
    assert views["gmail"]["day"] == 2 and views["gmail"]["used"] == 5 and views["microsoft"]["used"] == 3
    await relay.stop()


async def test_waiting_longer_than_max_wait_expires_with_the_reason(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rx, dns = world
    clock = FakeClock(start=START)
    config = config_for(tmp_path, rx, dns, schedule=[1], max_daily=1, max_wait="36h")
    relay = await Relay(config, clock).start()
    await relay.send("a@gmail.test", "b@gmail.test", "c@gmail.test")
    await relay.settle()
    assert arrived(rx)["gmail.test"] == 1
    clock.advance(MIDNIGHT - clock.now() + 1)
    await relay.settle()
    assert arrived(rx)["gmail.test"] == 2
    clock.advance(13 * 3600)          # 23 h + 13 h = 36 h of waiting for the third
    await relay.settle()
    with relay.db() as conn:
        rows = conn.execute("SELECT r.address, r.state, r.attempts, r.last_reply FROM recipients r JOIN messages m"
                            " ON m.id = r.message_id WHERE m.mail_from != '' ORDER BY r.id").fetchall()
        dsn = conn.execute("SELECT r.address FROM recipients r JOIN messages m ON m.id = r.message_id"
                           " WHERE m.mail_from = ''").fetchall()
    assert [r[1] for r in rows] == ["delivered", "delivered", "expired"]
    assert "warmup.max_wait" in rows[2][3]
    assert dsn == [("app@apps.example",)]                           # the sender is told
    assert arrived(rx)["gmail.test"] == 2
    await relay.stop()


async def test_per_provider_connection_shaping(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rx, dns = world
    clock = FakeClock(start=START)
    config = config_for(tmp_path, rx, dns, overrides={"gmail": {"max_connections": 1,
                                                                 "max_messages_per_connection": 2}})
    relay = await Relay(config, clock).start()
    await relay.send(*[f"u{i}@gmail.test" for i in range(5)], "v@other.test")
    await relay.settle()
    txns = [t for t in rx.transactions() if t["rcpts"][0].endswith("@gmail.test")]
    assert len(txns) == 5
    per_connection = Counter(t["conn"] for t in txns)
    assert max(per_connection.values()) == 2 and len(per_connection) == 3   # 2 + 2 + 1
    assert relay.scheduler.throttle.provider_active.get("gmail") == 0
    assert arrived(rx)["other.test"] == 1                                    # other providers are not shaped
    await relay.stop()
