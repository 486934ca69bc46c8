"""The [egress] section: pools of source addresses the relay sends from (issue 19).

    [egress]
    warmup_schedule = [50, 100, 500]        # a new IP's ramp per provider (default: warmup.schedule)
    [[egress.pools]]
    name = "shared"
    addresses = ["203.0.113.10", { address = "2001:db8::10", helo = "out2.example.com" }]
    max_rate = 30                           # messages per second per address
    max_connections = 50                    # open delivery connections per address

A pool named "shared" always exists: without one configured it has no addresses, and
mail bound to it goes out from whatever address the kernel picks (a single-IP install
changes nothing). An address belongs to one pool.

Must never: open sockets (config.pools.unbindable is the probe, for check-config and the
scheduler), touch the store, or resolve names.
"""
from __future__ import annotations

import ipaddress
from typing import Any

from smtprelay.config.pools import SHARED, EgressAddress, EgressConfig, EgressPool
from smtprelay.config.reader import _HOSTNAME, _NAME, _list, _Section, _show
from smtprelay.config.warmup import daily_caps


def _address(raw: Any) -> EgressAddress:
    text, helo = raw, None
    if isinstance(raw, dict):
        unknown = set(raw) - {"address", "helo"}
        if unknown:
            raise ValueError("an address table takes only \"address\" and \"helo\" (unknown: " +
                             ", ".join(sorted(unknown)) + ")")
        text, helo = raw.get("address"), raw.get("helo")
        if helo is not None and (not isinstance(helo, str) or not _HOSTNAME.match(helo) or "." not in helo):
            raise ValueError("helo must be a fully qualified host name like \"out1.example.com\"")
    if not isinstance(text, str):
        raise ValueError("each address is an IP address string or a table {address = \"...\", helo = \"...\"}")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{text} cannot be a source address")
    return EgressAddress(str(ip), helo)


def parse_egress(raw: Any, problems: list[str]) -> EgressConfig:
    e = _Section(raw, "egress", problems)
    schedule = e._get("warmup_schedule", None, daily_caps)
    e.seen.add("pools")
    pools_raw = e.data.get("pools", [])
    pools: dict[str, EgressPool] = {}
    owner: dict[str, str] = {}
    if not isinstance(pools_raw, list):
        problems.append(f"egress.pools: must be an array of tables ([[egress.pools]]), got {_show(pools_raw)}")
        pools_raw = []
    for i, value in enumerate(pools_raw):
        sec = _Section(value, f"egress.pools[{i}]", problems)
        name = sec.string("name", None, _NAME, "a pool name (lower-case letters, digits, '.', '_' or '-')")
        if name is None:
            if "name" not in sec.data:
                problems.append(f"egress.pools[{i}].name: is required")
            name = f"#{i}"
        elif name in pools:
            problems.append(f"egress.pools[{i}].name: pool \"{name}\" is defined twice")
        sec.seen.add("addresses")
        addresses: list[EgressAddress] = []
        try:
            listed = _list(sec.data.get("addresses"))
            if not listed:
                raise ValueError("must list at least one address")
        except ValueError as exc:
            problems.append(f"egress.pools[{i}].addresses: {exc}, got {_show(sec.data.get('addresses'))}")
            listed = []
        for item in listed:
            try:
                address = _address(item)
            except ValueError as exc:
                problems.append(f"egress.pools[{i}].addresses: {exc}, got {_show(item)}")
                continue
            if address.address in owner:
                problems.append(f"egress.pools[{i}].addresses: {address.address} is already in pool "
                                f"\"{owner[address.address]}\" (an address belongs to one pool)")
                continue
            owner[address.address] = name
            addresses.append(address)
        pools[name] = EgressPool(name, tuple(addresses), max_rate=sec.positive_number("max_rate", 30.0),
                                 max_connections=sec.positive_int("max_connections", 50))
        sec.finish()
    e.finish()
    pools.setdefault(SHARED, EgressPool(SHARED))
    return EgressConfig(pools=pools, warmup_schedule=schedule)
