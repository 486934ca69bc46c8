"""`smtprelay explain`: every policy that applies right now to one sender and recipient,
and the verdict the relay would give, without sending anything.

Runs the same pure rules as the front end (policy.sender, policy.blocklist,
policy.limits) on state read from the store, so the answer cannot drift from what the
server does. The per-second rate is shown but not judged: its token bucket lives only
in the running server.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Callable

from smtprelay.accounts import AccountService, load_account_rows
from smtprelay.blocklist.service import canonical, load_view
from smtprelay.clock import FakeClock
from smtprelay.config import Config
from smtprelay.domains.service import load_senders
from smtprelay.policy.limits import SendLimiter
from smtprelay.policy.reputation import effective_limits
from smtprelay.policy.sender import check_sender
from smtprelay.policy.verdict import Verdict
from smtprelay.queue.store import SendsHistory


def explain(conn: sqlite3.Connection, config: Config, account_name: str, mail_from: str, rcpt: str, now: float,
            iso: Callable[[float | None], str | None]) -> dict[str, Any]:
    account = AccountService(conn, now).get_account(account_name)
    sender, recipient = canonical(mail_from), canonical(rcpt)
    sender_domain = sender.rpartition("@")[2]
    domains, addresses = load_senders(conn, config.server.data_dir)
    policies: list[dict[str, Any]] = []
    verdict: Verdict | None = None

    domain = domains.get(sender_domain)
    policies.append({"policy": "sender domain", "domain": sender_domain,
                     "owner": "this account" if domain and domain.account_id == account.id
                     else ("another account" if domain else "not registered"),
                     "status": domain.state.status if domain else None,
                     "failing_record": domain.state.failing_record if domain else None,
                     "failing_since": iso(domain.state.failing_since) if domain else None})
    policies.append({"policy": "sender address", "address": sender, "registered": sender in addresses,
                     "required": config.policy.require_registered_address})
    verdict = check_sender(account.id, sender, domains, addresses, now, config.domains.grace,
                           config.policy.require_registered_address)

    view = load_view(conn, now)
    findings = view.explain(recipient, account.id, sender_domain, now)
    policies.append({"policy": "blocklist", "address": recipient,
                     "allowed_for_account": (account.id, recipient) in view.allowed,
                     "entries": [{"type": f.entry.type, "applies": f.applies, "why": f.why,
                                  "reason": f.entry.reason, "expires_at": iso(f.entry.expires_at)}
                                 for f in findings]})
    verdict = verdict or view.check(recipient, account.id, sender_domain, now)

    row = load_account_rows(conn)[account.id]
    limits = effective_limits(row, config)
    limiter = SendLimiter(FakeClock(start=now), config.limits.recipient_hourly_cap, SendsHistory(conn))
    limiter.load([(a, minute, n) for a, minute, n in conn.execute(
        "SELECT account_id, CAST(at / 60 AS INTEGER) AS minute, count(*) FROM sends WHERE account_id = ? AND at > ?"
        " GROUP BY minute ORDER BY minute", (account.id, now - 86400))])
    usage = limiter.usage(account.id, recipient, limits)
    policies.append({"policy": "recipient hourly cap", "used": usage.hourly_used, "cap": usage.hourly_cap,
                     "remaining": max(usage.hourly_cap - usage.hourly_used, 0),
                     "next_slot_at": iso(usage.hourly_reset_at) if usage.hourly_used >= usage.hourly_cap else None})
    policies.append({"policy": "account daily quota", "used": usage.quota_used, "quota": usage.daily_quota,
                     "remaining": max(usage.daily_quota - usage.quota_used, 0), "level": row.level,
                     "source": "account" if row.daily_quota else ("reputation level" if config.reputation.levels
                                                                  else "limits.account_daily_quota")})
    policies.append({"policy": "account rate", "per_second": limits.rate_per_second,
                     "note": "token bucket of the running server; not judged here"})
    if verdict is None:
        reserved = limiter.reserve(account.id, recipient, limits)
        verdict = reserved if isinstance(reserved, Verdict) else None
    return {"account": account.name, "from": sender, "to": recipient, "policies": policies,
            "verdict": verdict.reply if verdict else "250 accepted (MAIL and RCPT would pass)",
            "accepted": verdict is None}
