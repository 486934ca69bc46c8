"""What inbound feedback does to sender-domain reputation (issue 18), on the throttle with a
fake clock: complaints from ARF reports freeze the ramp at the README's thresholds, and a late
bounce takes its delivery back and counts as a hard bounce."""
from __future__ import annotations

from smtprelay.delivery.outcome import Reply, Result
from tests.test_warmup_unit import throttle, work


def deliver(t, clock, n: int, provider: str = "gmail") -> None:  # type: ignore[no-untyped-def]
    taken = []
    while len(taken) < n:
        taken += t.admit([work(provider) for _ in range(min(50, n - len(taken)))], clock.now()).take
    t.observe([(w, Result.DELIVERED, Reply(250, "2.0.0 ok"), None) for w in taken], clock.now())


def test_two_complaints_in_a_thousand_deliveries_freeze_the_ramp_one_does_not() -> None:
    # Defaults: reputation.complaint_hold 0.1 %, reputation.min_sample 100.
    t, clock = throttle(warmup={"schedule": [5000]})
    t.domain_providers["dest.example"] = "gmail"
    deliver(t, clock, 1000)
    t.note_complaint("news.example", "dest.example", clock.now())          # 0.1 %: not above the threshold
    assert t.pairs[("news.example", "gmail")].frozen is None and not t.transitions
    t.note_complaint("news.example", "dest.example", clock.now())          # 0.2 %
    pair = t.pairs[("news.example", "gmail")]
    assert pair.frozen is not None and "complaint rate 0.20% (2 of 1000 in 24 h)" in pair.frozen
    assert [x.kind for x in t.transitions] == ["frozen"]


def test_below_the_minimum_sample_complaints_freeze_nothing() -> None:
    t, clock = throttle(warmup={"schedule": [5000]})
    t.domain_providers["dest.example"] = "gmail"
    deliver(t, clock, 99)
    for _ in range(3):
        t.note_complaint("news.example", "dest.example", clock.now())
    assert t.pairs[("news.example", "gmail")].frozen is None


def test_late_hard_bounces_take_back_their_deliveries_and_freeze_the_ramp() -> None:
    t, clock = throttle(warmup={"schedule": [5000]}, reputation={"min_sample": 20})
    t.domain_providers["dest.example"] = "gmail"
    deliver(t, clock, 20)
    assert t.pairs[("news.example", "gmail")].frozen is None
    t.note_late_bounce("news.example", "dest.example", "invalid_address", True, clock.now())
    assert t.pairs[("news.example", "gmail")].frozen is None          # 1 of 20: 5 %, not above bounce_hold
    t.note_late_bounce("news.example", "dest.example", "invalid_address", True, clock.now())
    pair = t.pairs[("news.example", "gmail")]
    assert pair.frozen is not None and "hard-bounce rate 10.0% (2 of 20 in 24 h)" in pair.frozen
    for _ in range(3):
        t.note_late_bounce("news.example", "dest.example", "invalid_address", True, clock.now())
    stats = t.pair_stats[("news.example", "gmail")]
    from smtprelay.warmup.throttle import ATTEMPTS, DELIVERED, INVALID
    hour = int(clock.now() // 3600)
    assert (stats.total(ATTEMPTS, hour), stats.total(DELIVERED, hour), stats.total(INVALID, hour)) == (20, 15, 5)


def test_a_late_mailbox_full_bounce_is_no_hard_bounce() -> None:
    t, clock = throttle(warmup={"schedule": [5000]}, reputation={"min_sample": 20})
    t.domain_providers["dest.example"] = "gmail"
    deliver(t, clock, 20)
    for _ in range(5):
        t.note_late_bounce("news.example", "dest.example", "mailbox_full", True, clock.now())
    assert t.pairs[("news.example", "gmail")].frozen is None
