"""The retry schedule and the maximum lifetime, on a fake clock: an in-process scheduler
and store, a real smtp-sink process that always answers 450, no waiting."""
from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from smtprelay.clock import FakeClock
from smtprelay.config import parse
from smtprelay.http.metrics import Metrics
from smtprelay.queue.ids import new_queue_id
from smtprelay.queue.scheduler import Scheduler
from smtprelay.queue.store import QueuedMessage, QueueStore
from tests.mailservers import SmtpSink
from tests.support import free_port

pytestmark = pytest.mark.skipif(shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists(),
                                reason="Postfix's smtp-sink is installed by `make test`")


async def test_retry_schedule_then_expiry_with_a_dsn(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path, "-r", "RCPT").start()
    try:
        config = parse({
            "server": {"hostname": "relay.test", "data_dir": str(tmp_path / "var")},
            "listeners": [{"name": "s", "port": 1}],
            "dns": {"nameservers": [f"127.0.0.1:{free_port()}"], "timeout": "1s"},
            "delivery": {"routes": {"*": f"127.0.0.1:{sink.port}"}, "initial_concurrency": 1},
        })
        clock = FakeClock(start=time.time())
        store = QueueStore(config.server.data_dir)
        await store.open()
        scheduler = Scheduler(config, store, clock, Metrics())
        await scheduler.open()
        created = clock.now()
        qid = new_queue_id(created)
        await store.enqueue(QueuedMessage(id=qid, account_id=None, username=None, mail_from="app@apps.example",
                                          recipients=("x@far.example",), body=b"From: app@apps.example\r\n\r\nhi\r\n",
                                          created_at=created, client_address="127.0.0.1", tls=None,
                                          header_message_id=None))
        db = sqlite3.connect(config.server.data_dir / "relay.db")
        delays, attempts_seen = [], []
        for _ in range(100):
            await scheduler.scan()
            await scheduler.idle()
            state, attempts, next_at = db.execute("SELECT state, attempts, next_attempt_at FROM recipients"
                                                  " WHERE message_id = ?", (qid,)).fetchone()
            attempts_seen.append(attempts)
            if state != "queued":
                break
            delays.append(next_at - clock.now())
            clock.advance(next_at - clock.now())  # jump straight to the next try
        assert state == "expired"
        schedule = [60, 300, 900, 1800, 3600, 7200] + [14400] * 30
        # Each delay follows the schedule within ±10 % jitter; the last try is moved to the expiry time.
        for i, delay in enumerate(delays[:-1]):
            assert schedule[i] * 0.9 <= delay <= schedule[i] * 1.1, (i, delay)
        assert clock.now() - created >= 72 * 3600 and clock.now() - created < 72 * 3600 + 1
        assert attempts_seen == list(range(1, len(attempts_seen) + 1))  # one attempt per try, no more
        assert 20 <= len(attempts_seen) <= 25
        dsn = db.execute("SELECT m.mail_from, r.address, m.body FROM messages m JOIN recipients r"
                         " ON r.message_id = m.id WHERE m.id != ?", (qid,)).fetchone()
        assert dsn[0] == "" and dsn[1] == "app@apps.example"
        assert b"delivery time expired" in dsn[2] and b"Final-Recipient: rfc822; x@far.example" in dsn[2]
        db.close()
        await scheduler.stop(1)
        await store.close()
    finally:
        sink.stop()


async def test_a_delay_warning_goes_to_the_sender_once_after_delivery_delay_warning(tmp_path: Path) -> None:
    """Issue 18 (README's "not yet there"): delivery.delay_warning = "4h" sends one RFC 3464
    `delayed` notice at the first try after 4 hours, none before and no second one."""
    sink = SmtpSink(tmp_path, "-r", "RCPT").start()
    try:
        config = parse({
            "server": {"hostname": "relay.test", "data_dir": str(tmp_path / "var")},
            "listeners": [{"name": "s", "port": 1}],
            "dns": {"nameservers": [f"127.0.0.1:{free_port()}"], "timeout": "1s"},
            "delivery": {"routes": {"far.example": f"127.0.0.1:{sink.port}"}, "initial_concurrency": 1,
                         "delay_warning": "4h"},
        })
        clock = FakeClock(start=time.time())
        store = QueueStore(config.server.data_dir)
        await store.open()
        scheduler = Scheduler(config, store, clock, Metrics())
        await scheduler.open()
        created = clock.now()
        qid = new_queue_id(created)
        await store.enqueue(QueuedMessage(id=qid, account_id=None, username=None, mail_from="app@apps.example",
                                          recipients=("x@far.example",),
                                          body=b"From: app@apps.example\r\nSubject: slow\r\n\r\nhi\r\n",
                                          created_at=created, client_address="127.0.0.1", tls=None,
                                          header_message_id=None))
        db = sqlite3.connect(config.server.data_dir / "relay.db")
        warnings_after = []
        for _ in range(10):
            await scheduler.scan()
            await scheduler.idle()
            warnings = db.execute("SELECT count(*) FROM messages WHERE mail_from = '' AND id != ?",
                                  (qid,)).fetchone()[0]
            warnings_after.append((clock.now() - created, warnings))
            next_at = db.execute("SELECT next_attempt_at FROM recipients WHERE message_id = ?", (qid,)).fetchone()[0]
            clock.advance(next_at - clock.now())
        before = [n for age, n in warnings_after if age < 4 * 3600]
        after = [n for age, n in warnings_after if age >= 4 * 3600]
        assert before and set(before) == {0} and after and set(after) == {1}
        body, rcpt = db.execute("SELECT m.body, r.address FROM messages m JOIN recipients r ON r.message_id = m.id"
                                " WHERE m.mail_from = '' AND m.id != ?", (qid,)).fetchone()
        assert rcpt == "app@apps.example"
        assert b"Subject: Delayed Mail (still being retried)" in body and b"Action: delayed" in body
        assert b"Will-Retry-Until: " in body and b"THIS IS A WARNING ONLY" in body and b"Subject: slow" in body
        assert db.execute("SELECT delay_warned_at IS NOT NULL, state FROM recipients WHERE message_id = ?",
                          (qid,)).fetchone() == (1, "queued")
        db.close()
        await scheduler.stop(1)
        await store.close()
    finally:
        sink.stop()
