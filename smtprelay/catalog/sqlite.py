"""The catalog on the relay's SQLite store: the one implementation of catalog.Catalog today.

Owns: every statement on the catalog's tables (accounts, credentials, domains, dkim_keys,
addresses, blocklist, allowlist, webhooks, webhook_secrets, tracking_settings, warmup day
overrides and domain suspensions). The store's triggers bump `catalog_version` and
`blocklist_version` on each change, which is how a running relay notices within 2 s.

Must never: decide anything (who may, what is valid): the services do; run on an event loop
(`SqliteCatalogView` is the back end's asynchronous side, on aiosqlite).
"""
from __future__ import annotations

import logging
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from smtprelay.catalog.records import (Account, AddressRecord, Credential, DomainRecord, Login, SenderDomain,
                                       TrackingRow, WebhookRecord)
from smtprelay.catalog.batch import SqliteBatch
from smtprelay.catalog.console import SqliteConsole
from smtprelay.catalog.templates import SqliteTemplates
from smtprelay.config import DkimAlgorithm
from smtprelay.domains.records import PublicKey
from smtprelay.domains.status import DomainState
from smtprelay.policy.blocklist import BlocklistView, Entry
from smtprelay.policy.reputation import AccountRow
from smtprelay.warmup.schedule import PairState

log = logging.getLogger("smtprelay.catalog")

ACCOUNT_ROWS_SQL = "SELECT id, name, daily_quota, rate_per_second, level FROM accounts"
# Both versions the back end's refresh polls, in one statement (one hop to its reader).
VERSIONS_SQL = "SELECT key, value FROM meta WHERE key IN ('catalog_version', 'blocklist_version')"
BLOCK_COLUMNS = ("id, address, type, account_id, sender_domain, origin_account_id, reason, note, created_at,"
                  " expires_at")
BLOCKLIST_SQL = f"SELECT {BLOCK_COLUMNS} FROM blocklist WHERE expires_at IS NULL OR expires_at > ?"   # (now,)
ALLOWED_SQL = "SELECT account_id, address FROM allowlist"
_DOMAIN_SQL = ("SELECT d.*, a.name AS account, a.pool AS account_pool, a.pool_fallback AS account_pool_fallback,"
               " (SELECT count(*) FROM addresses x WHERE x.domain_id = d.id) AS n"
               " FROM domains d JOIN accounts a ON a.id = d.account_id")
_ACCOUNT_COLUMNS = ("daily_quota", "rate_per_second", "delivery_tls", "pool", "pool_fallback")
_DOMAIN_COLUMNS = ("pool", "pool_fallback")


def _account(row: sqlite3.Row) -> Account:
    return Account(id=row["id"], name=row["name"], daily_quota=row["daily_quota"],
                   rate_per_second=row["rate_per_second"], created_at=row["created_at"],
                   delivery_tls=row["delivery_tls"], level=row["level"], suspended_at=row["suspended_at"],
                   suspended_reason=row["suspended_reason"], pool=row["pool"], pool_fallback=row["pool_fallback"])


def account_rows(rows: Iterable[Any]) -> dict[int, AccountRow]:
    """ACCOUNT_ROWS_SQL's rows as the gate keeps them."""
    return {r[0]: AccountRow(r[0], r[1], r[2], r[3], r[4]) for r in rows}


def blocklist_view(entries: Iterable[Any], allowed: Iterable[Any]) -> BlocklistView:
    """The rows of BLOCKLIST_SQL and ALLOWED_SQL as the gate checks them."""
    return BlocklistView([Entry(*r) for r in entries], {(r[0], r[1]) for r in allowed})


class SqliteCatalog(SqliteTemplates, SqliteBatch, SqliteConsole):
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    integrity_error: type[BaseException] = sqlite3.IntegrityError    # a UNIQUE constraint refused the row

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._depth = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self.conn.execute("COMMIT")

    # -- accounts and credentials ----------------------------------------------------------------
    def account(self, name: str) -> Account | None:
        row = self.conn.execute("SELECT * FROM accounts WHERE name = ?", (name,)).fetchone()
        return None if row is None else _account(row)

    def accounts(self) -> list[tuple[Account, int]]:
        rows = self.conn.execute(
            "SELECT a.*, (SELECT count(*) FROM credentials c WHERE c.account_id = a.id"
            " AND c.revoked_at IS NULL) AS active FROM accounts a ORDER BY a.name").fetchall()
        return [(_account(r), r["active"]) for r in rows]

    def account_names(self) -> dict[int, str]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT id, name FROM accounts")}

    def insert_account(self, name: str, daily_quota: int | None, rate_per_second: float | None, now: float) -> bool:
        try:
            self.conn.execute("INSERT INTO accounts (name, daily_quota, rate_per_second, created_at)"
                              " VALUES (?,?,?,?)", (name, daily_quota, rate_per_second, now))
        except self.integrity_error:
            return False
        return True

    def update_account(self, account_id: int, fields: dict[str, Any]) -> None:
        for column, value in fields.items():
            assert column in _ACCOUNT_COLUMNS, column
            self.conn.execute(f"UPDATE accounts SET {column} = ? WHERE id = ?", (value, account_id))

    def insert_credential(self, username: str, account_id: int, digest: str, now: float) -> None:
        self.conn.execute("INSERT INTO credentials (username, account_id, digest, created_at) VALUES (?,?,?,?)",
                          (username, account_id, digest, now))

    def credentials(self, account_id: int) -> list[Credential]:
        return [Credential(username=r[0], account=r[1], created_at=r[2], revoked_at=r[3]) for r in self.conn.execute(
            "SELECT c.username, a.name, c.created_at, c.revoked_at FROM credentials c JOIN accounts a"
            " ON a.id = c.account_id WHERE c.account_id = ? ORDER BY c.created_at, c.username", (account_id,))]

    def credential(self, username: str) -> Credential | None:
        row = self.conn.execute("SELECT c.username, a.name, c.created_at, c.revoked_at FROM credentials c"
                                " JOIN accounts a ON a.id = c.account_id WHERE c.username = ?",
                                (username,)).fetchone()
        return None if row is None else Credential(row[0], row[1], row[2], row[3])

    def revoke_credential(self, username: str, now: float) -> None:
        self.conn.execute("UPDATE credentials SET revoked_at = ? WHERE username = ?", (now, username))

    # -- sender domains, DKIM keys, addresses ----------------------------------------------------
    def _domain(self, row: sqlite3.Row) -> DomainRecord:
        from smtprelay.dkim import keys as dkim_keys    # cryptography: not for every CLI command
        keys = tuple(PublicKey(selector=k["selector"], algorithm=k["algorithm"],
                               dns_value=dkim_keys.dns_value(DkimAlgorithm(k["algorithm"]), k["public_key"]),
                               state=k["state"])
                     for k in self.conn.execute("SELECT * FROM dkim_keys WHERE domain_id = ? AND state != 'retired'"
                                                " ORDER BY id", (row["id"],)))
        return DomainRecord(id=row["id"], name=row["name"], account=row["account"], account_id=row["account_id"],
                            state=DomainState(row["status"], row["failing_since"], row["failing_record"]),
                            verified_at=row["verified_at"], last_checked_at=row["last_checked_at"],
                            created_at=row["created_at"], keys=keys, addresses=row["n"], pool=row["pool"],
                            pool_fallback=row["pool_fallback"], account_pool=row["account_pool"],
                            account_pool_fallback=row["account_pool_fallback"])

    def domain(self, name: str) -> DomainRecord | None:
        row = self.conn.execute(_DOMAIN_SQL + " WHERE d.name = ?", (name,)).fetchone()
        return None if row is None else self._domain(row)

    def domains(self, account: str | None = None) -> list[DomainRecord]:
        where, args = (" WHERE a.name = ?", (account,)) if account else ("", ())
        return [self._domain(r) for r in self.conn.execute(_DOMAIN_SQL + where + " ORDER BY d.name", args).fetchall()]

    def update_domain(self, domain_id: int, fields: dict[str, Any]) -> None:
        for column, value in fields.items():
            assert column in _DOMAIN_COLUMNS, column
            self.conn.execute(f"UPDATE domains SET {column} = ? WHERE id = ?", (value, domain_id))

    def domain_count(self, account_id: int) -> int:
        return int(self.conn.execute("SELECT count(*) FROM domains WHERE account_id = ?", (account_id,)).fetchone()[0])

    def insert_domain(self, name: str, account_id: int, status: str, now: float) -> int:
        cur = self.conn.execute("INSERT INTO domains (name, account_id, status, created_at) VALUES (?,?,?,?)",
                                (name, account_id, status, now))
        return int(cur.lastrowid or 0)

    def delete_domain(self, domain_id: int) -> None:
        self.conn.execute("DELETE FROM domains WHERE id = ?", (domain_id,))

    def record_check(self, domain_id: int, state: DomainState, now: float) -> None:
        self.conn.execute(
            "UPDATE domains SET status = ?, failing_since = ?, failing_record = ?, last_checked_at = ?,"
            " verified_at = CASE WHEN ? = 'verified' AND status != 'verified' THEN ? ELSE verified_at END"
            " WHERE id = ?", (state.status, state.failing_since, state.failing_record, now, state.status, now,
                              domain_id))

    def set_return_path(self, domain_id: int, ok: bool) -> None:
        self.conn.execute("UPDATE domains SET return_path_ok = ? WHERE id = ?", (int(ok), domain_id))

    def check_times(self) -> list[tuple[str, str, float, float | None]]:
        return [(r[0], r[1], r[2], r[3]) for r in self.conn.execute(
            "SELECT name, status, created_at, last_checked_at FROM domains ORDER BY last_checked_at")]

    def selectors(self, domain_id: int) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT selector FROM dkim_keys WHERE domain_id = ?", (domain_id,))}

    def insert_key(self, domain_id: int, selector: str, algorithm: str, public_key: str, state: str,
                   now: float) -> None:
        self.conn.execute("INSERT INTO dkim_keys (domain_id, selector, algorithm, public_key, state, created_at,"
                          " activated_at) VALUES (?,?,?,?,?,?,?)",
                          (domain_id, selector, algorithm, public_key, state, now, now if state == "active" else None))

    def promote_key(self, domain_id: int, selector: str, retire_at: float, now: float) -> None:
        """The selector starts signing; the active key of its algorithm keeps being listed until retire_at."""
        algorithm = self.conn.execute("SELECT algorithm FROM dkim_keys WHERE domain_id = ? AND selector = ?",
                                      (domain_id, selector)).fetchone()[0]
        self.conn.execute("UPDATE dkim_keys SET state = 'retiring', retire_at = ? WHERE domain_id = ? AND"
                          " algorithm = ? AND state = 'active'", (retire_at, domain_id, algorithm))
        self.conn.execute("UPDATE dkim_keys SET state = 'active', activated_at = ? WHERE domain_id = ? AND"
                          " selector = ?", (now, domain_id, selector))

    def retire_expired_keys(self, now: float) -> None:
        self.conn.execute("UPDATE dkim_keys SET state = 'retired' WHERE state = 'retiring' AND retire_at <= ?",
                          (now,))

    def insert_address(self, address: str, domain_id: int, display_name: str | None, now: float) -> bool:
        try:
            self.conn.execute("INSERT INTO addresses (address, domain_id, display_name, created_at) VALUES (?,?,?,?)",
                              (address, domain_id, display_name, now))
        except self.integrity_error:
            return False
        return True

    def addresses(self, domain: str | None = None) -> list[AddressRecord]:
        sql = ("SELECT x.address, x.display_name, d.name, a.name, x.created_at FROM addresses x"
               " JOIN domains d ON d.id = x.domain_id JOIN accounts a ON a.id = d.account_id")
        where, args = (" WHERE d.name = ?", (domain,)) if domain else ("", ())
        return [AddressRecord(*r) for r in self.conn.execute(sql + where + " ORDER BY x.address", args)]

    def address_owner(self, address: str) -> tuple[int, str] | None:
        row = self.conn.execute("SELECT d.account_id, a.name FROM addresses x JOIN domains d ON d.id = x.domain_id"
                                " JOIN accounts a ON a.id = d.account_id WHERE x.address = ?", (address,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def delete_address(self, address: str) -> bool:
        return self.conn.execute("DELETE FROM addresses WHERE address = ?", (address,)).rowcount > 0

    # -- blocklist -------------------------------------------------------------------------------
    def insert_block(self, address: str, type_: str, account_id: int | None, sender_domain: str | None,
                     origin_account_id: int | None, reason: str, note: str | None, now: float,
                     expires_at: float | None) -> Entry:
        cur = self.conn.execute(
            "INSERT INTO blocklist (address, type, account_id, sender_domain, origin_account_id, reason, note,"
            " created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (address, type_, account_id, sender_domain, origin_account_id, reason, note, now, expires_at))
        return Entry(*self.conn.execute(f"SELECT {BLOCK_COLUMNS} FROM blocklist WHERE id = ?",
                                        (cur.lastrowid,)).fetchone())

    def blocks(self, *, now: float, include_expired: bool = False, type_: str | None = None,
               account_id: int | None = None, origin_account_id: int | None = None, address: str | None = None,
               since: float | None = None, until: float | None = None) -> list[Entry]:
        where: list[str] = []
        args: list[object] = []
        if not include_expired:
            where.append("(expires_at IS NULL OR expires_at > ?)")
            args.append(now)
        for column, value in (("type", type_), ("account_id", account_id), ("origin_account_id", origin_account_id),
                              ("address", address)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("created_at < ?")
            args.append(until)
        sql = f"SELECT {BLOCK_COLUMNS} FROM blocklist" + (" WHERE " + " AND ".join(where) if where else "")
        return [Entry(*r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def update_block(self, entry_id: int, fields: dict[str, Any]) -> None:
        for column, value in fields.items():
            assert column in ("expires_at", "note"), column
            self.conn.execute(f"UPDATE blocklist SET {column} = ? WHERE id = ?", (value, entry_id))

    def delete_block(self, entry_id: int) -> None:
        self.conn.execute("DELETE FROM blocklist WHERE id = ?", (entry_id,))

    def allow(self, account_id: int, address: str, now: float) -> None:
        self.conn.execute("INSERT OR IGNORE INTO allowlist (account_id, address, created_at) VALUES (?,?,?)",
                          (account_id, address, now))

    def disallow(self, account_id: int, address: str) -> int:
        return int(self.conn.execute("DELETE FROM allowlist WHERE account_id = ? AND address = ?",
                                     (account_id, address)).rowcount)

    def blocklist_view(self, now: float) -> BlocklistView:
        return blocklist_view(self.conn.execute(BLOCKLIST_SQL, (now,)), self.conn.execute(ALLOWED_SQL))

    # -- webhooks --------------------------------------------------------------------------------
    def webhooks(self) -> list[WebhookRecord]:
        return [WebhookRecord(*r) for r in self.conn.execute(
            "SELECT a.name, w.address, w.url, w.created_at,"
            " (SELECT count(*) FROM outbox o WHERE o.url = w.url AND o.account_id = w.account_id"
            "  AND o.state = 'pending'),"
            " (SELECT count(*) FROM outbox o WHERE o.url = w.url AND o.account_id = w.account_id AND o.state = 'dead')"
            " FROM webhooks w JOIN accounts a ON a.id = w.account_id ORDER BY a.name, w.address")]

    def set_webhook(self, account_id: int, address: str | None, url: str, now: float) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM webhooks WHERE account_id = ? AND address IS ?", (account_id, address))
            self.conn.execute("INSERT INTO webhooks (account_id, address, url, created_at) VALUES (?,?,?,?)",
                              (account_id, address, url, now))

    def delete_webhook(self, account_id: int, address: str | None) -> bool:
        return self.conn.execute("DELETE FROM webhooks WHERE account_id = ? AND address IS ?",
                                 (account_id, address)).rowcount > 0

    def webhook_secret(self, account_id: int) -> str | None:
        row = self.conn.execute("SELECT secret FROM webhook_secrets WHERE account_id = ? AND retire_at IS NULL"
                                " ORDER BY id DESC LIMIT 1", (account_id,)).fetchone()
        return None if row is None else str(row[0])

    def add_webhook_secret(self, account_id: int, secret: str, now: float) -> None:
        self.conn.execute("INSERT INTO webhook_secrets (account_id, secret, created_at) VALUES (?,?,?)",
                          (account_id, secret, now))

    def retire_webhook_secrets(self, account_id: int, at: float) -> None:
        self.conn.execute("UPDATE webhook_secrets SET retire_at = ? WHERE account_id = ? AND retire_at IS NULL",
                          (at, account_id))

    # -- tracking settings -----------------------------------------------------------------------
    def tracking_rows(self) -> list[TrackingRow]:
        def flag(v: Any) -> bool | None:
            return None if v is None else bool(v)
        return [TrackingRow(r[0], r[1], flag(r[2]), flag(r[3]), flag(r[4])) for r in self.conn.execute(
            "SELECT account_id, domain, opens, clicks, unsubscribe FROM tracking_settings")]

    def set_tracking(self, account_id: int, domain: str | None, values: dict[str, bool | None]) -> None:
        with self.transaction():
            self.conn.execute("INSERT INTO tracking_settings (account_id, domain) SELECT ?, ? WHERE NOT EXISTS"
                              " (SELECT 1 FROM tracking_settings WHERE account_id = ? AND domain IS ?)",
                              (account_id, domain, account_id, domain))
            for key, value in values.items():
                assert key in ("opens", "clicks", "unsubscribe"), key
                self.conn.execute(f"UPDATE tracking_settings SET {key} = ? WHERE account_id = ? AND domain IS ?",
                                  (None if value is None else int(value), account_id, domain))

    # -- warm-up state ---------------------------------------------------------------------------
    def warmup_pairs(self, sender_domain: str | None = None) -> list[PairState]:
        sql = ("SELECT sender_domain, provider, day, day_date, used, withheld, frozen_reason, paused_until,"
               " pause_reason, backoff_step, day_override FROM warmup")
        where, args = (" WHERE sender_domain = ?", (sender_domain,)) if sender_domain else ("", ())
        pairs = []
        for r in self.conn.execute(sql + where + " ORDER BY sender_domain, provider", args):
            day = r[10] if r[10] is not None else r[2]   # an override the scheduler has not applied yet
            pairs.append(PairState(r[0], r[1], day, r[3], r[4], r[5], r[6], r[7], r[8], r[9]))
        return pairs

    def ip_warmup_pairs(self, address: str) -> list[PairState]:
        """A source address's pairs (issue 19), the address in PairState.sender_domain."""
        pairs = []
        for r in self.conn.execute("SELECT address, provider, day, day_date, used, withheld, paused_until,"
                                   " pause_reason, backoff_step, day_override FROM ip_warmup WHERE address = ?"
                                   " ORDER BY provider", (address,)):
            day = r[9] if r[9] is not None else r[2]
            pairs.append(PairState(r[0], r[1], day, r[3], r[4], r[5], None, r[6], r[7], r[8]))
        return pairs

    def set_ip_warmup_day(self, address: str, provider: str, day: int, today: str, now: float) -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT INTO ip_warmup (address, provider, day, day_date, used, updated_at, day_override)"
                " VALUES (?,?,?,?,0,?,?) ON CONFLICT (address, provider) DO UPDATE SET"
                " day_override = excluded.day_override, day = excluded.day, updated_at = excluded.updated_at",
                (address, provider, day, today, now, day))
            self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'warmup_generation'")

    def suspended_domains(self) -> dict[str, str]:
        return {r[0]: r[1] or "suspended" for r in
                self.conn.execute("SELECT name, suspended_reason FROM domains WHERE suspended_at IS NOT NULL")}

    def set_warmup_day(self, sender_domain: str, provider: str, day: int, today: str, now: float) -> None:
        """An operator's day override; the running scheduler applies it at its next scan."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO warmup (sender_domain, provider, day, day_date, used, updated_at, day_override)"
                " VALUES (?,?,?,?,0,?,?) ON CONFLICT (sender_domain, provider) DO UPDATE SET"
                " day_override = excluded.day_override, day = excluded.day, updated_at = excluded.updated_at",
                (sender_domain, provider, day, today, now, day))
            self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'warmup_generation'")

    def resume_domain(self, sender_domain: str, now: float) -> int:
        with self.transaction():
            self.conn.execute("UPDATE domains SET suspended_at = NULL, suspended_reason = NULL, resumed_at = ?"
                              " WHERE name = ?", (now, sender_domain))
            released = self.conn.execute(
                "UPDATE recipients SET state = 'queued', hold_reason = NULL, next_attempt_at = ?, last_reply = NULL"
                " WHERE state = 'hold' AND hold_reason = 'suspended' AND message_id IN"
                " (SELECT id FROM messages WHERE sender_domain = ?)", (now, sender_domain)).rowcount
            self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'warmup_generation'")
        return int(released)

    # -- what a front-end worker loads ------------------------------------------------------------
    def version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'catalog_version'").fetchone()[0])

    def logins(self) -> tuple[dict[str, Login], dict[str, int]]:
        """Active credentials by username, and account ids by name (for trusted listeners)."""
        logins = {r[0]: Login(username=r[0], digest=r[1], account_id=r[2], account=r[3]) for r in self.conn.execute(
            "SELECT c.username, c.digest, a.id, a.name FROM credentials c JOIN accounts a"
            " ON a.id = c.account_id WHERE c.revoked_at IS NULL")}
        accounts = {r[0]: r[1] for r in self.conn.execute("SELECT name, id FROM accounts")}
        return logins, accounts

    def suspended_accounts(self) -> dict[int, str]:
        """Accounts suspended for content: id → why."""
        return {r[0]: r[1] or "content" for r in self.conn.execute(
            "SELECT id, suspended_reason FROM accounts WHERE suspended_at IS NOT NULL")}

    def resume_account(self, account_id: int, now: float) -> int:
        from smtprelay.content.suspension import resume
        with self.transaction():
            return resume(self.conn, account_id, now)

    def senders(self, data_dir: Path) -> tuple[dict[str, SenderDomain], dict[str, str | None]]:
        """Every sender domain with its active signing keys (read from their files), and the
        registered addresses with their display names."""
        from smtprelay.dkim import keys as dkim_keys
        keys: dict[int, list[dkim_keys.SigningKey]] = {}
        for domain_id, name, selector, algorithm in self.conn.execute(
                "SELECT k.domain_id, d.name, k.selector, k.algorithm FROM dkim_keys k JOIN domains d"
                " ON d.id = k.domain_id WHERE k.state = 'active' ORDER BY k.id"):
            path = dkim_keys.key_path(data_dir, name, selector)
            try:
                pem = path.read_bytes()
            except OSError as exc:
                log.error("dkim: cannot read the key of %s selector %s (%s); its mail is refused", name, selector, exc)
                continue
            keys.setdefault(domain_id, []).append(dkim_keys.SigningKey(name, selector, DkimAlgorithm(algorithm), pem))
        domains = {r[1]: SenderDomain(r[1], r[2], DomainState(r[3], r[4], r[5]), tuple(keys.get(r[0], ())),
                                      r[7] or "suspended" if r[6] is not None else None)
                   for r in self.conn.execute("SELECT id, name, account_id, status, failing_since, failing_record,"
                                              " suspended_at, suspended_reason FROM domains")}
        addresses = {r[0]: r[1] for r in self.conn.execute("SELECT address, display_name FROM addresses")}
        return domains, addresses
