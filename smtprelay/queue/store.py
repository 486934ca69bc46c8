"""The queue store: all queue SQL, and group commit for durable acceptance.

Owns: the `messages` and `recipients` tables and the one writer connection. `enqueue()`
returns only after the message and all its recipients are committed and synced (WAL,
synchronous=FULL); the front end sends 250 after that and never before. Concurrent
sessions share one transaction: a single committer task takes everything that arrived
while the previous commit was syncing and writes it in one transaction, so N sessions pay
one fsync instead of N. Write jobs of the delivery side (claims, outcomes) ride in the
same transactions.

Why synchronous, on the back end's event loop: through a thread (aiosqlite), every
statement is a hop that must win the GIL back from the busy loop; a commit of ten messages
and ten jobs took 33 ms that way (issue 8's measurements) and throughput stalled at the
commit rate. Here a whole batch is a few hundred microseconds of C on the loop; only the
COMMIT, which holds the fsync, runs in the store's one thread (one hop per batch), so the
loop keeps receiving what becomes the next batch while the disk syncs. Jobs must therefore
stay short (chunked), and waiting for another process's write lock never blocks the loop:
BEGIN is retried with asynchronous sleeps until `server.store_busy_timeout`.

Must never: decide policy. A failed commit fails every message of that batch with
StoreUnavailable and leaves everything committed before untouched.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from smtprelay.events import types as events
from smtprelay.queue import schema

log = logging.getLogger("smtprelay.queue")

# Batches are bounded so one commit cannot hold hundreds of MB in flight.
MAX_BATCH_MESSAGES = 256
MAX_BATCH_BYTES = 64 * 1024 * 1024


class StoreUnavailable(Exception):
    """The store could not commit (disk full, locked, read-only, I/O error)."""


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: str
    account_id: int | None
    username: str | None
    mail_from: str
    recipients: tuple[str, ...]
    body: bytes
    created_at: float
    client_address: str
    tls: str | None
    header_message_id: str | None
    tag: str | None = None          # X-Smtprelay-Tag, for statistics
    bodies: tuple[bytes, ...] | None = None   # one copy per recipient (tracking tokens), same order

    def fields(self) -> tuple[Any, ...]:
        """The fields in order, for the workers' channel: a tuple unpickles several times faster
        than a frozen dataclass with slots, which restores itself field by field."""
        return (self.id, self.account_id, self.username, self.mail_from, self.recipients, self.body,
                self.created_at, self.client_address, self.tls, self.header_message_id, self.tag, self.bodies)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One message as `queue list` shows it."""
    id: str
    created_at: float
    size: int
    mail_from: str
    recipients: tuple[str, ...]
    state: str
    last_reply: str | None


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


Job = Callable[[sqlite3.Connection], Any]      # runs inside the group commit, synchronously

BUSY_RETRY = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)   # then every 50 ms
CHECKPOINT_SECONDS = 1.0
CACHE_KIB = 16 * 1024     # the writer's page cache
COMMIT_TARGET = 64        # items that make a batch worth committing at once
COMMIT_EXPECTED = 8.0     # pressed only if at least this many more items should arrive within the window
COMMIT_BUSY = 0.5         # ... and this process used at least half a core lately (else latency wins)


class ArrivalRate:
    """Items submitted per second, and the share of a core this process used, both smoothed
    over the last tenths of a second: together they say whether a commit should wait."""

    def __init__(self) -> None:
        self.per_second = 0.0
        self.cpu_share = 0.0
        self._count = 0
        self._since = time.monotonic()
        self._cpu_since = time.process_time()

    def note(self, items: int, _commit_seconds: float) -> None:
        self._count += items
        now = time.monotonic()
        elapsed = now - self._since
        if elapsed >= 0.1:
            cpu = time.process_time()
            current, share = self._count / elapsed, (cpu - self._cpu_since) / elapsed
            self.per_second = current if self.per_second == 0 else 0.5 * self.per_second + 0.5 * current
            self.cpu_share = 0.5 * self.cpu_share + 0.5 * share
            self._count, self._since, self._cpu_since = 0, now, cpu


class QueueStore:
    def __init__(self, data_dir: Path, busy_timeout: float = 5.0, max_store_bytes: int = 0,
                 on_commit: Callable[[bool], None] | None = None, commit_window: float = 0.0):
        self._path = schema.database_path(data_dir)
        self._data_dir = data_dir
        self._busy_timeout = busy_timeout
        self._max_store_bytes = max_store_bytes
        self._on_commit = on_commit
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[QueuedMessage | Job, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0          # transactions committed (for tests and metrics)
        self.healthy = True
        self.on_enqueued: Callable[[], None] | None = None   # the scheduler's wake-up
        # The scheduler's dead destinations: new mail for them is queued already deferred.
        self.deferred_until: Callable[[str, float], tuple[float, str] | None] | None = None
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="store-sync")
        self._rate = ArrivalRate()
        self._oldest = 0.0        # when the oldest pending item arrived (loop time)
        self._pressed = False     # see _gather
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commit_window = commit_window     # server.commit_window: see _gather

    async def open(self) -> None:
        # Migrations run synchronously once, before any session exists.
        schema.connect(self._data_dir, self._busy_timeout).close()
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        # No busy handler: a lock held by another process (a CLI command) is waited for in
        # _begin with asynchronous sleeps, never by sleeping inside SQLite on the loop.
        db.execute("PRAGMA busy_timeout = 0")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        # Indexes of a deep queue outgrow SQLite's 2 MB default page cache; every miss is a read.
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        # Checkpoints (copying the WAL into the database file, with its own fsync) happen in
        # the background every second (_checkpoint_loop), not inside a commit every 1000 pages:
        # pages rewritten by many commits are then copied once.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        if self._max_store_bytes:
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            db.execute(f"PRAGMA max_page_count = {max(1, self._max_store_bytes // page_size)}")
        self._db = db
        self._loop = asyncio.get_running_loop()
        self._committer = asyncio.create_task(self._commit_loop(), name="queue-committer")
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="wal-checkpoint")

    async def close(self) -> None:
        """Commit what is pending, then close."""
        self._closing = True
        self._wake.set()
        if self._committer is not None:
            await self._committer
        if self._checkpointer is not None:
            self._checkpointer.cancel()
        if self._db is not None:
            self._db.close()
            self._db = None
        self._syncer.shutdown(wait=False)

    async def enqueue(self, message: QueuedMessage) -> None:
        """Return once the message is durably committed; raise StoreUnavailable otherwise."""
        await self.submit(message)

    async def run(self, job: Job) -> Any:
        """Run a write job inside the next group commit; its result once committed."""
        return await self.submit(job)

    def submit(self, item: QueuedMessage | Job) -> asyncio.Future[Any]:
        """Queue a message or a job for the next group commit; the future resolves once it is
        committed and synced (or fails with StoreUnavailable)."""
        future: asyncio.Future[Any] = (self._loop or asyncio.get_running_loop()).create_future()
        if self._closing or self._db is None:
            future.set_exception(StoreUnavailable("the store is closing"))
            return future
        if not self._pending:
            self._oldest = self._loop.time() if self._loop is not None else 0.0
        self._pending.append((item, future))
        self._wake.set()
        if isinstance(item, QueuedMessage) and self.on_enqueued is not None:
            future.add_done_callback(self._enqueued)
        return future

    def _enqueued(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None and self.on_enqueued is not None:
            self.on_enqueued()

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._gather(loop)
                batch = self._take_batch()
                started = loop.time()
                await self._commit(batch)
                self._rate.note(len(batch), loop.time() - started)
                await asyncio.sleep(0)   # let the sockets fill the next batch
            if self._closing and not self._pending:
                return

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for a fuller batch, but only when CPU is what limits throughput (this process
        busy, many arrivals), and never longer than `commit_window` after the oldest pending
        item arrived: each commit writes every page it touched, so under load ten messages per
        commit cost a third of the CPU and disk writes of one or two (issue 8's measurements);
        with CPU to spare, waiting would only add latency."""
        window = self.commit_window
        # Pressed: CPU is what limits throughput (this process busy, many arrivals). Then commits
        # wait for fuller batches and sync in the store's thread; otherwise latency wins.
        self._pressed = (window > 0 and self._rate.cpu_share >= COMMIT_BUSY
                         and self._rate.per_second * window >= COMMIT_EXPECTED)
        if not self._pressed or self._closing or len(self._pending) >= COMMIT_TARGET:
            return
        deadline = self._oldest + window
        while len(self._pending) < COMMIT_TARGET and not self._closing:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[tuple[QueuedMessage | Job, asyncio.Future[Any]]]:
        size = 0
        count = 0
        for item, _ in self._pending:
            length = len(item.body) if isinstance(item, QueuedMessage) else 0
            if count and (count >= MAX_BATCH_MESSAGES or size + length > MAX_BATCH_BYTES):
                break
            size += length
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        if self._pending:
            self._oldest = self._loop.time() if self._loop is not None else 0.0   # close enough: just arrived
        return batch

    async def _checkpoint_loop(self) -> None:
        """PASSIVE checkpoints on a connection of their own, in a thread: they never block the
        writer (frames still needed by a reader stay in the WAL for the next round). At close,
        the writer's connection checkpoints and truncates the WAL as SQLite always does."""
        conn = await asyncio.to_thread(schema.reader, self._data_dir)
        try:
            while True:
                await asyncio.sleep(CHECKPOINT_SECONDS)
                try:
                    await asyncio.to_thread(conn.execute, "PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("store: WAL checkpoint failed (%s); trying again", exc)
        finally:
            conn.close()

    async def _begin(self, db: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting (asynchronously) while another process holds the write lock."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_timeout
        for step in range(1_000_000):
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                left = deadline - loop.time()
                if left <= 0:
                    raise
                await asyncio.sleep(min(left, BUSY_RETRY[min(step, len(BUSY_RETRY) - 1)]))

    async def _commit(self, batch: list[tuple[QueuedMessage | Job, asyncio.Future[Any]]]) -> None:
        assert self._db is not None
        db = self._db
        messages = [m for m, _ in batch if isinstance(m, QueuedMessage)]
        results: list[Any] = []
        try:
            await self._begin(db)
            try:
                if messages:
                    insert_messages(db, messages, self.deferred_until)
                for item, _ in batch:
                    results.append(None if isinstance(item, QueuedMessage) else item(db))
                # The fsync happens in COMMIT. Under CPU pressure it runs in the store's own thread
                # (sqlite3 releases the GIL there), so the loop goes on receiving what becomes the
                # next batch meanwhile. Otherwise here: the thread's answer waits for the GIL
                # behind a busy loop, which tripled commit latency at 300 msgs/s (issue 8).
                if self._pressed:
                    assert self._loop is not None
                    await self._loop.run_in_executor(self._syncer, db.execute, "COMMIT")
                else:
                    db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        except Exception as exc:  # any failure must reach every waiting session as 452
            if self.healthy:
                log.error("store: commit of %d item(s) failed: %s", len(batch), exc)
            self.healthy = False
            if self._on_commit is not None:
                self._on_commit(False)
            error = StoreUnavailable(str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        if not self.healthy:
            log.warning("store: commits succeed again")
        self.healthy = True
        self.commits += 1
        if self._on_commit is not None:
            self._on_commit(True)
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)


def insert_messages(db: sqlite3.Connection, messages: list[QueuedMessage],
                    deferred_until: Callable[[str, float], tuple[float, str] | None] | None = None) -> None:
    db.executemany(
        "INSERT INTO messages (id, account_id, username, mail_from, sender_domain, size, created_at,"
        " client_address, tls, header_message_id, tag, body) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [(m.id, m.account_id, m.username, m.mail_from, recipient_domain(m.mail_from) if m.mail_from else None,
          len(m.body), m.created_at, m.client_address, m.tls, m.header_message_id, m.tag, m.body)
         for m in messages])
    # One `accepted` event per recipient, in the same transaction (bounces we generate are not
    # a tenant's sending: no events for them).
    accepted = [
        ("accepted", m.created_at, m.account_id, m.id, rcpt, recipient_domain(m.mail_from), recipient_domain(rcpt),
         None, m.tag, events.data(**{"from": m.mail_from, "message_id": m.header_message_id, "size": len(m.body)}))
        for m in messages if m.mail_from for rcpt in m.recipients]
    if accepted:
        db.executemany(events.INSERT, accepted)
    rows = []
    for m in messages:
        for i, rcpt in enumerate(m.recipients):
            domain = recipient_domain(rcpt)
            later = deferred_until(domain, m.created_at) if deferred_until is not None else None
            rows.append((m.id, rcpt, domain, "queued", later[0] if later else m.created_at, m.created_at,
                         m.bodies[i] if m.bodies else None, f"delivery temporarily suspended: {later[1]}"
                         if later else None))
    db.executemany(
        "INSERT INTO recipients (message_id, address, domain, state, next_attempt_at, updated_at, body, last_reply)"
        " VALUES (?,?,?,?,?,?,?,?)", rows)
    sends = [(m.account_id, rcpt, m.created_at) for m in messages if m.account_id is not None and m.mail_from
             for rcpt in m.recipients]  # DSNs (null sender) are not the account's sending
    if sends:
        db.executemany("INSERT INTO sends (account_id, address, at) VALUES (?,?,?)", sends)


class SendsHistory:
    """The sending limits' history of one recipient (policy.limits.SendHistory): the `sends`
    rows the enqueue transaction wrote, by index (account, address, at). Read on the back end's
    loop through a reader connection; in WAL mode it never waits for the writer."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def recent(self, account_id: int, address: str, since: float) -> tuple[int, float | None]:
        count, oldest = self.conn.execute("SELECT count(*), min(at) FROM sends WHERE account_id = ? AND address = ?"
                                          " AND at > ?", (account_id, address, since)).fetchone()
        return int(count), oldest

    def committed(self, reservations: list[Any], at: float) -> None:
        """Nothing to do: the rows were written in the enqueue transaction."""


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction open (BEGIN itself failed): nothing to undo


DISPLAY_STATE = ("CASE WHEN r.state = 'queued' AND r.throttled_since IS NOT NULL THEN 'throttled'"
                 " WHEN r.state = 'queued' AND r.attempts > 0 THEN 'deferred' ELSE r.state END")
STATES = ("queued", "deferred", "throttled", "active", "hold", "delivered", "bounced", "expired")


UNFINISHED = ("queued", "active", "hold")
FINISHED = ("delivered", "bounced", "expired")
# A shown state is a stored state, sometimes with a condition (DISPLAY_STATE).
_SHOWN = {"queued": ("queued", "r.attempts = 0 AND r.throttled_since IS NULL"),
          "deferred": ("queued", "r.attempts > 0 AND r.throttled_since IS NULL"),
          "throttled": ("queued", "r.throttled_since IS NOT NULL")}


def list_queue(conn: sqlite3.Connection, state: str | None = None, domain: str | None = None,
               limit: int = 1000, include_finished: bool = False) -> list[QueueEntry]:
    """Messages with their recipients, oldest first (for `queue list`). Without a state,
    only what is still in the queue (like mailq); `include_finished` adds the rest.

    The oldest `limit` message ids are found per stored state through the indexes
    (state, message_id) and (domain, state, message_id), which yield them in order: the
    cost follows `limit`, not the depth of the queue (issue 8: a million recipients)."""
    if state is not None:
        stored, condition = _SHOWN.get(state, (state, None))
        wanted = [(stored, condition)]
    else:
        wanted = [(s, None) for s in UNFINISHED + (FINISHED if include_finished else ())]
    domain = domain.lower() if domain else None
    ids: set[str] = set()
    for stored, condition in wanted:
        sql = ("SELECT DISTINCT r.message_id FROM recipients r WHERE r.state = ?" + (" AND r.domain = ?" if domain else "")
               + (f" AND {condition}" if condition else "") + " ORDER BY r.message_id LIMIT ?")
        ids.update(row[0] for row in conn.execute(sql, (stored, *([domain] if domain else []), limit)))
    chosen = sorted(ids)[:limit]
    if not chosen:
        return []
    where = [f"m.id IN ({','.join('?' * len(chosen))})"]
    args: list[object] = list(chosen)
    if state:
        where.append(f"{DISPLAY_STATE} = ?")
        args.append(state)
    elif not include_finished:
        where.append("r.state NOT IN ('delivered', 'bounced', 'expired')")
    if domain:
        where.append("r.domain = ?")
        args.append(domain)
    sql = ("SELECT m.id, m.created_at, m.size, m.mail_from, group_concat(r.address, char(10)),"
           f" group_concat(DISTINCT {DISPLAY_STATE}), max(r.last_reply)"
           " FROM messages m JOIN recipients r ON r.message_id = m.id WHERE " + " AND ".join(where)
           + " GROUP BY m.id ORDER BY m.id")
    rows = conn.execute(sql, args).fetchall()
    return [QueueEntry(id=r[0], created_at=r[1], size=r[2], mail_from=r[3],
                       recipients=tuple(r[4].split("\n")), state=r[5], last_reply=r[6])
            for r in rows]


def show_message(conn: sqlite3.Connection, queue_id: str) -> dict[str, object] | None:
    row = conn.execute("SELECT id, account_id, username, mail_from, size, created_at, client_address,"
                       " tls, header_message_id FROM messages WHERE id = ?", (queue_id,)).fetchone()
    if row is None:
        return None
    rcpts = conn.execute(f"SELECT r.id, r.address, {DISPLAY_STATE}, r.attempts, r.next_attempt_at, r.last_reply,"
                         " r.bounce_class FROM recipients r WHERE r.message_id = ? ORDER BY r.id",
                         (queue_id,)).fetchall()
    account = None
    if row[1] is not None:
        found = conn.execute("SELECT name FROM accounts WHERE id = ?", (row[1],)).fetchone()
        account = found[0] if found else None
    recipients = []
    for r in rcpts:
        attempts = [{"at": a[0], "result": a[1], "relay": a[2], "tls": a[3], "reply": a[4], "bounce_class": a[5]}
                    for a in conn.execute("SELECT at, result, relay, tls, reply, bounce_class FROM attempts"
                                          " WHERE recipient_id = ? ORDER BY id", (r[0],))]
        recipients.append({"address": r[1], "state": r[2], "attempts": r[3], "next_attempt_at": r[4],
                           "last_reply": r[5], "bounce_class": r[6], "history": attempts})
    return {
        "id": row[0], "account": account, "username": row[2], "from": row[3], "size": row[4],
        "created_at": row[5], "client_address": row[6], "tls": row[7], "message_id": row[8],
        "recipients": recipients,
    }


def read_body(conn: sqlite3.Connection, queue_id: str) -> bytes | None:
    row = conn.execute("SELECT body FROM messages WHERE id = ?", (queue_id,)).fetchone()
    return None if row is None else bytes(row[0])
