"""Web console users and their sessions (issue 21): `console-user add|list|delete|password`,
and what the console's login, pages and forms ask.

A user is an admin (every account) or one account's user, read-only or not. Its password is
generated and printed once; only a digest is kept, like SMTP credentials. A session is a random
cookie whose digest is kept, with its CSRF token; it ends at `console.session_lifetime` after
login, after `console.idle_timeout` without a request, at logout, or when the user's password
is changed or the user is deleted.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from smtprelay.accounts import check_password, digest_password, new_password
from smtprelay.catalog.console import ConsoleSession, ConsoleUser
from smtprelay.errors import Invalid, NotFound, Refused
from smtprelay.services.context import Context
from smtprelay.when import iso

_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
# Spent on a failed login whatever the reason, so an unknown name cannot be told from a wrong password.
_DUMMY = digest_password("x" * 32)


def user_doc(user: ConsoleUser) -> dict[str, Any]:
    return {"name": user.name, "role": user.role, "account": user.account, "read_only": user.read_only,
            "created_at": iso(user.created_at),
            "last_login_at": iso(user.last_login_at) if user.last_login_at else None}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConsoleService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog

    # -- users ---------------------------------------------------------------------------------
    def add(self, name: str, role: str, read_only: bool = False) -> tuple[ConsoleUser, str]:
        """role: "admin" or "account:<name>". Returns the user and its password (shown once)."""
        if not _NAME.match(name):
            raise Invalid(f"\"{name}\" is not a valid console user name: lower-case letters, digits, '.', '_', "
                          "'@' or '-', at most 64", "name")
        account_id = None
        if role != "admin":
            if not role.startswith("account:") or not role[len("account:"):]:
                raise Invalid(f"role must be admin or account:<name>, got \"{role}\"", "role")
            account = self.catalog.account(role[len("account:"):])
            if account is None:
                raise NotFound(f"no account {role[len('account:'):]}")
            account_id = account.id
        password = new_password()
        if not self.catalog.insert_console_user(name, account_id, read_only, digest_password(password),
                                                self.ctx.now()):
            raise Refused(f"console user {name} already exists (console-user password {name} gives a new password)")
        user = self.catalog.console_user(name)
        assert user is not None
        return user, password

    def list(self) -> list[ConsoleUser]:
        return self.catalog.console_users()

    def get(self, name: str) -> ConsoleUser:
        user = self.catalog.console_user(name)
        if user is None:
            raise NotFound(f"no console user {name}")
        return user

    def delete(self, name: str) -> ConsoleUser:
        user = self.get(name)
        self.catalog.delete_console_user(user.id)
        return user

    def new_password(self, name: str) -> str:
        """A new password; the user's sessions end."""
        user = self.get(name)
        password = new_password()
        self.catalog.set_console_password(user.id, digest_password(password))
        return password

    # -- sessions ------------------------------------------------------------------------------
    def login(self, name: str, password: str) -> tuple[str, ConsoleSession] | None:
        """A new session (its cookie value and the session) for the right password, else None."""
        user = self.catalog.console_user(name.strip().lower())
        if user is None:
            check_password(password, _DUMMY)
            return None
        if not check_password(password, user.password_digest):
            return None
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        now = self.ctx.now()
        expires = now + self.ctx.config.console.session_lifetime
        self.catalog.insert_console_session(_digest(token), user.id, csrf, now, expires)
        return token, ConsoleSession(user, csrf, now, expires)

    def session(self, token: str) -> ConsoleSession | None:
        if not token:
            return None
        return self.catalog.console_session(_digest(token), self.ctx.now(), self.ctx.config.console.idle_timeout)

    def logout(self, token: str) -> None:
        self.catalog.delete_console_session(_digest(token))
