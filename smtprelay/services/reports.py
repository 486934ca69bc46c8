"""Reports: daily statistics, the status of a message or of the mail to one address, and
`explain` — every policy that applies now to one sender and recipient, with the verdict the
relay would give, without sending anything.

Explain runs the same pure rules as the front end (policy.sender, policy.blocklist,
policy.limits) on state read from the catalog and the store, so the answer cannot drift from
what the server does. The per-second rate is shown but not judged: its token bucket lives only
in the running server.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smtprelay.clock import FakeClock
from smtprelay.errors import Invalid, NotFound
from smtprelay.events.stats import SQLITE, Dialect, by_source, daily, postgres
from smtprelay.events.status import (cluster_message_status, cluster_recipient_messages, message_status,
                                    recipient_status)
from smtprelay.policy.address import canonical
from smtprelay.policy.limits import SendLimiter
from smtprelay.policy.reputation import AccountRow, effective_limits
from smtprelay.policy.sender import check_sender
from smtprelay.policy.verdict import Verdict
from smtprelay.queue.store import SendsHistory
from smtprelay.services.context import Context
from smtprelay.services.accounts import AccountService
from smtprelay.services.templates import TemplateService
from smtprelay.when import iso


def stamp(doc: dict[str, Any]) -> dict[str, Any]:
    """Timestamps as RFC 3339 UTC, recursively (in place; returns the document)."""
    for key, value in list(doc.items()):
        if key in ("at", "created_at", "next_attempt_at") and isinstance(value, (int, float)):
            doc[key] = iso(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    stamp(item)
    return doc


@dataclass(frozen=True, slots=True)
class Stats:
    since: float
    until: float
    days: list[dict[str, Any]]

    def doc(self) -> dict[str, Any]:
        return {"from": iso(self.since), "to": iso(self.until), "days": self.days}


@dataclass(frozen=True, slots=True)
class IpStats:
    since: float
    until: float
    days: list[dict[str, Any]]      # day, ip (None: the kernel's choice), pool, delivery counts

    def doc(self) -> dict[str, Any]:
        return {"from": iso(self.since), "to": iso(self.until), "by": "ip", "days": self.days}


@dataclass(frozen=True, slots=True)
class MessageStatus:
    detail: dict[str, Any]      # id, from, account, recipients with their attempts and events

    def doc(self) -> dict[str, Any]:
        return self.detail


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    recipient: str
    since: float
    until: float
    messages: list[dict[str, Any]]

    def doc(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "from": iso(self.since), "to": iso(self.until),
                "messages": self.messages}


@dataclass(frozen=True, slots=True)
class Explanation:
    detail: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return bool(self.detail["accepted"])

    def doc(self) -> dict[str, Any]:
        return self.detail


class ReportService:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def period(self, since: float | None, until: float | None, default_days: int, whole_day: bool = False
               ) -> tuple[float, float]:
        """[since, until): `since` defaults to `default_days` ago; `until` to now, and a bare date
        given as `until` (whole_day) means the end of that day."""
        now = self.ctx.now()
        start = since if since is not None else now - default_days * 86400
        end = now + 1 if until is None else until + (86400 if whole_day else 0)
        if start >= end:
            raise Invalid("--from must be before --to", "from")
        return start, end

    def stats(self, since: float | None = None, until: float | None = None, sender_domain: str | None = None,
              recipient_domain: str | None = None, whole_day: bool = False, template: str | None = None,
              account: str | None = None, task: int | None = None, run: int | None = None) -> Stats:
        """`template` (an id, or a name with `account` when several accounts use it) keeps
        its rows only; a deleted template is still found by id. `task` (and `run`): one sending
        task's rows."""
        start, end = self.period(since, until, 7, whole_day)
        names = self.ctx.catalog.template_names()
        template_id = None
        if template is not None:
            template_id = int(template) if template.isdigit() and int(template) in names else \
                TemplateService(self.ctx).get(template, account).id
        if task is not None and self.ctx.catalog.find_task(task) is None:
            raise NotFound(f"no task {task}")
        if run is not None and task is None:
            raise Invalid("--run needs --task", "run")
        conn, dialect = self._events()
        return Stats(start, end, daily(conn, start, end, sender_domain, recipient_domain, template_id, names, task,
                                       run, dialect))

    def _events(self) -> tuple[Any, Dialect]:
        """Where the events are: this node's store, or in cluster mode the cluster's (every node
        forwards its own to PostgreSQL: cluster.mirror)."""
        shared = getattr(self.ctx.catalog, "shared_events", None)
        if shared is None:
            return self.ctx.store, SQLITE
        conn, node = shared()
        return conn, postgres(node)

    def ip_stats(self, since: float | None = None, until: float | None = None, sender_domain: str | None = None,
                 whole_day: bool = False) -> IpStats:
        """Delivery outcomes per day and egress source address, with the address's pool now."""
        start, end = self.period(since, until, 7, whole_day)
        conn, dialect = self._events()
        rows = by_source(conn, start, end, sender_domain, dialect)
        for row in rows:
            pool = self.ctx.config.egress.pool_of(row["ip"]) if row["ip"] else None
            row["pool"] = pool.name if pool is not None else None
        return IpStats(start, end, rows)

    def usage(self, account: str | None = None) -> list[dict[str, Any]]:
        """Each account's daily quota and the recipients counted against it in the rolling 24 h
        (the sends the limiter counts; within the minute it rounds to)."""
        now = self.ctx.now()
        wanted = AccountService(self.ctx).get(account).id if account is not None else None
        shared = getattr(self.ctx.catalog, "shared_events", None)
        if shared is None:
            used = dict(self.ctx.store.execute(
                "SELECT account_id, count(*) FROM sends WHERE at > ? GROUP BY account_id", (now - 86400,)).fetchall())
        else:       # cluster mode: every node's accepted recipients (their events, forwarded each second)
            used = {int(r[0]): int(r[1]) for r in shared()[0].execute(
                "SELECT account_id, count(*) FROM events WHERE type = 'accepted' AND at > ? AND account_id IS NOT NULL"
                " GROUP BY account_id", (now - 86400,))}
        out = []
        for a, _ in self.ctx.catalog.accounts():
            if wanted is not None and a.id != wanted:
                continue
            quota = effective_limits(AccountRow(a.id, a.name, a.daily_quota, a.rate_per_second, a.level),
                                     self.ctx.config).daily_quota
            n = int(used.get(a.id, 0))
            out.append({"account": a.name, "used_24h": n, "daily_quota": quota, "remaining": max(quota - n, 0)})
        return out

    def message(self, queue_id: str) -> MessageStatus:
        found = message_status(self.ctx.store, queue_id)
        if found is None and (shared := getattr(self.ctx.catalog, "shared_events", None)) is not None:
            found = cluster_message_status(shared()[0], queue_id, self.ctx.catalog.account_names())
        if found is None:
            raise NotFound(f"no message with queue id or Message-ID {queue_id}")
        return MessageStatus(stamp(found))

    def recipient(self, address: str, since: float | None = None, until: float | None = None,
                  whole_day: bool = False) -> RecipientStatus:
        start, end = self.period(since, until, 30, whole_day)
        messages = recipient_status(self.ctx.store, address, start, end)
        shared = getattr(self.ctx.catalog, "shared_events", None)
        if shared is not None:      # cluster mode: the messages other nodes accepted, from their events
            conn, node = shared()
            names = self.ctx.catalog.account_names()
            local, _, domain = address.rpartition("@")
            keyed = f"{local}@{domain.lower()}" if local else address     # as the events record it
            for queue_id in cluster_recipient_messages(conn, keyed, start, end, node):
                doc = cluster_message_status(conn, queue_id, names, keyed)
                if doc is not None:
                    r = doc["recipients"][0]
                    messages.append({"queue_id": queue_id, "node": doc["node"], "from": doc["from"],
                                     "created_at": doc["created_at"], "recipient": r["address"], "state": r["state"],
                                     "attempts": r["attempts"], "last_reply": r["last_reply"],
                                     "bounce_class": r["bounce_class"], "message_id": doc["message_id"],
                                     "history": [], "events": r["events"]})
            messages.sort(key=lambda m: m["created_at"], reverse=True)
        return RecipientStatus(address, start, end, [stamp(m) for m in messages])

    def explain(self, account_name: str, mail_from: str, rcpt: str) -> Explanation:
        catalog, config, conn, now = self.ctx.catalog, self.ctx.config, self.ctx.store, self.ctx.now()
        account = AccountService(self.ctx).get(account_name)
        sender, recipient = canonical(mail_from, "from"), canonical(rcpt, "to")
        sender_domain = sender.rpartition("@")[2]
        domains, addresses = catalog.senders(config.server.data_dir)
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

        view = catalog.blocklist_view(now)
        findings = view.explain(recipient, account.id, sender_domain, now)
        policies.append({"policy": "blocklist", "address": recipient,
                         "allowed_for_account": (account.id, recipient) in view.allowed,
                         "entries": [{"type": f.entry.type, "applies": f.applies, "why": f.why,
                                      "reason": f.entry.reason, "expires_at": iso(f.entry.expires_at)}
                                     for f in findings]})
        verdict = verdict or view.check(recipient, account.id, sender_domain, now)

        row = AccountRow(account.id, account.name, account.daily_quota, account.rate_per_second, account.level)
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
        return Explanation({"account": account.name, "from": sender, "to": recipient, "policies": policies,
                "verdict": verdict.reply if verdict else "250 accepted (MAIL and RCPT would pass)",
                "accepted": verdict is None})
