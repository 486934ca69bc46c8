"""Reading values out of a TOML table with key-path errors, and durations.

Owns: `_Section`, which records every problem as ``key.path: reason, got <value>`` and
flags unknown keys, and the small value parsers the sections share.
"""
from __future__ import annotations

import enum
import ipaddress
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

from smtprelay.config.model import Network

T = TypeVar("T")


MiB = 1024 * 1024


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(text: str) -> float:
    """Parse "30s", "15m", "72h", "180d", "500ms" or combinations like "1h30m" into seconds."""
    if not isinstance(text, str) or not text:
        raise ValueError("must be a duration string like \"30s\", \"15m\", \"72h\" or \"180d\"")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError("must be a duration string like \"30s\", \"15m\", \"72h\" or \"180d\"")
    return total


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


class _Section:
    """Reads one TOML table, recording problems under its key path."""

    def __init__(self, data: Any, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        if not isinstance(data, dict):
            problems.append(f"{path}: must be a table, got {_show(data)}")
            data = {}
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, default: T, convert: Callable[[Any], T]) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        raw = self.data[name]
        try:
            return convert(raw)
        except ValueError as exc:
            self.problems.append(f"{self.key(name)}: {exc}, got {_show(raw)}")
            return default

    def positive_int(self, name: str, default: int, allow_zero: bool = False) -> int:
        def convert(raw: Any) -> int:
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0 or (raw == 0 and not allow_zero):
                raise ValueError("must be a non-negative integer" if allow_zero else "must be a positive integer")
            return raw
        return self._get(name, default, convert)

    def positive_number(self, name: str, default: float) -> float:
        def convert(raw: Any) -> float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
                raise ValueError("must be a positive number")
            return float(raw)
        return self._get(name, default, convert)

    def port(self, name: str, default: int) -> int:
        def convert(raw: Any) -> int:
            if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 65535:
                raise ValueError("must be a port number between 0 and 65535")
            return raw
        return self._get(name, default, convert)

    def duration(self, name: str, default: float, allow_zero: bool = False) -> float:
        def convert(raw: Any) -> float:
            value = parse_duration(raw)
            if value < 0 or (value == 0 and not allow_zero):
                raise ValueError("must be a positive duration" + (' (or "0s")' if allow_zero else ""))
            return value
        return self._get(name, default, convert)

    def boolean(self, name: str, default: bool) -> bool:
        def convert(raw: Any) -> bool:
            if not isinstance(raw, bool):
                raise ValueError("must be true or false")
            return raw
        return self._get(name, default, convert)

    def string(self, name: str, default: Any, pattern: re.Pattern[str] | None = None, what: str = "") -> Any:
        def convert(raw: Any) -> str:
            if not isinstance(raw, str) or not raw:
                raise ValueError("must be a non-empty string")
            if pattern is not None and not pattern.match(raw):
                raise ValueError(f"must be {what}")
            return raw
        return self._get(name, default, convert)

    def choice(self, name: str, default: Any, enum_type: type[enum.Enum]) -> Any:
        allowed = [m.value for m in enum_type]

        def convert(raw: Any) -> Any:
            if raw not in allowed:
                raise ValueError("must be one of " + ", ".join(f'"{a}"' for a in allowed))
            return enum_type(raw)
        return self._get(name, default, convert)

    def path_value(self, name: str, default: Path | None) -> Path | None:
        return self._get(name, default, lambda raw: Path(_nonempty_str(raw)))

    def finish(self) -> None:
        for name in sorted(set(self.data) - self.seen):
            self.problems.append(f"{self.key(name)}: unknown key")


def _nonempty_str(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be a non-empty string")
    return raw


def _show(raw: Any) -> str:
    if isinstance(raw, str):
        return f'"{raw}"'
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, dict):
        return "a table"
    return repr(raw)


def _parse_networks(raw: Any) -> tuple[Network, ...]:
    if not isinstance(raw, list):
        raise ValueError("must be a list of CIDR strings like \"127.0.0.1/32\"")
    nets = []
    for item in raw:
        if not isinstance(item, str):
            raise ValueError("must be a list of CIDR strings like \"127.0.0.1/32\"")
        try:
            nets.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            raise ValueError(f"\"{item}\" is not a CIDR network (host bits must be zero)") from None
    return tuple(nets)


def _parse_nameserver(raw: Any) -> tuple[str, int]:
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be a list of \"address\" or \"address:port\" strings")
    host, port = raw, 53
    if raw.startswith("["):  # [::1]:5353
        host, _, rest = raw[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"\"{raw}\" is not address:port")
            port = int(rest[1:])
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"\"{raw}\" is not address:port")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"\"{raw}\": a nameserver must be an IP address, not a name") from None
    if not 0 < port <= 65535:
        raise ValueError(f"\"{raw}\": port out of range")
    return host, port


def _host_port(raw: Any) -> tuple[str, int]:
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be \"host:port\" (or a table with host and tls)")
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = raw.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError("must be \"host:port\" with a port from 1 to 65535")
    return host, int(port_text)


def _one_of_int(raw: Any, allowed: tuple[int, ...]) -> int:
    if isinstance(raw, bool) or raw not in allowed:
        raise ValueError("must be one of " + ", ".join(str(a) for a in allowed))
    return int(raw)


def _list(raw: Any) -> list[Any]:
    if not isinstance(raw, list):
        raise ValueError("must be a list")
    return raw


def _one_of(raw: Any, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise ValueError("must be one of " + ", ".join(f'"{a}"' for a in allowed))
    return str(raw)


def _ip_text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be an IP address string")
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ValueError("must be an IP address such as \"127.0.0.1\" or \"::1\"") from None
    return raw
