"""Each node's copy of the shared catalog (cluster mode, issue 20).

Owns: keeping the node's store equal to PostgreSQL for the shared tables (pg_schema.MIRRORED),
so that everything that reads the catalog on a node (the front-end workers' reload, the
gate's refresh, the scheduler, webhooks, statistics by account name) works as on a single
node, from memory and the local store, with no PostgreSQL round trip per message. And the
other way: the rows this node changes itself (cluster_outbox: a bounce's or complaint's
blocklist entry, a suspension, a reputation level) go to PostgreSQL. And the node's heartbeat.

How: one connection LISTENs on `smtprelay_catalog`; a NOTIFY (sent by PostgreSQL's triggers on
every change) or one second without one starts a cycle: push the outbox, read the two version
counters, and when they moved read the shared tables in one snapshot and apply the difference
to the store in one transaction (the store's own triggers then tell the workers). DKIM keys a
node lacks are unsealed into its data_dir first. A lifted suspension releases this node's held
recipients. Every 5 s the node writes its heartbeat (`cluster status`). Each cycle also sends
the node's new events (cluster-wide `stats` and `status`) and applies the bounces and complaints
other nodes' feedback listeners received about this node's mail (`feedback_relay`).

Must never: apply a partial snapshot; lose an outbox row before PostgreSQL committed it; block
the event loop (file writes and the apply run in threads / the store's writer).
"""
from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from smtprelay import __version__
from smtprelay.cluster import secrets
from smtprelay.cluster.pg_schema import CHANNEL, MIRRORED, NEVER_DELETED, Mirrored, check_current_async
from smtprelay.config import Config

log = logging.getLogger("smtprelay.cluster")

POLL = 1.0          # seconds without a NOTIFY before the versions are read anyway
HEARTBEAT = 5.0
RETRY = 1.0
SILENT_AFTER = 15.0     # `cluster status`: a node not heard of for this long is shown silent
EVENT_BATCH = 5000
EVENT_BATCHES = 20      # per cycle: up to 100 000 events a second, far above what one node makes
EVENT_COLUMNS = ("type", "at", "account_id", "queue_id", "recipient", "sender_domain", "recipient_domain", "provider",
                 "tag", "data", "template_id", "template_version", "task_id", "task_run")

_PUSH_COLUMNS = {
    "blocklist": ("address", "type", "account_id", "sender_domain", "origin_account_id", "reason", "note",
                  "created_at", "expires_at"),
    "accounts": ("level", "level_evaluated_day", "suspended_at", "suspended_reason", "content_resumed_at"),
    "domains": ("suspended_at", "suspended_reason", "resumed_at"),
}


class CatalogMirror:
    def __init__(self, config: Config, store: Any, reader: Any, clock_now: Callable[[], float],
                 observe: Callable[[str, float, bool], None], queue_depth: Callable[[], int]):
        self.config = config
        self.store = store              # QueueStore: its writer applies snapshots
        self.reader = reader            # StoreReader: the outbox
        self.now = clock_now
        self.observe = observe
        self.queue_depth = queue_depth
        self.healthy = False
        self.synced = False             # a snapshot was applied since the start
        self.error: str | None = "not connected yet"
        self.versions: tuple[int, int] | None = None
        self.watermark: int | None = None       # PostgreSQL transaction id: changes from it on are read next
        self.started_at = time.time()
        self._beat = 0.0
        self._events_cursor: int | None = None
        self._pruned = 0.0
        self._task: asyncio.Task[None] | None = None
        self._failing_logged = False
        self.on_applied: Callable[[], None] | None = None
        self.redis_health: Callable[[], str] | None = None     # with [cluster] redis: "ok" or why not
        # A report another node received about this node's mail: (from node, peer, MAIL FROM, RCPT TOs, raw) → reply
        self.on_feedback: Callable[[str, str, str, tuple[str, ...], bytes], Awaitable[str]] | None = None

    @property
    def available(self) -> bool:
        """May new mail be admitted on this node's copy? (fail closed until the first snapshot and
        while PostgreSQL is unreachable; `[cluster] on_failure = "local"` keeps the last copy)."""
        return self.healthy and self.synced

    async def start(self) -> None:
        await self.store.run(_set_push(1))
        self._task = asyncio.create_task(self._run(), name="catalog-mirror")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        import psycopg
        url = self.config.cluster.postgres
        assert url is not None
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5,
                                                             application_name=f"smtprelay {self.config.cluster.node}")
            except (psycopg.Error, OSError) as exc:
                self._failed(exc)
                await asyncio.sleep(RETRY)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await check_current_async(conn)
                    self.versions = None        # read everything again after a reconnection
                    while True:
                        await self._cycle(conn)
                        async for _ in conn.notifies(timeout=POLL, stop_after=1):
                            pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:    # psycopg.Error, OSError, a schema of the wrong version
                self._failed(exc)
                await asyncio.sleep(RETRY)

    def _failed(self, exc: BaseException) -> None:
        self.observe("cycle", 0.0, False)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.healthy or not self._failing_logged:
            log.error("cluster: %s (%s); %s", "the catalog cannot be used" if isinstance(exc, RuntimeError)
                      else "PostgreSQL is not reachable", reason,
                      "new mail gets 451 until it is" if self.config.cluster.on_failure == "refuse"
                      else "this node keeps its last copy of the catalog")
            self._failing_logged = True
        self.healthy = False
        self.error = reason

    async def _cycle(self, conn: Any) -> None:
        started = time.perf_counter()
        await self._push(conn)
        await self._forward_events(conn)
        await self._take_feedback(conn)
        row = await (await conn.execute("SELECT (SELECT value FROM meta WHERE key = 'catalog_version'),"
                                        " (SELECT value FROM meta WHERE key = 'blocklist_version')")).fetchone()
        versions = (int(row[0]), int(row[1]))
        applied = versions != self.versions
        if applied:
            read = await self._read(conn, self.watermark)
            await asyncio.to_thread(self._write_keys, read.keys)
            done = await self.store.run(_apply(read.rows, self.now(), read.deletions))
            if isinstance(done, str):
                raise CatalogConflict(done)
            self.versions, self.watermark = read.versions, read.watermark
            versions = read.versions
            self.synced = True
            if self.on_applied is not None:
                self.on_applied()
        if applied or time.monotonic() - self._beat >= HEARTBEAT:     # `cluster status` shows the version held
            await conn.execute(
                "INSERT INTO nodes (name, version, started_at, seen_at, queue_depth, catalog_version, redis)"
                " VALUES (%s, %s, %s, now(), %s, %s, %s) ON CONFLICT (name) DO UPDATE SET version = excluded.version,"
                " started_at = excluded.started_at, seen_at = now(), queue_depth = excluded.queue_depth,"
                " catalog_version = excluded.catalog_version, redis = excluded.redis",
                (self.config.cluster.node, __version__, self.started_at, self.queue_depth(), versions[0],
                 self.redis_health() if self.redis_health is not None else None))
            self._beat = time.monotonic()
        if not self.healthy:
            if self._failing_logged:
                log.warning("cluster: PostgreSQL is reachable again; the catalog is in sync")
            self._failing_logged = False
        self.healthy = True
        self.error = None
        self.observe("cycle", time.perf_counter() - started, True)

    async def _read(self, conn: Any, watermark: int | None) -> "Read":
        """What changed, in one snapshot (REPEATABLE READ). Incrementally, the rows written and the
        keys deleted by transactions from `watermark` on (PostgreSQL transaction ids: every row
        carries its writer's, so a transaction that commits late is still read next time; a row
        read twice is applied twice, harmlessly). In full, every row (at the start, and when deletions
        newer than the watermark were pruned: the node was away for more than a day)."""
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = await (await conn.execute(
                "SELECT (SELECT value FROM meta WHERE key = 'catalog_version'),"
                " (SELECT value FROM meta WHERE key = 'blocklist_version'),"
                " (SELECT value FROM meta WHERE key = 'deletions_pruned_below'),"
                " txid_snapshot_xmin(txid_current_snapshot())")).fetchone()
            versions, pruned, xmin = (int(row[0]), int(row[1])), int(row[2]), int(row[3])
            rows: dict[str, list[tuple[Any, ...]]] = {}
            deletions: dict[str, list[tuple[Any, ...]]] | None = None
            if watermark is not None and watermark >= pruned:
                deletions = {}
                for table in MIRRORED:
                    cur = await conn.execute(f"SELECT {', '.join(table.columns)} FROM {table.name} WHERE txid >= %s",
                                             (watermark,))
                    rows[table.name] = [tuple(r) for r in await cur.fetchall()]
                cur = await conn.execute("SELECT tbl, key FROM catalog_deletions WHERE txid >= %s", (watermark,))
                for tbl, key in await cur.fetchall():
                    deletions.setdefault(tbl, []).append(tuple(key))
                keys_sql = " AND k.txid >= %s"
                args: tuple[Any, ...] = (watermark,)
            else:
                for table in MIRRORED:
                    cur = await conn.execute(f"SELECT {', '.join(table.columns)} FROM {table.name}")
                    rows[table.name] = [tuple(r) for r in await cur.fetchall()]
                keys_sql, args = "", ()
            keys: list[tuple[str, str, str]] = []
            if "dkim_keys" in rows and (deletions is None or rows["dkim_keys"]):
                cur = await conn.execute("SELECT d.name, k.selector, k.private_key FROM dkim_keys k JOIN domains d"
                                         " ON d.id = k.domain_id WHERE k.state != 'retired' AND k.private_key IS NOT"
                                         " NULL" + keys_sql, args)
                keys = [(r[0], r[1], r[2]) for r in await cur.fetchall()]
        return Read(rows, deletions, keys, versions, xmin)

    def _write_keys(self, keys: list[tuple[str, str, str]]) -> None:
        """The DKIM keys this node does not hold yet, unsealed into its data_dir (0600)."""
        from smtprelay.dkim import keys as dkim_keys
        for domain, selector, token in keys:
            path = dkim_keys.key_path(self.config.server.data_dir, domain, selector)
            if path.exists():
                continue
            try:
                pem = secrets.unseal(self.config.cluster.key_file, token)
                dkim_keys.save_private_key(path, pem)
            except FileExistsError:
                continue
            except (secrets.SecretError, OSError) as exc:
                log.error("cluster: the DKIM key %s of %s cannot be written here (%s); its mail is refused on "
                          "this node", selector, domain, exc)
                continue
            log.info("cluster: DKIM key %s of %s received from the catalog", selector, domain)

    async def _take_feedback(self, conn: Any) -> None:
        """Bounces and complaints other nodes received about this node's mail: applied here (where
        the recipient is), then deleted; one that cannot be applied now waits for the next cycle."""
        if self.on_feedback is None:
            return
        cur = await conn.execute("SELECT id, from_node, peer, mail_from, rcpt_to, raw FROM feedback_relay"
                                 " WHERE node = %s ORDER BY id LIMIT 20", (self.config.cluster.node,))
        for relay_id, from_node, peer, mail_from, rcpt_to, raw in await cur.fetchall():
            reply = await self.on_feedback(from_node, peer, mail_from, tuple(rcpt_to), bytes(raw))
            if not reply.startswith("250"):
                log.warning("cluster: a report node %s handed over waits (%s)", from_node, reply)
                return
            await conn.execute("DELETE FROM feedback_relay WHERE id = %s", (relay_id,))

    async def _forward_events(self, conn: Any) -> None:
        """This node's new events, to PostgreSQL in batches (idempotent by node and event id),
        then the cursor; and once an hour, the cluster's events past `events.retention` go."""
        if self._events_cursor is None:
            rows = await self.reader.rows("SELECT (SELECT value FROM meta WHERE key = 'cluster_events_cursor'),"
                                          " (SELECT max(id) FROM events)")
            cursor, newest = int(rows[0][0] or 0), int(rows[0][1] or 0)
            if newest < cursor:     # the table emptied by retention: its ids start again
                cursor = 0
            self._events_cursor = cursor
        node = self.config.cluster.node
        for _ in range(EVENT_BATCHES):
            rows = await self.reader.rows(f"SELECT id, {', '.join(EVENT_COLUMNS)} FROM events WHERE id > ?"
                                          " ORDER BY id LIMIT ?", (self._events_cursor, EVENT_BATCH))
            if not rows:
                break
            values = ", ".join("%s::jsonb" if c == "data" else "%s" for c in EVENT_COLUMNS)
            async with conn.cursor() as cur:
                await cur.executemany(f"INSERT INTO events (node, local_id, {', '.join(EVENT_COLUMNS)}) VALUES"
                                      f" (%s, %s, {values}) ON CONFLICT DO NOTHING", [(node, *r) for r in rows])
            last = int(rows[-1][0])
            await self.store.run(_set_cursor(last))
            self._events_cursor = last
            if len(rows) < EVENT_BATCH:
                break
        if time.monotonic() - self._pruned >= 3600:
            await conn.execute("DELETE FROM events WHERE at < extract(epoch FROM now()) - %s",
                               (self.config.events.retention,))
            # Deletions a day old: a node further behind than that reads the catalog in full.
            await conn.execute("WITH gone AS (DELETE FROM catalog_deletions WHERE at < now() - interval '1 day'"
                               " RETURNING txid) UPDATE meta SET value = greatest(value, (SELECT max(txid) + 1"
                               " FROM gone)) WHERE key = 'deletions_pruned_below' AND EXISTS (SELECT 1 FROM gone)")
            self._pruned = time.monotonic()

    async def _push(self, conn: Any) -> None:
        """This node's own changes to shared rows, to PostgreSQL, then out of the outbox."""
        rows = await self.reader.rows("SELECT id, tbl, row_id, payload FROM cluster_outbox ORDER BY id LIMIT 500")
        if not rows:
            return
        node = self.config.cluster.node
        async with conn.transaction():
            for _, tbl, row_id, payload in rows:
                values = json.loads(payload)
                columns = _PUSH_COLUMNS[tbl]
                if tbl == "blocklist":
                    args = [values.get(c) for c in columns]
                    await conn.execute(
                        f"INSERT INTO blocklist ({', '.join(columns)}, origin_node)"
                        f" SELECT {', '.join(['%s'] * len(columns))}, %s WHERE NOT EXISTS (SELECT 1 FROM blocklist"
                        " WHERE address = %s AND type = %s AND created_at = %s AND origin_node = %s)"
                        " AND (%s::bigint IS NULL OR EXISTS (SELECT 1 FROM accounts WHERE id = %s))"
                        " AND (%s::bigint IS NULL OR EXISTS (SELECT 1 FROM accounts WHERE id = %s))",
                        (*args, node, values["address"], values["type"], values["created_at"], node,
                         values.get("account_id"), values.get("account_id"),
                         values.get("origin_account_id"), values.get("origin_account_id")))
                else:
                    await conn.execute(f"UPDATE {tbl} SET {', '.join(f'{c} = %s' for c in columns)} WHERE id = %s",
                                       (*[values.get(c) for c in columns], row_id))
        last = rows[-1][0]
        await self.store.run(lambda db: db.execute("DELETE FROM cluster_outbox WHERE id <= ?", (last,)))
        log.info("cluster: %d change(s) of this node sent to the catalog", len(rows))


class CatalogConflict(RuntimeError):
    """The snapshot cannot be applied to this node's store (said why): the node stays out of sync."""


@dataclass(frozen=True)
class Read:
    rows: dict[str, list[tuple[Any, ...]]]          # per table: rows written (or every row, in full)
    deletions: dict[str, list[tuple[Any, ...]]] | None   # per table: keys deleted; None: `rows` is in full
    keys: list[tuple[str, str, str]]                # DKIM keys: domain, selector, sealed key
    versions: tuple[int, int]
    watermark: int


def _set_cursor(value: int) -> Callable[[sqlite3.Connection], None]:
    def job(db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = ? WHERE key = 'cluster_events_cursor'", (value,))
    return job


def _set_push(value: int) -> Callable[[sqlite3.Connection], None]:
    def job(db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = ? WHERE key = 'cluster_push'", (value,))
    return job


def _apply(snapshot: dict[str, list[tuple[Any, ...]]], now: float,
           deletions: dict[str, list[tuple[Any, ...]]] | None = None) -> Callable[[sqlite3.Connection], int | str]:
    """The store's writer job: deletions children first, then upserts parents first, with this
    node's pushes switched off meanwhile. In full (`deletions` None) the snapshot is each table's
    whole content and the difference is applied; else the snapshot holds the rows written and
    `deletions` the keys deleted since the last read."""
    def job(db: sqlite3.Connection) -> int | str:
        # Inside the store's group commit, beside messages being committed: a failure here must
        # not fail them, so it is rolled back to a savepoint and returned, never raised.
        db.execute("SAVEPOINT mirror")
        try:
            result = apply(db)
        except sqlite3.Error as exc:
            result = f"this node's copy of the catalog cannot be updated: {exc}"
        if isinstance(result, str):
            db.execute("ROLLBACK TO mirror")
        db.execute("RELEASE mirror")
        return result

    def apply(db: sqlite3.Connection) -> int | str:
        from smtprelay.content.suspension import HELD
        if deletions is None and "accounts" in snapshot:
            theirs = {r[0]: r[1] for r in snapshot["accounts"]}
            for account_id, name in db.execute("SELECT id, name FROM accounts"):
                if account_id in theirs and theirs[account_id] != name:
                    return (f"this node's store has a catalog of its own (account {name!r} is id {account_id} here, "
                            f"{theirs[account_id]!r} in the cluster's): move it into an empty cluster catalog with "
                            "`smtprelay cluster migrate --import-local`, or start this node with an empty data_dir")
        db.execute("UPDATE meta SET value = 0 WHERE key = 'cluster_push'")
        pending = {r[0] for r in db.execute("SELECT row_id FROM cluster_outbox WHERE tbl = 'blocklist'")}
        tables = [t for t in MIRRORED if t.name in snapshot]
        local: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
        remote: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
        for table in tables:
            index = [table.columns.index(k) for k in table.key]
            remote[table.name] = {tuple(r[i] for i in index): r for r in snapshot[table.name]}
            if deletions is None or table.name in ("accounts", "domains"):     # small; suspensions compared
                local[table.name] = {tuple(r[i] for i in index): tuple(r) for r in
                                     db.execute(f"SELECT {', '.join(table.columns)} FROM {table.name}")}
        changes = 0
        for table in reversed(MIRRORED):
            if deletions is None:
                gone = [k for k in local.get(table.name, {}) if k not in remote.get(table.name, {})]
            else:
                gone = [k for k in deletions.get(table.name, []) if k not in remote.get(table.name, {})]
            if table.name in NEVER_DELETED:     # the spool and tasks refer to them
                gone = []
            if table.name == "blocklist":   # this node's own, not pushed yet
                gone = [k for k in gone if k[0] not in pending]
            where = " AND ".join(f"{k} = ?" for k in table.key)
            changes += sum(db.execute(f"DELETE FROM {table.name} WHERE {where}", k).rowcount for k in gone)
        lifted_domains: list[Any] = []
        lifted_accounts: list[Any] = []
        suspension_moved = False
        if "domains" in remote:
            lifted_domains = _lifted(local["domains"], remote["domains"], MIRRORED[2], "name")
            suspension_moved = _moved(local["domains"], remote["domains"], MIRRORED[2])
        if "accounts" in remote:
            lifted_accounts = _lifted(local["accounts"], remote["accounts"], MIRRORED[0], "id")
        for table in tables:
            mine = local.get(table.name)
            changed = [r for k, r in remote[table.name].items() if mine is None or mine.get(k) != r]
            if not changed:
                continue
            cols = ", ".join(table.columns)
            updates = ", ".join(f"{c} = excluded.{c}" for c in table.columns if c not in table.key)
            db.executemany(f"INSERT INTO {table.name} ({cols}) VALUES ({', '.join('?' * len(table.columns))})"
                           f" ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}", changed)
            changes += len(changed)
        for name in lifted_domains:
            db.execute("UPDATE recipients SET state = 'queued', hold_reason = NULL, next_attempt_at = ?,"
                       " last_reply = NULL WHERE state = 'hold' AND hold_reason = 'suspended' AND message_id IN"
                       " (SELECT id FROM messages WHERE sender_domain = ?)", (now, name))
        for account_id in lifted_accounts:
            db.execute("UPDATE recipients SET state = 'queued', hold_reason = NULL, next_attempt_at = ?,"
                       " updated_at = ? WHERE state = 'hold' AND hold_reason = ? AND message_id IN"
                       " (SELECT id FROM messages WHERE account_id = ?)", (now, now, HELD, account_id))
        if suspension_moved:
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'warmup_generation'")
        db.execute("UPDATE meta SET value = 1 WHERE key = 'cluster_push'")
        return changes
    return job


def _lifted(local: dict[tuple[Any, ...], tuple[Any, ...]], remote: dict[tuple[Any, ...], tuple[Any, ...]],
            table: Mirrored, name: str) -> list[Any]:
    """The rows whose suspension the snapshot lifts (suspended here, not there)."""
    at = table.columns.index("suspended_at")
    column = table.columns.index(name)
    return [row[column] for key, row in remote.items()
            if row[at] is None and key in local and local[key][at] is not None]


def _moved(local: dict[tuple[Any, ...], tuple[Any, ...]], remote: dict[tuple[Any, ...], tuple[Any, ...]],
           table: Mirrored) -> bool:
    at = table.columns.index("suspended_at")
    return any((local.get(k) or (None,) * len(table.columns))[at] != r[at] for k, r in remote.items())


def key_file_problem(config: Config) -> str | None:
    """What is wrong with `[cluster] key_file`, for the start and `check-config`."""
    if config.cluster.postgres is None:
        return None
    try:
        secrets.check(config.cluster.key_file or Path("/nonexistent"))
    except secrets.SecretError as exc:
        return str(exc)
    return None
