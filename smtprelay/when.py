"""Times a person types on the command line: a date, an ISO 8601 time, or a duration.

Owns: the one reading of WHEN for every command (`blocklist add --expires`, `blocklist list
--since/--until`, `stats --from/--to`, `status --from/--to`, `webhook replay --since`, the
blocklist CSV's expires_at). A duration counts from now: forward for a deadline, backward for
a starting point. Pure apart from the `now` it is given.
"""
from __future__ import annotations

import datetime

from smtprelay.config import parse_duration


def parse_when(text: str, now: float, *, future: bool) -> float:
    """2026-12-31 (UTC midnight), 2026-12-31T12:00:00Z (UTC when no zone is given), or a
    duration like "30d" or "1h": `now` plus it when `future` (an expiry), minus it otherwise
    (--since 1h: the last hour). Raises ValueError naming the three forms."""
    try:
        span = parse_duration(text)
    except ValueError:
        pass
    else:
        return now + span if future else now - span
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"\"{text}\" is neither a date like 2026-12-31, a time like 2026-12-31T12:00:00Z, "
                         f"nor a duration like 30d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def iso(ts: float | None) -> str | None:
    """A stored time as every document shows it: RFC 3339 in UTC to the second ("…Z"), or None."""
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
