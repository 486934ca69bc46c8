"""Warm-up arithmetic per (sender domain, mailbox provider): which day of the ramp a pair
is on, today's cap, what is left, when the budget resets, and how a pair is shown.

Pure: takes a pair's state, the [warmup] settings and the time. The scheduler's throttle
(warmup.throttle) owns the live pairs and calls these; `smtprelay warmup status` calls the
same functions on the stored rows, so both always agree.

Rules (issue 6):
- Day N+1 begins on the first day after at least one send on day N: an idle day does not
  advance the ramp, and neither does a day while the pair is frozen.
- Days are calendar days in `warmup.timezone` (UTC by default).
- After the last scheduled day the pair is warmed: capped at `max_daily`, or uncapped (0).
- Freezing halves what was left of today's budget (once, at the transition); a frozen pair
  that was uncapped is capped at its last scheduled day's cap.
"""
from __future__ import annotations

import copy
import datetime
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache

from smtprelay.config.model import WarmupConfig


@dataclass(slots=True)
class PairState:
    sender_domain: str
    provider: str
    day: int = 1
    day_date: str = ""              # the local date `used` belongs to
    used: int = 0                   # recipients admitted on day_date
    withheld: int = 0               # taken off today's cap by a freeze
    frozen: str | None = None       # why the ramp is frozen (None: not frozen)
    paused_until: float = 0.0       # adaptive backoff after a provider's reputation reply
    pause_reason: str = ""
    backoff_step: int = 0           # consecutive backoffs without a success in between


@lru_cache(maxsize=16)
def _zone(name: str) -> datetime.tzinfo:
    return datetime.timezone.utc if name == "UTC" else zoneinfo.ZoneInfo(name)


_DAYS: dict[str, tuple[float, float, str]] = {}   # time zone → the last day asked for: start, end, name


def local_day(ts: float, timezone: str) -> str:
    """The local calendar day of `ts` ("2026-12-02"); asked once or more per delivery, so the
    current day's bounds are kept and most calls are two comparisons."""
    known = _DAYS.get(timezone)
    if known is not None and known[0] <= ts < known[1]:
        return known[2]
    zone = _zone(timezone)
    today = datetime.datetime.fromtimestamp(ts, zone).date()
    start = datetime.datetime.combine(today, datetime.time(), zone).timestamp()
    end = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(), zone).timestamp()
    _DAYS[timezone] = (start, end, today.isoformat())
    return today.isoformat()


def next_day_start(ts: float, timezone: str) -> float:
    """The first instant of the next local calendar day (when daily budgets reset)."""
    zone = _zone(timezone)
    today = datetime.datetime.fromtimestamp(ts, zone).date()
    tomorrow = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(), zone)
    return tomorrow.timestamp()


def hour_index(ts: float) -> int:
    return int(ts // 3600)


def daily_cap(day: int, schedule: tuple[int, ...], max_daily: int, frozen: bool = False) -> int | None:
    """Today's cap on day `day` of the ramp; None when uncapped."""
    if day <= len(schedule):
        return schedule[max(day, 1) - 1]
    if max_daily:
        return max_daily
    return schedule[-1] if frozen else None


def warmed(pair: PairState, config: WarmupConfig) -> bool:
    return pair.day > len(config.schedule_for(pair.provider))


def roll(pair: PairState, today: str) -> bool:
    """Move the pair to `today` if its state belongs to an earlier day; True if the ramp advanced."""
    if pair.day_date == today:
        return False
    advanced = pair.used > 0 and pair.frozen is None and pair.day_date != ""
    if advanced:
        pair.day += 1
    pair.day_date, pair.used, pair.withheld = today, 0, 0
    return advanced


def cap_today(pair: PairState, config: WarmupConfig) -> int | None:
    cap = daily_cap(pair.day, config.schedule_for(pair.provider), config.max_daily_for(pair.provider),
                    pair.frozen is not None)
    return None if cap is None else max(0, cap - pair.withheld)


def remaining(pair: PairState, config: WarmupConfig) -> int | None:
    cap = cap_today(pair, config)
    return None if cap is None else max(0, cap - pair.used)


def freeze(pair: PairState, config: WarmupConfig, why: str) -> None:
    """Freeze the ramp and halve what is left of today's budget."""
    pair.frozen = why
    left = remaining(pair, config)
    if left is not None:
        pair.withheld += left - left // 2


def backoff_pause(step: int, initial: float, maximum: float) -> float:
    """Pause after the `step`-th consecutive reputation reply: initial, 2×, 4×, ... up to maximum."""
    return min(maximum, initial * (2 ** max(0, step - 1)))


def view(pair: PairState, config: WarmupConfig, now: float, suspended: str | None) -> dict[str, object]:
    """How `warmup status` shows a pair now (as the scheduler would see it, rollover included)."""
    shown = copy.copy(pair)
    roll(shown, local_day(now, config.timezone))
    cap = cap_today(shown, config)
    left = remaining(shown, config)
    if suspended:
        state, why = "suspended", suspended
    elif shown.paused_until > now:
        state, why = "paused", shown.pause_reason
    elif shown.frozen is not None:
        state, why = "frozen", shown.frozen
    elif warmed(shown, config):
        state, why = "warmed", "past the last day of the schedule"
    else:
        state, why = "warming", ""
    if state in ("warming", "frozen") and left == 0:
        why = (why + "; " if why else "") + "today's budget is used"
    return {"sender_domain": pair.sender_domain, "provider": pair.provider, "day": shown.day,
            "cap": cap, "used": shown.used, "remaining": left, "state": state, "why": why,
            "paused_until": shown.paused_until if shown.paused_until > now else None,
            "resets_at": next_day_start(now, config.timezone)}
