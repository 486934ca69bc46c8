"""Sender domains, their DKIM keys and sender addresses.

Rules: a domain is registered once, to one account, within `domains.max_per_account`; it
gets a key per `dkim.algorithms`, starts `pending` and becomes `verified` when its DNS
records check out (domains.status moves it on); rotation keeps signing with the active key
until the new selector's record verifies, then keeps the old one listed for
`dkim.rotation_overlap`. Addresses belong to a registered domain, within
`domains.max_addresses_per_domain`.

Must never: run on an event loop (DNS and key files block); the server calls it in a thread.
"""
from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smtprelay.catalog.records import AddressRecord, DomainRecord
from smtprelay.config import DkimAlgorithm
from smtprelay.domains import status as S
from smtprelay.domains.records import DnsRecord, expected_records
from smtprelay.errors import Invalid, NotFound, Refused
from smtprelay.policy.address import AddressError, parse_address
from smtprelay.services.context import Context
from smtprelay.services.egress import binding_fields, sending_addresses
from smtprelay.when import iso

if TYPE_CHECKING:
    from smtprelay.domains.dnscheck import RecordCheck

log = logging.getLogger("smtprelay.domains")

PENDING_RECHECK_FOR = 3 * 86400.0
_DOMAIN = re.compile(r"^(?=.{4,253}$)((?!-)[a-z0-9-]{1,63}(?<!-)\.)+(?!-)[a-z][a-z0-9-]{0,62}(?<!-)$")


def domain_doc(info: DomainRecord) -> dict[str, Any]:
    pool, fallback, source = info.egress
    return {"domain": info.name, "account": info.account, "status": info.state.status,
            "pool": pool, "pool_fallback": fallback, "pool_set_on": source,
            "failing_since": iso(info.state.failing_since), "failing_record": info.state.failing_record,
            "verified_at": iso(info.verified_at), "last_checked_at": iso(info.last_checked_at),
            "addresses": info.addresses,
            "dkim": [{"selector": k.selector, "algorithm": k.algorithm, "state": k.state} for k in info.keys]}


def address_doc(a: AddressRecord) -> dict[str, Any]:
    return {"address": a.address, "name": a.name, "domain": a.domain, "account": a.account,
            "created_at": iso(a.created_at)}


@dataclass(frozen=True, slots=True)
class Registered:
    """A domain just added, with the records to publish and the setup's warnings."""
    domain: DomainRecord
    records: list[DnsRecord]
    warnings: list[str]

    def doc(self) -> dict[str, Any]:
        return {**domain_doc(self.domain), "records": [r.as_dict() for r in self.records], "warnings": self.warnings}


@dataclass(frozen=True, slots=True)
class Verification:
    domain: str
    status: str
    previous: str
    checks: tuple[RecordCheck, ...]
    promoted: tuple[str, ...]      # selectors that became active
    return_path: str = "sender"    # "verp": bounce MX and SPF verified (issue 18)

    @property
    def verified(self) -> bool:
        return self.status == S.VERIFIED

    def doc(self) -> dict[str, Any]:
        return {"domain": self.domain, "status": self.status, "previous_status": self.previous,
                "verified": self.verified, "promoted_selectors": list(self.promoted), "return_path": self.return_path,
                "records": [c.as_dict() for c in self.checks]}


def domain_name(text: str) -> str:
    """A domain as the catalog keys it: lower case, no trailing dot."""
    return text.lower().rstrip(".")


class DomainService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog
        self.config = ctx.config

    # -- domains ---------------------------------------------------------------------------
    def get(self, name: str) -> DomainRecord:
        found = self.catalog.domain(domain_name(name))
        if found is None:
            raise NotFound(f"no domain named {domain_name(name)}")
        return found

    def add(self, account_name: str, domain: str) -> Registered:
        from smtprelay.services.accounts import AccountService
        domain = domain_name(domain)
        if not _DOMAIN.match(domain):
            raise Invalid(f"\"{domain}\" is not a valid domain name", "domain")
        account = AccountService(self.ctx).get(account_name)
        owner = self.catalog.domain(domain)
        if owner is not None:
            raise Refused(f"domain {domain} is already registered"
                          + (" to this account" if owner.account == account.name else " to another account"))
        count = self.catalog.domain_count(account.id)
        if count >= self.config.domains.max_per_account:
            raise Refused(f"account {account.name} already has {count} domains "
                          f"(domains.max_per_account = {self.config.domains.max_per_account})")
        now = self.ctx.now()
        written: list[Path] = []
        try:
            with self.catalog.transaction():
                domain_id = self.catalog.insert_domain(domain, account.id, S.PENDING, now)
                for algorithm in self.config.dkim.algorithms:
                    written.append(self._new_key(domain_id, domain, algorithm, "active", now))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        log.info("domain %s added for account %s (pending)", domain, account.name)
        return Registered(self.get(domain), self.records(domain), self.config.warnings())

    def _new_key(self, domain_id: int, domain: str, algorithm: DkimAlgorithm, state: str, now: float) -> Path:
        from smtprelay.dkim import keys as dkim_keys    # cryptography: only where keys are made
        selector = dkim_keys.selector_for(algorithm, now, self.catalog.selectors(domain_id))
        pair = dkim_keys.generate(algorithm, self.config.dkim.rsa_bits)
        path = dkim_keys.key_path(self.config.server.data_dir, domain, selector)
        dkim_keys.save_private_key(path, pair.private_pem)
        self.catalog.insert_key(domain_id, selector, algorithm.value, pair.public_b64, state, now)
        return path

    def all(self, account_name: str | None = None) -> list[DomainRecord]:
        return self.catalog.domains(account_name)

    def set(self, name: str, pool: str | None = None, pool_fallback: str | None = None) -> DomainRecord:
        """Bind the domain's mail to an egress pool (overrides its account's), or its fallback."""
        if pool is None and pool_fallback is None:
            raise Invalid("nothing to change: give an egress pool or a pool fallback")
        fields = binding_fields(self.config, pool, pool_fallback)
        info = self.get(name)
        self.catalog.update_domain(info.id, fields)
        return self.get(name)

    def delete(self, name: str) -> DomainRecord:
        info = self.get(name)
        self.catalog.delete_domain(info.id)
        shutil.rmtree(self.config.server.data_dir / "dkim" / info.name, ignore_errors=True)
        log.info("domain %s deleted (account %s)", info.name, info.account)
        return info

    def records(self, name: str) -> list[DnsRecord]:
        self.catalog.retire_expired_keys(self.ctx.now())
        info = self.get(name)
        return expected_records(info.name, list(info.keys), self.config, self._addresses(info))

    def _addresses(self, info: DomainRecord) -> list[str]:
        pool, fallback, _ = info.egress
        return sending_addresses(self.config, pool, fallback)

    # -- verification ----------------------------------------------------------------------
    def verify(self, name: str) -> Verification:
        now = self.ctx.now()
        self.catalog.retire_expired_keys(now)
        info = self.get(name)
        from smtprelay.domains.dnscheck import check_all   # dnspython and pyspf: only where DNS is checked
        addresses = self._addresses(info)
        checks = check_all(expected_records(info.name, list(info.keys), self.config, addresses), self.config,
                           addresses)
        failed = [c for c in checks if c.record.required and not c.passed]
        failing_record = (f"{failed[0].record.kind.upper()} record {failed[0].record.fqdn} ({failed[0].reason})"
                          if failed else None)
        new = S.after_check(info.state, not failed, failing_record, now)
        promoted = tuple(c.record.selector for c in checks
                         if c.record.kind == "dkim" and c.passed and
                         any(k.selector == c.record.selector and k.state == "pending" for k in info.keys))
        # The VERP return path needs both bounce records (issue 18): the MX that brings bounces
        # back, and SPF for the envelope sender's new domain.
        return_path_ok = all(c.passed for c in checks if c.record.kind in ("mx", "bounce_spf")) and new.status != S.PENDING
        with self.catalog.transaction():
            self.catalog.record_check(info.id, new, now)
            self.catalog.set_return_path(info.id, return_path_ok)
            for selector in promoted:
                self.catalog.promote_key(info.id, selector, now + self.config.dkim.rotation_overlap, now)
                log.info("dkim: selector %s is now signing (its record verified)", selector)
        if new.status != info.state.status:
            log.warning("domain %s: %s → %s%s", info.name, info.state.status, new.status,
                        f" ({failing_record})" if failing_record else "")
        return Verification(info.name, new.status, info.state.status, tuple(checks), promoted,
                            "verp" if return_path_ok else "sender")

    def due_for_recheck(self) -> list[str]:
        """The domains the server checks again now: verified and failing ones every
        `domains.recheck_interval`; pending ones (DNS takes minutes to hours to propagate) every
        5 minutes for their first 2 hours, then hourly until 3 days old — after that the
        operator runs `domain verify`."""
        now = self.ctx.now()
        due = []
        for name, status, created, checked in self.catalog.check_times():
            if status == S.PENDING:
                age = now - created
                if age > PENDING_RECHECK_FOR:
                    continue
                interval = 300.0 if age < 7200 else 3600.0
            else:
                interval = self.config.domains.recheck_interval
            if checked is None or checked <= now - interval:
                due.append(name)
        return due

    def rotate(self, name: str) -> list[DnsRecord]:
        info = self.get(name)
        if any(k.state == "pending" for k in info.keys):
            raise Refused(f"a rotation of {info.name} is already waiting for its record to verify")
        now = self.ctx.now()
        with self.catalog.transaction():
            for algorithm in self.config.dkim.algorithms:
                self._new_key(info.id, info.name, algorithm, "pending", now)
        return [r for r in self.records(name) if r.kind == "dkim" and r.note.startswith("new key")]

    # -- addresses -------------------------------------------------------------------------
    def add_address(self, address: str, display_name: str | None = None) -> AddressRecord:
        try:
            parsed = parse_address(address)
        except AddressError as exc:
            raise Invalid(f"\"{address}\" is not a valid address: {exc}", "address") from None
        info = self.catalog.domain(parsed.domain)
        if info is None:
            raise Refused(f"{parsed.domain} is not a registered sender domain (smtprelay domain add first)")
        if info.addresses >= self.config.domains.max_addresses_per_domain:
            raise Refused(f"{info.name} already has {info.addresses} addresses "
                          f"(domains.max_addresses_per_domain = {self.config.domains.max_addresses_per_domain})")
        now = self.ctx.now()
        if not self.catalog.insert_address(str(parsed), info.id, display_name, now):
            raise Refused(f"address {parsed} is already registered")
        return AddressRecord(str(parsed), display_name, info.name, info.account, now)

    def addresses(self, domain: str | None = None) -> list[AddressRecord]:
        return self.catalog.addresses(domain_name(domain) if domain else None)

    def delete_address(self, address: str) -> str:
        try:
            canonical = str(parse_address(address))
        except AddressError:
            canonical = address
        if not self.catalog.delete_address(canonical):
            raise NotFound(f"address {address} is not registered")
        return canonical
