"""The back end's asynchronous reads of the store, on aiosqlite: the gate's catalog refresh,
the quota history at start, the queue gauges, the tracking handlers' look-ups.

Owns: one aiosqlite connection (its own thread) that only reads (`PRAGMA query_only`), so a
slow query waits in that thread and never blocks the event loop. Each caller sends whole
statements that answer all it needs at once: every `await` is a hop to the reader's thread,
and under a busy loop a hop waits for the GIL (up to the 5 ms switch interval), so the
gauges are one statement, the catalog's two versions one statement.

Must never: write (the store's group-commit writer, queue.store, is the only writer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite

from smtprelay.queue import schema


class StoreReader:
    def __init__(self, conn: aiosqlite.Connection):
        self._conn = conn

    @classmethod
    async def open(cls, data_dir: Path) -> StoreReader:
        conn = await aiosqlite.connect(schema.database_path(data_dir), isolation_level=None, timeout=1.0)
        await conn.execute("PRAGMA busy_timeout = 1000")
        await conn.execute("PRAGMA query_only = 1")
        return cls(conn)

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def row(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        found = await self.rows(sql, params)
        return found[0] if found else None

    async def close(self) -> None:
        await self._conn.close()
