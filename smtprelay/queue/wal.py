"""Keeping the store's write-ahead log bounded (issue 8): PASSIVE checkpoints in the background
on a connection of their own, and a RESTART checkpoint between two group commits once the WAL
holds three quarters of its limit. Owned by the QueueStore, which runs `run()` as a task and
calls `restart()` from its commit loop when `restart_due`.

Must never: write data, or close a connection a thread still uses.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

from smtprelay.queue import schema

log = logging.getLogger("smtprelay.queue")


class WalKeeper:
    def __init__(self, data_dir: Path, every: float, limit: int):
        self.data_dir = data_dir
        self.every = every
        self.limit = limit
        self.restart_due = False
        self.restarts = 0         # RESTART checkpoints that succeeded (for tests)
        self._restarter: sqlite3.Connection | None = None

    def close(self) -> None:
        """After the commit loop ended (nothing calls restart() any more)."""
        if self._restarter is not None:
            self._restarter.close()
            self._restarter = None

    async def run(self) -> None:
        """PASSIVE checkpoints on a connection of their own, in a thread: they never block the
        writer (frames still needed by a reader stay in the WAL for the next round). When the
        WAL holds more than three quarters of `wal_limit_bytes`, the commit loop is asked to
        restart it (restart()). At close, the writer's connection checkpoints and truncates the WAL as
        SQLite always does."""
        conn = await asyncio.to_thread(schema.reader, self.data_dir)
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])

        def checkpoint() -> bool:
            # The frames in use, not the file's size (kept at the limit once reached): restarting
            # at three quarters leaves a second's writes of room before the file must grow
            # (issue 24: a 30-min soak saw it reach 99 MB on a 64 MiB limit).
            _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return frames * page_size > self.limit * 3 // 4
        try:
            while True:
                await asyncio.sleep(self.every)
                job = asyncio.ensure_future(asyncio.to_thread(checkpoint))
                try:
                    if await asyncio.shield(job):
                        self.restart_due = True
                except sqlite3.Error as exc:
                    log.warning("store: WAL checkpoint failed (%s); trying again", exc)
                except asyncio.CancelledError:
                    # The thread still uses the connection: closing it under the thread crashed
                    # the process (a segfault at close in a test run).
                    await asyncio.wait([job])
                    raise
        finally:
            conn.close()

    async def restart(self) -> None:
        """Between two commits: a RESTART checkpoint, so the next commit writes the WAL from its
        beginning (and cuts the file back to `wal_limit_bytes`). Under continuous writes a
        PASSIVE checkpoint is never complete when the next commit starts — frames arrived while
        it copied — and SQLite restarts the WAL only when it is: the file grew without bound
        (issue 8: 670 MB after 8 000 messages of 50 recipients, and the WAL index mapped by
        every process with it). Racing the writer from another thread loses (the writer takes
        the lock again at once), so the commit loop waits for it instead: the PASSIVE rounds
        already copied almost everything, so this takes milliseconds, and what arrives
        meanwhile goes into the next group commit."""
        self.restart_due = False
        if self._restarter is None:
            self._restarter = await asyncio.to_thread(schema.reader, self.data_dir)
            self._restarter.execute("PRAGMA busy_timeout = 200")   # for readers to move on
        conn = self._restarter
        started = time.monotonic()
        try:
            busy = await asyncio.to_thread(lambda: conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0])
        except sqlite3.Error as exc:
            log.warning("store: WAL restart failed (%s); trying again later", exc)
            return
        if not busy:
            self.restarts += 1
        log.debug("store: WAL restart %s in %.1f ms", "busy" if busy else "done", (time.monotonic() - started) * 1000)
