"""The services' rules, called directly (no subprocess, no argv, no HTTP): what each refuses,
with which error kind and field, and what it writes through the catalog. Time is a FakeClock."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from smtprelay.catalog.sqlite import SqliteCatalog
from smtprelay.clock import FakeClock
from smtprelay.config import parse
from smtprelay.errors import Invalid, NotFound, Refused, StoreUnavailable
from smtprelay.queue import schema
from smtprelay.services import Context, Services, guard

START = 1_800_000_000.0


def make(tmp_path: Path, **sections: Any) -> tuple[Services, FakeClock]:
    config = parse({"server": {"hostname": "relay.test", "data_dir": str(tmp_path / "var")},
                    "listeners": [{"name": "s", "port": 1}], "dkim": {"algorithms": ["ed25519-sha256"]}, **sections})
    conn = schema.connect(config.server.data_dir)
    clock = FakeClock(START)
    return Services(Context(config, SqliteCatalog(conn), conn, clock)), clock


def refused(kind: type[Exception], call: Any, *args: Any, **kwargs: Any) -> Exception:
    with pytest.raises(kind) as info:
        call(*args, **kwargs)
    return info.value


def test_accounts_rules(tmp_path: Path) -> None:
    s, clock = make(tmp_path)
    view = s.accounts.add("acme", daily_quota=500)
    assert (view.name, view.daily_quota, view.quota_source, view.created_at) == ("acme", 500, "account", START)
    assert refused(Invalid, s.accounts.add, "Not Valid").field == "name"            # type: ignore[attr-defined]
    assert refused(Invalid, s.accounts.add, "beta", daily_quota=0).field == "daily_quota"  # type: ignore[attr-defined]
    assert refused(Invalid, s.accounts.add, "beta", rate_per_second=-1.0).field == "rate"  # type: ignore[attr-defined]
    assert "already exists" in str(refused(Refused, s.accounts.add, "acme"))
    assert isinstance(refused(NotFound, s.accounts.get, "nobody"), Refused)           # NotFound is a refusal
    refused(Invalid, s.accounts.set, "acme")                                          # nothing to change
    assert refused(Invalid, s.accounts.set, "acme", delivery_tls="maybe").field == "delivery_tls"  # type: ignore[attr-defined]
    assert s.accounts.set("acme", delivery_tls="required").delivery_tls == "required"
    assert s.accounts.set("acme", delivery_tls="default").delivery_tls == "opportunistic"   # delivery.tls

    cred = s.accounts.add_credential("acme")
    stored = s.ctx.store.execute("SELECT digest FROM credentials WHERE username = ?", (cred.username,)).fetchone()[0]
    assert cred.password not in stored and stored.startswith("sha256$")             # only the digest is kept
    clock.advance(60)
    assert s.accounts.revoke(cred.username).revoked_at == START + 60
    assert "already revoked" in str(refused(Refused, s.accounts.revoke, cred.username))
    assert [v.credentials for v in s.accounts.all()] == [0]


def test_domain_and_address_rules(tmp_path: Path) -> None:
    s, _ = make(tmp_path, domains={"max_per_account": 1, "max_addresses_per_domain": 1})
    s.accounts.add("acme")
    s.accounts.add("beta")
    assert refused(Invalid, s.domains.add, "acme", "not a domain").field == "domain"  # type: ignore[attr-defined]
    refused(NotFound, s.domains.add, "nobody", "acme.example")
    done = s.domains.add("acme", "Acme.Example.")                                    # normalised
    assert done.domain.name == "acme.example" and done.domain.state.status == "pending"
    assert [k.algorithm for k in done.domain.keys] == ["ed25519-sha256"] and any(r.kind == "dkim" for r in done.records)
    assert "to another account" in str(refused(Refused, s.domains.add, "beta", "acme.example"))
    assert "domains.max_per_account = 1" in str(refused(Refused, s.domains.add, "acme", "other.example"))

    assert refused(Invalid, s.domains.add_address, "no-at-sign").field == "address"  # type: ignore[attr-defined]
    assert "not a registered sender domain" in str(refused(Refused, s.domains.add_address, "a@else.example"))
    assert s.domains.add_address("News@ACME.example", "News").address == "News@acme.example"
    assert "max_addresses_per_domain" in str(refused(Refused, s.domains.add_address, "b@acme.example"))
    refused(NotFound, s.domains.delete_address, "nobody@acme.example")

    s.domains.rotate("acme.example")
    assert "already waiting" in str(refused(Refused, s.domains.rotate, "acme.example"))
    assert s.domains.delete("acme.example").name == "acme.example"
    assert not (s.config.server.data_dir / "dkim" / "acme.example").exists()          # key files go too
    refused(NotFound, s.domains.get, "acme.example")


def test_blocklist_rules(tmp_path: Path) -> None:
    s, clock = make(tmp_path)
    s.accounts.add("acme")
    s.accounts.add("beta")
    assert refused(Invalid, s.blocklist.add, "x@y.example", expires_at=START - 1).field == "expires"  # type: ignore[attr-defined]
    assert refused(Invalid, s.blocklist.add, "x@y.example", "reject").field == "sender_domain"  # type: ignore[attr-defined]
    assert refused(Invalid, s.blocklist.add, "x@y.example", "nonsense").field == "type"  # type: ignore[attr-defined]
    s.blocklist.add("gone@y.example", "invalid", origin="acme")
    text = str(refused(Refused, s.blocklist.remove, "gone@y.example", account="beta"))
    assert "only the account whose mail bounced" in text and "blocklist allow" in text
    assert s.blocklist.check("gone@y.example", "beta").blocked
    s.blocklist.allow("gone@y.example", "beta")
    check = s.blocklist.check("gone@y.example", "beta")
    assert check.allowed and not check.blocked and s.blocklist.check("gone@y.example", "acme").blocked
    assert s.blocklist.remove("gone@y.example", account="acme") == 1
    refused(NotFound, s.blocklist.remove, "gone@y.example")

    s.blocklist.add("soon@y.example", expires_at=START + 60)
    assert [e.address for e in s.blocklist.entries()] == ["soon@y.example"]
    clock.advance(61)
    assert s.blocklist.entries() == [] and len(s.blocklist.entries(include_expired=True)) == 1


def test_warmup_rules(tmp_path: Path) -> None:
    s, _ = make(tmp_path, warmup={"enabled": True})
    s.accounts.add("acme")
    s.domains.add("acme", "acme.example")
    assert refused(Invalid, s.warmup.set_day, "acme.example", "gmial", 2).field == "provider"  # type: ignore[attr-defined]
    assert refused(Invalid, s.warmup.set_day, "acme.example", "gmail", 999).field == "day"  # type: ignore[attr-defined]
    refused(NotFound, s.warmup.set_day, "nosuch.example", "gmail", 2)
    done = s.warmup.set_day("acme.example", "gmail", 2)
    assert done.day == 2 and done.cap is not None
    assert [(p["provider"], p["day"]) for p in s.warmup.status("acme.example").pairs] == [("gmail", 2)]
    refused(NotFound, s.warmup.status, "nosuch.example")
    assert "not suspended" in str(refused(Refused, s.warmup.resume, "acme.example"))


def test_webhook_and_tracking_rules(tmp_path: Path) -> None:
    s, clock = make(tmp_path)
    s.accounts.add("acme")
    s.domains.add("acme", "acme.example")
    s.domains.add_address("news@acme.example")
    assert refused(Invalid, s.webhooks.set, "ftp://x.example/", "acme").field == "url"  # type: ignore[attr-defined]
    assert refused(Invalid, s.webhooks.set, "https://u:p@x.example/", "acme").field == "url"  # type: ignore[attr-defined]
    refused(Invalid, s.webhooks.set, "https://x.example/", "acme", "news@acme.example")   # both owners
    refused(NotFound, s.webhooks.set, "https://x.example/", address="else@acme.example")
    first = s.webhooks.set("https://x.example/a", "acme")
    assert first.new_secret is not None and s.webhooks.set("https://x.example/b", "acme").new_secret is None
    rotated = s.webhooks.secret("acme", rotate=True)
    assert rotated.secret != first.new_secret
    retire_at = s.ctx.store.execute("SELECT retire_at FROM webhook_secrets WHERE secret = ?",
                                    (first.new_secret,)).fetchone()[0]
    assert retire_at == START + s.config.webhooks.secret_overlap                     # the old one keeps signing
    assert [w.url for w in s.webhooks.all()] == ["https://x.example/b"]
    s.webhooks.delete("acme")
    refused(NotFound, s.webhooks.delete, "acme")

    assert refused(Invalid, s.tracking.set, "acme", opens="maybe").field == "opens"  # type: ignore[attr-defined]
    refused(Invalid, s.tracking.set, "acme")                                          # nothing to set
    refused(NotFound, s.tracking.set, domain="nosuch.example", opens="on")
    s.tracking.set("acme", opens="on", clicks="on")
    domain = s.tracking.set(domain="acme.example", clicks="off")
    assert (domain["opens"], domain["clicks"], domain["unsubscribe"]) == (True, False, False)   # inherits opens
    assert s.tracking.set(domain="acme.example", clicks="inherit")["clicks"] is True


def test_queue_and_report_rules_and_store_errors(tmp_path: Path) -> None:
    s, _ = make(tmp_path)
    assert refused(Invalid, s.queue.list, "lost").field == "state"                    # type: ignore[attr-defined]
    refused(NotFound, s.queue.show, "NOSUCHID")
    refused(NotFound, s.queue.hold, "NOSUCHID")
    assert s.queue.flush().doc() == {"due_now": 0, "domain": None}
    refused(Invalid, s.reports.stats, since=START, until=START - 86400)
    refused(NotFound, s.reports.message, "<nosuch@x>")
    refused(NotFound, s.reports.explain, "nobody", "a@b.example", "c@d.example")

    s.ctx.store.close()                                    # a store that cannot be used
    with pytest.raises(StoreUnavailable, match="the store could not be used"):
        with guard():
            s.accounts.all()
    assert issubclass(sqlite3.ProgrammingError, sqlite3.Error)


def test_pending_domains_are_rechecked_on_a_schedule(tmp_path: Path) -> None:
    s, clock = make(tmp_path, domains={"recheck_interval": "6h"})
    s.accounts.add("acme")
    s.domains.add("acme", "new.example")
    s.domains.add("acme", "old.example")
    catalog = s.ctx.catalog
    domain = catalog.domain("old.example")
    assert domain is not None
    catalog.record_check(domain.id, domain.state.__class__("verified", None, None), clock.now())
    assert s.domains.due_for_recheck() == ["new.example"]          # never checked: at once

    def checked(name: str) -> None:
        found = catalog.domain(name)
        assert found is not None
        catalog.record_check(found.id, found.state, clock.now())

    checked("new.example")
    clock.advance(299)
    assert s.domains.due_for_recheck() == []
    clock.advance(1)
    assert s.domains.due_for_recheck() == ["new.example"]          # every 5 min in the first 2 h
    checked("new.example")
    clock.advance(7200)                                             # past 2 h: hourly
    checked("new.example")
    clock.advance(1800)
    assert s.domains.due_for_recheck() == []
    clock.advance(1800)
    assert s.domains.due_for_recheck() == ["new.example"]
    clock.advance(3 * 86400)                                        # 3 days old: the operator's turn
    assert s.domains.due_for_recheck() == ["old.example"]           # verified: every recheck_interval


def test_a_store_from_a_newer_smtprelay_is_refused_in_words(tmp_path: Path) -> None:
    from smtprelay.services import open_services
    (tmp_path / "relay.toml").write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n'
                                         '[[listeners]]\nname = "s"\nport = 2599\n')
    conn = schema.connect(tmp_path / "var")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreUnavailable, match="newer than this smtprelay"):
        open_services(tmp_path / "relay.toml")
