from __future__ import annotations

from smtprelay.clock import FakeClock
from smtprelay.domains.records import registered_domain, relative_host
from smtprelay.domains.status import FAILING, PENDING, VERIFIED, DomainState, after_check, sending_refusal
from smtprelay.policy.sender import check_from_header, check_sender

HOUR = 3600.0


def test_registered_domain_and_relative_hosts() -> None:
    assert registered_domain("abc.example.com") == "example.com"
    assert registered_domain("mail.example.co.uk") == "example.co.uk"
    assert registered_domain("example.com") == "example.com"
    assert relative_host("_dmarc.abc.example.com", "example.com") == "_dmarc.abc"
    assert relative_host("example.com", "example.com") == "@"


def test_status_transitions_and_grace_with_a_fake_clock() -> None:
    clock = FakeClock()
    state = DomainState(PENDING, None, None)
    state = after_check(state, False, "DKIM record x", clock.now())
    assert state.status == PENDING and sending_refusal("d.example", state, clock.now(), 48 * HOUR)
    state = after_check(state, True, None, clock.now())
    assert state == DomainState(VERIFIED, None, None)
    assert sending_refusal("d.example", state, clock.now(), 48 * HOUR) is None
    clock.advance(6 * HOUR)
    state = after_check(state, False, "SPF record d.example (x)", clock.now())
    started = clock.now()
    assert state == DomainState(FAILING, started, "SPF record d.example (x)")
    clock.advance(24 * HOUR)
    state = after_check(state, False, "SPF record d.example (x)", clock.now())
    assert state.failing_since == started  # still failing since the first failure
    assert sending_refusal("d.example", state, clock.now(), 48 * HOUR) is None  # within grace
    clock.advance(24 * HOUR)
    why = sending_refusal("d.example", state, clock.now(), 48 * HOUR)
    assert why is not None and "SPF record d.example (x)" in why
    state = after_check(state, True, None, clock.now())
    assert sending_refusal("d.example", state, clock.now(), 48 * HOUR) is None


class _Sender:
    def __init__(self, account_id: int, status: str = VERIFIED):
        self.account_id = account_id
        self.state = DomainState(status, None, None)
        self.suspended: str | None = None


def test_sender_rules() -> None:
    domains = {"a.example": _Sender(1), "b.example": _Sender(2), "p.example": _Sender(1, PENDING)}
    addresses = {"x@a.example"}
    assert check_sender(1, "x@a.example", domains, addresses, 0, 1, True) is None
    assert check_sender(1, "y@a.example", domains, addresses, 0, 1, True).reason == "sender_address_unregistered"
    assert check_sender(1, "y@a.example", domains, addresses, 0, 1, False) is None
    assert check_sender(1, "x@b.example", domains, addresses, 0, 1, True).reason == "sender_domain_not_owned"
    assert check_sender(1, "x@nowhere.example", domains, addresses, 0, 1, True).reason == "sender_domain_not_owned"
    assert check_sender(1, "x@p.example", domains, addresses, 0, 1, False).reason == "sender_domain_pending"
    # The envelope domain is exact: a subdomain of a verified domain is not itself verified.
    assert check_sender(1, "x@sub.a.example", domains, addresses, 0, 1, False).reason == "sender_domain_not_owned"


def test_from_header_alignment() -> None:
    assert check_from_header(b"From: A <x@a.example>\r\n", "a.example") is None
    assert check_from_header(b"From: x@news.a.example\r\n", "a.example") is None
    assert check_from_header(b"From: x@evil-a.example\r\n", "a.example").reason == "from_header_domain"
    assert check_from_header(b"From: x@a.example, y@b.example\r\n", "a.example").reason == "from_header_domain"
    assert check_from_header(b"Subject: none\r\n", "a.example").reason == "from_header_count"
    assert check_from_header(b"From: a@a.example\r\nFrom: b@a.example\r\n", "a.example").reason == "from_header_count"
