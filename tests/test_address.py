from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.policy.address import AddressError, parse_address, split_smtp_argument


@pytest.mark.parametrize("text,expected", [
    ("user@example.com", "user@example.com"),
    ("User.Name+tag@Example.COM", "User.Name+tag@example.com"),
    ('"john doe"@example.com', '"john doe"@example.com'),
    ("a@sub.example.co.uk.", "a@sub.example.co.uk"),
])
def test_valid(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize("text", [
    "user%other@example.com", "@a.example:user@b.example", "host!user", "host!user@example.com",
    '"a@b"@example.com', '"a%b"@example.com', "user@[127.0.0.1]", "user@a@b.example", "user",
    "user@localhost", "user@192.168.0.1", ".user@example.com", "us..er@example.com", "user@-bad.example",
    "user@exa_mple.com", "a" * 65 + "@example.com", "user@" + "a" * 64 + ".com", '"unterminated@example.com',
])
def test_refused(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


def test_split_argument() -> None:
    assert split_smtp_argument("<a@b.example> SIZE=10") == ("a@b.example", "SIZE=10")
    assert split_smtp_argument("a@b.example") == ("a@b.example", "")
    with pytest.raises(AddressError):
        split_smtp_argument("<a@b.example")


@given(st.text(max_size=80))
def test_parser_never_accepts_routing_characters(text: str) -> None:
    try:
        address = parse_address(text)
    except AddressError:
        return
    rendered = str(address)
    assert rendered.count("@") == 1 and "%" not in rendered and "!" not in rendered and "[" not in rendered
    # Parsing is stable: what policy sees parses to itself again (delivery sees the same address).
    assert str(parse_address(rendered)) == rendered
