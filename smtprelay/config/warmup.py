"""The [warmup] section and the sender-domain keys of [reputation].

Must never: open sockets, touch the store, or read anything but the data it is given.
"""
from __future__ import annotations

import zoneinfo
from typing import Any

from smtprelay.config.model import (DEFAULT_BACKOFF_PATTERNS, DEFAULT_PROVIDERS, DEFAULT_WARMUP_SCHEDULE,
                                    ProviderSettings, WarmupConfig)
from smtprelay.config.reader import _HOSTNAME, _NAME, _list, _Section, _show


def daily_caps(raw: Any) -> tuple[int, ...]:
    values = _list(raw)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values) or \
            any(b < a for a, b in zip(values, values[1:])):
        raise ValueError("must be a non-empty list of non-decreasing positive daily caps like [50, 100, 200]")
    return tuple(values)


def fraction(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw <= 1:
        raise ValueError("must be a fraction above 0 and at most 1, like 0.05 for 5 %")
    return float(raw)


def _suffixes(raw: Any) -> tuple[str, ...]:
    values = _list(raw)
    if any(not isinstance(v, str) or not _HOSTNAME.match(v.strip(".")) for v in values):
        raise ValueError("must be a list of MX host name suffixes like [\"google.com\", \"googlemail.com\"]")
    return tuple(v.strip(".").lower() for v in values)


def _timezone(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be an IANA time zone name like \"UTC\" or \"Asia/Shanghai\"")
    try:
        zoneinfo.ZoneInfo(raw)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not a known IANA time zone name (like \"UTC\" or \"Europe/Berlin\")") from None
    return raw


def _patterns(raw: Any) -> tuple[str, ...]:
    values = _list(raw)
    if any(not isinstance(v, str) or not v.strip() for v in values):
        raise ValueError("must be a list of non-empty phrases like [\"rate limit\", \"try again later\"]")
    return tuple(v.strip().lower() for v in values)


def _subtable(section: _Section, name: str, what: str) -> dict[str, Any]:
    section.seen.add(name)
    table = section.data.get(name, {})
    if not isinstance(table, dict):
        section.problems.append(f"{section.key(name)}: must be a table of {what}, got {_show(table)}")
        return {}
    return table


def parse_warmup(raw: Any, problems: list[str]) -> WarmupConfig:
    w = _Section(raw, "warmup", problems)
    providers = dict(DEFAULT_PROVIDERS)
    for name, value in _subtable(w, "providers", "provider = [MX suffixes]").items():
        key = f"warmup.providers.{name}"
        if not _NAME.match(name):
            problems.append(f"{key}: a provider name must be lower-case letters, digits, '.', '_' or '-'")
            continue
        try:
            suffixes = _suffixes(value)
        except ValueError as exc:
            problems.append(f"{key}: {exc}, got {_show(value)}")
            continue
        if suffixes:
            providers[name] = suffixes
        else:
            providers.pop(name, None)  # an empty list removes a shipped provider
    overrides: dict[str, ProviderSettings] = {}
    for name, value in _subtable(w, "overrides", "provider tables").items():
        sec = _Section(value, f"warmup.overrides.{name}", problems)
        overrides[name] = ProviderSettings(
            schedule=sec._get("schedule", None, daily_caps),
            max_daily=sec.positive_int("max_daily", None, allow_zero=True),  # type: ignore[arg-type]
            max_connections=sec.positive_int("max_connections", None),  # type: ignore[arg-type]
            max_messages_per_connection=sec.positive_int("max_messages_per_connection", None),  # type: ignore[arg-type]
            max_per_hour=sec.positive_int("max_per_hour", None),  # type: ignore[arg-type]
        )
        sec.finish()
    config = WarmupConfig(
        enabled=w.boolean("enabled", True),
        schedule=w._get("schedule", DEFAULT_WARMUP_SCHEDULE, daily_caps),
        max_daily=w.positive_int("max_daily", 0, allow_zero=True),
        timezone=w._get("timezone", "UTC", _timezone),
        max_wait=w.duration("max_wait", 7 * 86400.0),
        providers=providers,
        overrides=overrides,
        backoff_patterns=w._get("backoff_patterns", DEFAULT_BACKOFF_PATTERNS, _patterns),
        backoff_initial=w.duration("backoff_initial", 300.0),
        backoff_max=w.duration("backoff_max", 4 * 3600.0),
    )
    w.finish()
    if config.backoff_initial > config.backoff_max:
        problems.append("warmup.backoff_initial: must not exceed warmup.backoff_max")
    return config
