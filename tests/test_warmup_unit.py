"""Warm-up arithmetic and the throttle's decisions on a fake clock: the 30-day ramp, idle
days, freezing on bounce and complaint storms, suspension, backoff, fairness, shaping."""
from __future__ import annotations

import datetime
import itertools
from typing import Any

import pytest

from smtprelay.clock import FakeClock
from smtprelay.config import parse
from smtprelay.config.model import DEFAULT_PROVIDERS, DEFAULT_WARMUP_SCHEDULE
from smtprelay.delivery.outcome import BounceClass, Reply, Result
from smtprelay.http.metrics import Metrics
from smtprelay.warmup import schedule as W
from smtprelay.queue.jobs import Work
from smtprelay.warmup.providers import provider_for
from smtprelay.warmup.throttle import TICKET_SPACING, Throttle

# 2027-03-01 01:00 UTC: an hour after midnight.
START = datetime.datetime(2027, 3, 1, 1, 0, tzinfo=datetime.timezone.utc).timestamp()
_ids = itertools.count(1)


def throttle(**sections: Any) -> tuple[Throttle, FakeClock]:
    config = parse({"listeners": [{"name": "s", "port": 1}], **sections})
    clock = FakeClock(start=START)
    return Throttle(config, clock, Metrics()), clock


def work(provider: str = "gmail", account: int = 1, sender_domain: str = "news.example",
         throttled_for: float = 0.0) -> Work:
    n = next(_ids)
    return Work(n, f"M{n}", f"u{n}@dest.example", "dest.example", 0, f"app@{sender_domain}", account, START, None,
                sender_domain, throttled_for, provider)


def send_day(t: Throttle, clock: FakeClock, demand: int, provider: str = "gmail") -> int:
    """Offer `demand` recipients today in batches of 50; how many the throttle let go."""
    sent = 0
    while sent < demand:
        admission = t.admit([work(provider) for _ in range(min(50, demand - sent))], clock.now())
        sent += len(admission.take)
        if admission.wait:
            break
    return sent


def test_thirty_days_of_traffic_follow_the_ramp_then_are_uncapped() -> None:
    t, clock = throttle()
    ramp = []
    for _ in range(32):
        ramp.append(send_day(t, clock, demand=120_000))
        clock.advance(86400)
    print("\nwarm-up ramp (recipients per day to one provider):", ramp)
    assert ramp[:30] == list(DEFAULT_WARMUP_SCHEDULE)           # exactly the cap, every day
    assert ramp[30] == ramp[31] == 120_000                      # warmed: no cap (warmup.max_daily = 0)
    assert ramp[0] == 50 and ramp[29] == 100_000
    pair = t.pairs[("news.example", "gmail")]
    assert W.warmed(pair, t.config.warmup) and pair.day == 32


def test_idle_days_do_not_advance_the_ramp_and_days_follow_the_timezone() -> None:
    t, clock = throttle(warmup={"schedule": [10, 20, 40], "timezone": "Asia/Shanghai"})
    assert send_day(t, clock, 100) == 10                        # day 1
    clock.advance(86400 * 3)                                    # three days: one new local day, two idle
    assert send_day(t, clock, 100) == 20                        # day 2, not day 4
    # 01:00 UTC is 09:00 in Shanghai: 15 hours later it is 00:00 there, a new day (day 3).
    clock.advance(14 * 3600 + 59 * 60)
    assert t.admit([work()], clock.now()).wait                  # still the same Shanghai day
    clock.advance(61)
    assert send_day(t, clock, 100) == 40
    assert W.next_day_start(START, "Asia/Shanghai") == START + 15 * 3600


def test_waiting_recipients_take_turns_across_accounts_after_the_reset() -> None:
    t, clock = throttle(warmup={"schedule": [2]})
    big = [work(account=1) for _ in range(20)]
    small = [work(account=2) for _ in range(3)]
    first = t.admit(big, clock.now())
    assert len(first.take) == 2 and len(first.wait) == 18
    second = t.admit(small, clock.now())
    assert not second.take and len(second.wait) == 3
    reset = W.next_day_start(clock.now(), "UTC")
    order = sorted(first.wait + second.wait, key=lambda w: w[1])
    assert all(reset < until <= reset + 20 * TICKET_SPACING for _, until, _ in order)
    accounts = [w.account_id for w, _, _ in order[:6]]
    assert accounts == [1, 2, 1, 2, 1, 2]                        # after the reset: turns, not arrival order
    mine = [w.rcpt_id for w, _, _ in order if w.account_id == 1]
    assert mine == sorted(mine)                                  # each account oldest first
    assert "warm-up budget used: day 1 cap 2" in order[0][2]


def test_a_bounce_storm_freezes_the_ramp_and_halves_what_is_left() -> None:
    t, clock = throttle(warmup={"schedule": [100, 200, 400]}, reputation={"min_sample": 20})
    taken = t.admit([work() for _ in range(20)], clock.now()).take
    assert len(taken) == 20
    bounce = Reply(550, "5.1.1 user unknown")
    decided = [(w, Result.BOUNCED if i < 5 else Result.DELIVERED, bounce if i < 5 else Reply(250, "2.0.0 ok"),
                BounceClass.INVALID_ADDRESS if i < 5 else None) for i, w in enumerate(taken)]
    t.observe(decided, clock.now())
    pair = t.pairs[("news.example", "gmail")]
    assert pair.frozen is not None and "hard-bounce rate 25.0%" in pair.frozen
    assert W.remaining(pair, t.config.warmup) == 40              # 80 were left; halved
    assert [x.kind for x in t.transitions] == ["frozen"]
    clock.advance(86400)
    assert send_day(t, clock, 1000) == 100                       # frozen: still day 1's cap, no advance
    assert pair.day == 1
    # A day later the storm is out of the 24 h window: the next outcome unfreezes the pair.
    clock.advance(86400)
    more = t.admit([work()], clock.now()).take
    t.observe([(more[0], Result.DELIVERED, Reply(250, "ok"), None)], clock.now())
    assert pair.frozen is None and t.transitions[-1].kind == "unfrozen"


def test_below_the_minimum_sample_one_bounce_in_three_freezes_nobody() -> None:
    t, clock = throttle()
    taken = t.admit([work() for _ in range(3)], clock.now()).take
    t.observe([(taken[0], Result.BOUNCED, Reply(550, "5.1.1 no such user"), BounceClass.INVALID_ADDRESS)] +
              [(w, Result.DELIVERED, Reply(250, "ok"), None) for w in taken[1:]], clock.now())
    assert t.pairs[("news.example", "gmail")].frozen is None and not t.transitions


def test_a_domain_wide_complaint_storm_freezes_every_provider_of_the_domain() -> None:
    t, clock = throttle(reputation={"min_sample": 100})
    for provider in ("gmail", "yahoo"):
        taken = t.admit([work(provider) for _ in range(50)], clock.now()).take
        t.observe([(w, Result.DELIVERED, Reply(250, "ok"), None) for w in taken], clock.now())
    assert not t.transitions
    t.domain_providers["dest.example"] = "gmail"
    t.note_complaint("news.example", "dest.example", clock.now())   # 1 of 100 delivered: 1 % > 0.1 %
    frozen = {x.provider for x in t.transitions if x.kind == "frozen"}
    assert frozen == {"gmail", "yahoo"}
    assert "complaint rate 1.00%" in (t.pairs[("news.example", "yahoo")].frozen or "")


def test_blocklisted_requests_suspend_the_domain_and_its_mail_is_held() -> None:
    t, clock = throttle(reputation={"min_sample": 100})
    for _ in range(92):
        t.note_request("news.example", False)
    for _ in range(7):
        t.note_request("news.example", True)
    assert "news.example" not in t.suspended                     # 7 of 99: under the sample size
    t.note_request("news.example", True)                         # 8 of 100 = 8 %: suspended
    assert "8 of 100 recipients" in t.suspended["news.example"]
    assert t.new_suspensions and t.transitions[-1].kind == "suspended"
    admission = t.admit([work(), work(sender_domain="other.example")], clock.now())
    assert len(admission.hold) == 1 and len(admission.take) == 1
    # A store view read before the suspension was saved does not lift it ...
    assert t.set_suspended({}) == [] and "news.example" in t.suspended
    t.new_suspensions.clear()                                    # (the scheduler saved it)
    # ... the operator's resume does: a fresh sample, and mail goes again.
    assert t.set_suspended({}) == ["news.example"]
    assert t.domain_stats["news.example"].total(4, W.hour_index(clock.now())) == 0
    assert t.admit([work()], clock.now()).take


def test_reputation_replies_pause_the_pair_with_a_growing_backoff_reset_by_success() -> None:
    t, clock = throttle()
    w1 = t.admit([work()], clock.now()).take[0]
    assert t.observe([(w1, Result.DEFERRED, Reply(421, "4.7.0 Try again later"), BounceClass.REPUTATION)],
                     clock.now())
    pair = t.pairs[("news.example", "gmail")]
    assert pair.paused_until == clock.now() + 300 and pair.backoff_step == 1
    waiting = t.admit([work()], clock.now())
    assert not waiting.take and waiting.wait[0][1] >= pair.paused_until
    assert "paused by backoff: gmail answered 421 4.7.0 Try again later" in waiting.wait[0][2]
    clock.advance(301)
    w2 = t.admit([work()], clock.now()).take[0]
    t.observe([(w2, Result.DEFERRED, Reply(451, "4.3.2 rate limited, slow down"), BounceClass.OTHER)], clock.now())
    assert pair.backoff_step == 2 and pair.paused_until == clock.now() + 600
    clock.advance(601)
    w3 = t.admit([work()], clock.now()).take[0]
    assert not t.observe([(w3, Result.DELIVERED, Reply(250, "ok"), None)], clock.now())
    assert pair.backoff_step == 0
    # An ordinary 4xx (not reputation) is no backoff signal.
    w4 = t.admit([work()], clock.now()).take[0]
    assert not t.observe([(w4, Result.DEFERRED, Reply(452, "4.2.2 mailbox full"), BounceClass.MAILBOX_FULL)],
                         clock.now())


def test_greylisting_is_no_backoff_and_a_flush_lifts_pauses() -> None:
    """Issue 23, item 2."""
    t, clock = throttle()
    w1 = t.admit([work()], clock.now()).take[0]
    assert not t.observe([(w1, Result.DEFERRED, Reply(451, "4.7.1 Please try again later"), BounceClass.OTHER)],
                         clock.now())
    assert t.pairs[("news.example", "gmail")].paused_until == 0.0
    w2 = t.admit([work()], clock.now()).take[0]
    w3 = t.admit([work(provider="microsoft")], clock.now()).take[0]
    t.observe([(w2, Result.DEFERRED, Reply(421, "4.7.0 Try again later"), BounceClass.REPUTATION),
               (w3, Result.DEFERRED, Reply(421, "4.7.0 Try again later"), BounceClass.REPUTATION)], clock.now())
    paused = {k for k, p in t.pairs.items() if p.paused_until > clock.now()}
    assert paused == {("news.example", "gmail"), ("news.example", "microsoft")}
    t.domain_providers["gmail.test"] = "gmail"
    assert t.lift_pauses("gmail.test") == 1                       # only that domain's provider
    assert t.pairs[("news.example", "gmail")].paused_until == 0.0 and t.pairs[("news.example", "gmail")].backoff_step == 0
    assert t.admit([work()], clock.now()).take                    # it sends again at once
    assert t.lift_pauses(None) == 1 and t.transitions[-1].kind == "resumed"


def test_per_provider_hourly_shaping_and_schedule_override() -> None:
    t, clock = throttle(warmup={"overrides": {"gmail": {"max_per_hour": 3, "schedule": [5]}}})
    first = t.admit([work() for _ in range(10)], clock.now())
    assert len(first.take) == 3 and "max_per_hour 3" in first.wait[0][2]
    assert first.wait[0][1] >= (W.hour_index(clock.now()) + 1) * 3600
    clock.advance(3600)
    assert len(t.admit([work() for _ in range(10)], clock.now()).take) == 2   # the day's cap of 5
    assert len(t.admit([work("yahoo") for _ in range(60)], clock.now()).take) == 50  # default schedule


def test_throttled_past_max_wait_expires_and_bounces_are_never_throttled() -> None:
    t, clock = throttle(warmup={"schedule": [1], "max_wait": "2d"})
    t.admit([work()], clock.now())
    late = t.admit([work(throttled_for=2 * 86400)], clock.now())
    assert late.expire and "warmup.max_wait" in late.expire[0][1]
    nearly = t.admit([work(throttled_for=2 * 86400 - 60)], clock.now())
    assert nearly.wait[0][1] <= clock.now() + 60                 # waits no longer than max_wait in total
    bounce = work(sender_domain="")
    assert t.admit([bounce], clock.now()).take == [bounce]


def test_throttled_time_is_not_lifetime() -> None:
    w = work(throttled_for=3600.0)
    assert w.lifetime_start == w.created_at + 3600.0


def test_disabled_warmup_admits_everything() -> None:
    t, clock = throttle(warmup={"enabled": False, "schedule": [1]})
    assert len(t.admit([work() for _ in range(100)], clock.now()).take) == 100


@pytest.mark.parametrize("hosts, provider", [
    (["gmail-smtp-in.l.google.com"], "gmail"),
    (["aspmx.l.google.com", "alt1.aspmx.l.google.com"], "gmail"),          # Google Workspace
    (["acme-com.mail.protection.outlook.com"], "microsoft"),
    (["mta7.am0.yahoodns.net"], "yahoo"),
    (["mx01.mail.icloud.com"], "apple"),
    (["mxbiz1.qq.com"], "qq"),
    (["163mx01.mxmail.netease.com"], "netease"),
    (["mx.yandex.net"], "yandex"),
    (["mxs.mail.ru"], "mailru"),
    (["mx00.emig.gmx.net"], "gmx"),
    (["mx.zoho.com"], "zoho"),
    (["mx2.corp-mail.co.uk", "mx1.corp-mail.co.uk"], "corp-mail.co.uk"),     # unknown: registered domain
    (["notgoogle.com"], "notgoogle.com"),                                     # a suffix is label-aligned
])
def test_providers_by_mx(hosts: list[str], provider: str) -> None:
    assert provider_for(hosts, DEFAULT_PROVIDERS) == provider


def test_config_errors_name_the_key() -> None:
    with pytest.raises(Exception) as exc:
        parse({"listeners": [{"name": "s", "port": 1}],
               "warmup": {"schedule": [10, 5], "timezone": "Nowhere/City", "providers": {"x": [1]},
                          "overrides": {"gmail": {"max_per_hour": 0}}},
               "reputation": {"bounce_hold": 2}})
    problems = exc.value.problems  # type: ignore[attr-defined]
    assert any(p.startswith("warmup.schedule: must be a non-empty list of non-decreasing") for p in problems)
    assert any(p.startswith("warmup.timezone:") for p in problems)
    assert any(p.startswith("warmup.providers.x:") for p in problems)
    assert any(p.startswith("warmup.overrides.gmail.max_per_hour: must be a positive integer") for p in problems)
    assert any(p.startswith("reputation.bounce_hold: must be a fraction") for p in problems)
