"""Webhooks: one URL per account, optionally one per sender address (which overrides it), and
the account's signing secret (rotation keeps the old one signing for `webhooks.secret_overlap`).
Delivery is events.webhooks.Dispatcher in the server; dead letters can be queued again.
"""
from __future__ import annotations

import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Any

from smtprelay.catalog.records import WebhookRecord
from smtprelay.errors import Invalid, NotFound
from smtprelay.events import outbox
from smtprelay.services.context import Context
from smtprelay.services.accounts import AccountService
from smtprelay.when import iso


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"a webhook URL must be http:// or https:// with a host, got \"{url}\"", "url")
    if parts.username or parts.password:
        raise Invalid("a webhook URL must not carry a user name or password; requests are signed instead", "url")
    return url


def webhook_doc(w: WebhookRecord) -> dict[str, Any]:
    return {"account": w.account, "address": w.address, "url": w.url, "created_at": iso(w.created_at),
            "pending": w.pending, "dead": w.dead}


@dataclass(frozen=True, slots=True)
class Owner:
    account_id: int
    account: str
    address: str | None

    @property
    def label(self) -> str:
        return self.address or "account " + self.account


@dataclass(frozen=True, slots=True)
class WebhookSet:
    owner: Owner
    url: str
    new_secret: str | None      # the account's signing secret when this call created it

    def doc(self) -> dict[str, Any]:
        return {"account": self.owner.account, "address": self.owner.address, "url": self.url,
                "secret": self.new_secret}


@dataclass(frozen=True, slots=True)
class Secret:
    account: str
    secret: str
    rotated: bool

    def doc(self) -> dict[str, Any]:
        return {"account": self.account, "secret": self.secret, "rotated": self.rotated}


class WebhookService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog

    def owner(self, account: str | None, address: str | None) -> Owner:
        if (account is None) == (address is None):
            raise Invalid("give an account or a sender address (one of them)", "account")
        if account is not None:
            found = AccountService(self.ctx).get(account)
            return Owner(found.id, found.name, None)
        owner = self.catalog.address_owner(address or "")
        if owner is None:
            raise NotFound(f"{address} is not a registered sender address (see 'smtprelay address add')")
        return Owner(owner[0], owner[1], address)

    def _ensure_secret(self, account_id: int, now: float) -> tuple[str, bool]:
        secret = self.catalog.webhook_secret(account_id)
        if secret is not None:
            return secret, False
        secret = new_secret()
        self.catalog.add_webhook_secret(account_id, secret, now)
        return secret, True

    def set(self, url: str, account: str | None = None, address: str | None = None) -> WebhookSet:
        check_url(url)
        owner = self.owner(account, address)
        now = self.ctx.now()
        with self.catalog.transaction():
            self.catalog.set_webhook(owner.account_id, owner.address, url, now)
            secret, created = self._ensure_secret(owner.account_id, now)
        return WebhookSet(owner, url, secret if created else None)

    def all(self) -> list[WebhookRecord]:
        return self.catalog.webhooks()

    def delete(self, account: str | None = None, address: str | None = None) -> Owner:
        owner = self.owner(account, address)
        if not self.catalog.delete_webhook(owner.account_id, owner.address):
            raise NotFound(f"no webhook is set for {owner.label}")
        return owner

    def secret(self, account: str, rotate: bool = False) -> Secret:
        owner = self.owner(account, None)
        now = self.ctx.now()
        with self.catalog.transaction():
            if rotate:
                self.catalog.retire_webhook_secrets(owner.account_id, now + self.ctx.config.webhooks.secret_overlap)
                secret = new_secret()
                self.catalog.add_webhook_secret(owner.account_id, secret, now)
            else:
                secret, _ = self._ensure_secret(owner.account_id, now)
        return Secret(owner.account, secret, rotate)

    def failures(self) -> list[dict[str, Any]]:
        return [{**d, "created_at": iso(d["created_at"])} for d in outbox.dead_letters(self.ctx.store)]

    def replay(self, since: float | None = None) -> int:
        return outbox.replay(self.ctx.store, 0.0 if since is None else since, self.ctx.now())
