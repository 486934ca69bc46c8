"""Cluster mode's pure parts (issue 20): the dialect adapter, the sealed DKIM keys, and the
mirror's apply job on a real store: the difference applied, this node's unsent entries kept,
its own changes noted for PostgreSQL, a lifted suspension releasing held mail."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from smtprelay.cluster import secrets
from smtprelay.cluster.catalog import translate
from smtprelay.cluster.mirror import _apply
from smtprelay.cluster.pg_schema import MIRRORED, problem
from smtprelay.queue import schema


def test_the_sqlite_dialect_becomes_psycopgs() -> None:
    assert translate("SELECT 1 FROM w WHERE a = ? AND address IS ? AND n LIKE 'x%'") == \
        "SELECT 1 FROM w WHERE a = %s AND address IS NOT DISTINCT FROM %s AND n LIKE 'x%%'"
    assert "cluster migrate" in (problem(0) or "") and problem(10**6).startswith("the PostgreSQL catalog is at") \
        and "upgrade smtprelay" in problem(10**6)


def test_a_sealed_key_opens_only_with_the_same_key_file(tmp_path: Path) -> None:
    key, other, short = tmp_path / "a.key", tmp_path / "b.key", tmp_path / "c.key"
    key.write_text("k" * 40)
    other.write_text("o" * 40)
    short.write_text("tiny")
    token = secrets.seal(key, b"-----BEGIN PRIVATE KEY-----\nsecret\n")
    assert b"secret" not in token.encode() and secrets.unseal(key, token).endswith(b"secret\n")
    with pytest.raises(secrets.SecretError, match="not the key this DKIM key was sealed with"):
        secrets.unseal(other, token)
    with pytest.raises(secrets.SecretError, match="needs at least 32"):
        secrets.seal(short, b"x")
    with pytest.raises(secrets.SecretError, match="No such file"):
        secrets.check(tmp_path / "missing.key")


def _store(tmp_path: Path) -> sqlite3.Connection:
    conn = schema.connect(tmp_path)
    conn.isolation_level = None
    return conn


def _snapshot(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {t.name: [tuple(r) for r in conn.execute(f"SELECT {', '.join(t.columns)} FROM {t.name}")] for t in MIRRORED}


def test_the_mirror_applies_the_difference_and_keeps_what_this_node_has_not_sent(tmp_path: Path) -> None:
    conn = _store(tmp_path)
    conn.execute("UPDATE meta SET value = 1 WHERE key = 'cluster_push'")     # a node in cluster mode
    snapshot = _snapshot(conn)
    snapshot["accounts"] = [(7, "acme", None, None, 1.0, None, 0, None, None, None, None, None, None)]
    snapshot["domains"] = [(3, "example.com", 7, "verified", None, None, 1.0, 1.0, 1.0, 5.0, "bounces", None,
                            None, None, 0)]
    snapshot["blocklist"] = [(40, "op@x.example", "custom", None, None, None, "operator", None, 1.0, None)]
    assert _apply(snapshot, 10.0)(conn) == 3
    assert conn.execute("SELECT count(*) FROM cluster_outbox").fetchone()[0] == 0     # the mirror's own: not echoed
    assert conn.execute("SELECT value FROM meta WHERE key = 'cluster_push'").fetchone()[0] == 1
    assert _apply(snapshot, 11.0)(conn) == 0            # nothing moved: nothing written
    # A hard bounce on this node: kept (and noted for PostgreSQL) until the catalog has it.
    conn.execute("INSERT INTO blocklist (address, type, origin_account_id, reason, created_at) VALUES"
                 " ('gone@x.example', 'invalid', 7, '550 5.1.1', 12.0)")
    noted = conn.execute("SELECT tbl, payload FROM cluster_outbox").fetchall()
    assert [(t, json.loads(p)["address"]) for t, p in noted] == [("blocklist", "gone@x.example")]
    # Held mail of the suspended domain; then the catalog lifts the suspension.
    conn.execute("INSERT INTO messages (id, account_id, mail_from, sender_domain, size, created_at, client_address,"
                 " body) VALUES ('Q1', 7, 'a@example.com', 'example.com', 1, 1.0, '127.0.0.1', x'00')")
    conn.execute("INSERT INTO recipients (message_id, address, domain, state, hold_reason, next_attempt_at,"
                 " attempts, updated_at) VALUES ('Q1', 'r@y.example', 'y.example', 'hold', 'suspended', 0, 0, 1.0)")
    generation = conn.execute("SELECT value FROM meta WHERE key = 'warmup_generation'").fetchone()[0]
    lifted = dict(snapshot)
    lifted["domains"] = [(3, "example.com", 7, "verified", None, None, 1.0, 1.0, 1.0, None, None, 20.0, None, None, 0)]
    lifted["blocklist"] = []            # the operator's entry removed
    _apply(lifted, 20.0)(conn)
    assert [r[0] for r in conn.execute("SELECT address FROM blocklist")] == ["gone@x.example"]
    assert tuple(conn.execute("SELECT state, next_attempt_at FROM recipients").fetchone()) == ("queued", 20.0)
    assert conn.execute("SELECT value FROM meta WHERE key = 'warmup_generation'").fetchone()[0] == generation + 1
    # A suspension this node sets is noted for PostgreSQL too.
    conn.execute("UPDATE accounts SET suspended_at = 30.0, suspended_reason = 'content' WHERE id = 7")
    assert json.loads(conn.execute("SELECT payload FROM cluster_outbox WHERE tbl = 'accounts'").fetchone()[0])[
        "suspended_reason"] == "content"


def test_an_incremental_read_applies_only_what_changed(tmp_path: Path) -> None:
    conn = _store(tmp_path)
    conn.execute("UPDATE meta SET value = 1 WHERE key = 'cluster_push'")
    full = _snapshot(conn)
    full["accounts"] = [(7, "acme", None, None, 1.0, None, 0, None, None, None, None, None, None)]
    full["blocklist"] = [(40, "a@x.example", "custom", None, None, None, "op", None, 1.0, None),
                         (41, "b@x.example", "custom", 7, None, None, "op", None, 1.0, None)]
    full["allowlist"] = [(7, "c@x.example", 1.0)]
    _apply(full, 1.0)(conn)
    # Since then: 40 deleted, 41's note set, 42 added, the allowlist entry deleted (its key: two columns).
    changed = {t.name: [] for t in MIRRORED}
    changed["blocklist"] = [(41, "b@x.example", "custom", 7, None, None, "op", "noted", 1.0, None),
                            (42, "d@x.example", "custom", None, None, None, "op", None, 2.0, None)]
    assert _apply(changed, 2.0, {"blocklist": [(40,)], "allowlist": [(7, "c@x.example")]})(conn) == 4
    assert [tuple(r) for r in conn.execute("SELECT id, note FROM blocklist ORDER BY id")] == [(41, "noted"), (42, None)]
    assert conn.execute("SELECT count(*) FROM allowlist").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 1     # untouched: not in the change
    assert conn.execute("SELECT count(*) FROM cluster_outbox").fetchone()[0] == 0


def test_the_gate_reads_only_the_blocklist_changes_in_their_order(tmp_path: Path) -> None:
    """Store migration 17: a deleted entry whose id is taken again by the next insert ends
    present (changes are replayed by version, not deletions last)."""
    import asyncio

    from smtprelay.catalog.view import SqliteCatalogView
    from smtprelay.policy.blocklist import BlocklistView, Entry
    from smtprelay.queue.readers import StoreReader
    conn = _store(tmp_path)
    add = "INSERT INTO blocklist (address, type, reason, created_at) VALUES (?, 'custom', 'op', 1.0)"
    conn.execute(add, ("a@x.example",))
    conn.execute(add, ("b@x.example",))

    async def run() -> None:
        reader = await StoreReader.open(tmp_path)
        view = SqliteCatalogView(reader)
        try:
            rows, _ = await view.blocklist_changes(-1, 2.0)
            gate = BlocklistView([Entry(*r[1:]) for r in rows], set())
            seen = max(r[0] for r in rows)
            conn.execute("DELETE FROM blocklist WHERE address = 'b@x.example'")     # the highest id: reused
            conn.execute(add, ("c@x.example",))
            rows, _ = await view.blocklist_changes(seen, 2.0)
            assert [r[2] for r in rows] == [None, "c@x.example"]      # the deletion first, by version
            for r in rows:
                gate.drop(r[1]) if r[2] is None else gate.put(Entry(*r[1:]))
            assert sorted(gate.by_address) == ["a@x.example", "c@x.example"] and len(gate) == 2
            assert gate.check("c@x.example", 1, "s.example", 2.0) is not None
            assert gate.check("b@x.example", 1, "s.example", 2.0) is None
        finally:
            await reader.close()
    asyncio.run(run())


def test_a_node_with_a_catalog_of_its_own_is_not_overwritten(tmp_path: Path) -> None:
    """Account ids are the cluster's: a store whose account 1 is another name is refused (said
    why, nothing changed), never silently renamed under its queued mail."""
    conn = _store(tmp_path)
    conn.execute("INSERT INTO accounts (id, name, created_at) VALUES (1, 'local-apps', 1.0)")
    snapshot = _snapshot(conn)
    snapshot["accounts"] = [(1, "acme", None, None, 1.0, None, 0, None, None, None, None, None, None)]
    why = _apply(snapshot, 2.0)(conn)
    assert isinstance(why, str) and "catalog of its own" in why and "--import-local" in why
    assert [tuple(r) for r in conn.execute("SELECT id, name FROM accounts")] == [(1, "local-apps")]
    # A statement failing inside the job is rolled back to its savepoint and said, not raised.
    conn.execute("INSERT INTO accounts (id, name, created_at) VALUES (2, 'acme', 1.0)")
    snapshot["accounts"] = [(1, "local-apps", None, None, 1.0, None, 0, None, None, None, None, None, None),
                            (3, "acme", None, None, 1.0, None, 0, None, None, None, None, None, None)]
    why = _apply(snapshot, 2.0)(conn)
    assert isinstance(why, str) and "UNIQUE" in why, why
    assert [tuple(r) for r in conn.execute("SELECT id, name FROM accounts ORDER BY id")] == [(1, "local-apps"),
                                                                                               (2, "acme")]
