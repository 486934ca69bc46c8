"""The shared catalog's schema in PostgreSQL (cluster mode, issue 20): one script per version,
in order, applied by `smtprelay cluster migrate` and kept in `schema_version`, like the
SQLite store's. Append-only: never edit a released step, add a new one.

The tables keep the SQLite store's names, columns and ids, so each node can mirror the
shared rows into its own store unchanged (cluster.mirror): the ids a node's spool records
(messages.account_id, ...) are the cluster's. What PostgreSQL adds:
  - `dkim_keys.private_key`: the key, encrypted with `[cluster] key_file` (cluster.secrets),
    so a node that did not make the key can sign with it;
  - `nodes`: each node's heartbeat (`cluster status`);
  - triggers that bump `catalog_version` / `blocklist_version` and NOTIFY `smtprelay_catalog`
    on every change of a mirrored table, so the nodes learn of it within a second.

Must never: hold data logic, or open a connection (the callers pass theirs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHANNEL = "smtprelay_catalog"


@dataclass(frozen=True)
class Mirrored:
    """A table each node copies into its store: its key columns and the columns copied."""
    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]


# In the order a node applies them (parents first; deletions run in the reverse order).
MIRRORED: tuple[Mirrored, ...] = (
    Mirrored("accounts", ("id",), ("id", "name", "daily_quota", "rate_per_second", "created_at", "delivery_tls",
                                   "level", "level_evaluated_day", "suspended_at", "suspended_reason",
                                   "content_resumed_at", "pool", "pool_fallback")),
    Mirrored("credentials", ("username",), ("username", "account_id", "digest", "created_at", "revoked_at")),
    Mirrored("domains", ("id",), ("id", "name", "account_id", "status", "failing_since", "failing_record",
                                  "verified_at", "last_checked_at", "created_at", "suspended_at", "suspended_reason",
                                  "resumed_at", "pool", "pool_fallback", "return_path_ok")),
    Mirrored("dkim_keys", ("id",), ("id", "domain_id", "selector", "algorithm", "public_key", "state", "created_at",
                                    "activated_at", "retire_at")),
    Mirrored("addresses", ("id",), ("id", "address", "domain_id", "display_name", "created_at")),
    Mirrored("blocklist", ("id",), ("id", "address", "type", "account_id", "sender_domain", "origin_account_id",
                                    "reason", "note", "created_at", "expires_at")),
    Mirrored("allowlist", ("account_id", "address"), ("account_id", "address", "created_at")),
    Mirrored("webhooks", ("id",), ("id", "account_id", "address", "url", "created_at")),
    Mirrored("webhook_secrets", ("id",), ("id", "account_id", "secret", "created_at", "retire_at")),
    Mirrored("tracking_settings", ("id",), ("id", "account_id", "domain", "opens", "clicks", "unsubscribe")),
)

BLOCKLIST_TABLES = ("blocklist", "allowlist")
# Templates (schema 4): shared, so the send API and tasks on any node find them; never deleted
# on a node (a template is only marked deleted; messages and tasks keep naming it).
MIRRORED += (
    Mirrored("templates", ("id",), ("id", "account_id", "name", "description", "version", "status", "status_reason",
                                    "created_at", "updated_at", "deleted_at")),
    Mirrored("template_versions", ("template_id", "version"), ("template_id", "version", "subject", "html", "text",
                                                              "variables", "created_at")),
)
# Warm-up days an operator set (schema 5): every node applies them to its own pair.
MIRRORED += (Mirrored("warmup_days", ("sender_domain", "provider"),
                      ("sender_domain", "provider", "day", "day_date", "set_at")),)
NEVER_DELETED = ("accounts", "templates", "template_versions")     # a node's spool refers to them
_V1 = MIRRORED[:10]             # the tables of schema versions 1 and 3 (released steps never change)


def _triggers(tables: tuple[Mirrored, ...]) -> str:
    return "\n".join(
        f"    CREATE TRIGGER {t.name}_bump AFTER INSERT OR UPDATE OR DELETE ON {t.name}\n"
        f"        FOR EACH STATEMENT EXECUTE FUNCTION smtprelay_bump"
        f"('{'blocklist_version' if t.name in BLOCKLIST_TABLES else 'catalog_version'}');"
        for t in tables)


def _incremental(tables: tuple[Mirrored, ...]) -> str:
    return "\n".join(
        f"    ALTER TABLE {t.name} ADD COLUMN txid BIGINT NOT NULL DEFAULT txid_current();\n"
        f"    CREATE INDEX {t.name}_txid ON {t.name} (txid);\n"
        f"    CREATE TRIGGER {t.name}_txid BEFORE INSERT OR UPDATE ON {t.name}\n"
        f"        FOR EACH ROW EXECUTE FUNCTION smtprelay_txid();\n"
        f"    CREATE TRIGGER {t.name}_deleted AFTER DELETE ON {t.name}\n"
        f"        FOR EACH ROW EXECUTE FUNCTION smtprelay_deleted({', '.join(repr(k) for k in t.key)});"
        for t in tables)


def _created_shared(tables: tuple[Mirrored, ...]) -> str:
    """A table created with its txid column: its version bump, txid and deletion triggers."""
    return _triggers(tables) + "\n" + "\n".join(
        line for line in _incremental(tables).splitlines() if "ADD COLUMN txid" not in line)


MIGRATIONS: list[str] = [
    # 1: the shared catalog (the SQLite store's catalog tables at its version 15), heartbeats.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('catalog_version', 0), ('blocklist_version', 0);
    CREATE FUNCTION smtprelay_bump() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE meta SET value = value + 1 WHERE key = TG_ARGV[0];
        PERFORM pg_notify('smtprelay_catalog', TG_TABLE_NAME);
        RETURN NULL;
    END $$;

    CREATE TABLE accounts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        daily_quota BIGINT,
        rate_per_second DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        delivery_tls TEXT,
        level INTEGER NOT NULL DEFAULT 0,
        level_evaluated_day TEXT,
        suspended_at DOUBLE PRECISION,
        suspended_reason TEXT,
        content_resumed_at DOUBLE PRECISION,
        pool TEXT,
        pool_fallback TEXT
    );
    CREATE TABLE credentials (
        username TEXT PRIMARY KEY,
        account_id BIGINT NOT NULL REFERENCES accounts(id),
        digest TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    CREATE TABLE domains (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        account_id BIGINT NOT NULL REFERENCES accounts(id),
        status TEXT NOT NULL,
        failing_since DOUBLE PRECISION,
        failing_record TEXT,
        verified_at DOUBLE PRECISION,
        last_checked_at DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        suspended_at DOUBLE PRECISION,
        suspended_reason TEXT,
        resumed_at DOUBLE PRECISION,
        pool TEXT,
        pool_fallback TEXT,
        return_path_ok INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE dkim_keys (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        domain_id BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        selector TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        public_key TEXT NOT NULL,
        private_key TEXT,               -- Fernet token under [cluster] key_file; NULL: only on the node that made it
        state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        activated_at DOUBLE PRECISION,
        retire_at DOUBLE PRECISION,
        UNIQUE (domain_id, selector)
    );
    CREATE TABLE addresses (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        address TEXT NOT NULL UNIQUE,
        domain_id BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        display_name TEXT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE blocklist (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        address TEXT NOT NULL,
        type TEXT NOT NULL,
        account_id BIGINT REFERENCES accounts(id) ON DELETE CASCADE,
        sender_domain TEXT,
        origin_account_id BIGINT REFERENCES accounts(id) ON DELETE SET NULL,
        reason TEXT,
        note TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        origin_node TEXT                -- the node whose bounce or complaint recorded it; NULL: an operator
    );
    CREATE INDEX blocklist_address ON blocklist (address);
    CREATE TABLE allowlist (
        account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (account_id, address)
    );
    CREATE TABLE webhooks (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        address TEXT,
        url TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE UNIQUE INDEX webhooks_owner ON webhooks (account_id, coalesce(address, ''));
    CREATE TABLE webhook_secrets (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        secret TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        retire_at DOUBLE PRECISION
    );
    CREATE TABLE tracking_settings (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        domain TEXT,
        opens INTEGER,
        clicks INTEGER,
        unsubscribe INTEGER
    );
    CREATE UNIQUE INDEX tracking_owner ON tracking_settings (account_id, coalesce(domain, ''));
    CREATE TABLE console_users (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        account_id BIGINT REFERENCES accounts(id) ON DELETE CASCADE,
        read_only INTEGER NOT NULL DEFAULT 0,
        password_digest TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_login_at DOUBLE PRECISION
    );
    CREATE TABLE console_sessions (
        token_digest TEXT PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES console_users(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX console_sessions_user ON console_sessions (user_id);
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        seen_at TIMESTAMPTZ NOT NULL,   -- PostgreSQL's clock: one clock for every node's last contact
        queue_depth BIGINT NOT NULL DEFAULT 0,
        catalog_version BIGINT NOT NULL DEFAULT 0
    );
{triggers}
    """.replace("{triggers}", _triggers(_V1)),
    # 2: every node's events (cluster.mirror forwards them in batches): `stats` and `status`
    # answer for the whole cluster. Keyed by the node and its own event id (a batch sent twice
    # counts once). Template and task ids are the node's own (those stay per node).
    """
    CREATE TABLE events (
        node TEXT NOT NULL,
        local_id BIGINT NOT NULL,
        type TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        account_id BIGINT,
        queue_id TEXT,
        recipient TEXT,
        sender_domain TEXT,
        recipient_domain TEXT,
        provider TEXT,
        tag TEXT,
        data JSONB NOT NULL,
        template_id BIGINT,
        template_version INTEGER,
        task_id BIGINT,
        task_run INTEGER,
        PRIMARY KEY (node, local_id)
    );
    CREATE INDEX events_at ON events (at);
    CREATE INDEX events_queue ON events (queue_id);
    CREATE INDEX events_recipient ON events (recipient, at);
    """,
    # 3: incremental copies. Each mirrored row carries the id of the transaction that last wrote
    # it, and each deletion is kept (a day) with its key: a node reads only what transactions
    # from its watermark on wrote or deleted (cluster.mirror), not whole tables, so a change to
    # a blocklist of a million entries costs the node what the change is.
    """
    CREATE FUNCTION smtprelay_txid() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.txid := txid_current();
        RETURN NEW;
    END $$;
    CREATE TABLE catalog_deletions (
        tbl TEXT NOT NULL,
        key JSONB NOT NULL,             -- the deleted row's key columns, in pg_schema.MIRRORED's order
        txid BIGINT NOT NULL DEFAULT txid_current(),
        at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX catalog_deletions_txid ON catalog_deletions (txid);
    CREATE INDEX catalog_deletions_at ON catalog_deletions (at);
    CREATE FUNCTION smtprelay_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        key JSONB := '[]'::jsonb;
        col TEXT;
    BEGIN
        FOREACH col IN ARRAY TG_ARGV LOOP
            key := key || jsonb_build_array(to_jsonb(OLD) -> col);
        END LOOP;
        INSERT INTO catalog_deletions (tbl, key) VALUES (TG_TABLE_NAME, key);
        RETURN NULL;
    END $$;
    INSERT INTO meta (key, value) VALUES ('deletions_pruned_below', 0);
{incremental}
    """.replace("{incremental}", _incremental(_V1)),
    # 4: templates and their versions, shared (the store's tables at its version 10).
    """
    CREATE TABLE templates (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account_id BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        description TEXT,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        status_reason TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        deleted_at DOUBLE PRECISION,
        txid BIGINT NOT NULL DEFAULT txid_current()
    );
    CREATE UNIQUE INDEX templates_name ON templates (account_id, name) WHERE deleted_at IS NULL;
    CREATE TABLE template_versions (
        template_id BIGINT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        subject TEXT,
        html TEXT,
        text TEXT,
        variables TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        txid BIGINT NOT NULL DEFAULT txid_current(),
        PRIMARY KEY (template_id, version)
    );
{shared}
    """.replace("{shared}", _created_shared(MIRRORED[10:12])),
    # 5: warm-up days set by an operator, for every node (the store's warmup_days, version 18).
    """
    CREATE TABLE warmup_days (
        sender_domain TEXT NOT NULL,
        provider TEXT NOT NULL,
        day INTEGER NOT NULL,
        day_date TEXT NOT NULL,
        set_at DOUBLE PRECISION NOT NULL,
        txid BIGINT NOT NULL DEFAULT txid_current(),
        PRIMARY KEY (sender_domain, provider)
    );
{shared}
    """.replace("{shared}", _created_shared(MIRRORED[12:13])),
    # 6: bounces and complaints handed to the node that sent the message (the bounce MX of a
    # sender domain may reach any node; the recipient, its attempts and the webhooks are that
    # node's): the receiving node puts the report here, the sending node applies it and deletes it.
    """
    CREATE TABLE feedback_relay (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        node TEXT NOT NULL,             -- the node that sent the message: it applies the report
        from_node TEXT NOT NULL,
        peer TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to JSONB NOT NULL,
        raw BYTEA NOT NULL,
        received_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX feedback_relay_node ON feedback_relay (node, id);
    """,
    # 7: each node's word on Redis in its heartbeat (`cluster status`: which node cannot reach it).
    """
    ALTER TABLE nodes ADD COLUMN redis TEXT;    -- NULL: no [cluster] redis; "ok", or why it fails
    """,
]


def version(conn: Any) -> int:
    """The schema version of a PostgreSQL database (0: never migrated); `conn` a psycopg connection."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: Any) -> tuple[int, int]:
    """Apply the missing steps, each in its own transaction (with an advisory lock, so two nodes
    migrating at once do not both apply a step); (from, to)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7283615)")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                     " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        start = version(conn)
        if start > len(MIGRATIONS):
            raise RuntimeError(f"the PostgreSQL catalog is at schema version {start}, newer than this smtprelay "
                               f"knows ({len(MIGRATIONS)}): upgrade smtprelay")
        for n in range(start, len(MIGRATIONS)):
            conn.execute(MIGRATIONS[n])
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (n + 1,))
    return start, len(MIGRATIONS)


def problem(found: int) -> str | None:
    """What to do when a database is at schema version `found` (None: it is current)."""
    if found < len(MIGRATIONS):
        return (f"the PostgreSQL catalog is at schema version {found}, this smtprelay needs {len(MIGRATIONS)}: "
                "run `smtprelay cluster migrate`")
    if found > len(MIGRATIONS):
        return (f"the PostgreSQL catalog is at schema version {found}, newer than this smtprelay knows "
                f"({len(MIGRATIONS)}): upgrade smtprelay")
    return None


def check_current(conn: Any) -> None:
    """Raise RuntimeError naming the command to run when the database is not at this version."""
    found = problem(version(conn))
    if found is not None:
        raise RuntimeError(found)


async def check_current_async(conn: Any) -> None:
    """check_current on a psycopg AsyncConnection."""
    exists = (await (await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")).fetchone())[0]
    found = 0
    if exists:
        found = int((await (await conn.execute("SELECT max(version) FROM schema_version")).fetchone())[0] or 0)
    why = problem(found)
    if why is not None:
        raise RuntimeError(why)
