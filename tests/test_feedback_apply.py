"""What a late bounce and a complaint change in the store (issue 18), on a real QueueStore: the
recipient a report names (VERP token, else Message-ID and address), the state, the events
(statistics count a reversed delivery once, as a bounce), the blocklist, the feedback row; a
forged token changes nothing."""
from __future__ import annotations

import time
from pathlib import Path

from smtprelay.events.stats import daily
from smtprelay.feedback import apply, verp
from smtprelay.feedback.parse import parse
from smtprelay.queue import jobs, schema
from smtprelay.queue.ids import new_queue_id
from smtprelay.queue.jobs import AutoBlock, Outcome
from smtprelay.queue.store import QueuedMessage, QueueStore

SECRET = b"s" * 32
SAMPLES = Path(__file__).parent / "feedback_samples"


async def delivered_message(store: QueueStore, rcpts: tuple[str, ...]) -> tuple[str, dict[str, int], float]:
    now = time.time()
    queue_id = new_queue_id(now)
    await store.enqueue(QueuedMessage(id=queue_id, account_id=None, username=None, mail_from="app@apps.example",
                                      recipients=rcpts, body=b"Subject: hi\r\n\r\nHi.\r\n", created_at=now,
                                      client_address="127.0.0.1", tls=None,
                                      header_message_id=f"<{queue_id}@relay.test>"))
    conn = schema.reader(store._data_dir)
    try:
        ids = {a: i for i, a in conn.execute("SELECT id, address FROM recipients WHERE message_id = ?", (queue_id,))}
    finally:
        conn.close()
    await store.run(jobs.claim(now + 1, 100, now + 600))      # the scheduler's claim, then its record
    await store.run(jobs.record([Outcome(i, queue_id, "delivered", now, None, "250 2.0.0 Ok", 250, "2.0.0", None,
                                         "mx.example.org[192.0.2.1]:25", None, 0.1, attempted=True,
                                         sender_domain="apps.example", provider="example.org")
                                 for i in ids.values()], []))
    return queue_id, ids, now


def dsn_for(queue_id: str, rcpt_id: int, token_secret: bytes = SECRET) -> tuple[bytes, str]:
    address = verp.address("bounces", token_secret, queue_id, rcpt_id, "apps.example", "bounce")
    raw = (SAMPLES / "postfix_dsn.eml").read_text()
    raw = raw.replace("bounces+661BEC30393E01DR54-2-abcdefghijklmnop@bounce.apps.example", address)
    raw = raw.replace("<661BEC30393E01DR54@relay.test>", f"<{queue_id}@relay.test>")
    return raw.encode(), address


async def test_a_late_bounce_turns_a_delivered_recipient_bounced_once(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    await store.open()
    try:
        queue_id, ids, sent_at = await delivered_message(store, ("nobody@example.org", "ok@example.org"))
        raw, envelope = dsn_for(queue_id, ids["nobody@example.org"])
        report = parse(raw)
        conn = schema.reader(tmp_path)
        target = apply.locate(conn, report, envelope, [b"retired" * 4, SECRET], report.failed[0])
        assert target is not None and (target.rcpt_id, target.state) == (ids["nobody@example.org"], "delivered")
        assert await store.run(apply.late_bounce(target, report.failed[0], sent_at + 60, AutoBlock())) is True
        assert await store.run(apply.late_bounce(target, report.failed[0], sent_at + 61, AutoBlock())) is False
        states = dict(conn.execute("SELECT address, state FROM recipients"))
        assert states == {"nobody@example.org": "bounced", "ok@example.org": "delivered"}
        assert conn.execute("SELECT bounce_class, last_reply FROM recipients WHERE id = ?",
                            (target.rcpt_id,)).fetchone() == ("invalid_address", 'late bounce: unknown user: "nobody"')
        assert conn.execute("SELECT type FROM blocklist WHERE address = 'nobody@example.org'").fetchone() == \
            ("invalid",)
        day = daily(conn, sent_at - 3600, sent_at + 3600)
        assert (sum(r["delivered"] for r in day), sum(r["bounced"] for r in day),
                sum(r["bounced_invalid"] for r in day)) == (1, 1, 1)
        late = conn.execute("SELECT data FROM events WHERE type = 'bounced'").fetchone()[0]
        assert '"late":true' in late and '"bounce_type":"invalid_address"' in late
        conn.close()
    finally:
        await store.close()


async def test_a_forged_token_changes_nothing(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    await store.open()
    try:
        queue_id, ids, _ = await delivered_message(store, ("nobody@example.org",))
        raw, envelope = dsn_for(queue_id, ids["nobody@example.org"], token_secret=b"not ours" * 4)
        report = parse(raw)
        conn = schema.reader(tmp_path)
        # The Message-ID and the address would find it: a forged token still means nothing.
        assert apply.locate(conn, report, envelope, [SECRET], report.failed[0]) is None
        conn.close()
    finally:
        await store.close()


async def test_without_a_token_the_message_id_and_address_find_it(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    await store.open()
    try:
        queue_id, ids, _ = await delivered_message(store, ("reader@yahoo.com",))
        raw = (SAMPLES / "arf_rfc5965.eml").read_text()
        raw = raw.replace("Original-Rcpt-To: <user@example.com>", "Original-Rcpt-To: <reader@yahoo.com>")
        raw = raw.replace("Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net", f"Message-ID: <{queue_id}@relay.test>")
        report = parse(raw.encode())
        conn = schema.reader(tmp_path)
        target = apply.locate(conn, report, "fbl@apps.example", [SECRET])
        assert target is not None and target.rcpt_id == ids["reader@yahoo.com"]
        conn.close()
    finally:
        await store.close()


async def test_a_complaint_is_recorded_like_the_tracking_handlers(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    await store.open()
    try:
        queue_id, ids, sent_at = await delivered_message(store, ("reader@yahoo.com",))
        token = verp.address("bounces", SECRET, queue_id, ids["reader@yahoo.com"], "apps.example", "bounce")
        raw = (SAMPLES / "yahoo_cfl.eml").read_text()
        raw = raw.replace("bounces+661BEC30393E01DR5D-f-abcdefghijklmnop@bounce.apps.example", token)
        report = parse(raw.encode())
        conn = schema.reader(tmp_path)
        target = apply.locate(conn, report, "fbl@apps.example", [SECRET])
        assert target is not None and target.address == "reader@yahoo.com"
        assert await store.run(apply.complaint(target, sent_at + 120)) is True
        assert conn.execute("SELECT kind, sender_domain, address FROM feedback").fetchall() == \
            [("complaint", "apps.example", "reader@yahoo.com")]
        assert conn.execute("SELECT type, sender_domain FROM blocklist").fetchall() == [("reject", "apps.example")]
        assert conn.execute("SELECT count(*) FROM events WHERE type = 'complained' AND queue_id = ?",
                            (queue_id,)).fetchone() == (1,)
        conn.close()
    finally:
        await store.close()
