"""`smtprelay domain ...`, `address ...` and `dkim rotate`: arguments and output (rules:
services.domains)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from smtprelay.cli.base import Registry, UsageError, emit, print_table, services
from smtprelay.config.pools import FALLBACKS
from smtprelay.domains.records import DnsRecord, dnsmasq_command, zone_lines
from smtprelay.services.domains import address_doc, domain_doc, domain_name

if TYPE_CHECKING:
    from smtprelay.domains.dnscheck import RecordCheck


def print_records(records: list[DnsRecord], fmt: str, domain: str = "") -> None:
    if fmt == "zone":
        print("\n".join(zone_lines(records)))
        return
    if fmt == "dnsmasq":
        print("# Serves these records on 127.0.0.1:5353 for a local test (not for the Internet). Then set")
        print("# [dns] nameservers = [\"127.0.0.1:5353\"] in relay.toml and restart the relay ([dns] is read")
        print("# at start; a reload does not apply it). Stop dnsmasq with Ctrl-C.")
        print("\n".join(dnsmasq_command(domain, records)))
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


def domain_add(args: argparse.Namespace) -> int:
    done = services(args).domains.add(args.account, args.domain)
    info = done.domain

    def human() -> None:
        for warning in done.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"domain {info.name} registered for account {info.account} (status: pending)")
        print("Publish these DNS records, then run: smtprelay domain verify " + info.name + "\n")
        print_records(done.records, "table")
    emit(args, done.doc(), human)
    return 0


def domain_records(args: argparse.Namespace) -> int:
    records = services(args).domains.records(args.domain)
    if args.json or args.format == "json":
        args.json = True
        emit(args, {"domain": domain_name(args.domain), "records": [r.as_dict() for r in records]}, lambda: None)
    else:
        print_records(records, args.format, domain_name(args.domain))
    return 0


def domain_verify(args: argparse.Namespace) -> int:
    result = services(args).domains.verify(args.domain)

    def human() -> None:
        print_checks(result.checks)
        print(f"\n{result.domain}: {result.status}" +
              (f" (was {result.previous})" if result.previous != result.status else ""))
        for selector in result.promoted:
            print(f"DKIM selector {selector} verified: signing now uses it")
        print("return path: " + ("VERP (bounces and complaints come back to the feedback listener)"
                                 if result.return_path == "verp" else
                                 "the submitted sender (the bounce MX and SPF records are not both verified)"))
    emit(args, result.doc(), human)
    return 0 if result.verified else 1


def domain_list(args: argparse.Namespace) -> int:
    docs = [domain_doc(i) for i in services(args).domains.all(args.account)]
    emit(args, {"domains": docs}, lambda: print_table(
        ["domain", "account", "status", "pool", "addresses", "selectors", "failing"],
        [[d["domain"], d["account"], d["status"], d["pool"] + ("" if d["pool_fallback"] == "shared" else " (no fallback)"),
          d["addresses"],
          " ".join(f"{k['selector']}({k['state']})" for k in d["dkim"]), d["failing_record"]] for d in docs]))
    return 0


def domain_set(args: argparse.Namespace) -> int:
    if args.pool is None and args.pool_fallback is None:
        raise UsageError("domain set needs --pool or --pool-fallback")
    doc = domain_doc(services(args).domains.set(args.domain, args.pool, args.pool_fallback))
    emit(args, doc, lambda: print(f"domain {doc['domain']}: egress pool {doc['pool']} (set on the "
                                  f"{doc['pool_set_on']}), fallback {doc['pool_fallback']}; its SPF record "
                                  f"must name the pool's addresses: smtprelay domain records {doc['domain']}"))
    return 0


def domain_delete(args: argparse.Namespace) -> int:
    info = services(args).domains.delete(args.domain)
    emit(args, {"deleted": info.name, "account": info.account},
         lambda: print(f"domain {info.name} deleted with its addresses and DKIM keys"))
    return 0


def dkim_rotate(args: argparse.Namespace) -> int:
    records = services(args).domains.rotate(args.domain)
    doc = {"domain": domain_name(args.domain), "records": [r.as_dict() for r in records]}

    def human() -> None:
        print("Publish the new selector's record; signing switches to it once "
              f"'smtprelay domain verify {args.domain}' sees it. The old selector stays listed for "
              "dkim.rotation_overlap.\n")
        print_records(records, "table")
    emit(args, doc, human)
    return 0


def address_add(args: argparse.Namespace) -> int:
    added = services(args).domains.add_address(args.address, args.name)
    emit(args, {"address": added.address, "account": added.account, "name": added.name},
         lambda: print(f"address {added.address} registered (account {added.account})"))
    return 0


def address_list(args: argparse.Namespace) -> int:
    docs = [address_doc(a) for a in services(args).domains.addresses(args.domain)]
    emit(args, {"addresses": docs}, lambda: print_table(
        ["address", "name", "domain", "account"], [[d["address"], d["name"], d["domain"], d["account"]]
                                                   for d in docs]))
    return 0


def address_delete(args: argparse.Namespace) -> int:
    services(args).domains.delete_address(args.address)
    emit(args, {"deleted": args.address}, lambda: print(f"address {args.address} deleted"))
    return 0


def register(reg: Registry) -> None:
    dom = reg.group("domain", "manage sender domains")
    p = reg.command(dom, "add", domain_add, "register a sender domain, create its DKIM key, print the DNS records")
    p.add_argument("account")
    p.add_argument("domain")
    p = reg.command(dom, "records", domain_records, "print the DNS records to publish")
    p.add_argument("domain")
    p.add_argument("--format", choices=["table", "zone", "json", "dnsmasq"], default="table",
                   help="dnsmasq: a command serving them on 127.0.0.1:5353 for a local test")
    p = reg.command(dom, "verify", domain_verify, "check the DNS records now; exit 0 only when verified")
    p.add_argument("domain")
    p = reg.command(dom, "list", domain_list, "list sender domains")
    p.add_argument("--account")
    p = reg.command(dom, "set", domain_set, "bind a sender domain to an egress pool (overrides its account's)")
    p.add_argument("domain")
    p.add_argument("--pool", help="an [[egress.pools]] name of relay.toml (\"default\": the account's pool)")
    p.add_argument("--pool-fallback", choices=list(FALLBACKS) + ["default"],
                   help="when none of the pool's addresses can send: the shared pool, or wait (none)")
    p = reg.command(dom, "delete", domain_delete, "delete a sender domain, its addresses and DKIM keys")
    p.add_argument("domain")

    adr = reg.group("address", "manage sender addresses")
    p = reg.command(adr, "add", address_add, "register a sender address of a registered domain")
    p.add_argument("address")
    p.add_argument("--name", help="display name")
    p = reg.command(adr, "list", address_list, "list sender addresses")
    p.add_argument("--domain")
    p = reg.command(adr, "delete", address_delete, "delete a sender address")
    p.add_argument("address")

    dk = reg.group("dkim", "DKIM keys")
    p = reg.command(dk, "rotate", dkim_rotate, "create a new selector; signing switches once its record verifies")
    p.add_argument("domain")
