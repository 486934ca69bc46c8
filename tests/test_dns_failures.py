"""Failed DNS look-ups described in words (smtprelay.resolver.describe_failure), against a real
DNS server (dnsmasq on a high port) and a port where nothing answers: what deferral replies and
`domain verify` show instead of dnspython's class names (issue 23, item 23)."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.resolver
import pytest

from smtprelay.config import DnsConfig
from smtprelay.resolver import describe_failure, make_resolver
from tests.dnsserver import DnsServer
from tests.support import free_port


def fails(nameserver: str, name: str, rtype: str = "MX") -> str:
    host, port = nameserver.rsplit(":", 1)
    resolver = make_resolver(DnsConfig(nameservers=((host, int(port)),), timeout=1.0))
    with pytest.raises(dns.exception.DNSException) as caught:
        resolver.resolve(name, rtype)
    return describe_failure(caught.value)


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[DnsServer]:
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is installed by `make test`")
    server = DnsServer(tmp_path, ("example.com",))
    server.publish([])
    yield server
    server.stop()


def test_a_server_that_refuses_is_named_with_its_answer(dnsmasq: DnsServer) -> None:
    # dnsmasq serves only example.com here and has no upstream: it refuses other names.
    assert fails(dnsmasq.nameserver, "elsewhere.test") == f"no DNS server could answer (REFUSED from {dnsmasq.nameserver})"


def test_silence_is_a_timeout_naming_the_server() -> None:
    port = free_port()
    text = fails(f"127.0.0.1:{port}", "example.com")
    assert text.startswith("no DNS server answered within ") and text.endswith(f"(no answer from 127.0.0.1:{port})")


def test_without_details_the_words_still_come_first() -> None:
    assert describe_failure(dns.resolver.LifetimeTimeout(timeout=1.5, errors=[])) == \
        "no DNS server answered within 1.5 s"
