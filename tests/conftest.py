from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Relay


PROTOCOLS = ["aiosmtpd", "native"]


@pytest.fixture
def protocol() -> str:
    """The SMTP protocol the relay runs (server.protocol): the default. The protocol, security
    and smuggling modules parametrise it over PROTOCOLS, so the same tests run against both."""
    return "aiosmtpd"


@pytest.fixture
def make_relay(tmp_path: Path, protocol: str) -> Iterator[Callable[..., Relay]]:
    """Build relays (not started); every relay started here is stopped by PID afterwards."""
    made: list[Relay] = []

    def make(overrides: dict[str, dict[str, Any]] | None = None, name: str = "r", **kw: Any) -> Relay:
        d = tmp_path / f"{name}{len(made)}"
        d.mkdir()
        overrides = {**(overrides or {})}
        overrides["server"] = {"protocol": protocol, **overrides.get("server", {})}
        relay = Relay(d, overrides, **kw)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.stop()


@pytest.fixture
def relay(make_relay: Callable[..., Relay]) -> Relay:
    """A running relay with account `acme` and one credential in `relay.user` / `relay.password`."""
    r = make_relay()
    r.user, r.password = r.add_account_with_credential("acme")  # type: ignore[attr-defined]
    return r.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Each phase's report on the test item (`item.rep_call`): fixtures that keep evidence of a
    failure (the console tests' screenshots) look at it."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + report.when, report)
