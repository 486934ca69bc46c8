"""`smtprelay blocklist ...`: argument handling and output; decisions are in the service."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from smtprelay import when
from smtprelay.accounts import RefusedError
from smtprelay.blocklist.service import CSV_COLUMNS, BlocklistService, canonical, load_view
from smtprelay.policy.blocklist import TYPES


def parse_when(text: str, now: float | None = None) -> float:
    """An expiry: an absolute time (2026-12-31, 2026-12-31T12:00:00Z) or a duration from now ("30d")."""
    return when.parse_when(text, time.time() if now is None else now, future=True)


def register(sub: Any, command: Callable[..., Any], group: Callable[[str, str], Any],
             emit: Callable[..., None], open_store: Callable[[argparse.Namespace], Any],
             iso: Callable[[float | None], str | None], print_table: Callable[..., None]) -> None:
    def service(args: argparse.Namespace) -> BlocklistService:
        _, conn = open_store(args)
        return BlocklistService(conn, time.time())

    def moment(text: str | None, option: str, future: bool = False) -> float | None:
        """--expires counts a duration forward, --since/--until backward; a bad WHEN is bad usage."""
        if text is None:
            return None
        try:
            return when.parse_when(text, time.time(), future=future)
        except ValueError as exc:
            from smtprelay.cli import UsageError   # loaded by the time a command runs
            raise UsageError(f"{option}: {exc}") from None

    def add(args: argparse.Namespace) -> int:
        svc = service(args)
        entry = svc.add(args.address, "custom", args.account, moment(args.expires, "--expires", future=True), args.note)
        emit(args, svc.doc(entry, iso), lambda: print(
            f"{entry.address} blocked for {'account ' + args.account if args.account else 'all accounts'}"
            + (f" until {iso(entry.expires_at)}" if entry.expires_at else "")))
        return 0

    def remove(args: argparse.Namespace) -> int:
        n = service(args).remove(args.address, args.account, args.type)
        emit(args, {"address": canonical(args.address), "removed": n},
             lambda: print(f"{n} entr{'y' if n == 1 else 'ies'} removed for {canonical(args.address)}"))
        return 0

    def allow(args: argparse.Namespace) -> int:
        svc = service(args)
        if args.undo:
            svc.disallow(args.address, args.account)
        else:
            svc.allow(args.address, args.account)
        emit(args, {"address": canonical(args.address), "account": args.account, "allowed": not args.undo},
             lambda: print(f"{canonical(args.address)} {'no longer ' if args.undo else ''}allowed for account "
                           f"{args.account} (overrides invalid and full_inbox entries)"))
        return 0

    def list_(args: argparse.Namespace) -> int:
        svc = service(args)
        entries = svc.list(args.type, args.account, args.origin, args.address, moment(args.since, "--since"), moment(args.until, "--until"),
                           include_expired=args.expired)
        docs: list[dict[str, Any]] = [svc.doc(e, iso) for e in entries]
        emit(args, {"entries": docs}, lambda: print_table(
            ["address", "type", "scope", "origin", "reason", "created", "expires"],
            [[d["address"], d["type"], d["sender_domain"] or d["account"] or "global", d["origin_account"],
              (d["reason"] or "")[:50], d["created_at"], d["expires_at"]] for d in docs]))
        return 0

    def check(args: argparse.Namespace) -> int:
        svc = service(args)
        address = canonical(args.address)
        view = load_view(svc.conn, svc.now)
        account_id = svc.accounts.get_account(args.account).id if args.account else None
        domain = (args.sender_domain or "").lower()
        findings = view.explain(address, account_id, domain, svc.now) if account_id is not None or not args.account \
            else []
        verdict = view.check(address, account_id, domain, svc.now)
        allowed = account_id is not None and (account_id, address) in view.allowed
        doc = {"address": address, "account": args.account, "sender_domain": domain or None,
               "blocked": verdict is not None, "reply": verdict.reply if verdict else None, "allowed": allowed,
               "entries": [{**svc.doc(f.entry, iso), "applies": f.applies, "why": f.why} for f in findings]}

        def human() -> None:
            if not findings:
                print(f"{address}: not on the blocklist")
            for f in findings:
                print(f"{'APPLIES' if f.applies else 'ignored'}  {f.entry.type:10} {f.why}"
                      f"  (reason: {f.entry.reason}; since {iso(f.entry.created_at)}"
                      f"{'; until ' + str(iso(f.entry.expires_at)) if f.entry.expires_at else ''})")
            print(f"verdict: {verdict.reply if verdict else 'not blocked'}")
        emit(args, doc, human)
        return 0

    def import_(args: argparse.Namespace) -> int:
        svc = service(args)
        try:
            fh = open(args.file, newline="", encoding="utf-8")
        except OSError as exc:
            raise RefusedError(f"cannot read {args.file}: {exc.strerror}") from None
        show = sys.stderr.isatty() and not args.json

        def progress(line: int) -> None:
            if show:
                print(f"\rimporting: line {line}", end="", file=sys.stderr, flush=True)
        with fh:
            report = svc.import_csv(fh, parse_when, progress)
        if show:
            print(file=sys.stderr)
        doc = {"imported": report.imported, "bad_rows": [{"line": n, "error": e} for n, e in report.bad_rows]}

        def human() -> None:
            print(f"imported {report.imported} entr{'y' if report.imported == 1 else 'ies'}, "
                  f"{len(report.bad_rows)} bad row(s)")
            for n, e in report.bad_rows:
                print(f"  line {n}: {e}")
        emit(args, doc, human)
        return 0 if not report.bad_rows else 1

    def export(args: argparse.Namespace) -> int:
        svc = service(args)
        if args.json or getattr(args, "sink", None) is not None:   # one JSON document, as every command
            emit(args, {"entries": [dict(zip(CSV_COLUMNS, row)) for row in svc.export_rows(iso)]}, lambda: None)
        else:
            svc.export(sys.stdout, iso)
        return 0

    bl = group("blocklist", "the recipient blocklist")
    p = command(bl, "add", add, "block an address (type custom) for one account or all")
    p.add_argument("address")
    p.add_argument("--account", help="only for this account (default: all accounts)")
    p.add_argument("--expires", help="a date (2026-12-31) or a duration from now (30d)")
    p.add_argument("--note")
    p = command(bl, "remove", remove, "remove entries for an address")
    p.add_argument("address")
    p.add_argument("--account", help="act for this account (invalid entries: only their origin account)")
    p.add_argument("--type", choices=TYPES)
    p = command(bl, "list", list_, "list entries")
    p.add_argument("--type", choices=TYPES)
    p.add_argument("--account", help="custom entries of this account")
    p.add_argument("--origin", help="entries this account's mail triggered ('my trigger list')")
    p.add_argument("--address")
    p.add_argument("--since", help="created at or after (date or duration ago is not supported: use a date)")
    p.add_argument("--until", help="created before")
    p.add_argument("--expired", action="store_true", help="include expired entries")
    p = command(bl, "check", check, "explain whether an address is blocked for an account and sender domain")
    p.add_argument("address")
    p.add_argument("--account")
    p.add_argument("--sender-domain")
    p = command(bl, "allow", allow, "whitelist an address for an account (overrides invalid and full_inbox)")
    p.add_argument("address")
    p.add_argument("--account", required=True)
    p.add_argument("--undo", action="store_true", help="remove the allow entry")
    p = command(bl, "import", import_, "import a CSV (address,type,account,sender_domain,expires_at,note)")
    p.add_argument("file")
    command(bl, "export", export, "write every active entry as CSV to stdout")
