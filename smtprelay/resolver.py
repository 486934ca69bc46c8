"""DNS resolvers built from `[dns]`: the only way the relay asks DNS anything.

With `nameservers` set, only those are used (host:port, so tests and split-horizon set-ups
can point at a server on any port); without, the system's resolv.conf.
"""
from __future__ import annotations

from typing import TypeVar

import dns.asyncresolver
import dns.nameserver
import dns.resolver

from smtprelay.config import DnsConfig

R = TypeVar("R", dns.resolver.Resolver, dns.asyncresolver.Resolver)


def make_resolver(config: DnsConfig, kind: type[R] = dns.resolver.Resolver) -> R:  # type: ignore[assignment]
    if not config.nameservers:
        resolver = kind()
    else:
        resolver = kind(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in config.nameservers]
    resolver.lifetime = config.timeout
    resolver.timeout = min(config.timeout, 2.0)
    return resolver
