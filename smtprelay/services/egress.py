"""Egress pool bindings (issue 19): which pool of source addresses a sender domain's or an
account's mail goes out from, and whether it may fall back to the shared pool.

Owns: the rules of a binding — the pool must be one of relay.toml's `[[egress.pools]]` (or
"shared", which always exists); "default" clears a setting (a domain then follows its
account, an account the shared pool); the fallback is "shared" or "none" — and which
addresses a domain can send from (for its SPF record).

Must never: open sockets or decide which address a message takes (the scheduler's
delivery.egress does).
"""
from __future__ import annotations

from smtprelay.config import Config
from smtprelay.config.pools import FALLBACKS, SHARED
from smtprelay.errors import Invalid

DEFAULT = "default"


def check_pool(config: Config, pool: str | None) -> str | None:
    """The column value for `--pool` (None: leave it; "" never); "default" clears it."""
    if pool is None:
        return None
    if pool == DEFAULT:
        return ""
    if pool not in config.egress.pools:
        known = ", ".join(sorted(config.egress.pools))
        raise Invalid(f"no egress pool named \"{pool}\" in relay.toml ([[egress.pools]]; configured: {known})",
                      "pool")
    return pool


def check_fallback(fallback: str | None) -> str | None:
    if fallback is None:
        return None
    if fallback == DEFAULT:
        return ""
    if fallback not in FALLBACKS:
        raise Invalid(f"pool_fallback must be shared, none or default, got \"{fallback}\"", "pool_fallback")
    return fallback


def binding_fields(config: Config, pool: str | None, fallback: str | None) -> dict[str, str | None]:
    """The catalog columns a `--pool`/`--pool-fallback` change writes ("" → NULL)."""
    fields: dict[str, str | None] = {}
    for column, value in (("pool", check_pool(config, pool)), ("pool_fallback", check_fallback(fallback))):
        if value is not None:
            fields[column] = value or None
    return fields


def sending_addresses(config: Config, pool: str, fallback: str) -> list[str]:
    """Every source address mail bound to `pool` can leave from (what the domain's SPF record
    must name): the pool's addresses, and the shared pool's when it may fall back; a pool
    without addresses (the kernel's choice) sends from server.public_ips."""
    names = [pool] + ([SHARED] if fallback == SHARED and pool != SHARED else [])
    found: list[str] = []
    for name in names:
        chosen = config.egress.pools.get(name)
        listed = [a.address for a in chosen.addresses] if chosen is not None and chosen.addresses else \
            list(config.server.public_ips)
        found += [ip for ip in listed if ip not in found]
    return found
