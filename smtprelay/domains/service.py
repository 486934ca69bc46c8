"""Sender domains, DKIM keys and sender addresses: the service layer shared by the CLI,
the server's periodic re-verification and (later) the admin API.

Owns: the `domains`, `dkim_keys` and `addresses` tables and the key files. Verification
records its result and moves the status (domains.status); rotation keeps signing with the
active key until the new selector's record verifies, then keeps the old one listed for
`dkim.rotation_overlap`.

Must never: run on the event loop (DNS and file I/O block); the server uses a thread.
"""
from __future__ import annotations

import logging
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from smtprelay.accounts import AccountService, RefusedError
from smtprelay.config import Config, DkimAlgorithm
from smtprelay.dkim import keys as dkim_keys
from smtprelay.dkim.keys import SigningKey
from smtprelay.domains import status as S
from smtprelay.domains.records import DnsRecord, PublicKey, expected_records
from smtprelay.policy.address import AddressError, parse_address

if TYPE_CHECKING:
    from smtprelay.domains.dnscheck import RecordCheck

log = logging.getLogger("smtprelay.domains")

_DOMAIN = re.compile(r"^(?=.{4,253}$)((?!-)[a-z0-9-]{1,63}(?<!-)\.)+(?!-)[a-z][a-z0-9-]{0,62}(?<!-)$")


@dataclass(frozen=True, slots=True)
class DomainInfo:
    id: int
    name: str
    account: str
    account_id: int
    state: S.DomainState
    verified_at: float | None
    last_checked_at: float | None
    created_at: float
    keys: tuple[PublicKey, ...]
    addresses: int


@dataclass(frozen=True, slots=True)
class Verification:
    domain: str
    status: str
    previous: str
    checks: tuple[RecordCheck, ...]
    promoted: tuple[str, ...]      # selectors that became active

    @property
    def verified(self) -> bool:
        return self.status == S.VERIFIED


class DomainService:
    def __init__(self, conn: sqlite3.Connection, config: Config, now: float):
        self.conn = conn
        self.config = config
        self.now = now

    # -- domains ---------------------------------------------------------------------------
    def add_domain(self, account_name: str, domain: str) -> DomainInfo:
        domain = domain.lower().rstrip(".")
        if not _DOMAIN.match(domain):
            raise RefusedError(f"\"{domain}\" is not a valid domain name")
        account = AccountService(self.conn, self.now).get_account(account_name)
        owner = self.conn.execute("SELECT a.name FROM domains d JOIN accounts a ON a.id = d.account_id"
                                  " WHERE d.name = ?", (domain,)).fetchone()
        if owner is not None:
            raise RefusedError(f"domain {domain} is already registered"
                               + (" to this account" if owner[0] == account.name else " to another account"))
        count = self.conn.execute("SELECT count(*) FROM domains WHERE account_id = ?", (account.id,)).fetchone()[0]
        if count >= self.config.domains.max_per_account:
            raise RefusedError(f"account {account.name} already has {count} domains "
                               f"(domains.max_per_account = {self.config.domains.max_per_account})")
        self.conn.execute("BEGIN IMMEDIATE")
        written: list[Path] = []
        try:
            cur = self.conn.execute("INSERT INTO domains (name, account_id, status, created_at) VALUES (?,?,?,?)",
                                    (domain, account.id, S.PENDING, self.now))
            domain_id = int(cur.lastrowid or 0)
            for algorithm in self.config.dkim.algorithms:
                written.append(self._new_key(domain_id, domain, algorithm, "active"))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            for path in written:
                path.unlink(missing_ok=True)
            raise
        log.info("domain %s added for account %s (pending)", domain, account.name)
        return self.get_domain(domain)

    def _new_key(self, domain_id: int, domain: str, algorithm: DkimAlgorithm, state: str) -> Path:
        taken = {r[0] for r in self.conn.execute("SELECT selector FROM dkim_keys WHERE domain_id = ?", (domain_id,))}
        selector = dkim_keys.selector_for(algorithm, self.now, taken)
        pair = dkim_keys.generate(algorithm, self.config.dkim.rsa_bits)
        path = dkim_keys.key_path(self.config.server.data_dir, domain, selector)
        dkim_keys.save_private_key(path, pair.private_pem)
        self.conn.execute("INSERT INTO dkim_keys (domain_id, selector, algorithm, public_key, state, created_at,"
                          " activated_at) VALUES (?,?,?,?,?,?,?)",
                          (domain_id, selector, algorithm.value, pair.public_b64, state, self.now,
                           self.now if state == "active" else None))
        return path

    def get_domain(self, name: str) -> DomainInfo:
        row = self.conn.execute(
            "SELECT d.*, a.name AS account, (SELECT count(*) FROM addresses x WHERE x.domain_id = d.id) AS n"
            " FROM domains d JOIN accounts a ON a.id = d.account_id WHERE d.name = ?",
            (name.lower().rstrip("."),)).fetchone()
        if row is None:
            raise RefusedError(f"no domain named {name}")
        return self._info(row)

    def _info(self, row: sqlite3.Row) -> DomainInfo:
        keys = tuple(PublicKey(selector=k["selector"], algorithm=k["algorithm"],
                               dns_value=dkim_keys.dns_value(DkimAlgorithm(k["algorithm"]), k["public_key"]),
                               state=k["state"])
                     for k in self.conn.execute("SELECT * FROM dkim_keys WHERE domain_id = ? AND state != 'retired'"
                                                " ORDER BY id", (row["id"],)))
        return DomainInfo(id=row["id"], name=row["name"], account=row["account"], account_id=row["account_id"],
                          state=S.DomainState(row["status"], row["failing_since"], row["failing_record"]),
                          verified_at=row["verified_at"], last_checked_at=row["last_checked_at"],
                          created_at=row["created_at"], keys=keys, addresses=row["n"])

    def list_domains(self, account_name: str | None = None) -> list[DomainInfo]:
        sql = ("SELECT d.*, a.name AS account, (SELECT count(*) FROM addresses x WHERE x.domain_id = d.id) AS n"
               " FROM domains d JOIN accounts a ON a.id = d.account_id")
        args: tuple[object, ...] = ()
        if account_name:
            sql += " WHERE a.name = ?"
            args = (account_name,)
        return [self._info(r) for r in self.conn.execute(sql + " ORDER BY d.name", args).fetchall()]

    def delete_domain(self, name: str) -> DomainInfo:
        info = self.get_domain(name)
        self.conn.execute("DELETE FROM domains WHERE id = ?", (info.id,))
        shutil.rmtree(self.config.server.data_dir / "dkim" / info.name, ignore_errors=True)
        log.info("domain %s deleted (account %s)", info.name, info.account)
        return info

    def records(self, name: str) -> list[DnsRecord]:
        self._retire_expired()
        info = self.get_domain(name)
        return expected_records(info.name, list(info.keys), self.config)

    # -- verification ----------------------------------------------------------------------
    def verify(self, name: str) -> Verification:
        self._retire_expired()
        info = self.get_domain(name)
        from smtprelay.domains.dnscheck import check_all   # dnspython and pyspf: only where DNS is checked
        checks = check_all(expected_records(info.name, list(info.keys), self.config), self.config)
        required = [c for c in checks if c.record.required]
        failed = [c for c in required if not c.passed]
        failing_record = (f"{failed[0].record.kind.upper()} record {failed[0].record.fqdn} ({failed[0].reason})"
                          if failed else None)
        new = S.after_check(info.state, not failed, failing_record, self.now)
        promoted = tuple(c.record.selector for c in checks
                         if c.record.kind == "dkim" and c.passed and
                         any(k.selector == c.record.selector and k.state == "pending" for k in info.keys))
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "UPDATE domains SET status = ?, failing_since = ?, failing_record = ?, last_checked_at = ?,"
                " verified_at = CASE WHEN ? = 'verified' AND status != 'verified' THEN ? ELSE verified_at END"
                " WHERE id = ?",
                (new.status, new.failing_since, new.failing_record, self.now, new.status, self.now, info.id))
            for selector in promoted:
                self._promote(info.id, selector)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        if new.status != info.state.status:
            log.warning("domain %s: %s → %s%s", info.name, info.state.status, new.status,
                        f" ({failing_record})" if failing_record else "")
        return Verification(info.name, new.status, info.state.status, tuple(checks), promoted)

    def _promote(self, domain_id: int, selector: str) -> None:
        algorithm = self.conn.execute("SELECT algorithm FROM dkim_keys WHERE domain_id = ? AND selector = ?",
                                      (domain_id, selector)).fetchone()[0]
        self.conn.execute("UPDATE dkim_keys SET state = 'retiring', retire_at = ? WHERE domain_id = ? AND"
                          " algorithm = ? AND state = 'active'",
                          (self.now + self.config.dkim.rotation_overlap, domain_id, algorithm))
        self.conn.execute("UPDATE dkim_keys SET state = 'active', activated_at = ? WHERE domain_id = ? AND"
                          " selector = ?", (self.now, domain_id, selector))
        log.info("dkim: selector %s is now signing (its record verified)", selector)

    def _retire_expired(self) -> None:
        self.conn.execute("UPDATE dkim_keys SET state = 'retired' WHERE state = 'retiring' AND retire_at <= ?",
                          (self.now,))

    def due_for_recheck(self) -> list[str]:
        cutoff = self.now - self.config.domains.recheck_interval
        return [r[0] for r in self.conn.execute(
            "SELECT name FROM domains WHERE status IN ('verified', 'failing')"
            " AND (last_checked_at IS NULL OR last_checked_at <= ?) ORDER BY last_checked_at", (cutoff,))]

    def rotate(self, name: str) -> list[DnsRecord]:
        info = self.get_domain(name)
        if any(k.state == "pending" for k in info.keys):
            raise RefusedError(f"a rotation of {info.name} is already waiting for its record to verify")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for algorithm in self.config.dkim.algorithms:
                self._new_key(info.id, info.name, algorithm, "pending")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return [r for r in self.records(name) if r.kind == "dkim" and r.note.startswith("new key")]

    # -- addresses -------------------------------------------------------------------------
    def add_address(self, address: str, display_name: str | None = None) -> tuple[str, str]:
        try:
            parsed = parse_address(address)
        except AddressError as exc:
            raise RefusedError(f"\"{address}\" is not a valid address: {exc}") from None
        info = self.get_domain(parsed.domain) if self._domain_exists(parsed.domain) else None
        if info is None:
            raise RefusedError(f"{parsed.domain} is not a registered sender domain (smtprelay domain add first)")
        if info.addresses >= self.config.domains.max_addresses_per_domain:
            raise RefusedError(f"{info.name} already has {info.addresses} addresses "
                               f"(domains.max_addresses_per_domain = {self.config.domains.max_addresses_per_domain})")
        try:
            self.conn.execute("INSERT INTO addresses (address, domain_id, display_name, created_at) VALUES (?,?,?,?)",
                              (str(parsed), info.id, display_name, self.now))
        except sqlite3.IntegrityError:
            raise RefusedError(f"address {parsed} is already registered") from None
        return str(parsed), info.account

    def _domain_exists(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone() is not None

    def list_addresses(self, domain: str | None = None) -> list[dict[str, object]]:
        sql = ("SELECT x.address, x.display_name, d.name, a.name, x.created_at FROM addresses x"
               " JOIN domains d ON d.id = x.domain_id JOIN accounts a ON a.id = d.account_id")
        args: tuple[object, ...] = ()
        if domain:
            sql += " WHERE d.name = ?"
            args = (domain.lower(),)
        return [{"address": r[0], "name": r[1], "domain": r[2], "account": r[3], "created_at": r[4]}
                for r in self.conn.execute(sql + " ORDER BY x.address", args)]

    def delete_address(self, address: str) -> None:
        try:
            canonical = str(parse_address(address))
        except AddressError:
            canonical = address
        if self.conn.execute("DELETE FROM addresses WHERE address = ?", (canonical,)).rowcount == 0:
            raise RefusedError(f"address {address} is not registered")


# -- what the running server needs -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SenderDomain:
    name: str
    account_id: int
    state: S.DomainState
    signing_keys: tuple[SigningKey, ...]
    suspended: str | None = None    # why sending is suspended for reputation (domain resume lifts it)


def load_senders(conn: sqlite3.Connection, data_dir: Path) -> tuple[dict[str, SenderDomain], set[str]]:
    """Every sender domain with its active signing keys (read from their files), and the
    registered addresses. Runs in a worker thread when the catalog changed."""
    keys: dict[int, list[SigningKey]] = {}
    for domain_id, name, selector, algorithm in conn.execute(
            "SELECT k.domain_id, d.name, k.selector, k.algorithm FROM dkim_keys k JOIN domains d"
            " ON d.id = k.domain_id WHERE k.state = 'active' ORDER BY k.id"):
        path = dkim_keys.key_path(data_dir, name, selector)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            log.error("dkim: cannot read the key of %s selector %s (%s); its mail is refused", name, selector, exc)
            continue
        keys.setdefault(domain_id, []).append(SigningKey(name, selector, DkimAlgorithm(algorithm), pem))
    domains = {r[1]: SenderDomain(r[1], r[2], S.DomainState(r[3], r[4], r[5]), tuple(keys.get(r[0], ())),
                                  r[7] or "suspended" if r[6] is not None else None)
               for r in conn.execute("SELECT id, name, account_id, status, failing_since, failing_record,"
                                     " suspended_at, suspended_reason FROM domains")}
    addresses = {r[0] for r in conn.execute("SELECT address FROM addresses")}
    return domains, addresses
