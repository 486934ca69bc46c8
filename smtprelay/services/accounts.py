"""Accounts (tenants) and their SMTP credentials.

Rules: account names are lower-case words; quotas and rates are positive; a credential's
password is generated here (about 190 bits), returned once, and only its digest is stored.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from smtprelay.accounts import digest_password, new_password
from smtprelay.catalog.records import Account, Credential
from smtprelay.errors import Invalid, NotFound, Refused
from smtprelay.policy.reputation import AccountRow, describe_rule, effective_limits
from smtprelay.services.context import Context
from smtprelay.services.egress import binding_fields
from smtprelay.when import iso

ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
DELIVERY_TLS = ("opportunistic", "required", "default")


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account with the limits that apply to it now."""
    name: str
    daily_quota: int
    rate_per_second: float
    quota_source: str
    delivery_tls: str
    level: int
    created_at: float
    credentials: int | None = None
    suspended_at: float | None = None
    suspended_reason: str | None = None
    pool: str = "shared"
    pool_fallback: str = "shared"

    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "daily_quota": self.daily_quota,
                               "rate_per_second": self.rate_per_second, "quota_source": self.quota_source,
                               "delivery_tls": self.delivery_tls, "level": self.level,
                               "created_at": iso(self.created_at), "suspended_at": iso(self.suspended_at),
                               "suspended_reason": self.suspended_reason, "pool": self.pool,
                               "pool_fallback": self.pool_fallback}
        if self.credentials is not None:
            doc["credentials"] = self.credentials
        return doc


@dataclass(frozen=True, slots=True)
class AccountList:
    """Every account, and the reputation rule that sets their quotas."""
    accounts: list[AccountView]
    levels: tuple[int, ...]
    rule: str

    def doc(self) -> dict[str, Any]:
        return {"accounts": [a.doc() for a in self.accounts], "reputation": {"levels": list(self.levels),
                                                                          "rule": self.rule}}


@dataclass(frozen=True, slots=True)
class NewCredential:
    username: str
    password: str
    account: str

    def doc(self) -> dict[str, Any]:
        return {"account": self.account, "username": self.username, "password": self.password}


def credential_doc(c: Credential) -> dict[str, Any]:
    return {"username": c.username, "account": c.account, "created_at": iso(c.created_at),
            "revoked_at": iso(c.revoked_at), "active": c.revoked_at is None}


class AccountService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog

    def get(self, name: str) -> Account:
        account = self.catalog.account(name)
        if account is None:
            raise NotFound(f"no account named \"{name}\"")
        return account

    def view(self, account: Account, credentials: int | None = None) -> AccountView:
        config = self.ctx.config
        limits = effective_limits(AccountRow(account.id, account.name, account.daily_quota, account.rate_per_second,
                                             account.level), config)
        return AccountView(account.name, limits.daily_quota, limits.rate_per_second,
                           "account" if account.daily_quota else ("reputation level" if config.reputation.levels
                                                                  else "default"),
                           account.delivery_tls or config.delivery.tls.value, account.level, account.created_at,
                           credentials, account.suspended_at, account.suspended_reason, account.pool or "shared",
                           account.pool_fallback or "shared")

    def resume(self, name: str) -> tuple[AccountView, int]:
        """Lift a content suspension: the account sends again, its held mail is queued again
        (how many recipients), and earlier refusals no longer count toward the next one."""
        account = self.get(name)
        if account.suspended_at is None:
            raise Refused(f"account \"{name}\" is not suspended")
        released = self.catalog.resume_account(account.id, self.ctx.now())
        return self.view(self.get(name)), released

    def add(self, name: str, daily_quota: int | None = None, rate_per_second: float | None = None) -> AccountView:
        if not ACCOUNT_NAME.match(name):
            raise Invalid(f"account name \"{name}\" is not valid: use lower-case letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit (at most 63)", "name")
        _check_limits(daily_quota, rate_per_second)
        if not self.catalog.insert_account(name, daily_quota, rate_per_second, self.ctx.now()):
            raise Refused(f"account \"{name}\" already exists")
        return self.view(self.get(name))

    def ensure(self, name: str) -> tuple[Account, bool]:
        """The named account, creating it if missing; True when it was created."""
        account = self.catalog.account(name)
        if account is not None:
            return account, False
        self.add(name)
        return self.get(name), True

    def set(self, name: str, daily_quota: int | None = None, rate_per_second: float | None = None,
            delivery_tls: str | None = None, pool: str | None = None,
            pool_fallback: str | None = None) -> AccountView:
        if daily_quota is None and rate_per_second is None and delivery_tls is None and pool is None \
                and pool_fallback is None:
            raise Invalid("nothing to change: give a daily quota, a rate, a delivery TLS policy or an egress pool")
        if delivery_tls is not None and delivery_tls not in DELIVERY_TLS:
            raise Invalid(f"delivery_tls must be opportunistic, required or default, got \"{delivery_tls}\"",
                          "delivery_tls")
        _check_limits(daily_quota, rate_per_second)
        fields: dict[str, Any] = binding_fields(self.ctx.config, pool, pool_fallback)
        account = self.get(name)
        if delivery_tls is not None:
            fields["delivery_tls"] = None if delivery_tls == "default" else delivery_tls
        if daily_quota is not None:
            fields["daily_quota"] = daily_quota
        if rate_per_second is not None:
            fields["rate_per_second"] = rate_per_second
        self.catalog.update_account(account.id, fields)
        return self.view(self.get(name))

    def all(self) -> list[AccountView]:
        return [self.view(a, n) for a, n in self.catalog.accounts()]

    def listing(self) -> AccountList:
        return AccountList(self.all(), self.ctx.config.reputation.levels, describe_rule(self.ctx.config))

    def add_credential(self, account_name: str) -> NewCredential:
        account = self.get(account_name)
        username = f"{account.name}-{secrets.token_hex(4)}"
        password = new_password()
        self.catalog.insert_credential(username, account.id, digest_password(password), self.ctx.now())
        return NewCredential(username=username, password=password, account=account.name)

    def credentials(self, account_name: str) -> list[Credential]:
        return self.catalog.credentials(self.get(account_name).id)

    def revoke(self, username: str) -> Credential:
        found = self.catalog.credential(username)
        if found is None:
            raise NotFound(f"no credential with username \"{username}\"")
        if found.revoked_at is not None:
            raise Refused(f"credential \"{username}\" is already revoked")
        now = self.ctx.now()
        self.catalog.revoke_credential(username, now)
        return Credential(found.username, found.account, found.created_at, now)


def _check_limits(daily_quota: int | None, rate_per_second: float | None) -> None:
    if daily_quota is not None and (not isinstance(daily_quota, int) or isinstance(daily_quota, bool)
                                    or daily_quota <= 0):
        raise Invalid(f"daily_quota must be a positive integer, got {daily_quota!r}", "daily_quota")
    if rate_per_second is not None and (isinstance(rate_per_second, bool) or rate_per_second <= 0):
        raise Invalid(f"rate must be a positive number, got {rate_per_second!r}", "rate")
