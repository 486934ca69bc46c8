"""Warm-up as an operator sees and changes it: each sender domain × mailbox provider's day,
today's cap and use, and its state; a day override (`set-day`); lifting a reputation
suspension (`domain resume`). The running scheduler applies a change within a scan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smtprelay.errors import Invalid, NotFound, Refused
from smtprelay.services.context import Context
from smtprelay.services.domains import domain_name
from smtprelay.warmup import schedule as W
from smtprelay.when import iso


@dataclass(frozen=True, slots=True)
class WarmupStatus:
    enabled: bool
    pairs: list[dict[str, Any]]

    def doc(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "pairs": self.pairs}


@dataclass(frozen=True, slots=True)
class DaySet:
    sender_domain: str
    provider: str
    day: int
    cap: int | None

    def doc(self) -> dict[str, Any]:
        return {"sender_domain": self.sender_domain, "provider": self.provider, "day": self.day, "cap": self.cap}


@dataclass(frozen=True, slots=True)
class Resumed:
    domain: str
    released: int

    def doc(self) -> dict[str, Any]:
        return {"domain": self.domain, "released": self.released}


class WarmupService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog
        self.config = ctx.config

    def status(self, sender_domain: str | None = None) -> WarmupStatus:
        domain = domain_name(sender_domain) if sender_domain else None
        if domain and self.catalog.domain(domain) is None:
            raise NotFound(f"no sender domain named {domain}")
        now = self.ctx.now()
        suspended = self.catalog.suspended_domains()
        docs = []
        for pair in self.catalog.warmup_pairs(domain):
            doc = W.view(pair, self.config.warmup, now, suspended.get(pair.sender_domain))
            doc["paused_until"] = iso(doc["paused_until"])  # type: ignore[arg-type]
            doc["resets_at"] = iso(doc["resets_at"])  # type: ignore[arg-type]
            docs.append(doc)
        # Suspended domains with no pair yet still show up.
        for name, why in suspended.items():
            if (not domain or domain == name) and not any(d["sender_domain"] == name for d in docs):
                docs.append({"sender_domain": name, "provider": None, "day": None, "cap": None, "used": 0,
                             "remaining": 0, "state": "suspended", "why": why, "paused_until": None,
                             "resets_at": None})
        return WarmupStatus(self.config.warmup.enabled, docs)

    def set_day(self, sender_domain: str, provider: str, day: int) -> DaySet:
        warmup = self.config.warmup
        name = provider.lower()
        # A provider is one of [warmup.providers], or the registered domain that keys an MX set no
        # provider claims (example.net); a bare unknown word is a typo ("gmial"), not a new provider.
        if name not in warmup.providers and "." not in name:
            raise Invalid(f"unknown provider \"{provider}\": the known providers are "
                          f"{', '.join(sorted(warmup.providers))}, or the registered domain of the MX hosts of any "
                          "other (like example.net)", "provider")
        schedule = warmup.schedule_for(name)
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= len(schedule) + 1:
            raise Invalid(f"day must be from 1 to {len(schedule) + 1} (day {len(schedule) + 1} means warmed up: "
                          f"the schedule for {name} has {len(schedule)} days), got {day}", "day")
        domain = domain_name(sender_domain)
        if self.catalog.domain(domain) is None:
            raise NotFound(f"no sender domain named {domain}")
        now = self.ctx.now()
        self.catalog.set_warmup_day(domain, name, day, W.local_day(now, warmup.timezone), now)
        return DaySet(domain, name, day, W.daily_cap(day, schedule, warmup.max_daily_for(name)))

    def resume(self, sender_domain: str) -> Resumed:
        domain = domain_name(sender_domain)
        if self.catalog.domain(domain) is None:
            raise NotFound(f"no sender domain named {domain}")
        if domain not in self.catalog.suspended_domains():
            raise Refused(f"sending for {domain} is not suspended")
        return Resumed(domain, self.catalog.resume_domain(domain, self.ctx.now()))
