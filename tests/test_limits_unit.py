from __future__ import annotations

import datetime
from pathlib import Path

from smtprelay.accounts import evaluate_levels
from smtprelay.catalog.sqlite import ACCOUNT_ROWS_SQL, SqliteCatalog, account_rows
from smtprelay.clock import FakeClock
from smtprelay.policy.address import canonical
from smtprelay.services import Context, Services
from smtprelay.config import parse
from smtprelay.policy.blocklist import BlocklistView, Entry
from smtprelay.policy.limits import AccountLimits, MemoryHistory, Reservation, SendLimiter
from smtprelay.policy.reputation import DayStats, judge_day
from smtprelay.queue import schema

ROOMY = AccountLimits(daily_quota=1000, rate_per_second=1000)


def test_hourly_cap_reserve_commit_release_and_rollover() -> None:
    clock = FakeClock()
    limiter = SendLimiter(clock, 10, MemoryHistory())
    held = [limiter.reserve(1, "x@y.example", ROOMY) for _ in range(10)]
    assert all(isinstance(r, Reservation) for r in held)
    refused = limiter.reserve(1, "x@y.example", ROOMY)
    assert not isinstance(refused, Reservation) and refused.reply.startswith("450 4.7.1 ")
    assert isinstance(limiter.reserve(2, "x@y.example", ROOMY), Reservation)   # per account
    assert isinstance(limiter.reserve(1, "X@y.example", ROOMY), Reservation)   # the local part is exact
    limiter.release(held[:3])                      # a reset or failed transaction gives slots back
    assert isinstance(limiter.reserve(1, "x@y.example", ROOMY), Reservation)
    limiter.commit(held[3:], clock.now())
    clock.advance(1800)
    assert limiter.usage(1, "x@y.example", ROOMY).hourly_used == 8
    clock.advance(1800)                            # the committed sends leave the rolling hour
    assert limiter.usage(1, "x@y.example", ROOMY).hourly_used == 1
    refused_retry = SendLimiter(clock, 1, MemoryHistory())
    refused_retry.commit([refused_retry.reserve(1, "a@b.example", ROOMY)], clock.now())  # type: ignore[list-item]
    msg = refused_retry.reserve(1, "a@b.example", ROOMY).reply  # type: ignore[union-attr]
    when = datetime.datetime.fromtimestamp(clock.now() + 3600, datetime.timezone.utc).strftime("%H:%M")
    assert "try again after" in msg and when in msg


def test_daily_quota_is_rolling_24h_and_counts_recipients() -> None:
    clock = FakeClock()
    limiter = SendLimiter(clock, 100, MemoryHistory())
    quota = AccountLimits(daily_quota=3, rate_per_second=1000)
    limiter.commit([limiter.reserve(1, f"r{i}@x.example", quota) for i in range(3)], clock.now())  # type: ignore[misc]
    refused = limiter.reserve(1, "r9@x.example", quota)
    assert refused.reply.startswith("454 4.7.0 Throttling failure: Daily message quota exceeded")  # type: ignore[union-attr]
    clock.advance(86400 - 1)                      # still inside the rolling 24 h
    assert not isinstance(limiter.reserve(1, "r9@x.example", quota), Reservation)
    clock.advance(61)                             # counted by whole minutes: out at most 60 s late
    assert isinstance(limiter.reserve(1, "r9@x.example", quota), Reservation)


def test_token_bucket_rate() -> None:
    clock = FakeClock()
    limiter = SendLimiter(clock, 1000, MemoryHistory())
    rate = AccountLimits(daily_quota=10**6, rate_per_second=20)
    results = [limiter.reserve(1, f"r{i}@x.example", rate) for i in range(21)]
    assert sum(isinstance(r, Reservation) for r in results) == 20
    assert results[20].reply == ("454 4.7.0 Throttling failure: Maximum sending rate exceeded "  # type: ignore[union-attr]
                                 "(20 recipients per second)")
    clock.advance(0.05)   # one token back
    assert isinstance(limiter.reserve(1, "late@x.example", rate), Reservation)
    assert not isinstance(limiter.reserve(1, "later@x.example", rate), Reservation)


def test_blocklist_types_scopes_allow_and_expiry() -> None:
    now = 1_000_000.0

    def entry(i: int, type_: str, **kw: object) -> Entry:
        base: dict[str, object] = dict(id=i, address="x@y.example", type=type_, account_id=None, sender_domain=None,
                                       origin_account_id=1, reason=None, note=None, created_at=now, expires_at=None)
        base.update(kw)
        return Entry(**base)  # type: ignore[arg-type]
    invalid = BlocklistView([entry(1, "invalid")], allowed={(2, "x@y.example")})
    assert invalid.check("x@y.example", 1, "a.example", now).reply.startswith("550 5.1.1")  # type: ignore[union-attr]
    assert invalid.check("x@y.example", 2, "a.example", now) is None      # allowed for account 2 only
    reject = BlocklistView([entry(2, "reject", sender_domain="a.example")], set())
    assert reject.check("x@y.example", 1, "a.example", now).reason == "blocklist_reject"  # type: ignore[union-attr]
    assert reject.check("x@y.example", 1, "b.example", now) is None
    custom = BlocklistView([entry(3, "custom", account_id=1, expires_at=now + 60)], {(1, "x@y.example")})
    assert custom.check("x@y.example", 1, "a.example", now).reply.startswith("550 5.7.1")  # type: ignore[union-attr]
    assert custom.check("x@y.example", 2, "a.example", now) is None
    assert custom.check("x@y.example", 1, "a.example", now + 60) is None  # expired: no manual step


def test_canonical_addresses() -> None:
    assert canonical("<Someone@EXAMPLE.Org>") == "Someone@example.org"


def test_judge_day() -> None:
    config = parse({"listeners": [{"name": "s", "port": 1}], "reputation": {"levels": [500, 1000, 5000]}})
    assert judge_day(0, 500, DayStats(400, 400, 0, 0), config)[0] == 1                 # 80 % used, clean
    assert judge_day(0, 500, DayStats(399, 399, 0, 0), config)[0] == 0
    assert judge_day(1, 1000, DayStats(900, 90, 10, 0), config)[0] == 0                 # 10 % bounces
    assert judge_day(1, 1000, DayStats(900, 900, 0, 1), config)[0] == 0                 # 0.11 % complaints
    assert judge_day(2, 5000, DayStats(5000, 5000, 0, 0), config)[0] == 2               # already at the top
    assert judge_day(1, 1000, DayStats(3, 2, 1, 0), config)[0] == 1                     # too few to judge


def test_levels_move_day_by_day_from_the_store(tmp_path: Path) -> None:
    config = parse({"listeners": [{"name": "s", "port": 1}], "server": {"data_dir": str(tmp_path)},
                    "reputation": {"levels": [10, 100, 1000]}})
    day0 = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc).timestamp()
    conn = schema.connect(tmp_path)
    Services(Context(config, SqliteCatalog(conn), conn, FakeClock(day0))).accounts.add("acme")
    account = SqliteCatalog(conn).account("acme")
    assert account is not None
    conn.execute("INSERT INTO messages (id, account_id, mail_from, size, created_at, client_address, body)"
                 " VALUES ('M', ?, 'a@b.example', 1, ?, '127.0.0.1', x'')", (account.id, day0))
    # Day 1: 9 of 10 used (90 %), all delivered → level 1. Day 2: 30 sends, 10 bounce → back to 0.
    for i in range(9):
        conn.execute("INSERT INTO sends VALUES (?, ?, ?)", (account.id, f"r{i}@x.example", day0 + 3600 + i))
    for i in range(30):
        conn.execute("INSERT INTO sends VALUES (?, ?, ?)", (account.id, f"s{i}@x.example", day0 + 86400 + 3600 + i))
        cur = conn.execute("INSERT INTO recipients (message_id, address, domain, state, next_attempt_at, updated_at)"
                           " VALUES ('M', ?, 'x.example', 'delivered', 0, 0)", (f"s{i}@x.example",))
        conn.execute("INSERT INTO attempts (recipient_id, at, result) VALUES (?, ?, ?)",
                     (cur.lastrowid, day0 + 86400 + 7200, "bounced" if i < 10 else "delivered"))
    first = evaluate_levels(conn, config, day0 + 86400 + 60)        # day 1 has ended
    assert [(c[1], c[2]) for c in first] == [(0, 1)]
    assert account_rows(conn.execute(ACCOUNT_ROWS_SQL))[account.id].level == 1
    assert evaluate_levels(conn, config, day0 + 86400 + 120) == []  # the same day is not judged twice
    second = evaluate_levels(conn, config, day0 + 2 * 86400 + 60)
    assert [(c[1], c[2]) for c in second] == [(1, 0)] and "bounce rate" in second[0][3]
