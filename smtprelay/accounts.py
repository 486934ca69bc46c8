"""Accounts (tenants) and their SMTP credentials: the service layer the CLI and the
admin API share.

Owns: the `accounts` and `credentials` tables. Passwords are generated here with about 190 bits
of entropy, shown once, and stored only as a salted SHA-256 digest. A slow KDF (scrypt,
argon2) protects human-chosen passwords against guessing; a random 192-bit secret cannot
be guessed, and a fast digest keeps the synchronous AUTH check well under a millisecond.

Must never: print or log a password after `add_credential` returns it.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import string
from dataclasses import dataclass
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smtprelay.config import Config
    from smtprelay.policy.reputation import AccountRow

ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class RefusedError(Exception):
    """An operation the store refuses (unknown account, duplicate name, ...)."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    daily_quota: int | None
    rate_per_second: float | None
    created_at: float
    delivery_tls: str | None = None
    level: int = 0


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    account: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class NewCredential:
    username: str
    password: str
    account: str


_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def new_password(length: int = 32) -> str:
    """32 letters and digits: about 190 bits. No symbols, so it never starts with '-' (which
    command-line clients such as swaks would read as an option) and survives any shell."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def digest_password(password: str, salt: str | None = None) -> str:
    salt = salt if salt is not None else secrets.token_hex(16)
    value = hashlib.sha256((salt + password).encode("utf-8", "surrogateescape")).hexdigest()
    return f"sha256${salt}${value}"


def check_password(password: str, digest: str) -> bool:
    try:
        scheme, salt, _ = digest.split("$", 2)
    except ValueError:
        return False
    if scheme != "sha256":
        return False
    return hmac.compare_digest(digest_password(password, salt), digest)


def _row_account(row: sqlite3.Row) -> Account:
    return Account(id=row["id"], name=row["name"], daily_quota=row["daily_quota"],
                   rate_per_second=row["rate_per_second"], created_at=row["created_at"],
                   delivery_tls=row["delivery_tls"] if "delivery_tls" in row.keys() else None,
                   level=row["level"] if "level" in row.keys() else 0)


class AccountService:
    def __init__(self, conn: sqlite3.Connection, now: float):
        self._conn = conn
        self._now = now

    def add_account(self, name: str, daily_quota: int | None = None,
                    rate_per_second: float | None = None) -> Account:
        if not ACCOUNT_NAME.match(name):
            raise RefusedError(f"account name \"{name}\" is not valid: use lower-case letters, digits, "
                               "'.', '_' or '-', starting with a letter or digit (at most 63)")
        _check_limits(daily_quota, rate_per_second)
        try:
            self._conn.execute("INSERT INTO accounts (name, daily_quota, rate_per_second, created_at)"
                               " VALUES (?,?,?,?)", (name, daily_quota, rate_per_second, self._now))
        except sqlite3.IntegrityError:
            raise RefusedError(f"account \"{name}\" already exists") from None
        return self.get_account(name)

    def ensure_account(self, name: str) -> tuple[Account, bool]:
        """The named account, creating it if missing; True when it was created."""
        try:
            return self.get_account(name), False
        except RefusedError:
            return self.add_account(name), True

    def set_account(self, name: str, daily_quota: int | None = None,
                    rate_per_second: float | None = None, delivery_tls: str | None = None) -> Account:
        account = self.get_account(name)
        if delivery_tls is not None:
            if delivery_tls not in ("opportunistic", "required", "default"):
                raise RefusedError(f"--delivery-tls must be opportunistic, required or default, got {delivery_tls}")
            self._conn.execute("UPDATE accounts SET delivery_tls = ? WHERE id = ?",
                               (None if delivery_tls == "default" else delivery_tls, account.id))
        _check_limits(daily_quota, rate_per_second)
        if daily_quota is not None:
            self._conn.execute("UPDATE accounts SET daily_quota = ? WHERE id = ?", (daily_quota, account.id))
        if rate_per_second is not None:
            self._conn.execute("UPDATE accounts SET rate_per_second = ? WHERE id = ?",
                               (rate_per_second, account.id))
        return self.get_account(name)

    def get_account(self, name: str) -> Account:
        row = self._conn.execute("SELECT * FROM accounts WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise RefusedError(f"no account named \"{name}\"")
        return _row_account(row)

    def list_accounts(self) -> list[tuple[Account, int]]:
        """Each account with its number of active credentials."""
        rows = self._conn.execute(
            "SELECT a.*, (SELECT count(*) FROM credentials c WHERE c.account_id = a.id"
            " AND c.revoked_at IS NULL) AS active FROM accounts a ORDER BY a.name").fetchall()
        return [(_row_account(r), r["active"]) for r in rows]

    def add_credential(self, account_name: str) -> NewCredential:
        account = self.get_account(account_name)
        username = f"{account.name}-{secrets.token_hex(4)}"
        password = new_password()
        self._conn.execute("INSERT INTO credentials (username, account_id, digest, created_at)"
                           " VALUES (?,?,?,?)", (username, account.id, digest_password(password), self._now))
        return NewCredential(username=username, password=password, account=account.name)

    def list_credentials(self, account_name: str) -> list[Credential]:
        account = self.get_account(account_name)
        rows = self._conn.execute("SELECT username, created_at, revoked_at FROM credentials"
                                  " WHERE account_id = ? ORDER BY created_at, username",
                                  (account.id,)).fetchall()
        return [Credential(username=r[0], account=account.name, created_at=r[1], revoked_at=r[2])
                for r in rows]

    def revoke_credential(self, username: str) -> Credential:
        row = self._conn.execute("SELECT c.username, a.name, c.created_at, c.revoked_at FROM credentials c"
                                 " JOIN accounts a ON a.id = c.account_id WHERE c.username = ?",
                                 (username,)).fetchone()
        if row is None:
            raise RefusedError(f"no credential with username \"{username}\"")
        if row[3] is not None:
            raise RefusedError(f"credential \"{username}\" is already revoked")
        self._conn.execute("UPDATE credentials SET revoked_at = ? WHERE username = ?", (self._now, username))
        return Credential(username=row[0], account=row[1], created_at=row[2], revoked_at=self._now)


def _check_limits(daily_quota: int | None, rate_per_second: float | None) -> None:
    if daily_quota is not None and daily_quota <= 0:
        raise RefusedError(f"--daily-quota must be a positive integer, got {daily_quota}")
    if rate_per_second is not None and rate_per_second <= 0:
        raise RefusedError(f"--rate must be a positive number, got {rate_per_second}")


@dataclass(frozen=True, slots=True)
class Login:
    """What the authenticator needs to know about one username."""
    username: str
    digest: str
    account_id: int
    account: str


ACCOUNT_ROWS_SQL = "SELECT id, name, daily_quota, rate_per_second, level FROM accounts"
# Both versions the back end's catalog refresh polls, in one statement (one hop to its reader).
VERSIONS_SQL = "SELECT key, value FROM meta WHERE key IN ('catalog_version', 'blocklist_version')"


def account_rows(rows: Iterable[Any]) -> dict[int, "AccountRow"]:
    """ACCOUNT_ROWS_SQL's rows as the gate keeps them."""
    from smtprelay.policy.reputation import AccountRow
    return {r[0]: AccountRow(r[0], r[1], r[2], r[3], r[4]) for r in rows}


def load_account_rows(conn: sqlite3.Connection) -> dict[int, "AccountRow"]:
    return account_rows(conn.execute(ACCOUNT_ROWS_SQL))


def evaluate_levels(conn: sqlite3.Connection, config: "Config", now: float) -> list[tuple[str, int, int, str]]:
    """Judge every finished UTC day not judged yet (only when levels are configured).
    Returns (account, old level, new level, why) for each change."""
    import datetime
    from smtprelay.policy.reputation import AccountRow, DayStats, effective_limits, judge_day
    if not config.reputation.levels:
        return []
    today = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()
    changes = []
    for row in load_account_rows(conn).values():
        last = conn.execute("SELECT level_evaluated_day, created_at FROM accounts WHERE id = ?", (row.id,)).fetchone()
        start = (datetime.date.fromisoformat(last[0]) + datetime.timedelta(days=1) if last[0] else
                 datetime.datetime.fromtimestamp(last[1], datetime.timezone.utc).date())
        level = row.level
        day = start
        while day < today:
            t0 = datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc).timestamp()
            t1 = t0 + 86400
            used = conn.execute("SELECT count(*) FROM sends WHERE account_id = ? AND at >= ? AND at < ?",
                                (row.id, t0, t1)).fetchone()[0]
            delivered, bounced = conn.execute(
                "SELECT coalesce(sum(a.result = 'delivered'), 0), coalesce(sum(a.result = 'bounced'), 0)"
                " FROM attempts a JOIN recipients r ON r.id = a.recipient_id JOIN messages m ON m.id = r.message_id"
                " WHERE m.account_id = ? AND m.mail_from != '' AND a.at >= ? AND a.at < ?",
                (row.id, t0, t1)).fetchone()
            complaints = conn.execute("SELECT count(*) FROM feedback WHERE account_id = ? AND kind = 'complaint'"
                                      " AND at >= ? AND at < ?", (row.id, t0, t1)).fetchone()[0]
            quota = effective_limits(AccountRow(row.id, row.name, row.daily_quota, row.rate_per_second, level),
                                     config).daily_quota
            new, why = judge_day(level, quota, DayStats(used, delivered, bounced, complaints), config)
            if new != level:
                changes.append((row.name, level, new, f"{day.isoformat()}: {why}"))
                level = new
            day += datetime.timedelta(days=1)
        if day != start or level != row.level:
            conn.execute("UPDATE accounts SET level = ?, level_evaluated_day = ? WHERE id = ?",
                         (level, (today - datetime.timedelta(days=1)).isoformat(), row.id))
    return changes


def catalog_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'catalog_version'").fetchone()[0])


def load_logins(conn: sqlite3.Connection) -> tuple[dict[str, Login], dict[str, int]]:
    """Active credentials by username, and account ids by name (for trusted listeners)."""
    logins = {r[0]: Login(username=r[0], digest=r[1], account_id=r[2], account=r[3]) for r in conn.execute(
        "SELECT c.username, c.digest, a.id, a.name FROM credentials c JOIN accounts a"
        " ON a.id = c.account_id WHERE c.revoked_at IS NULL")}
    accounts = {r[0]: r[1] for r in conn.execute("SELECT name, id FROM accounts")}
    return logins, accounts
