"""Which mailbox provider a recipient domain belongs to, judged by its MX hosts.

Pure. A host belongs to a provider when it equals one of the provider's suffixes or ends
with "." + suffix ([warmup.providers]); the most preferred MX decides, then the others.
Any other domain is its own provider, keyed by the registered domain of its first MX host,
so every company on Google Workspace counts toward "gmail", and two domains served by the
same unknown MX count as one provider. With a route (no MX lookup) the recipient domain
itself is matched the same way.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from smtprelay.domains.records import registered_domain


def _matches(host: str, suffix: str) -> bool:
    return host == suffix or host.endswith("." + suffix)


def named_provider(hosts: Iterable[str], providers: Mapping[str, tuple[str, ...]]) -> str | None:
    for host in hosts:
        host = host.lower().rstrip(".")
        best: tuple[int, str] | None = None
        for name, suffixes in providers.items():
            for suffix in suffixes:
                # The longest matching suffix wins, so a specific entry beats a general one.
                if _matches(host, suffix) and (best is None or len(suffix) > best[0]):
                    best = (len(suffix), name)
        if best is not None:
            return best[1]
    return None


def provider_for(hosts: Iterable[str], providers: Mapping[str, tuple[str, ...]]) -> str:
    """The provider of a destination whose hosts are given in preference order."""
    hosts = [h.lower().rstrip(".") for h in hosts]
    found = named_provider(hosts, providers)
    if found is not None:
        return found
    # Sorted, so that shuffled equal-preference MX hosts always give the same key.
    return registered_domain(sorted(hosts)[0]) if hosts else "unknown"
