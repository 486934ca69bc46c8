"""The catalog's web console users and sessions on SQLite (issue 21).

Owns: the SQL of `console_users` and `console_sessions`. Keeps digests only: of each user's
generated password, and of each session's cookie. Must never: decide who may see what (the
console's pages and services.console do).
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    id: int
    name: str
    account_id: int | None       # None: an admin
    account: str | None
    read_only: bool
    password_digest: str
    created_at: float
    last_login_at: float | None

    @property
    def role(self) -> str:
        return "admin" if self.account is None else f"account:{self.account}"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    user: ConsoleUser
    csrf: str
    created_at: float
    expires_at: float


_USER = ("SELECT u.id, u.name, u.account_id, a.name, u.read_only, u.password_digest, u.created_at, u.last_login_at"
         " FROM console_users u LEFT JOIN accounts a ON a.id = u.account_id")


def _user(row: Any) -> ConsoleUser:
    return ConsoleUser(int(row[0]), row[1], row[2], row[3], bool(row[4]), row[5], float(row[6]), row[7])


class SqliteConsole:
    conn: sqlite3.Connection
    integrity_error: type[BaseException]

    def console_user(self, name: str) -> ConsoleUser | None:
        row = self.conn.execute(_USER + " WHERE u.name = ?", (name,)).fetchone()
        return _user(row) if row else None

    def console_users(self) -> list[ConsoleUser]:
        return [_user(r) for r in self.conn.execute(_USER + " ORDER BY u.name")]

    def insert_console_user(self, name: str, account_id: int | None, read_only: bool, digest: str,
                            now: float) -> bool:
        try:
            self.conn.execute("INSERT INTO console_users (name, account_id, read_only, password_digest, created_at)"
                              " VALUES (?,?,?,?,?)", (name, account_id, int(read_only), digest, now))
        except self.integrity_error:
            return False
        return True

    def set_console_password(self, user_id: int, digest: str) -> None:
        self.conn.execute("UPDATE console_users SET password_digest = ? WHERE id = ?", (digest, user_id))
        self.conn.execute("DELETE FROM console_sessions WHERE user_id = ?", (user_id,))

    def delete_console_user(self, user_id: int) -> None:
        self.conn.execute("DELETE FROM console_sessions WHERE user_id = ?", (user_id,))
        self.conn.execute("DELETE FROM console_users WHERE id = ?", (user_id,))

    def insert_console_session(self, token_digest: str, user_id: int, csrf: str, now: float,
                               expires_at: float) -> None:
        self.conn.execute("DELETE FROM console_sessions WHERE expires_at < ?", (now,))
        self.conn.execute("INSERT INTO console_sessions (token_digest, user_id, csrf, created_at, seen_at, expires_at)"
                          " VALUES (?,?,?,?,?,?)", (token_digest, user_id, csrf, now, now, expires_at))
        self.conn.execute("UPDATE console_users SET last_login_at = ? WHERE id = ?", (now, user_id))

    def console_session(self, token_digest: str, now: float, idle: float) -> ConsoleSession | None:
        row = self.conn.execute("SELECT user_id, csrf, created_at, seen_at, expires_at FROM console_sessions"
                                " WHERE token_digest = ?", (token_digest,)).fetchone()
        if row is None or row[4] <= now or row[3] + idle <= now:
            return None
        user = self.conn.execute(_USER + " WHERE u.id = ?", (row[0],)).fetchone()
        if user is None:
            return None
        if now - row[3] > 60:       # a write at most once a minute per session
            self.conn.execute("UPDATE console_sessions SET seen_at = ? WHERE token_digest = ?", (now, token_digest))
        return ConsoleSession(_user(user), row[1], row[2], row[4])

    def delete_console_session(self, token_digest: str) -> None:
        self.conn.execute("DELETE FROM console_sessions WHERE token_digest = ?", (token_digest,))
