"""Next-hop resolution: a recipient domain → the ordered hosts to try.

Owns: the DNS answers cache (by TTL). MX records in preference order with random order
among equal preferences; no MX → the domain's own A/AAAA (RFC 5321 implicit MX); null MX
(RFC 7505) → permanent failure; NXDOMAIN → permanent failure; SERVFAIL/timeout →
temporary failure. `[delivery.routes]` replaces all of it with one host:port. Host names
are resolved here too, never through the system resolver.
"""
from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from smtprelay.config import Config, DeliveryTls, Route
from smtprelay.resolver import describe_failure, make_resolver

NEGATIVE_TTL = 300.0
MAX_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class Host:
    name: str                      # MX host name (for TLS verification and logs)
    addresses: tuple[str, ...]     # IPs to connect to, in order
    port: int


@dataclass(frozen=True, slots=True)
class NextHop:
    key: str                       # destination identity: the MX set or the route
    hosts: tuple[Host, ...]
    tls: DeliveryTls | None        # a route's TLS override


@dataclass(frozen=True, slots=True)
class Unroutable:
    permanent: bool
    status: str                    # enhanced status for the DSN/log
    reason: str


class MxResolver:
    def __init__(self, config: Config, resolver: dns.asyncresolver.Resolver | None = None):
        self.config = config
        self.resolver = resolver or make_resolver(config.dns, dns.asyncresolver.Resolver)
        self._cache: dict[tuple[str, str], tuple[float, object]] = {}
        self._literal_routes: dict[object, NextHop] = {}    # routes to an IP address never change

    async def next_hop(self, domain: str) -> NextHop | Unroutable:
        route = self.config.delivery.route_for(domain)
        if route is not None:
            return await self._route(route)
        answer = await self._query(domain, "MX")
        if isinstance(answer, Unroutable):
            return answer
        port = self.config.delivery.mx_port
        if answer is None:  # no MX: the domain itself is the host (implicit MX)
            addresses = await self._addresses(domain)
            if isinstance(addresses, Unroutable):
                return addresses
            if not addresses:
                return Unroutable(True, "5.1.2", f"domain {domain} has no MX and no address records")
            return NextHop(f"mx:{domain}", (Host(domain, addresses, port),), None)
        records: list[tuple[int, str]] = answer  # type: ignore[assignment]
        if len(records) == 1 and records[0][1] in ("", "."):
            return Unroutable(True, "5.1.10", f"domain {domain} does not accept mail (null MX, RFC 7505)")
        by_pref: dict[int, list[str]] = {}
        for pref, name in records:
            if name not in ("", "."):
                by_pref.setdefault(pref, []).append(name)
        hosts = []
        temporary: Unroutable | None = None
        for pref in sorted(by_pref):
            names = by_pref[pref]
            random.shuffle(names)  # equal preference: spread load (RFC 5321 5.1)
            for name in names:
                addresses = await self._addresses(name)
                if isinstance(addresses, Unroutable):
                    temporary = temporary or addresses
                    continue
                if addresses:
                    hosts.append(Host(name, addresses, port))
        if not hosts:
            return temporary or Unroutable(False, "4.4.3", f"no MX host of {domain} has an address")
        key = "mx:" + ",".join(sorted(n for names in by_pref.values() for n in names))
        return NextHop(key, tuple(hosts), None)

    async def _route(self, route: Route) -> NextHop | Unroutable:
        known = self._literal_routes.get(route)
        if known is not None:
            return known
        try:
            ipaddress.ip_address(route.host)
            hop = NextHop(f"route:{route.host}:{route.port}", (Host(route.host, (route.host,), route.port),), route.tls)
            self._literal_routes[route] = hop
            return hop
        except ValueError:
            addresses = await self._addresses(route.host)
        if isinstance(addresses, Unroutable):
            return addresses
        if not addresses:
            return Unroutable(False, "4.4.3", f"route host {route.host} has no address")
        return NextHop(f"route:{route.host}:{route.port}", (Host(route.host, addresses, route.port),), route.tls)

    async def _addresses(self, name: str) -> tuple[str, ...] | Unroutable:
        found: list[str] = []
        failure: Unroutable | None = None
        for rtype in ("A", "AAAA"):
            answer = await self._query(name, rtype)
            if isinstance(answer, Unroutable):
                if answer.permanent:
                    return ()  # NXDOMAIN for a host: it simply has no address
                failure = answer
            elif answer:
                found.extend(answer)  # type: ignore[arg-type]
        if not found and failure is not None:
            return failure
        return tuple(found)

    async def _query(self, name: str, rtype: str) -> object:
        """MX: list of (pref, host) or None for no MX; A/AAAA: list of IPs (empty if none)."""
        key = (name.lower(), rtype)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answer = await self.resolver.resolve(name, rtype)
            ttl = min(float(answer.rrset.ttl) if answer.rrset is not None else NEGATIVE_TTL, MAX_TTL)
            if rtype == "MX":
                value: object = [(r.preference, r.exchange.to_text().rstrip(".").lower()) for r in answer]
            else:
                value = [r.address for r in answer]
        except dns.resolver.NoAnswer:
            value, ttl = (None if rtype == "MX" else []), NEGATIVE_TTL
        except dns.resolver.NXDOMAIN:
            value, ttl = Unroutable(True, "5.1.2", f"domain {name} does not exist (NXDOMAIN)"), NEGATIVE_TTL
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
            # Not cached: the next try asks again.
            return Unroutable(False, "4.4.3", f"DNS lookup of {name} {rtype} failed: {describe_failure(exc)}")
        self._cache[key] = (now + ttl, value)
        return value
