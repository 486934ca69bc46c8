"""Open and click tracking and List-Unsubscribe, per account and per sender domain (a domain's
setting overrides its account's; everything is off by default). A running relay applies a
change within 2 s (the settings table bumps the catalog version).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smtprelay.errors import Invalid, NotFound
from smtprelay.events.tracking import resolve
from smtprelay.services.context import Context
from smtprelay.services.accounts import AccountService
from smtprelay.services.domains import domain_name

CHOICES = {"on": True, "off": False, "inherit": None}
KINDS = ("opens", "clicks", "unsubscribe")


@dataclass(frozen=True, slots=True)
class TrackingView:
    base_url: str | None
    settings: list[dict[str, Any]]

    def doc(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "settings": self.settings}


class TrackingService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog

    def show(self) -> TrackingView:
        accounts, domains = resolve(self.catalog.tracking_rows())
        names = self.catalog.account_names()
        owners = {d.name: d.account_id for d in self.catalog.domains()}
        docs = [{"account": names.get(a), "domain": None, "opens": s.opens, "clicks": s.clicks,
                 "unsubscribe": s.unsubscribe} for a, s in accounts.items()]
        docs += [{"account": names.get(owners.get(d, -1)), "domain": d, "opens": s.opens, "clicks": s.clicks,
                  "unsubscribe": s.unsubscribe} for d, s in domains.items()]
        return TrackingView(self.ctx.config.tracking.base_url,
                            sorted(docs, key=lambda d: (d["account"] or "", d["domain"] or "")))

    def set(self, account: str | None = None, domain: str | None = None, **values: str | None) -> dict[str, Any]:
        """values: opens, clicks, unsubscribe, each "on", "off" or "inherit" (None: unchanged).
        Returns the settings now in force for that account or domain."""
        for key, value in values.items():
            if key not in KINDS:
                raise Invalid(f"unknown setting \"{key}\": use opens, clicks or unsubscribe", key)
            if value is not None and value not in CHOICES:
                raise Invalid(f"{key} must be on, off or inherit, got \"{value}\"", key)
        chosen = {k: CHOICES[v] for k, v in values.items() if v is not None}
        if not chosen:
            raise Invalid("give opens, clicks or unsubscribe (on, off or inherit)", "opens")
        if (account is None) == (domain is None):
            raise Invalid("give an account or a sender domain (one of them)", "account")
        name = domain_name(domain) if domain else None
        if name is not None:
            found = self.catalog.domain(name)
            if found is None:
                raise NotFound(f"no sender domain named {name}")
            account_id = found.account_id
        else:
            account_id = AccountService(self.ctx).get(account or "").id
        self.catalog.set_tracking(account_id, name, chosen)
        docs = [d for d in self.show().settings if d["domain"] == name and (name is not None or d["account"] == account)]
        return docs[0] if docs else {}
