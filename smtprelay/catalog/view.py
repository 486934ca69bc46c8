"""The catalog's asynchronous side on SQLite: what the back end's refresh reads through its
aiosqlite reader (catalog.CatalogView), one statement per question, never blocking its loop."""
from __future__ import annotations

from typing import Any

from smtprelay.catalog.sqlite import ACCOUNT_ROWS_SQL, ALLOWED_SQL, BLOCK_COLUMNS, VERSIONS_SQL, account_rows
from smtprelay.policy.reputation import AccountRow
from smtprelay.queue.readers import StoreReader


class SqliteCatalogView:
    """The back end's refresh through its aiosqlite reader: one statement per question."""

    def __init__(self, reader: StoreReader):
        self.reader = reader

    async def versions(self) -> dict[str, int]:
        return {key: int(value) for key, value in await self.reader.rows(VERSIONS_SQL)}

    async def account_rows(self) -> dict[int, AccountRow]:
        return account_rows(await self.reader.rows(ACCOUNT_ROWS_SQL))

    async def blocklist_changes(self, since: int, now: float) -> tuple[list[tuple[Any, ...]], set[tuple[int, str]]]:
        """The blocklist's changes after version `since` (every active entry when it is negative),
        in the order they were made, in one statement (one snapshot): (rev, id, the entry's
        columns or None for a deletion); and the allow list, whole (it is small)."""
        if since < 0:
            rows = await self.reader.rows(f"SELECT rev, {BLOCK_COLUMNS} FROM blocklist"
                                          " WHERE expires_at IS NULL OR expires_at > ?", (now,))
        else:
            rows = await self.reader.rows(
                f"SELECT rev, {BLOCK_COLUMNS} FROM blocklist WHERE rev > ?"
                " UNION ALL SELECT rev, entry_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
                " FROM blocklist_deleted WHERE rev > ? ORDER BY 1", (since, since))
        return rows, {(r[0], r[1]) for r in await self.reader.rows(ALLOWED_SQL)}
