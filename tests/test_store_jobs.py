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
