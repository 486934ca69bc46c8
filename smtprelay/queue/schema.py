"""Database file, connection settings and applying the schema migrations (their DDL is in
queue.migrations).

Owns: `PRAGMA user_version`. Every process that opens the store (the server,
each CLI command) goes through `connect()` here, so all of them agree on WAL mode,
synchronous=FULL and the schema version. Migrations are append-only: never edit a
released step, add a new one.

Must never: hold data logic; the queue store and the account service own their SQL.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from smtprelay.queue.migrations import MIGRATIONS

SCHEMA_VERSION = len(MIGRATIONS)


def database_path(data_dir: Path) -> Path:
    return data_dir / "relay.db"


def configure(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Connection settings every opener must use."""
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"could not switch the store to WAL mode (got {mode})")
    # FULL: a commit is on disk when it returns; the 250 after DATA depends on it.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; returns the schema version now in force."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"the store has schema version {version}, newer than this smtprelay "
                           f"({SCHEMA_VERSION}); upgrade smtprelay")
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def _split(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements


def reader(data_dir: Path) -> sqlite3.Connection:
    """A connection for reads in a process whose writer already migrated the store. In WAL
    mode readers never wait for the writer."""
    conn = sqlite3.connect(database_path(data_dir), isolation_level=None, check_same_thread=False, timeout=1.0)
    conn.execute("PRAGMA busy_timeout = 1000")
    return conn


def settled_after_writer_died(data_dir: Path, query: str, args: tuple[object, ...],
                              busy_timeout: float = 5.0) -> bool:
    """Whether `query` finds a row, as a final answer once the store's writer was killed.

    A writer killed inside a commit (in its fsync, the longest part) leaves the transaction
    whole in the WAL but unpublished in the WAL index: connections still open do not see it,
    yet the next *recovery* (the first opener after every connection closed) brings it back.
    A read alone is therefore not an answer. Inside a write transaction the stale index is
    what the next commit builds on, so a commit that writes a frame (user_version rewritten
    with its own value) overwrites the orphan's first frame and breaks its checksum chain: the
    orphan is gone for good, and "not found" is final. Found is final anyway."""
    conn = sqlite3.connect(database_path(data_dir), isolation_level=None, timeout=busy_timeout)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = conn.execute(query, args).fetchone() is not None
            if not found:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return found
    finally:
        conn.close()


def connect(data_dir: Path, busy_timeout: float = 5.0) -> sqlite3.Connection:
    """Open the store synchronously (CLI, readers), creating and migrating it if needed."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(database_path(data_dir), isolation_level=None, timeout=busy_timeout)
    conn.row_factory = sqlite3.Row
    configure(conn, busy_timeout)
    migrate(conn)
    return conn
