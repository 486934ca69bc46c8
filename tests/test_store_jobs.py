"""Store jobs that run inside the group commit: maintenance pruning, in chunks."""
from __future__ import annotations

from pathlib import Path

from smtprelay.queue import jobs, schema
from smtprelay.queue.store import QueueStore


async def test_prune_removes_old_sends_and_expired_entries_in_chunks(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path)
    conn.executemany("INSERT INTO sends VALUES (1, ?, ?)", [(f"r{i}@x.example", 100.0) for i in range(12)] +
                     [("fresh@x.example", 10_000.0)])
    conn.execute("INSERT INTO blocklist (address, type, created_at, expires_at) VALUES ('a@x.example', 'custom', 0, 50)")
    conn.execute("INSERT INTO blocklist (address, type, created_at, expires_at) VALUES ('b@x.example', 'custom', 0, NULL)")
    conn.close()
    store = QueueStore(tmp_path)
    await store.open()
    removed = []
    while True:
        n = await store.run(jobs.prune(before=1000.0, now=500.0, chunk=5))
        removed.append(n)
        if n < 5:
            break
    await store.close()
    assert sum(removed) == 13 and removed[0] == 6   # 5 sends + 1 expired entry in the first chunk
    conn = schema.connect(tmp_path)
    assert [r[0] for r in conn.execute("SELECT address FROM sends")] == ["fresh@x.example"]
    assert [r[0] for r in conn.execute("SELECT address FROM blocklist")] == ["b@x.example"]


async def test_mail_a_worker_accepts_for_a_suspended_account_is_held_in_the_enqueue_transaction(
        tmp_path: Path) -> None:
    """A worker that has not reloaded since a content suspension may still accept a message: the
    commit holds it, as the suspension held what was queued, and resume releases it."""
    from smtprelay.content import suspension
    from smtprelay.queue.store import QueuedMessage
    conn = schema.connect(tmp_path)
    conn.execute("INSERT INTO accounts (id, name, created_at) VALUES (1, 'acme', 0), (2, 'other', 0)")
    conn.close()
    store = QueueStore(tmp_path)
    await store.open()
    assert await store.run(suspension.suspend(1, "20 viruses", 20, 100.0)) is True

    def message(qid: str, account: int) -> QueuedMessage:
        return QueuedMessage(qid, account, "u", f"a@{qid}.example", ("r1@x.example", "r2@y.example"),
                             b"Subject: x\r\n\r\nx\r\n", 101.0, "127.0.0.1", None, None)
    await store.enqueue(message("SUSP1", 1))
    await store.enqueue(message("FINE1", 2))
    await store.close()
    conn = schema.connect(tmp_path)
    states = {(m, a): (s, h) for m, a, s, h in conn.execute(
        "SELECT message_id, address, state, hold_reason FROM recipients")}
    assert states[("SUSP1", "r1@x.example")] == states[("SUSP1", "r2@y.example")] == ("hold", suspension.HELD)
    assert states[("FINE1", "r1@x.example")] == ("queued", None)
    assert suspension.resume(conn, 1, 200.0) == 2
    assert {r[0] for r in conn.execute("SELECT state FROM recipients WHERE message_id = 'SUSP1'")} == {"queued"}
