"""`smtprelay stats` and `smtprelay status`: arguments and output.

Owns: presentation only; the queries are events.stats and events.status.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import sys
import time
from typing import Any, Callable

from smtprelay import when
from smtprelay.accounts import RefusedError
from smtprelay.events.stats import COUNTS, daily
from smtprelay.events.status import message_status, recipient_status

Emit = Callable[[argparse.Namespace, Any, Callable[[], None]], None]
Open = Callable[[argparse.Namespace], Any]


def parse_when(text: str) -> float:
    """A starting or end point: a date (YYYY-MM-DD, UTC midnight), an ISO 8601 time (UTC if no
    zone), or a duration back from now ("1h": an hour ago)."""
    try:
        return when.parse_when(text, time.time(), future=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _range(args: argparse.Namespace, default_days: int) -> tuple[float, float]:
    now = time.time()
    since = args.since if args.since is not None else now - default_days * 86400
    until = now + 1
    if args.until is not None:
        # A bare date means the whole day.
        until = args.until + (86400 if len(args.until_text) == 10 else 0)
    if since >= until:
        raise RefusedError("--from must be before --to")
    return since, until


class _When(argparse.Action):
    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        try:
            setattr(namespace, self.dest, parse_when(values))
        except argparse.ArgumentTypeError as exc:   # argparse only catches these from type=
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest + "_text", values)


def register(sub: Any, command: Callable[..., Any], emit: Emit, open_store: Open,
             iso: Callable[[float | None], str | None], print_table: Callable[..., None]) -> None:
    def stats(args: argparse.Namespace) -> int:
        _, conn = open_store(args)
        since, until = _range(args, 7)
        rows = daily(conn, since, until, args.sender_domain, args.recipient_domain)
        fmt = "json" if args.json else args.format
        if fmt == "json":
            args.json = True
            emit(args, {"from": iso(since), "to": iso(until), "days": rows}, lambda: None)
        elif fmt == "csv":
            out = csv.writer(sys.stdout, lineterminator="\n")
            out.writerow(["day", "day_epoch_ms", "sender_domain", "recipient_domain", "tag", *COUNTS,
                          "delivery_rate", "open_rate"])
            for r in rows:
                start = datetime.datetime.fromisoformat(r["day"]).replace(tzinfo=datetime.timezone.utc)
                out.writerow([r["day"] + "T00:00:00Z", int(start.timestamp() * 1000), r["sender_domain"] or "",
                              r["recipient_domain"] or "", r["tag"] or "", *[r[c] for c in COUNTS],
                              "" if r["delivery_rate"] is None else r["delivery_rate"],
                              "" if r["open_rate"] is None else r["open_rate"]])
        else:
            if not rows:
                print("no events in this period")
            print_table(["day", "sender_domain", "recipient_domain", "tag", "requests", "accepted", "rejected",
                         "delivered", "deferred", "bounced(inv/spam/other)", "expired", "opened(u)", "clicked(u)",
                         "unsub", "complaints", "delivery%"],
                        [[r["day"], r["sender_domain"], r["recipient_domain"], r["tag"], r["requests"], r["accepted"],
                          r["rejected"], r["delivered"], r["deferred"],
                          f"{r['bounced']} ({r['bounced_invalid']}/{r['bounced_spam']}/{r['bounced_other']})",
                          r["expired"], f"{r['opened']} ({r['opened_unique']})",
                          f"{r['clicked']} ({r['clicked_unique']})", r["unsubscribed"], r["complained"],
                          "-" if r["delivery_rate"] is None else f"{r['delivery_rate'] * 100:.1f}"] for r in rows])
        return 0

    def status(args: argparse.Namespace) -> int:
        _, conn = open_store(args)
        if (args.queue_id is None) == (args.recipient is None):
            raise RefusedError("give a queue id, or --recipient ADDRESS (not both)")
        if args.queue_id is not None:
            doc = message_status(conn, args.queue_id)
            if doc is None:
                raise RefusedError(f"no message with queue id or Message-ID {args.queue_id}")
            _stamp(doc, iso)

            def human_message() -> None:
                print(f"{doc['id']}  from <{doc['from']}>  accepted {doc['created_at']}  account {doc['account']}")
                for r in doc["recipients"]:
                    _print_recipient(r)
            emit(args, doc, human_message)
            return 0
        since, until = _range(args, 30)
        found = recipient_status(conn, args.recipient, since, until)
        for m in found:
            _stamp(m, iso)

        def human_recipient() -> None:
            if not found:
                print(f"no message to {args.recipient} in this period")
            for m in found:
                print(f"{m['queue_id']}  from <{m['from']}>  accepted {m['created_at']}")
                _print_recipient({**m, "address": m["recipient"]})
        emit(args, {"recipient": args.recipient, "from": iso(since), "to": iso(until), "messages": found},
             human_recipient)
        return 0

    p = command(sub, "stats", stats, "daily counts by sender domain, recipient domain and tag, from events")
    p.add_argument("--from", dest="since", action=_When, default=None, help="first day (default: 7 days ago)")
    p.add_argument("--to", dest="until", action=_When, default=None, help="last day, inclusive (default: now)")
    p.add_argument("--sender-domain")
    p.add_argument("--recipient-domain")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p = command(sub, "status", status, "delivery status and history of a message, or of the mail to one address")
    p.add_argument("queue_id", nargs="?", help="the id from \"250 2.0.0 Ok: queued as <ID>\", or the Message-ID")
    p.add_argument("--recipient", help="every message to this address in the period")
    p.add_argument("--from", dest="since", action=_When, default=None, help="default: 30 days ago")
    p.add_argument("--to", dest="until", action=_When, default=None)


def _stamp(doc: dict[str, Any], iso: Callable[[float | None], str | None]) -> None:
    """Timestamps as RFC 3339 UTC, recursively."""
    for key, value in list(doc.items()):
        if key in ("at", "created_at", "next_attempt_at") and isinstance(value, (int, float)):
            doc[key] = iso(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _stamp(item, iso)


def _print_recipient(r: dict[str, Any]) -> None:
    print(f"  {r['address']}: {r['state']} after {r['attempts']} attempt(s)"
          + (f", bounce class {r['bounce_class']}" if r.get("bounce_class") else ""))
    for e in r.get("events", []):
        detail = e.get("smtp_response") or e.get("reason") or e.get("rule") or ""
        print(f"    {e['at']}  {e['type']:<10} {detail}" + (f"  via {e['mx']}" if e.get("mx") else ""))
