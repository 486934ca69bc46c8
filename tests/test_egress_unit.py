"""Egress pools (issue 19) without processes: relay.toml's [egress], choosing a source address
by remaining warm-up budget, falling back, pacing, the SPF value of a domain's addresses."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from smtprelay.clock import FakeClock
from smtprelay.config import ConfigError, parse
from smtprelay.delivery.egress import Egress, Source, Wait
from smtprelay.delivery.outcome import BounceClass, Reply, Result
from smtprelay.domains.records import expected_spf
from smtprelay.http.metrics import Metrics
from smtprelay.queue.jobs import Work
from smtprelay.services.egress import sending_addresses
from smtprelay.warmup.throttle import Throttle

BASE: dict[str, Any] = {"listeners": [{"name": "s", "address": "127.0.0.1", "port": 2525}],
                        "server": {"hostname": "relay.test", "public_ips": ["198.51.100.1"]}}


def config(egress: dict[str, Any], **sections: Any) -> Any:
    return parse({**BASE, "egress": egress, **sections})


def problems(egress: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse({**BASE, "egress": egress})
    return exc.value.problems


def test_pools_parse_with_defaults_and_a_shared_pool_always_exists() -> None:
    c = config({"pools": [{"name": "p1", "addresses": ["127.0.8.1", {"address": "::1", "helo": "out.example.com"}],
                           "max_rate": 5}]})
    p1 = c.egress.pools["p1"]
    assert [(a.address, a.helo) for a in p1.addresses] == [("127.0.8.1", None), ("::1", "out.example.com")]
    assert (p1.max_rate, p1.max_connections) == (5.0, 50)
    assert c.egress.pools["shared"].addresses == ()          # the kernel's choice
    assert parse(BASE).egress.pools["shared"].addresses == ()


def test_bad_pools_are_named_by_key() -> None:
    found = problems({"pools": [{"name": "p1", "addresses": ["127.0.8.1"]},
                                {"name": "p1", "addresses": ["127.0.8.1", "nope", {"address": "::1", "hello": "x"}],
                                 "max_rate": 0, "bogus": 1},
                                {"addresses": []}]})
    assert 'egress.pools[1].name: pool "p1" is defined twice' in found
    assert any(p.startswith('egress.pools[1].addresses: 127.0.8.1 is already in pool "p1"') for p in found)
    assert any("'nope' is not an IP address" in p for p in found)
    assert any('takes only "address" and "helo" (unknown: hello)' in p for p in found)
    assert any(p.startswith("egress.pools[1].max_rate: must be a positive number") for p in found)
    assert "egress.pools[1].bogus: unknown key" in found
    assert "egress.pools[2].name: is required" in found
    assert any(p.startswith("egress.pools[2].addresses: must list at least one address") for p in found)
    assert problems({"pools": {"name": "x"}})[0].startswith("egress.pools: must be an array of tables")


def work(pool: str = "p1", fallback: str = "shared", provider: str = "gmail") -> Work:
    return Work(1, "m1", "r@gmail.com", "gmail.com", 0, "s@a.example", 1, 0.0, None, "a.example", 0.0, provider,
                pool=pool, fallback=fallback)


def egress_with(c: Any, clock: FakeClock) -> tuple[Egress, Throttle]:
    throttle = Throttle(c, clock, Metrics())
    return Egress(c, throttle), throttle


def test_the_address_with_most_budget_left_after_what_waits_is_chosen() -> None:
    c = config({"pools": [{"name": "p1", "addresses": ["127.0.8.1", "127.0.8.2"]}], "warmup_schedule": [20, 40]},
               warmup={"enabled": True})
    clock = FakeClock(1_800_000_000.0)
    egress, throttle = egress_with(c, clock)
    now = clock.now()
    for _ in range(5):
        throttle.ips.take("127.0.8.1", "gmail", now)       # 15 left, 127.0.8.2 has 20
    chosen = egress.choose(work(), {}, now)
    assert isinstance(chosen, Source) and chosen.address is not None and chosen.address.address == "127.0.8.2"
    # Eight already wait for 127.0.8.2 (12 left after them): 127.0.8.1's 15 are more.
    chosen = egress.choose(work(), {("127.0.8.2", "gmail"): 8}, now)
    assert isinstance(chosen, Source) and chosen.address is not None and chosen.address.address == "127.0.8.1"


def test_no_budget_falls_back_or_waits_until_the_reset() -> None:
    c = config({"pools": [{"name": "p1", "addresses": ["127.0.8.1"]}], "warmup_schedule": [2]},
               warmup={"enabled": True})
    clock = FakeClock(1_800_000_000.0)
    egress, throttle = egress_with(c, clock)
    now = clock.now()
    throttle.ips.take("127.0.8.1", "gmail", now)
    throttle.ips.take("127.0.8.1", "gmail", now)
    fell_back = egress.choose(work(), {}, now)
    assert fell_back == Source("shared", None)                 # the shared pool: the kernel's choice here
    waits = egress.choose(work(fallback="none"), {}, now)
    assert isinstance(waits, Wait) and waits.until > now and waits.until % 86400 == 0   # midnight UTC
    assert "warm-up budget of 127.0.8.1 at gmail used: day 1 cap 2" in waits.reason
    assert "(fallback: none)" in waits.reason
    # A backoff pause on the address: it waits until the pause ends.
    clock.advance(86400)
    throttle.ips.backoff("127.0.8.1", "gmail", "421 4.7.0 slow down", clock.now())
    paused = egress.choose(work(fallback="none"), {}, clock.now())
    assert isinstance(paused, Wait) and paused.until == clock.now() + c.warmup.backoff_initial
    assert "paused at gmail by backoff" in paused.reason


def test_an_unknown_or_unbindable_pool_and_a_warm_up_without_caps() -> None:
    c = config({"pools": [{"name": "p1", "addresses": ["192.0.2.10"]}]})
    egress, _ = egress_with(c, FakeClock(1_800_000_000.0))
    assert egress.unusable == {"192.0.2.10": "192.0.2.10 is not an address of this host"}
    waits = egress.choose(work(fallback="none"), {}, 1_800_000_000.0)
    assert isinstance(waits, Wait) and "192.0.2.10 is not an address of this host" in waits.reason
    assert isinstance(egress.choose(work(pool="gone", fallback="none"), {}, 0.0), Wait)
    assert egress.choose(work(pool="gone"), {}, 0.0) == Source("shared", None)


def test_pace_spaces_messages_by_max_rate() -> None:
    c = config({"pools": [{"name": "p1", "addresses": ["127.0.8.1"], "max_rate": 4}]})
    egress, _ = egress_with(c, FakeClock(0.0))
    waits = [egress.pace("127.0.8.1", 100.0) for _ in range(5)]
    assert waits == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert egress.pace("127.0.8.1", 200.0) == 0.0             # idle since: no debt
    assert egress.pace(None, 100.0) == 0.0


def test_spf_names_every_address_a_domain_can_send_from() -> None:
    c = config({"pools": [{"name": "p1", "addresses": ["127.0.8.1", "2001:db8::1"]},
                          {"name": "shared", "addresses": ["127.0.8.3"]}]})
    assert sending_addresses(c, "p1", "none") == ["127.0.8.1", "2001:db8::1"]
    assert sending_addresses(c, "p1", "shared") == ["127.0.8.1", "2001:db8::1", "127.0.8.3"]
    plain = config({"pools": [{"name": "p1", "addresses": ["127.0.8.1"]}]})
    assert sending_addresses(plain, "p1", "shared") == ["127.0.8.1", "198.51.100.1"]   # shared: public_ips
    assert expected_spf(c, ["127.0.8.1", "2001:db8::1"]) == "v=spf1 ip4:127.0.8.1 ip6:2001:db8::1 ~all"
    included = dataclasses.replace(c, server=dataclasses.replace(c.server, spf_include="_spf.relay.test"))
    assert expected_spf(included, ["198.51.100.1", "127.0.8.1"]) == "v=spf1 include:_spf.relay.test ip4:127.0.8.1 ~all"


def test_a_reputation_reply_pauses_the_address_it_came_on_not_the_domain() -> None:
    c = config({"pools": [{"name": "p1", "addresses": ["127.0.8.1", "127.0.8.2"]}]}, warmup={"enabled": True})
    clock = FakeClock(1_800_000_000.0)
    egress, throttle = egress_with(c, clock)
    sent = work()
    sent.source = "127.0.8.1"
    now = clock.now()
    assert throttle.observe([(sent, Result.DEFERRED, Reply(421, "4.7.0 Try again later"), BounceClass.REPUTATION)],
                            now)
    assert throttle.ips.pairs[("127.0.8.1", "gmail")].paused_until == now + c.warmup.backoff_initial
    domain_pair = throttle.pairs.get(("a.example", "gmail"))
    assert domain_pair is None or domain_pair.paused_until <= now
    chosen = egress.choose(work(), {}, now)                  # the other address carries the domain's mail
    assert isinstance(chosen, Source) and chosen.address is not None and chosen.address.address == "127.0.8.2"
    delivered = work()
    delivered.source = "127.0.8.1"
    clock.advance(c.warmup.backoff_initial + 1)
    throttle.observe([(delivered, Result.DELIVERED, Reply(250, "2.0.0 Ok"), None)], clock.now())
    assert throttle.ips.pairs[("127.0.8.1", "gmail")].backoff_step == 0
