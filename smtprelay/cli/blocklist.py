"""`smtprelay blocklist ...`: arguments and output (rules: services.blocklist)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from smtprelay import when
from smtprelay.cli.base import Registry, UsageError, emit, moment, print_table, services
from smtprelay.errors import Refused
from smtprelay.policy.address import canonical
from smtprelay.policy.blocklist import TYPES
from smtprelay.services.blocklist import CSV_COLUMNS
from smtprelay.when import iso


def parse_expiry(text: str) -> float:
    """A CSV row's expires_at: an absolute time (2026-12-31, 2026-12-31T12:00:00Z) or a duration from now ("30d")."""
    return when.parse_when(text, time.time(), future=True)


def add(args: argparse.Namespace) -> int:
    svc = services(args).blocklist
    entry = svc.add(args.address, "custom", args.account, moment(args.expires, "--expires", future=True), args.note)
    emit(args, svc.doc(entry), lambda: print(
        f"{entry.address} blocked for {'account ' + args.account if args.account else 'all accounts'}"
        + (f" until {iso(entry.expires_at)}" if entry.expires_at else "")))
    return 0


def remove(args: argparse.Namespace) -> int:
    if (args.address is None) == (args.origin is None):
        raise UsageError("blocklist remove needs an ADDRESS, or --origin ACCOUNT for the entries its mail "
                         "triggered (not both)")
    if args.address is None:
        n = services(args).blocklist.remove_triggered(args.origin, args.type, moment(args.since, "--since"),
                                                      moment(args.until, "--until"))
        emit(args, {"origin": args.origin, "type": args.type, "removed": n},
             lambda: print(f"{n} entr{'y' if n == 1 else 'ies'} removed that account {args.origin}'s mail triggered"))
        return 0
    if args.since is not None or args.until is not None:
        raise UsageError("--since and --until select entries with --origin, not with an ADDRESS")
    n = services(args).blocklist.remove(args.address, args.account, args.type)
    address = canonical(args.address)
    emit(args, {"address": address, "removed": n},
         lambda: print(f"{n} entr{'y' if n == 1 else 'ies'} removed for {address}"))
    return 0


def set_(args: argparse.Namespace) -> int:
    svc = services(args).blocklist
    never = args.expires == "never"
    entries = svc.set(args.address, None if never else moment(args.expires, "--expires", future=True),
                      clear_expiry=never, note=args.note, account=args.account, type_=args.type)
    docs = svc.docs(entries)
    def human() -> None:
        for d in docs:
            print(f"{d['address']} ({d['type']}{', account ' + d['account'] if d['account'] else ''}): "
                  f"{'until ' + d['expires_at'] if d['expires_at'] else 'no expiry'}"
                  + (f"; note: {d['note']}" if d["note"] else ""))
    emit(args, {"entries": docs}, human)
    return 0


def allow(args: argparse.Namespace) -> int:
    svc = services(args).blocklist
    address = svc.disallow(args.address, args.account) if args.undo else svc.allow(args.address, args.account)
    emit(args, {"address": address, "account": args.account, "allowed": not args.undo},
         lambda: print(f"{address} {'no longer ' if args.undo else ''}allowed for account "
                       f"{args.account} (overrides invalid and full_inbox entries)"))
    return 0


def list_(args: argparse.Namespace) -> int:
    svc = services(args).blocklist
    entries = svc.entries(args.type, args.account, args.origin, args.address, moment(args.since, "--since"),
                       moment(args.until, "--until"), include_expired=args.expired)
    docs: list[dict[str, Any]] = svc.docs(entries)
    emit(args, {"entries": docs}, lambda: print_table(
        ["address", "type", "scope", "origin", "reason", "created", "expires", "note"],
        [[d["address"], d["type"], d["sender_domain"] or d["account"] or "global", d["origin_account"],
          (d["reason"] or "")[:50], d["created_at"], d["expires_at"], d["note"]] for d in docs]))
    return 0


def check(args: argparse.Namespace) -> int:
    result = services(args).blocklist.check(args.address, args.account, args.sender_domain)

    def human() -> None:
        if not result.entries:
            print(f"{result.address}: not on the blocklist")
        for e in result.entries:
            print(f"{'APPLIES' if e['applies'] else 'ignored'}  {e['type']:10} {e['why']}"
                  f"  (reason: {e['reason']}; since {e['created_at']}"
                  f"{'; until ' + str(e['expires_at']) if e['expires_at'] else ''}"
                  f"{'; note: ' + str(e['note']) if e['note'] else ''})")
        print(f"verdict: {result.reply or 'not blocked'}")
    emit(args, result.doc(), human)
    return 0


def import_(args: argparse.Namespace) -> int:
    svc = services(args).blocklist
    try:
        fh = open(args.file, newline="", encoding="utf-8")
    except OSError as exc:
        raise Refused(f"cannot read {args.file}: {exc.strerror}") from None
    show = sys.stderr.isatty() and not args.json

    def progress(line: int) -> None:
        if show:
            print(f"\rimporting: line {line}", end="", file=sys.stderr, flush=True)
    with fh:
        report = svc.import_csv(fh, parse_expiry, progress)
    if show:
        print(file=sys.stderr)

    def human() -> None:
        print(f"imported {report.imported} entr{'y' if report.imported == 1 else 'ies'}, "
              f"{len(report.bad_rows)} bad row(s)")
        for n, e in report.bad_rows:
            print(f"  line {n}: {e}")
    emit(args, report.doc(), human)
    return 0 if not report.bad_rows else 1


def export(args: argparse.Namespace) -> int:
    svc = services(args).blocklist
    if args.json:   # one JSON document, as every command
        emit(args, {"entries": [dict(zip(CSV_COLUMNS, row)) for row in svc.export_rows()]}, lambda: None)
    else:
        svc.export(sys.stdout)
    return 0


def register(reg: Registry) -> None:
    bl = reg.group("blocklist", "the recipient blocklist")
    p = reg.command(bl, "add", add, "block an address (type custom) for one account or all")
    p.add_argument("address")
    p.add_argument("--account", help="only for this account (default: all accounts)")
    p.add_argument("--expires", help="a date (2026-12-31) or a duration from now (30d)")
    p.add_argument("--note")
    p = reg.command(bl, "remove", remove, "remove entries for an address, or in bulk those an account's mail triggered")
    p.add_argument("address", nargs="?")
    p.add_argument("--account", help="act for this account (invalid entries: only their origin account)")
    p.add_argument("--type", choices=TYPES)
    p.add_argument("--origin", help="instead of an ADDRESS: every entry this account's mail triggered")
    p.add_argument("--since", help="with --origin: created at or after (a date, a time, or a duration ago)")
    p.add_argument("--until", help="with --origin: created before")
    p = reg.command(bl, "set", set_, "change an address's entries: a new expiry (or 'never') or note")
    p.add_argument("address")
    p.add_argument("--expires", help="a date, a duration from now (30d), or never")
    p.add_argument("--note")
    p.add_argument("--account", help="only this account's entries (custom ones of that scope)")
    p.add_argument("--type", choices=TYPES)
    p = reg.command(bl, "list", list_, "list entries")
    p.add_argument("--type", choices=TYPES)
    p.add_argument("--account", help="custom entries of this account")
    p.add_argument("--origin", help="entries this account's mail triggered ('my trigger list')")
    p.add_argument("--address")
    p.add_argument("--since", help="created at or after (a date, a time, or a duration ago: 7d)")
    p.add_argument("--until", help="created before (a date, a time, or a duration ago)")
    p.add_argument("--expired", action="store_true", help="include expired entries")
    p = reg.command(bl, "check", check, "explain whether an address is blocked for an account and sender domain")
    p.add_argument("address")
    p.add_argument("--account")
    p.add_argument("--sender-domain")
    p = reg.command(bl, "allow", allow, "whitelist an address for an account (overrides invalid and full_inbox)")
    p.add_argument("address")
    p.add_argument("--account", required=True)
    p.add_argument("--undo", action="store_true", help="remove the allow entry")
    p = reg.command(bl, "import", import_, "import a CSV (address,type,account,sender_domain,expires_at,note)")
    p.add_argument("file")
    reg.command(bl, "export", export, "write every active entry as CSV to stdout")
