"""What `smtprelay cluster ...` does: migrate the PostgreSQL catalog (and move a single node's
catalog into it), and list the nodes by their heartbeats.

Must never: run while a node of the cluster is the one being imported from (the import reads
the node's store as it is; stop that node first, as the README says).
"""
from __future__ import annotations

import logging
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from smtprelay.cluster import catalog as cluster_catalog, pg_schema, secrets
from smtprelay.cluster.mirror import SILENT_AFTER
from smtprelay.config import Config
from smtprelay.errors import NotFound, Refused, StoreUnavailable

log = logging.getLogger("smtprelay.cluster")

# Not mirrored to the nodes, but part of the catalog a single node moves into the cluster.
_IMPORTED_TOO = (pg_schema.Mirrored("console_users", ("id",), ("id", "name", "account_id", "read_only",
                                                                "password_digest", "created_at", "last_login_at")),)


def _connect(config: Config) -> Any:
    url = config.cluster.postgres
    if url is None:
        raise Refused("this node is not in cluster mode: set [cluster] postgres in relay.toml first")
    return cluster_catalog.connect_any(url)


@dataclass(frozen=True)
class Migrated:
    before: int
    after: int
    imported: dict[str, int]


def migrate(config: Config, local: sqlite3.Connection | None) -> Migrated:
    """Bring the PostgreSQL catalog to this version; with `local`, copy this node's catalog into
    it (only into an empty one: ids are kept, so this node's spool keeps pointing at its rows)."""
    import psycopg
    pg = _connect(config)
    try:
        try:
            before, after = pg_schema.migrate(pg)
        except RuntimeError as exc:
            raise Refused(str(exc)) from None
        imported = _import(config, pg, local) if local is not None else {}
    except psycopg.Error as exc:
        raise StoreUnavailable(f"the cluster's PostgreSQL refused the migration: {str(exc).strip()}") from None
    finally:
        pg.close()
    return Migrated(before, after, imported)


def _import(config: Config, pg: Any, local: sqlite3.Connection) -> dict[str, int]:
    from smtprelay.dkim import keys as dkim_keys
    if pg.execute("SELECT count(*) FROM accounts").fetchone()[0]:
        raise Refused("the cluster's catalog already has accounts: --import-local moves a single node's catalog "
                      "into an empty one only (the other nodes join with theirs empty)")
    counts: dict[str, int] = {}
    with pg.transaction():
        for table in (*pg_schema.MIRRORED, *_IMPORTED_TOO):
            rows = local.execute(f"SELECT {', '.join(table.columns)} FROM {table.name}").fetchall()
            if rows:
                with pg.cursor() as cur:
                    cur.executemany(f"INSERT INTO {table.name} ({', '.join(table.columns)}) VALUES"
                                    f" ({', '.join(['%s'] * len(table.columns))})", [tuple(r) for r in rows])
            if "id" in table.columns:
                pg.execute(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'),"
                           f" greatest((SELECT max(id) FROM {table.name}), 1))")
            counts[table.name] = len(rows)
        for domain, selector in local.execute("SELECT d.name, k.selector FROM dkim_keys k JOIN domains d"
                                              " ON d.id = k.domain_id WHERE k.state != 'retired'").fetchall():
            path = dkim_keys.key_path(config.server.data_dir, domain, selector)
            try:
                pem = path.read_bytes()
            except OSError as exc:
                raise Refused(f"the DKIM key {selector} of {domain} cannot be read at {path} ({exc.strerror}): "
                              "nothing was imported") from None
            pg.execute("UPDATE dkim_keys SET private_key = %s FROM domains d WHERE d.id = dkim_keys.domain_id"
                       " AND d.name = %s AND dkim_keys.selector = %s",
                       (secrets.seal(config.cluster.key_file, pem), domain, selector))
    return counts


@dataclass(frozen=True)
class Node:
    name: str
    version: str
    started_at: float
    seen_ago: float         # seconds since its last heartbeat, by PostgreSQL's clock
    queue_depth: int
    catalog_version: int
    redis: str | None           # the node's word on Redis (None: it does not use one)

    @property
    def state(self) -> str:
        return "up" if self.seen_ago < SILENT_AFTER else "silent"


@contextmanager
def _current(config: Config) -> Iterator[Any]:
    """A connection to a catalog at this schema version; its errors as the services' kinds."""
    import psycopg
    pg = _connect(config)
    try:
        pg_schema.check_current(pg)
        yield pg
    except RuntimeError as exc:
        raise Refused(str(exc)) from None
    except psycopg.Error as exc:
        raise StoreUnavailable(f"the cluster's PostgreSQL could not be read: {str(exc).strip()}") from None
    finally:
        pg.close()


def status(config: Config) -> tuple[list[Node], int]:
    """The nodes by their heartbeats, and the catalog's version (a node behind it is syncing)."""
    with _current(config) as pg:
        nodes = [Node(r[0], r[1], float(r[2]), float(r[3]), int(r[4]), int(r[5]), r[6]) for r in pg.execute(
            "SELECT name, version, started_at, extract(epoch FROM now() - seen_at), queue_depth, catalog_version,"
            " redis FROM nodes ORDER BY name")]
        version = int(pg.execute("SELECT value FROM meta WHERE key = 'catalog_version'").fetchone()[0])
    return nodes, version


def forget(config: Config, name: str) -> None:
    """A node taken out of the cluster for good: its heartbeat row goes (`cluster status` stops
    listing it). A node heard of in the last SILENT_AFTER seconds is refused: it is running."""
    with _current(config) as pg:
        row = pg.execute("SELECT extract(epoch FROM now() - seen_at) FROM nodes WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no node named {name} in the cluster")
        if float(row[0]) < SILENT_AFTER:
            raise Refused(f"node {name} was heard from {float(row[0]):.0f}s ago: stop it first")
        pg.execute("DELETE FROM nodes WHERE name = %s", (name,))
        pending = pg.execute("SELECT count(*) FROM feedback_relay WHERE node = %s", (name,)).fetchone()[0]
        if pending:
            log.warning("cluster: %d report(s) handed to node %s were never applied; they are kept", pending, name)
