"""DNS resolvers built from `[dns]`: the only way the relay asks DNS anything.

With `nameservers` set, only those are used (host:port, so tests and split-horizon set-ups
can point at a server on any port); without, the system's resolv.conf.
"""
from __future__ import annotations

from typing import TypeVar

import dns.asyncresolver
import dns.exception
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


def _server(text: str, port: object) -> str:
    """dnspython names a server "Do53:127.0.0.1@5353"; people write 127.0.0.1:5353."""
    host = text.split(":", 1)[1] if text.startswith("Do53:") else text
    host = host.split("@", 1)[0]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_failure(exc: Exception) -> str:
    """A failed lookup in words, per server: "no DNS server answered within 2.0 s (no answer from
    127.0.0.1:5353)", "no DNS server could answer (REFUSED from 127.0.0.1:5353)" — never only
    dnspython's class name."""
    kwargs = getattr(exc, "kwargs", None) or {}
    parts = []
    for error in kwargs.get("errors") or []:
        server, _, port, err, response = (tuple(error) + (None,) * 5)[:5]
        where = _server(str(server), port)
        if isinstance(err, str):                          # an answer with an error rcode
            parts.append(f"{err} from {where}")
        elif isinstance(err, dns.exception.Timeout):
            parts.append(f"no answer from {where}")
        elif isinstance(err, ConnectionRefusedError):
            parts.append(f"connection refused by {where}")
        else:
            parts.append(f"{where}: {err}")
    if isinstance(exc, dns.exception.Timeout):            # LifetimeTimeout too
        timeout = kwargs.get("timeout")
        head = f"no DNS server answered within {timeout:.1f} s" if timeout else "no DNS server answered in time"
    elif isinstance(exc, dns.resolver.NoNameservers):
        head = "no DNS server could answer"
    else:
        head = str(exc) or type(exc).__name__
    return head + (f" ({'; '.join(dict.fromkeys(parts))})" if parts else "")
