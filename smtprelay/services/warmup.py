"""Warm-up as an operator sees and changes it: each sender domain × mailbox provider's day,
today's cap and use, and its state; a day override (`set-day`); lifting a reputation
suspension (`domain resume`); the same per egress source address (issue 19: `--ip`). The
running scheduler applies a change within a scan.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from smtprelay.errors import Invalid, NotFound, Refused
from smtprelay.services.context import Context
from smtprelay.services.domains import domain_name
from smtprelay.warmup import schedule as W
from smtprelay.warmup.ip_pairs import ip_warmup_config
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
    ip: bool = False          # sender_domain is an egress address

    def doc(self) -> dict[str, Any]:
        return {"ip" if self.ip else "sender_domain": self.sender_domain, "provider": self.provider, "day": self.day,
                "cap": self.cap}


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

    def _address(self, ip: str) -> str:
        """A configured egress address, as relay.toml's pools know it (compressed IPv6)."""
        try:
            address = str(ipaddress.ip_address(ip))
        except ValueError:
            raise Invalid(f"\"{ip}\" is not an IP address", "ip") from None
        if self.config.egress.pool_of(address) is None:
            known = ", ".join(a.address for _, a in self.config.egress.addresses()) or "none"
            raise NotFound(f"{address} is not an address of an [[egress.pools]] in relay.toml (configured: {known})")
        return address

    def ip_status(self, ip: str) -> WarmupStatus:
        """A source address's warm-up per provider: the same view as a domain's, on the egress schedule."""
        address = self._address(ip)
        now = self.ctx.now()
        settings = ip_warmup_config(self.config)
        docs = []
        for pair in self.catalog.ip_warmup_pairs(address):
            doc = W.view(pair, settings, now, None)
            doc = {"ip": doc.pop("sender_domain"), **doc}
            doc["pool"] = self.config.egress.pool_of(address).name  # type: ignore[union-attr]
            doc["paused_until"] = iso(doc["paused_until"])  # type: ignore[arg-type]
            doc["resets_at"] = iso(doc["resets_at"])  # type: ignore[arg-type]
            docs.append(doc)
        return WarmupStatus(self.config.warmup.enabled, docs)

    def set_ip_day(self, ip: str, provider: str, day: int) -> DaySet:
        """An already-warm address at a provider: put it on day N of the egress schedule."""
        address = self._address(ip)
        settings = ip_warmup_config(self.config)
        name = self._provider(provider)
        schedule = settings.schedule_for(name)
        self._check_day(day, schedule, name)
        now = self.ctx.now()
        self.catalog.set_ip_warmup_day(address, name, day, W.local_day(now, settings.timezone), now)
        return DaySet(address, name, day, W.daily_cap(day, schedule, settings.max_daily_for(name)), ip=True)

    def _provider(self, provider: str) -> str:
        name = provider.lower()
        # A provider is one of [warmup.providers], or the registered domain that keys an MX set no
        # provider claims (example.net); a bare unknown word is a typo ("gmial"), not a new provider.
        if name not in self.config.warmup.providers and "." not in name:
            raise Invalid(f"unknown provider \"{provider}\": the known providers are "
                          f"{', '.join(sorted(self.config.warmup.providers))}, or the registered domain of the MX "
                          "hosts of any other (like example.net)", "provider")
        return name

    @staticmethod
    def _check_day(day: int, schedule: tuple[int, ...], name: str) -> None:
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= len(schedule) + 1:
            raise Invalid(f"day must be from 1 to {len(schedule) + 1} (day {len(schedule) + 1} means warmed up: "
                          f"the schedule for {name} has {len(schedule)} days), got {day}", "day")

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
        name = self._provider(provider)
        schedule = warmup.schedule_for(name)
        self._check_day(day, schedule, name)
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
