"""Webhooks on a fake clock, through the real store and a real HTTP receiver process: the
endpoint is down for an hour, then back; every event arrives once, in order per message,
correctly signed, at the address-level hook or the account one; past max_age an event
becomes a dead letter, and a replay delivers it."""
from __future__ import annotations

import contextlib
import datetime
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from smtprelay.clock import FakeClock
from smtprelay.config import Config, parse
from smtprelay.catalog.sqlite import SqliteCatalog
from smtprelay.services import Context, Services
from smtprelay.events import webhooks as W
from smtprelay.events.outbox import replay
from smtprelay.http.metrics import Metrics
from smtprelay.queue import jobs, schema
from smtprelay.queue.ids import new_queue_id
from smtprelay.queue.jobs import Outcome
from smtprelay.queue.store import QueuedMessage, QueueStore
from tests.mailservers import wait_listening
from tests.support import ROOT, free_port

START = datetime.datetime(2027, 3, 1, 1, 0, tzinfo=datetime.timezone.utc).timestamp()


class Endpoint:
    def __init__(self, tmp: Path):
        self.port = free_port()
        self.log = tmp / "hooks.jsonl"
        self.mode = tmp / "mode"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "webhook_receiver.py"), "--port",
                                      str(self.port), "--log", str(self.log), "--mode-file", str(self.mode)])
        wait_listening("127.0.0.1", self.port, self.proc, "webhook receiver")  # type: ignore[arg-type]

    def answer(self, status: int) -> None:
        self.mode.write_text(str(status))

    def posts(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    e = Endpoint(tmp_path)
    yield e
    e.stop()


def setup(tmp_path: Path, endpoint: Endpoint) -> tuple[Config, str]:
    config = parse({"server": {"hostname": "relay.test", "data_dir": str(tmp_path / "var")},
                    "listeners": [{"name": "s", "port": 1}]})
    conn = schema.connect(config.server.data_dir)
    services = Services(Context(config, SqliteCatalog(conn), conn, FakeClock(START)))
    services.accounts.add("acme")
    services.domains.add("acme", "acme.example")
    services.domains.add_address("news@acme.example")
    services.domains.add_address("billing@acme.example")
    secret = services.webhooks.set(f"http://127.0.0.1:{endpoint.port}/account", "acme").new_secret
    assert secret is not None
    services.webhooks.set(f"http://127.0.0.1:{endpoint.port}/billing", address="billing@acme.example")
    conn.close()
    return config, secret


@contextlib.asynccontextmanager
async def running(config: Config, clock: FakeClock) -> AsyncIterator[tuple[QueueStore, W.Dispatcher]]:
    store = QueueStore(config.server.data_dir)
    await store.open()
    dispatcher = W.Dispatcher(config.webhooks, store, config.server.data_dir / "relay.db", clock, Metrics())
    await dispatcher.open()
    try:
        yield store, dispatcher
    finally:
        await dispatcher.stop()
        await store.close()


async def enqueue(store: QueueStore, clock: FakeClock, sender: str, *rcpts: str) -> str:
    qid = new_queue_id(clock.now())
    await store.enqueue(QueuedMessage(id=qid, account_id=1, username=None, mail_from=sender, recipients=rcpts,
                                      body=b"Subject: x\r\n\r\nx\r\n", created_at=clock.now(),
                                      client_address="127.0.0.1", tls=None, header_message_id=f"<{qid}@t>"))
    return qid


async def deliver_all(store: QueueStore, clock: FakeClock) -> None:
    works = await store.run(jobs.claim(clock.now(), 100, clock.now() + 60))
    await store.run(jobs.record([Outcome(w.rcpt_id, w.message_id, "delivered", clock.now(), None,
                                         "250 2.0.0 Ok", 250, "2.0.0", None, "mx.test[127.0.0.1]:25", "TLSv1.3",
                                         0.1, attempted=True, sender_domain="acme.example") for w in works], []))


async def test_down_for_an_hour_then_back_every_event_once_in_order(tmp_path: Path, endpoint: Endpoint) -> None:
    config, secret = setup(tmp_path, endpoint)
    clock = FakeClock(start=START)
    async with running(config, clock) as (store, dispatcher):
        news = await enqueue(store, clock, "news@acme.example", "a@x.test", "b@x.test")
        bill = await enqueue(store, clock, "billing@acme.example", "c@x.test")
        await deliver_all(store, clock)
        endpoint.answer(503)
        tries = 0
        while clock.now() < START + 3600:          # an hour down: retried with a growing backoff
            await dispatcher.run_once()
            tries += 1
            clock.advance(30)
        down = endpoint.posts()
        assert down and all(p["status"] == 503 for p in down)
        first_event = [p for p in down if json.loads(p["body"])["queue_id"] == news]
        gaps = sorted({json.loads(p["body"])["id"] for p in first_event})
        assert len(gaps) == 1                      # only the first event of each message is tried while down
        assert 5 <= len(first_event) <= 9          # 30 s, 1 m, 2 m, 4 m, ... within the hour, not every 30 s
        endpoint.answer(200)
        for _ in range(200):
            await dispatcher.run_once()
            clock.advance(60)
            with sqlite3.connect(config.server.data_dir / "relay.db") as db:
                if db.execute("SELECT count(*) FROM outbox WHERE state != 'delivered'").fetchone()[0] == 0:
                    break
        ok = [p for p in endpoint.posts() if p["status"] == 200]
        docs = [json.loads(p["body"]) for p in ok]
        ids = [d["id"] for d in docs]
        assert len(ids) == len(set(ids)) == 6      # 3 accepted + 3 delivered, each exactly once
        for qid in (news, bill):
            mine = [d for d in docs if d["queue_id"] == qid]
            assert [d["type"] for d in mine][:len(mine) // 2] == ["accepted"] * (len(mine) // 2)
            assert [int(d["id"][4:]) for d in mine] == sorted(int(d["id"][4:]) for d in mine)  # in order
        assert {p["path"] for p in ok if json.loads(p["body"])["from"] == "billing@acme.example"} == {"/billing"}
        assert {p["path"] for p in ok if json.loads(p["body"])["from"] == "news@acme.example"} == {"/account"}
        delivered = next(d for d in docs if d["type"] == "delivered" and d["recipient"] == "a@x.test")
        assert delivered["account"] == "acme" and delivered["smtp_response"] == "250 2.0.0 Ok"
        assert delivered["mx"] == "mx.test[127.0.0.1]:25" and delivered["timestamp"].endswith("Z")
        assert delivered["message_id"] == f"<{news}@t>" and delivered["sender_domain"] == "acme.example"
        for p in ok:
            header = p["headers"]["X-Smtprelay-Signature"]
            assert W.verify(header, p["body"].encode(), secret, now=int(header.split(",")[0][2:]))
            assert not W.verify(header, p["body"].encode() + b" ", secret, now=int(header.split(",")[0][2:]))


async def test_past_max_age_a_dead_letter_then_replayed(tmp_path: Path, endpoint: Endpoint) -> None:
    config, _ = setup(tmp_path, endpoint)
    clock = FakeClock(start=START)
    async with running(config, clock) as (store, dispatcher):
        await enqueue(store, clock, "news@acme.example", "a@x.test")
        endpoint.answer(500)
        while clock.now() <= START + 86400 + 60:
            await dispatcher.run_once()
            clock.advance(600)
        with sqlite3.connect(config.server.data_dir / "relay.db") as db:
            state, attempts, error = db.execute("SELECT state, attempts, last_error FROM outbox").fetchone()
        assert state == "dead" and error == "HTTP 500" and 24 <= attempts <= 40
        assert len(endpoint.posts()) == attempts             # retried for the whole day, then no more
        endpoint.answer(200)
        with sqlite3.connect(config.server.data_dir / "relay.db") as db:
            assert replay(db, START, clock.now()) == 1
        await dispatcher.run_once()
        assert endpoint.posts()[-1]["status"] == 200
