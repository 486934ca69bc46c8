"""Account reputation levels: which daily quota an account has, and how a finished day
moves it.

Pure. With `[reputation] levels` (e.g. [500, 1000, 5000, 20000, 100000, 300000]) an account
starts at level 0 and moves up one level after a UTC day in which it used at least
`promote_usage` of its quota with a bounce rate under `max_bounce_rate` and a complaint
rate under `max_complaint_rate`; it moves down one level after a day over either rate. A
day with fewer than MIN_SAMPLE deliveries is not judged on its rates (one bounce out of
three sends says nothing). An explicit per-account quota (`account set --daily-quota`)
overrides the levels.
"""
from __future__ import annotations

from dataclasses import dataclass

from smtprelay.config import Config
from smtprelay.policy.limits import AccountLimits

MIN_SAMPLE = 20


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: int
    name: str
    daily_quota: int | None
    rate_per_second: float | None
    level: int


def describe_rule(config: Config) -> str:
    """The levels and how an account moves between them, in one sentence (`account list`)."""
    rep = config.reputation
    if not rep.levels:
        return (f"no reputation levels ([reputation] levels = []): every account sends "
                f"limits.account_daily_quota = {config.limits.account_daily_quota} recipients a day "
                "unless 'account set --daily-quota' gives it its own")
    ladder = " → ".join(f"{n:,}".replace(",", " ") for n in rep.levels)
    return (f"reputation levels (recipients per day): {ladder}. An account starts at level 0 and moves up one "
            f"level after a UTC day in which it used at least {rep.promote_usage:.0%} of its quota with a bounce "
            f"rate under {rep.max_bounce_rate:.1%} and a complaint rate under {rep.max_complaint_rate:.2%}; a day "
            f"over either rate moves it down one (rates are judged from {MIN_SAMPLE} finished deliveries). "
            "'account set --daily-quota' overrides the levels for one account")


def effective_limits(row: AccountRow, config: Config) -> AccountLimits:
    levels = config.reputation.levels
    if row.daily_quota:
        quota = row.daily_quota
    elif levels:
        quota = levels[min(max(row.level, 0), len(levels) - 1)]
    else:
        quota = config.limits.account_daily_quota
    return AccountLimits(quota, row.rate_per_second or config.limits.account_rate_per_second)


@dataclass(frozen=True, slots=True)
class DayStats:
    used: int           # recipients accepted
    delivered: int
    bounced: int
    complaints: int


def judge_day(level: int, quota: int, stats: DayStats, config: Config) -> tuple[int, str]:
    """The level after this day, and why."""
    rep = config.reputation
    top = max(len(rep.levels) - 1, 0)
    finished = stats.delivered + stats.bounced
    if finished >= MIN_SAMPLE:
        bounce_rate = stats.bounced / finished
        complaint_rate = stats.complaints / max(stats.delivered, 1)
        if bounce_rate >= rep.max_bounce_rate or complaint_rate >= rep.max_complaint_rate:
            return max(level - 1, 0), (f"bounce rate {bounce_rate:.1%}, complaint rate {complaint_rate:.2%} "
                                       "over the limits: down one level")
        if stats.used >= rep.promote_usage * quota:
            return min(level + 1, top), f"used {stats.used}/{quota} with good rates: up one level"
    elif stats.used >= rep.promote_usage * quota and stats.bounced == 0 and stats.complaints == 0:
        return min(level + 1, top), f"used {stats.used}/{quota} without bounces or complaints: up one level"
    return level, "unchanged"
