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
commit rate. Here a whole batch is a few hundred microseconds of C on the loop. The COMMIT,
which holds the fsync, runs on the loop too unless the store is *pressed* (CPU limits
throughput, see _gather): then it runs in the store's one thread (one hop per batch), so the
loop keeps receiving what becomes the next batch while the disk syncs. Jobs must therefore
stay short (chunked), and waiting for another process's write lock never blocks the loop:
BEGIN is retried with asynchronous sleeps until `server.store_busy_timeout`.

Must never: decide policy. A failed commit fails every message of that batch with
StoreUnavailable and leaves everything committed before untouched.
"""
from __future__ import annotations

import asyncio
import os
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from smtprelay.events import types as events
from smtprelay.queue import schema
from smtprelay.queue.wal import WalKeeper

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
    template: tuple[int, int] | None = None   # (id, version) of the template it was rendered from
    task: tuple[int, int, int] | None = None  # (task, run, group row) of the sending task that made it
    hold: str | None = None         # accepted but held for an operator (a spam score): why

    def fields(self) -> tuple[Any, ...]:
        """The fields in order, for the workers' channel: a tuple unpickles several times faster
        than a frozen dataclass with slots, which restores itself field by field."""
        return (self.id, self.account_id, self.username, self.mail_from, self.recipients, self.body,
                self.created_at, self.client_address, self.tls, self.header_message_id, self.tag, self.bodies,
                self.template, self.task, self.hold)


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


Job = Callable[[sqlite3.Connection], Any]      # runs inside the group commit, synchronously

BUSY_RETRY = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)   # then every 50 ms
CHECKPOINT_SECONDS = 1.0
# Past this the WAL is restarted (see queue.wal); the file is cut back to it after.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
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

    def note(self, items: int) -> None:
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
                 on_commit: Callable[[bool], None] | None = None, commit_window: float = 0.0,
                 checkpoint_seconds: float = CHECKPOINT_SECONDS, wal_limit_bytes: int = WAL_LIMIT_BYTES):
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
        # Whether a message can be committed now (what /healthz reports): false from a failed
        # commit holding messages until one holding messages succeeds — a small background job
        # that still fits on a full disk proves nothing — or until the disk has room again.
        self._messages_ok = True
        self._jobs_ok = True
        self.on_enqueued: Callable[[], None] | None = None   # the scheduler's wake-up
        # The scheduler's dead destinations: new mail for them is queued already deferred.
        self.deferred_until: Callable[[str, float], tuple[float, str] | None] | None = None
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="store-sync")
        self._rate = ArrivalRate()
        self._oldest = 0.0        # when the oldest pending item arrived (loop time)
        self._pressed = False     # see _gather
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commit_window = commit_window     # server.commit_window: see _gather
        # With server.max_store_bytes the cap holds the database and its WAL: the WAL is
        # restarted at a quarter of the cap (at most wal_limit_bytes) and the database may use
        # the rest; a message commit that would take the two past the cap gets 452.
        self._wal_limit = min(wal_limit_bytes, max(256 * 1024, max_store_bytes // 4)) if max_store_bytes \
            else wal_limit_bytes
        self._wal_path = Path(f"{self._path}-wal")
        self._page_size = 4096
        self._max_pages = 0
        self._wal = WalKeeper(data_dir, checkpoint_seconds, self._wal_limit)

    @property
    def wal_restarts(self) -> int:
        """RESTART checkpoints that succeeded (for tests)."""
        return self._wal.restarts

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
        # the background every second (queue.wal), not inside a commit every 1000 pages:
        # pages rewritten by many commits are then copied once.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        # When the WAL restarts from its beginning, the file is cut back to this size.
        db.execute(f"PRAGMA journal_size_limit = {self._wal_limit}")
        if self._max_store_bytes:
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            self._page_size = page_size
            self._max_pages = max(1, (self._max_store_bytes - self._wal_limit) // page_size)
            db.execute(f"PRAGMA max_page_count = {self._max_pages}")
        self._db = db
        self._loop = asyncio.get_running_loop()
        self._committer = asyncio.create_task(self._commit_loop(), name="queue-committer")
        self._checkpointer = asyncio.create_task(self._wal.run(), name="wal-checkpoint")

    async def close(self) -> None:
        """Commit what is pending, then close."""
        self._closing = True
        self._wake.set()
        if self._committer is not None:
            await self._committer
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        self._wal.close()
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
                if self._wal.restart_due:
                    await self._wal.restart()
                await self._gather(loop)
                batch = self._take_batch()
                await self._commit(batch)
                self._rate.note(len(batch))
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

    def _used(self, db: sqlite3.Connection) -> int:
        """The database's pages and its WAL file, in bytes (what server.max_store_bytes caps)."""
        used = int(db.execute("PRAGMA page_count").fetchone()[0]) * self._page_size
        try:
            used += self._wal_path.stat().st_size
        except FileNotFoundError:
            pass
        return used

    def _check_room(self, db: sqlite3.Connection, messages: list[QueuedMessage]) -> None:
        """server.max_store_bytes counts the database and its WAL: refuse (452) a batch of
        messages that would take them past it. The estimate is generous (pages and WAL frames)."""
        used = self._used(db)
        incoming = sum(len(m.body) + sum(len(b) for b in m.bodies or ()) for m in messages) * 5 // 4 + 16384
        # The WAL's share of the cap is its own: the database file alone may not pass max_page_count.
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        if used + incoming > self._max_store_bytes or (pages + 1) * self._page_size + incoming > \
                self._max_pages * self._page_size:
            raise sqlite3.OperationalError(f"the store is at server.max_store_bytes ({self._max_store_bytes} bytes, "
                                           f"database and WAL {used} bytes)")

    @property
    def healthy(self) -> bool:
        """Whether a message commit can succeed now: none has failed since the last that
        succeeded, or the disk (and the store's own cap) has room again."""
        if self._messages_ok:
            return True
        try:
            stat = os.statvfs(self._data_dir)
        except OSError:
            return False
        if stat.f_bavail * stat.f_frsize < _ROOM_BYTES:
            return False
        if self._max_store_bytes and self._db is not None:
            try:
                used = self._used(self._db)
                pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            except sqlite3.Error:
                return False
            margin = min(_ROOM_BYTES // 4, self._max_store_bytes // 10)
            return used + margin < self._max_store_bytes and \
                pages * self._page_size + margin < self._max_pages * self._page_size
        return True

    async def _commit(self, batch: list[tuple[QueuedMessage | Job, asyncio.Future[Any]]]) -> None:
        assert self._db is not None
        db = self._db
        messages = [m for m, _ in batch if isinstance(m, QueuedMessage)]
        results: list[Any] = []
        try:
            if messages and self._max_store_bytes:
                self._check_room(db, messages)
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
            if messages and self._messages_ok:
                log.error("store: failing: messages cannot be committed (%s); they get 452 4.3.1", exc)
                self._messages_ok = False
            elif not messages and self._jobs_ok and self._messages_ok:
                log.warning("store: a background commit failed (%s); it is retried", exc)
            if not messages:
                self._jobs_ok = False
            if self._on_commit is not None:
                self._on_commit(False)
            error = StoreUnavailable(str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        if messages and not self._messages_ok:
            log.warning("store: recovered: messages are committed again")
            self._messages_ok = True
        self._jobs_ok = True
        self.commits += 1
        if self._on_commit is not None:
            self._on_commit(True)
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)


_ROOM_BYTES = 16 * 1024 * 1024     # free disk under which a failed message store stays "failing"


def insert_messages(db: sqlite3.Connection, messages: list[QueuedMessage],
                    deferred_until: Callable[[str, float], tuple[float, str] | None] | None = None) -> None:
    db.executemany(
        "INSERT INTO messages (id, account_id, username, mail_from, sender_domain, size, created_at,"
        " client_address, tls, header_message_id, tag, body, template_id, template_version, task_id, task_run)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [(m.id, m.account_id, m.username, m.mail_from, recipient_domain(m.mail_from) if m.mail_from else None,
          len(m.body), m.created_at, m.client_address, m.tls, m.header_message_id, m.tag, m.body,
          *(m.template or (None, None)), *(m.task[:2] if m.task else (None, None))) for m in messages])
    # A task's row is recorded with its message: committed together, or neither (issue 17).
    rows_done = [(*m.task, m.id, m.created_at) for m in messages if m.task]
    if rows_done:
        db.executemany("INSERT INTO task_rows (task_id, run, row, result, queue_id, at) VALUES (?,?,?,'accepted',?,?)"
                       " ON CONFLICT DO UPDATE SET result = 'accepted', queue_id = excluded.queue_id, reply = NULL,"
                       " at = excluded.at", rows_done)
    # One `accepted` event per recipient, in the same transaction (bounces we generate are not
    # a tenant's sending: no events for them).
    accepted = [
        ("accepted", m.created_at, m.account_id, m.id, rcpt, recipient_domain(m.mail_from), recipient_domain(rcpt),
         None, m.tag, events.data(**{"from": m.mail_from, "message_id": m.header_message_id, "size": len(m.body)}),
         *(m.template or (None, None)), *(m.task[:2] if m.task else (None, None)))
        for m in messages if m.mail_from for rcpt in m.recipients]
    if accepted:
        db.executemany(events.INSERT_WITH_TEMPLATE, accepted)
    rows = []
    for m in messages:
        for i, rcpt in enumerate(m.recipients):
            domain = recipient_domain(rcpt)
            later = deferred_until(domain, m.created_at) if deferred_until is not None else None
            rows.append((m.id, rcpt, domain, "hold" if m.hold else "queued", later[0] if later else m.created_at,
                         m.created_at, m.bodies[i] if m.bodies else None, f"delivery temporarily suspended: {later[1]}"
                         if later else None, m.hold))
    db.executemany(
        "INSERT INTO recipients (message_id, address, domain, state, next_attempt_at, updated_at, body, last_reply,"
        " hold_reason) VALUES (?,?,?,?,?,?,?,?,?)", rows)
    _hold_if_suspended(db, messages)
    sends = [(m.account_id, rcpt, m.created_at) for m in messages if m.account_id is not None and m.mail_from
             for rcpt in m.recipients]  # DSNs (null sender) are not the account's sending
    if sends:
        db.executemany("INSERT INTO sends (account_id, address, at) VALUES (?,?,?)", sends)


SUSPENDED_HOLD = "account suspended"      # hold_reason of an account's mail while it is suspended


def _hold_if_suspended(db: sqlite3.Connection, messages: list[QueuedMessage]) -> None:
    """A front-end worker learns of a content suspension on its next reload (within about a
    second): what it accepted meanwhile is held here, in the enqueue transaction, like the mail
    the suspension found queued, and `account resume` releases both."""
    accounts = sorted({m.account_id for m in messages if m.account_id is not None and m.mail_from})
    if not accounts:
        return
    suspended = {r[0] for r in db.execute(
        f"SELECT id FROM accounts WHERE suspended_at IS NOT NULL AND id IN ({','.join('?' * len(accounts))})",
        accounts)}
    if not suspended:
        return
    ids = [m.id for m in messages if m.account_id in suspended and m.mail_from]
    db.execute(f"UPDATE recipients SET state = 'hold', hold_reason = ? WHERE state = 'queued'"
               f" AND message_id IN ({','.join('?' * len(ids))})", (SUSPENDED_HOLD, *ids))


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
