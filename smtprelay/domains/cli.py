"""`smtprelay domain ...`, `address ...` and `dkim rotate`: argument handling and output.

Owns: presentation only; every decision is in domains.service.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from smtprelay.accounts import RefusedError
from smtprelay.domains.records import DnsRecord, zone_lines
from smtprelay.domains.service import DomainInfo, DomainService

if TYPE_CHECKING:
    from smtprelay.domains.dnscheck import RecordCheck

Emit = Callable[[argparse.Namespace, Any, Callable[[], None]], None]
Open = Callable[[argparse.Namespace], Any]


def _domain_doc(info: DomainInfo, iso: Callable[[float | None], str | None]) -> dict[str, Any]:
    return {"domain": info.name, "account": info.account, "status": info.state.status,
            "failing_since": iso(info.state.failing_since), "failing_record": info.state.failing_record,
            "verified_at": iso(info.verified_at), "last_checked_at": iso(info.last_checked_at),
            "addresses": info.addresses,
            "dkim": [{"selector": k.selector, "algorithm": k.algorithm, "state": k.state} for k in info.keys]}


def print_records(records: list[DnsRecord], fmt: str) -> None:
    if fmt == "zone":
        print("\n".join(zone_lines(records)))
        return
    for r in records:
        need = "required" if r.required else "recommended"
        print(f"{r.kind.upper()} ({need}) {r.type} record")
        print(f"  host:  {r.host}      (full name: {r.fqdn})")
        print(f"  value: {r.value}")
        if r.note:
            print(f"  note:  {r.note}")
        print()


def print_checks(checks: tuple[RecordCheck, ...]) -> None:
    for c in checks:
        need = "required" if c.record.required else "recommended"
        print(f"[{c.status.upper():7}] {c.record.kind.upper()} {c.record.type} {c.record.fqdn} ({need})")
        print(f"  expected: {c.record.value}")
        print(f"  current:  {c.current or '(nothing)'}")
        print(f"  reason:   {c.reason}")


def register(sub: Any, command: Callable[..., Any], group: Callable[[str, str], Any], emit: Emit, open_store: Open,
             iso: Callable[[float | None], str | None]) -> Any:
    def service(args: argparse.Namespace) -> DomainService:
        config, conn = open_store(args)
        return DomainService(conn, config, time.time())

    def domain_add(args: argparse.Namespace) -> int:
        svc = service(args)
        info = svc.add_domain(args.account, args.domain)
        records = svc.records(info.name)
        warnings = svc.config.warnings()
        doc = {**_domain_doc(info, iso), "records": [r.as_dict() for r in records], "warnings": warnings}

        def human() -> None:
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
            print(f"domain {info.name} registered for account {info.account} (status: pending)")
            print("Publish these DNS records, then run: smtprelay domain verify " + info.name + "\n")
            print_records(records, "table")
        emit(args, doc, human)
        return 0

    def domain_records(args: argparse.Namespace) -> int:
        records = service(args).records(args.domain)
        fmt = "json" if args.json else args.format
        if fmt == "json":
            args.json = True
            emit(args, {"domain": args.domain.lower(), "records": [r.as_dict() for r in records]}, lambda: None)
        else:
            print_records(records, fmt)
        return 0

    def domain_verify(args: argparse.Namespace) -> int:
        result = service(args).verify(args.domain)
        doc = {"domain": result.domain, "status": result.status, "previous_status": result.previous,
               "verified": result.verified, "promoted_selectors": list(result.promoted),
               "records": [c.as_dict() for c in result.checks]}

        def human() -> None:
            print_checks(result.checks)
            print(f"\n{result.domain}: {result.status}" +
                  (f" (was {result.previous})" if result.previous != result.status else ""))
            for selector in result.promoted:
                print(f"DKIM selector {selector} verified: signing now uses it")
        emit(args, doc, human)
        return 0 if result.verified else 1

    def domain_list(args: argparse.Namespace) -> int:
        infos = service(args).list_domains(args.account)
        docs = [_domain_doc(i, iso) for i in infos]

        def human() -> None:
            from smtprelay.cli import print_table
            print_table(["domain", "account", "status", "addresses", "selectors", "failing"],
                        [[d["domain"], d["account"], d["status"], d["addresses"],
                          " ".join(f"{k['selector']}({k['state']})" for k in d["dkim"]), d["failing_record"]]
                         for d in docs])
        emit(args, {"domains": docs}, human)
        return 0

    def domain_delete(args: argparse.Namespace) -> int:
        info = service(args).delete_domain(args.domain)
        emit(args, {"deleted": info.name, "account": info.account},
             lambda: print(f"domain {info.name} deleted with its addresses and DKIM keys"))
        return 0

    def dkim_rotate(args: argparse.Namespace) -> int:
        records = service(args).rotate(args.domain)
        doc = {"domain": args.domain.lower(), "records": [r.as_dict() for r in records]}

        def human() -> None:
            print("Publish the new selector's record; signing switches to it once "
                  f"'smtprelay domain verify {args.domain}' sees it. The old selector stays listed for "
                  "dkim.rotation_overlap.\n")
            print_records(records, "table")
        emit(args, doc, human)
        return 0

    def address_add(args: argparse.Namespace) -> int:
        address, account = service(args).add_address(args.address, args.name)
        emit(args, {"address": address, "account": account, "name": args.name},
             lambda: print(f"address {address} registered (account {account})"))
        return 0

    def address_list(args: argparse.Namespace) -> int:
        rows = service(args).list_addresses(args.domain)
        for r in rows:
            r["created_at"] = iso(r["created_at"])  # type: ignore[arg-type]

        def human() -> None:
            from smtprelay.cli import print_table
            print_table(["address", "name", "domain", "account"],
                        [[r["address"], r["name"], r["domain"], r["account"]] for r in rows])
        emit(args, {"addresses": rows}, human)
        return 0

    def address_delete(args: argparse.Namespace) -> int:
        service(args).delete_address(args.address)
        emit(args, {"deleted": args.address}, lambda: print(f"address {args.address} deleted"))
        return 0

    dom = group("domain", "manage sender domains")
    p = command(dom, "add", domain_add, "register a sender domain, create its DKIM key, print the DNS records")
    p.add_argument("account")
    p.add_argument("domain")
    p = command(dom, "records", domain_records, "print the DNS records to publish")
    p.add_argument("domain")
    p.add_argument("--format", choices=["table", "zone", "json"], default="table")
    p = command(dom, "verify", domain_verify, "check the DNS records now; exit 0 only when verified")
    p.add_argument("domain")
    p = command(dom, "list", domain_list, "list sender domains")
    p.add_argument("--account")
    p = command(dom, "delete", domain_delete, "delete a sender domain, its addresses and DKIM keys")
    p.add_argument("domain")

    adr = group("address", "manage sender addresses")
    p = command(adr, "add", address_add, "register a sender address of a registered domain")
    p.add_argument("address")
    p.add_argument("--name", help="display name")
    p = command(adr, "list", address_list, "list sender addresses")
    p.add_argument("--domain")
    p = command(adr, "delete", address_delete, "delete a sender address")
    p.add_argument("address")

    dk = group("dkim", "DKIM keys")
    p = command(dk, "rotate", dkim_rotate, "create a new selector; signing switches once its record verifies")
    p.add_argument("domain")
    return dom


__all__ = ["register", "RefusedError"]
