"""Strict envelope address parsing: the relay is never open.

Owns: the one parser that turns a MAIL FROM / RCPT TO argument into the address that
policy checks and delivery later uses, so both always see the same thing. The classic
open-relay forms are refused as bad syntax rather than interpreted: percent hack
(`user%other@host`), source routes (`@a:user@b`), bang paths (`host!user`), quoted
local parts holding `@` or `%`, IP-literal domains (`user@[10.0.0.1]`), a second `@`,
and unqualified domains. The domain is lower-cased; the local part is kept exactly.

Must never: do I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from smtprelay.errors import Invalid

# RFC 5322 atext, less '%' and '!' (percent hack, bang path).
_ATOM = r"[A-Za-z0-9#$&'*+\-/=?^_`{|}~]+"
_DOT_ATOM = re.compile(rf"^{_ATOM}(\.{_ATOM})*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_QUOTED_BAD = set('@%!"\\\r\n\x00')


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


class AddressError(ValueError):
    pass


def parse_address(text: str) -> Address:
    """Parse the inside of `<...>`; raise AddressError naming the problem."""
    if len(text) > 254:
        raise AddressError("address longer than 254 characters")
    if text.startswith("@"):
        raise AddressError("source routes are not accepted")
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise AddressError("unterminated quoted local part")
        quoted = text[1:end]
        if not quoted or any(c in _QUOTED_BAD for c in quoted) or any(ord(c) < 32 or ord(c) > 126 for c in quoted):
            raise AddressError("quoted local part holds characters that are not accepted")
        local, rest = text[: end + 1], text[end + 1:]
        if not rest.startswith("@"):
            raise AddressError("missing @domain")
        domain = rest[1:]
    else:
        if text.count("@") != 1:
            raise AddressError("an address has exactly one @" if "@" in text else "missing @domain")
        local, _, domain = text.partition("@")
        if "%" in local or "!" in local:
            raise AddressError("'%' and '!' routing in the local part is not accepted")
        if not _DOT_ATOM.match(local):
            raise AddressError("bad local part")
    if len(local) > 64:
        raise AddressError("local part longer than 64 characters")
    if domain.startswith("["):
        raise AddressError("IP-literal domains are not accepted")
    domain = domain.lower()
    if domain.endswith("."):
        domain = domain[:-1]
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise AddressError("domain must be a fully qualified host name")
    if labels[-1].isdigit():
        raise AddressError("domain must be a host name, not an IP address")
    return Address(local=local, domain=domain)


def split_smtp_argument(arg: str) -> tuple[str, str]:
    """Split `<addr> PARAMS` (or bare `addr PARAMS`) into the address text and the rest."""
    arg = arg.strip()
    if arg.startswith("<"):
        end = arg.find(">")
        if end < 0:
            raise AddressError("missing '>'")
        return arg[1:end], arg[end + 1:].strip()
    address, _, rest = arg.partition(" ")
    return address, rest.strip()


def canonical(address: str, field: str = "address") -> str:
    """An address as the catalog keys it (<> and spaces dropped, domain lower-cased); a bad one
    is refused as `Invalid` naming `field`."""
    try:
        return str(parse_address(address.strip().strip("<>")))
    except AddressError as exc:
        raise Invalid(f"\"{address}\" is not a valid address: {exc}", field) from None
