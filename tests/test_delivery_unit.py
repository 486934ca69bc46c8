from __future__ import annotations

import email
from collections import Counter
from types import SimpleNamespace
from typing import Any

import dns.resolver
import pytest

from smtprelay.config import parse
from smtprelay.delivery.dsn import FailedRecipient, build_dsn
from smtprelay.delivery.mx import MxResolver, NextHop, Unroutable
from smtprelay.delivery.outcome import BounceClass, Reply, Result, classify
from smtprelay.queue.backoff import next_attempt, retry_delay

SCHEDULE = (60.0, 300.0, 900.0)


@pytest.mark.parametrize("code,text,result,klass", [
    (250, "2.0.0 Ok", Result.DELIVERED, None),
    (550, "5.1.1 <x@y>: Recipient address rejected: User unknown", Result.BOUNCED, BounceClass.INVALID_ADDRESS),
    (550, "No such user here", Result.BOUNCED, BounceClass.INVALID_ADDRESS),
    (553, "5.1.10 Recipient address has null MX", Result.BOUNCED, BounceClass.INVALID_ADDRESS),
    (552, "5.2.2 Mailbox full", Result.BOUNCED, BounceClass.MAILBOX_FULL),
    (452, "4.2.2 Over quota", Result.DEFERRED, BounceClass.MAILBOX_FULL),
    (554, "5.7.1 Message rejected as spam", Result.BOUNCED, BounceClass.SPAM),
    (550, "5.7.1 Service unavailable; client [1.2.3.4] blocked using zen.spamhaus.org", Result.BOUNCED,
     BounceClass.REPUTATION),
    (421, "4.7.0 Try again later", Result.DEFERRED, BounceClass.REPUTATION),
    (451, "4.7.1 Rate limited, too many messages", Result.DEFERRED, BounceClass.REPUTATION),
    (450, "4.3.0 Error: command failed", Result.DEFERRED, BounceClass.OTHER),
    # Greylisting is a plain deferral, not a reputation signal (issue 23, item 2).
    (450, "4.2.0 <a@b.test>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/b.test.html",
     Result.DEFERRED, BounceClass.OTHER),
    (451, "4.7.1 Please try again later", Result.DEFERRED, BounceClass.OTHER),
    (451, "4.7.1 Greylisting in action, please come back later", Result.DEFERRED, BounceClass.OTHER),
    (451, "4.7.1 Client blocked, try again later", Result.DEFERRED, BounceClass.REPUTATION),
    (554, "5.3.0 Something else", Result.BOUNCED, BounceClass.OTHER),
])
def test_classify(code: int, text: str, result: Result, klass: BounceClass | None) -> None:
    assert classify(Reply(code, text)) == (result, klass)


def test_backoff_schedule_repeats_last_step_and_expires() -> None:
    assert [retry_delay(n, SCHEDULE, 0.0) for n in (1, 2, 3, 4, 9)] == [60, 300, 900, 900, 900]
    assert retry_delay(1, SCHEDULE, 0.1, rand=lambda: 1.0) == pytest.approx(66)
    assert retry_delay(1, SCHEDULE, 0.1, rand=lambda: 0.0) == pytest.approx(54)
    assert next_attempt(0, 100, 1, SCHEDULE, 0, 3600) == 160
    assert next_attempt(0, 3600, 5, SCHEDULE, 0, 3600) is None


def test_dsn_is_a_multipart_report_with_original_headers() -> None:
    original = b"From: a@b.example\r\nSubject: Hi there\r\n\r\nsecret body\r\n"
    body, message_id = build_dsn(hostname="relay.test", queue_id="Q1", original_from="a@b.example",
                                 original=original, failed=[FailedRecipient("x@y.example", "5.1.1",
                                                                            "550 5.1.1 User unknown", "mx.y.example",
                                                                            False)], arrival=0, now=60)
    msg = email.message_from_bytes(body)
    assert msg.get_content_type() == "multipart/report" and msg["To"] == "<a@b.example>"
    parts = [p.get_content_type() for p in msg.get_payload()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert b"Subject: Hi there" in body and b"secret body" not in body
    assert b"Remote-MTA: dns; mx.y.example" in body and message_id.startswith("<Q1.dsn.")


class StubResolver:
    def __init__(self, answers: dict[tuple[str, str], Any]):
        self.answers = answers

    async def resolve(self, name: str, rtype: str) -> Any:
        value = self.answers.get((name, rtype))
        if value is None:
            raise dns.resolver.NoAnswer()
        if isinstance(value, Exception):
            raise value
        rrset = SimpleNamespace(ttl=300)
        if rtype == "MX":
            items = [SimpleNamespace(preference=p, exchange=SimpleNamespace(to_text=lambda h=h: h + "."))
                     for p, h in value]
        else:
            items = [SimpleNamespace(address=a) for a in value]
        return _Answer(items, rrset)


class _Answer(list):  # type: ignore[type-arg]
    def __init__(self, items: list[Any], rrset: Any):
        super().__init__(items)
        self.rrset = rrset


CONFIG = parse({"listeners": [{"name": "s", "port": 1}]})


async def test_mx_order_random_among_equals_and_failures() -> None:
    answers = {("d.example", "MX"): [(20, "c.mx"), (10, "a.mx"), (10, "b.mx")],
               ("a.mx", "A"): ["10.0.0.1"], ("b.mx", "A"): ["10.0.0.2"], ("c.mx", "A"): ["10.0.0.3"],
               ("null.example", "MX"): [(0, "")], ("gone.example", "MX"): dns.resolver.NXDOMAIN(),
               ("slow.example", "MX"): dns.resolver.LifetimeTimeout(timeout=1, errors=[]),
               ("bare.example", "A"): ["10.0.0.9"]}
    firsts = Counter()
    for _ in range(200):
        resolver = MxResolver(CONFIG, StubResolver(answers))  # type: ignore[arg-type]
        hop = await resolver.next_hop("d.example")
        assert isinstance(hop, NextHop)
        assert [h.name for h in hop.hosts][2] == "c.mx" and hop.hosts[0].port == 25
        firsts[hop.hosts[0].name] += 1
    assert set(firsts) == {"a.mx", "b.mx"} and min(firsts.values()) > 40  # both equals lead, at random
    resolver = MxResolver(CONFIG, StubResolver(answers))  # type: ignore[arg-type]
    null = await resolver.next_hop("null.example")
    assert isinstance(null, Unroutable) and null.permanent and null.status == "5.1.10"
    gone = await resolver.next_hop("gone.example")
    assert isinstance(gone, Unroutable) and gone.permanent
    slow = await resolver.next_hop("slow.example")
    assert isinstance(slow, Unroutable) and not slow.permanent
    bare = await resolver.next_hop("bare.example")  # no MX: implicit MX on the A record
    assert isinstance(bare, NextHop) and bare.hosts[0].addresses == ("10.0.0.9",)
