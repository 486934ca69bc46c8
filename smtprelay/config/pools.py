"""The egress pools' values (issue 19): a pool of source addresses, each with its HELO name,
and the probe that tells whether this host owns an address. Parsed by config.egress.

Must never: touch the store or resolve names.
"""
from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

SHARED = "shared"
FALLBACKS = (SHARED, "none")


@dataclass(frozen=True, slots=True)
class EgressAddress:
    address: str                    # as ipaddress prints it (compressed IPv6)
    helo: str | None = None         # None: the address's PTR when it has one, else server.hostname

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.address else socket.AF_INET


@dataclass(frozen=True, slots=True)
class EgressPool:
    name: str
    addresses: tuple[EgressAddress, ...] = ()     # empty: the kernel's choice (no binding)
    max_rate: float = 30.0
    max_connections: int = 50


@dataclass(frozen=True, slots=True)
class EgressConfig:
    pools: dict[str, EgressPool] = field(default_factory=lambda: {SHARED: EgressPool(SHARED)})
    warmup_schedule: tuple[int, ...] | None = None

    def addresses(self) -> list[tuple[EgressPool, EgressAddress]]:
        return [(pool, a) for pool in self.pools.values() for a in pool.addresses]

    def pool_of(self, address: str) -> EgressPool | None:
        for pool, a in self.addresses():
            if a.address == address:
                return pool
        return None


def unbindable(address: EgressAddress) -> str | None:
    """Why this host cannot send from `address` (None: it can). Binding a socket to it is the
    test the delivery connection itself will make (loopback aliases like 127.0.8.1 bind on
    Linux without an interface; an address another host owns does not)."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.bind((address.address, 0))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{address.address} is not an address of this host"
        return f"{address.address} cannot be bound: {exc.strerror or exc}"
    finally:
        sock.close()
    return None
