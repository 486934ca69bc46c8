"""A destination that refuses connections, on a fake clock: an in-process scheduler and
store, a port where nothing listens, and a real smtp-sink for a domain that works."""
from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from smtprelay.clock import FakeClock
from smtprelay.config import parse
from smtprelay.http.metrics import Metrics
from smtprelay.queue import jobs
from smtprelay.queue.ids import new_queue_id
from smtprelay.queue.scheduler import Scheduler
from smtprelay.queue.store import QueuedMessage, QueueStore
from tests.mailservers import SmtpSink
from tests.support import free_port

pytestmark = pytest.mark.skipif(shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists(),
                                reason="Postfix's smtp-sink is installed by `make test`")


def message(clock: FakeClock, recipients: tuple[str, ...]) -> QueuedMessage:
    now = clock.now()
    return QueuedMessage(id=new_queue_id(now), account_id=None, username=None, mail_from="app@apps.example",
                         recipients=recipients, body=b"From: app@apps.example\r\n\r\nhi\r\n", created_at=now,
                         client_address="127.0.0.1", tls=None, header_message_id=None)


async def test_a_dead_destination_backs_off_and_holds_new_mail_without_starving_others(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path).start()
    try:
        config = parse({
            "server": {"hostname": "relay.test", "data_dir": str(tmp_path / "var")},
            "listeners": [{"name": "s", "port": 1}],
            "dns": {"nameservers": [f"127.0.0.1:{free_port()}"], "timeout": "1s"},
            "delivery": {"routes": {"dead.test": f"127.0.0.1:{free_port()}", "live.test": f"127.0.0.1:{sink.port}"},
                         "active_limit": 100, "initial_concurrency": 1},
            "warmup": {"enabled": False},
        })
        clock = FakeClock(start=time.time())
        store = QueueStore(config.server.data_dir)
        await store.open()
        scheduler = Scheduler(config, store, clock, Metrics())
        store.deferred_until = scheduler.dead.deferred_until
        await scheduler.open()
        db = sqlite3.connect(config.server.data_dir / "relay.db")
        # 5 000 recipients wait for the dead destination: far more than one deferral chunk.
        for batch in range(50):
            await store.enqueue(message(clock, tuple(f"r{batch}-{i}@dead.test" for i in range(100))))

        async def settle() -> None:
            for _ in range(5):
                await scheduler.scan()
                await scheduler.idle()

        await settle()
        first = clock.now()
        rows = db.execute("SELECT count(*), min(next_attempt_at), count(*) FILTER (WHERE attempts > 0)"
                          " FROM recipients WHERE domain = 'dead.test' AND state = 'queued'").fetchone()
        assert rows[0] == 5000
        assert first + 55 <= rows[1] <= first + 66       # all of them past the first step (1 min, ±10 %)
        # Only the transactions that found it dead counted an attempt; the rest were pushed back untried.
        tried = config.delivery.dead_after_failures * config.delivery.max_recipients_per_transaction
        assert rows[2] == tried < 5000
        assert 5000 > jobs.DEFER_CHUNK                    # (so the deferral went in several commits)

        # New mail for it is queued already deferred: no claim, no attempt.
        held = message(clock, ("late@dead.test",))
        await store.enqueue(held)
        next_at, attempts, reply = db.execute("SELECT next_attempt_at, attempts, last_reply FROM recipients"
                                              " WHERE message_id = ?", (held.id,)).fetchone()
        assert next_at > clock.now() + 50 and attempts == 0 and "temporarily suspended" in reply

        # Another domain's message is delivered at once, behind the 5 000 waiting ones.
        live = message(clock, ("someone@live.test",))
        await store.enqueue(live)
        await settle()
        assert db.execute("SELECT state FROM recipients WHERE message_id = ?", (live.id,)).fetchone()[0] == "delivered"

        # Still dead at the next try: the suspension grows with the retry schedule (5 min, then 15 min).
        for step in (300, 900):
            clock.advance(70 if step == 300 else 330)
            await settle()
            now = clock.now()
            soonest = db.execute("SELECT min(next_attempt_at) FROM recipients WHERE domain = 'dead.test'"
                                 " AND state = 'queued'").fetchone()[0]
            assert now + step * 0.85 <= soonest <= now + step * 1.15, (step, soonest - now)

        # `queue flush` forgets the backoff: the destination is tried at once again.
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'flush_generation'")
        db.commit()
        await scheduler.scan()
        assert scheduler.dead.until(next(iter(scheduler.destinations), "")) == 0.0 or not scheduler.dead._until
        db.close()
        await scheduler.stop(1)
        await store.close()
    finally:
        sink.stop()
