"""`smtprelay feedback ...`: what the feedback listener received (rules: services.feedback)."""
from __future__ import annotations

import argparse
import json
import sys

from smtprelay.cli.base import Registry, emit, moment, print_table, services
from smtprelay.services.feedback import RESULTS, TYPES


def list_(args: argparse.Namespace) -> int:
    entries = services(args).feedback.list(args.type, moment(args.since, "--since"), moment(args.until, "--until"),
                                           args.result, args.limit)
    docs = [e.doc() for e in entries]
    emit(args, {"feedback": docs}, lambda: print_table(
        ["id", "received", "type", "result", "from", "to", "queue id", "recipient"],
        [[d["id"], d["received_at"], d["type"], d["result"], d["mail_from"] or "<>", ",".join(d["rcpt_to"])[:60],
          d["queue_id"], d["recipient"]] for d in docs]))
    return 0


def show(args: argparse.Namespace) -> int:
    entry = services(args).feedback.show(args.id)
    doc = entry.doc()

    def human() -> None:
        for key in ("id", "received_at", "listener", "peer", "mail_from", "type", "result", "queue_id", "recipient",
                    "sender_domain", "account", "size"):
            print(f"{key + ':':<15}{doc[key] if doc[key] is not None else '-'}")
        print(f"{'rcpt_to:':<15}{', '.join(doc['rcpt_to'])}")
        for action in doc.get("actions", []):
            print("action:        " + ", ".join(f"{k}={v}" for k, v in action.items()))
        if doc.get("report") is not None:
            print("report:")
            print(json.dumps(doc["report"], indent=2))
        if not args.no_raw:
            print("\n--- raw message ---")
            sys.stdout.write(doc["raw"])
    if args.no_raw:
        doc.pop("raw", None)
    emit(args, doc, human)
    return 0


def register(reg: Registry) -> None:
    fb = reg.group("feedback", "bounces, complaints and unsubscribe mail the feedback listener received")
    p = reg.command(fb, "list", list_, "list received feedback mail, newest first")
    p.add_argument("--type", choices=TYPES, help="dsn (bounces), arf (complaints), unsubscribe, unparsed")
    p.add_argument("--unparsed", dest="type", action="store_const", const="unparsed",
                   help="only the mail that could not be read (same as --type unparsed)")
    p.add_argument("--result", choices=RESULTS, help="what it changed")
    p.add_argument("--since", help="received at or after (a date, a time, or a duration ago: 7d)")
    p.add_argument("--until", help="received before")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p = reg.command(fb, "show", show, "one received feedback mail: what it was parsed as, what it did, the raw mail")
    p.add_argument("id", type=int)
    p.add_argument("--no-raw", action="store_true", help="leave out the raw message")
