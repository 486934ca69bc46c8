"""The catalog in PostgreSQL (cluster mode, issue 20): what every CLI command, the admin API and
the console write and read when `[cluster] postgres` is set.

Owns: `ClusterCatalog`, the catalog.Catalog of cluster mode. It runs the SQLite catalog's own
statements on PostgreSQL (through `PgConnection`, which speaks the sqlite3 connection's small
dialect: `?` parameters, rows by index or name, `IS ?`), overriding the few that differ. The
parts that are a node's own state stay in the node's store: recipient groups and sending tasks
(a task runs on the node it was made on), warm-up counters (the scheduler's state) and IP
warm-up, and the recipients a resume releases. Templates (schema 4) and warm-up days an
operator sets (schema 5) are shared. DKIM private keys go to
PostgreSQL encrypted with `[cluster] key_file` (cluster.secrets), so every node can sign.

Must never: decide anything (the services do); run on an event loop (it is synchronous, as
the services are; the back end's mirror is cluster.mirror).
"""
from __future__ import annotations

import logging
import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from smtprelay.catalog.records import Login, SenderDomain, WebhookRecord
from smtprelay.catalog.sqlite import BLOCK_COLUMNS, SqliteCatalog
from smtprelay.cluster import secrets
from smtprelay.config import Config
from smtprelay.policy.blocklist import Entry

log = logging.getLogger("smtprelay.cluster")

_IS_PARAM = re.compile(r"\bIS \?")


class PgRow(tuple):     # type: ignore[type-arg]
    """A row read by index (like a tuple) or by column name (like sqlite3.Row)."""
    names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:     # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


def _row_factory(cursor: Any) -> Any:
    names = {c.name: i for i, c in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> PgRow:
        row = PgRow(values)
        row.names = names
        return row
    return make


def translate(sql: str) -> str:
    """The sqlite3 dialect the catalog's statements use, in psycopg's: `IS ?` (NULL-safe
    equality) is `IS NOT DISTINCT FROM`, `?` is `%s`, a literal `%` is doubled."""
    return _IS_PARAM.sub("IS NOT DISTINCT FROM ?", sql).replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection behind the few calls the catalog makes on a sqlite3 connection,
    opened at the first statement (a command that reads only the node's store, `queue list`,
    works while PostgreSQL is down)."""

    def __init__(self, url: str):
        self.url = url
        self._pg: Any = None

    @property
    def pg(self) -> Any:
        if self._pg is None:
            self._pg = connect(self.url)
        return self._pg

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.pg.execute(translate(sql), tuple(params))

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None


def connect(url: str, timeout: float = 5.0) -> Any:
    """A psycopg connection in autocommit (each write applied at once, unless in transaction()),
    to a catalog at this smtprelay's schema version; StoreUnavailable saying why not."""
    import psycopg
    from smtprelay.cluster import pg_schema
    from smtprelay.errors import StoreUnavailable
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)), row_factory=_row_factory,
                               application_name="smtprelay")
    except psycopg.Error as exc:
        raise StoreUnavailable(f"the cluster's PostgreSQL could not be reached: {_first_line(exc)}") from None
    try:
        pg_schema.check_current(conn)
    except RuntimeError as exc:
        conn.close()
        raise StoreUnavailable(str(exc)) from None
    return conn


def connect_any(url: str, timeout: float = 5.0) -> Any:
    """Like connect, at whatever schema version (`cluster migrate`)."""
    import psycopg
    from smtprelay.errors import StoreUnavailable
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)), row_factory=_row_factory,
                               application_name="smtprelay")
    except psycopg.Error as exc:
        raise StoreUnavailable(f"the cluster's PostgreSQL could not be reached: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# What stays in the node's store (module docstring): these methods run on the local catalog.
LOCAL = ("insert_group", "set_group_size", "find_groups", "groups",
         "group_rows", "delete_group", "open_tasks_using", "insert_task", "find_task", "tasks", "set_task_held",
         "cancel_task", "task_runs", "warmup_pairs", "ip_warmup_pairs", "set_ip_warmup_day",
         "version", "logins", "senders")


class ClusterCatalog(SqliteCatalog):
    """catalog.Catalog on PostgreSQL, with the node's own parts on its store (LOCAL)."""

    def __init__(self, config: Config, local: sqlite3.Connection):
        import psycopg
        assert config.cluster.postgres is not None
        self.remote = PgConnection(config.cluster.postgres)
        super().__init__(self.remote)      # type: ignore[arg-type]
        self.config = config
        self.local = SqliteCatalog(local)
        self.errors = (psycopg.Error, sqlite3.Error)
        self.integrity_error = psycopg.errors.IntegrityError

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.remote.pg.transaction():
            yield

    # A refused INSERT would abort the caller's transaction in PostgreSQL: ON CONFLICT instead.
    def insert_account(self, name: str, daily_quota: int | None, rate_per_second: float | None, now: float) -> bool:
        return bool(self.conn.execute("INSERT INTO accounts (name, daily_quota, rate_per_second, created_at)"
                                      " VALUES (?,?,?,?) ON CONFLICT (name) DO NOTHING",
                                      (name, daily_quota, rate_per_second, now)).rowcount)

    def insert_address(self, address: str, domain_id: int, display_name: str | None, now: float) -> bool:
        return bool(self.conn.execute("INSERT INTO addresses (address, domain_id, display_name, created_at)"
                                      " VALUES (?,?,?,?) ON CONFLICT (address) DO NOTHING",
                                      (address, domain_id, display_name, now)).rowcount)

    def insert_console_user(self, name: str, account_id: int | None, read_only: bool, digest: str,
                            now: float) -> bool:
        return bool(self.conn.execute("INSERT INTO console_users (name, account_id, read_only, password_digest,"
                                      " created_at) VALUES (?,?,?,?,?) ON CONFLICT (name) DO NOTHING",
                                      (name, account_id, int(read_only), digest, now)).rowcount)

    def insert_template(self, account_id: int, name: str, description: str | None, parts: dict[str, str | None],
                        variables: list[str], now: float) -> int | None:
        row = self.conn.execute(
            "INSERT INTO templates (account_id, name, description, version, status, created_at, updated_at)"
            " VALUES (?, ?, ?, 1, 'active', ?, ?) ON CONFLICT (account_id, name) WHERE deleted_at IS NULL DO NOTHING"
            " RETURNING id", (account_id, name, description, now, now)).fetchone()
        if row is None:
            return None
        self._insert_version(int(row[0]), 1, parts, variables, now)
        return int(row[0])

    def rename_template(self, template_id: int, name: str, now: float) -> bool:
        try:
            with self.remote.pg.transaction():      # a savepoint: a taken name leaves the caller's transaction usable
                self.conn.execute("UPDATE templates SET name = ?, updated_at = ? WHERE id = ?", (name, now, template_id))
        except self.integrity_error:
            return False
        return True

    def set_warmup_day(self, sender_domain: str, provider: str, day: int, today: str, now: float) -> None:
        """For every node: each applies it to its own pair when its copy arrives (store migration 18)."""
        self.conn.execute("INSERT INTO warmup_days (sender_domain, provider, day, day_date, set_at) VALUES (?,?,?,?,?)"
                          " ON CONFLICT (sender_domain, provider) DO UPDATE SET day = excluded.day, day_date ="
                          " excluded.day_date, set_at = excluded.set_at", (sender_domain, provider, day, today, now))
        self.local.set_warmup_day(sender_domain, provider, day, today, now)     # this node at once

    def insert_domain(self, name: str, account_id: int, status: str, now: float) -> int:
        return int(self.conn.execute("INSERT INTO domains (name, account_id, status, created_at) VALUES (?,?,?,?)"
                                     " RETURNING id", (name, account_id, status, now)).fetchone()[0])

    def insert_key(self, domain_id: int, selector: str, algorithm: str, public_key: str, state: str,
                   now: float) -> None:
        """With the private key the domain service has just written, encrypted: every node signs with it."""
        from smtprelay.dkim import keys as dkim_keys
        super().insert_key(domain_id, selector, algorithm, public_key, state, now)
        name = self.conn.execute("SELECT name FROM domains WHERE id = ?", (domain_id,)).fetchone()[0]
        pem = dkim_keys.key_path(self.config.server.data_dir, name, selector).read_bytes()
        self.conn.execute("UPDATE dkim_keys SET private_key = ? WHERE domain_id = ? AND selector = ?",
                          (secrets.seal(self.config.cluster.key_file, pem), domain_id, selector))

    def insert_block(self, address: str, type_: str, account_id: int | None, sender_domain: str | None,
                     origin_account_id: int | None, reason: str, note: str | None, now: float,
                     expires_at: float | None) -> Entry:
        return Entry(*self.conn.execute(
            "INSERT INTO blocklist (address, type, account_id, sender_domain, origin_account_id, reason, note,"
            f" created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?) RETURNING {BLOCK_COLUMNS}",
            (address, type_, account_id, sender_domain, origin_account_id, reason, note, now, expires_at)).fetchone())

    def allow(self, account_id: int, address: str, now: float) -> None:
        self.conn.execute("INSERT INTO allowlist (account_id, address, created_at) VALUES (?,?,?)"
                          " ON CONFLICT DO NOTHING", (account_id, address, now))

    def webhooks(self) -> list[WebhookRecord]:
        """The hooks from the catalog; pending and dead deliveries from this node's outbox."""
        counts = {(r[0], r[1]): (r[2], r[3]) for r in self.local.conn.execute(
            "SELECT account_id, url, sum(state = 'pending'), sum(state = 'dead') FROM outbox"
            " WHERE state IN ('pending', 'dead') GROUP BY account_id, url")}
        hooks = []
        for r in self.conn.execute("SELECT a.name, w.address, w.url, w.created_at, w.account_id FROM webhooks w"
                                   " JOIN accounts a ON a.id = w.account_id ORDER BY a.name, w.address"):
            pending, dead = counts.get((r[4], r[2]), (0, 0))
            hooks.append(WebhookRecord(r[0], r[1], r[2], r[3], int(pending or 0), int(dead or 0)))
        return hooks

    def resume_domain(self, sender_domain: str, now: float) -> int:
        """Lifted in the catalog; this node queues its held recipients again now, the others when
        their mirror sees the suspension gone (cluster.mirror)."""
        self.conn.execute("UPDATE domains SET suspended_at = NULL, suspended_reason = NULL, resumed_at = ?"
                          " WHERE name = ?", (now, sender_domain))
        return self.local.resume_domain(sender_domain, now)

    def resume_account(self, account_id: int, now: float) -> int:
        self.conn.execute("UPDATE accounts SET suspended_at = NULL, suspended_reason = NULL, content_resumed_at = ?"
                          " WHERE id = ?", (now, account_id))
        return self.local.resume_account(account_id, now)

    def try_exclusive(self, name: str) -> bool:
        """Whether this connection now holds the cluster-wide lock `name` (held until it closes):
        one node at a time re-verifies the due domains (they read one due list: last_checked_at)."""
        return bool(self.conn.execute("SELECT pg_try_advisory_lock(hashtext(?))", (f"smtprelay {name}",)).fetchone()[0])

    def shared_events(self) -> tuple[PgConnection, str]:
        """The cluster's events (every node forwards its own: cluster.mirror), and this node's
        name: `stats` and `status` answer for the whole cluster (services.reports)."""
        return self.remote, self.config.cluster.node

    # What a front-end worker loads is its store's mirror (LOCAL).
    def version(self) -> int:
        return self.local.version()

    def logins(self) -> tuple[dict[str, Login], dict[str, int]]:
        return self.local.logins()

    def senders(self, data_dir: Path) -> tuple[dict[str, SenderDomain], dict[str, str | None]]:
        return self.local.senders(data_dir)

    def close(self) -> None:
        self.remote.close()


def _delegate(name: str) -> Any:
    def method(self: ClusterCatalog, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.local, name)(*args, **kwargs)
    method.__name__ = name
    method.__doc__ = f"The node's own: {name} on its store."
    return method


for _name in LOCAL:
    if _name not in ClusterCatalog.__dict__:
        setattr(ClusterCatalog, _name, _delegate(_name))
