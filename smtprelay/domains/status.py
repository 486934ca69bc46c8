"""Sender domain status: pending → verified ⇄ failing, and when a domain may not send.

Pure: takes the current state, a verification result and the time. A verified domain
whose records drift becomes `failing` but keeps sending for `domains.grace`, so a DNS
hiccup does not stop anyone's mail; after the grace it is stopped until it verifies again.
"""
from __future__ import annotations

from dataclasses import dataclass

PENDING, VERIFIED, FAILING = "pending", "verified", "failing"


@dataclass(frozen=True, slots=True)
class DomainState:
    status: str
    failing_since: float | None
    failing_record: str | None


def after_check(state: DomainState, passed: bool, failing_record: str | None, now: float) -> DomainState:
    if passed:
        return DomainState(VERIFIED, None, None)
    if state.status == PENDING:
        return DomainState(PENDING, None, failing_record)
    since = state.failing_since if state.status == FAILING and state.failing_since is not None else now
    return DomainState(FAILING, since, failing_record)


def sending_refusal(domain: str, state: DomainState, now: float, grace: float) -> str | None:
    """Why mail from this domain is refused now, or None when it may send."""
    if state.status == PENDING:
        return (f"Sender domain {domain} is not verified yet; publish its DNS records and run "
                f"'smtprelay domain verify {domain}'")
    if state.status == FAILING and state.failing_since is not None and now - state.failing_since >= grace:
        return (f"Sending for {domain} is stopped: {state.failing_record or 'a required DNS record'} has failed "
                f"verification for longer than the grace period")
    return None
