"""Sender policy: an account sends only as its own verified domains (and registered
addresses), and the From: header stays inside that domain.

Pure: takes the account, the addresses and a snapshot of the sender domains.
"""
from __future__ import annotations

import email.utils
from typing import Collection, Mapping, Protocol

from smtprelay.domains.status import DomainState, sending_refusal
from smtprelay.policy.content import header_values
from smtprelay.policy.verdict import Verdict, reject


class Sender(Protocol):
    @property
    def account_id(self) -> int: ...

    @property
    def state(self) -> DomainState: ...

    @property
    def suspended(self) -> str | None: ...


def check_sender(account_id: int | None, mail_from: str, domains: Mapping[str, Sender], addresses: Collection[str],
                 now: float, grace: float, require_registered: bool) -> Verdict | None:
    domain = mail_from.rpartition("@")[2].lower()
    sender = domains.get(domain)
    if sender is None or sender.account_id != account_id:
        # The same answer whether the domain is unknown or another tenant's: no enumeration.
        return reject(550, "5.7.1", f"Sender domain {domain} is not a sending domain of this account "
                                    "(rule: domain ownership)", "sender_domain_not_owned")
    why = sending_refusal(domain, sender.state, now, grace)
    if why is not None:
        reason = "sender_domain_pending" if sender.state.status == "pending" else "sender_domain_stopped"
        return reject(550, "5.7.1", f"{why} (rule: domain verification)", reason)
    if sender.suspended is not None:
        return reject(550, "5.7.1", f"Sending for {domain} is suspended: {sender.suspended}; an operator can lift it "
                                    f"with 'smtprelay domain resume {domain}' (rule: reputation)",
                      "sender_domain_suspended")
    if require_registered and mail_from not in addresses:
        return reject(550, "5.7.1", f"Sender address {mail_from} is not registered; add it with "
                                    "'smtprelay address add' (rule: registered address)", "sender_address_unregistered")
    return None


def check_from_header(headers: bytes, envelope_domain: str) -> Verdict | None:
    values = header_values(headers, b"from")
    if len(values) != 1:
        return reject(550, "5.6.0", "Message must have exactly one From: header", "from_header_count")
    pairs = email.utils.getaddresses([values[0].decode("utf-8", "replace")])
    domains = [addr.rpartition("@")[2].lower().rstrip(">") for _, addr in pairs if "@" in addr]
    if not domains:
        return reject(550, "5.6.0", "The From: header holds no address", "from_header_invalid")
    for domain in domains:
        if domain != envelope_domain and not domain.endswith("." + envelope_domain):
            return reject(550, "5.7.1", f"From: header domain {domain} is not {envelope_domain} or a subdomain "
                                        "of it (rule: From alignment)", "from_header_domain")
    return None
