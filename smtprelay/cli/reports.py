"""`smtprelay stats`, `status` and `explain`: arguments and output (rules: services.reports)."""
from __future__ import annotations

import argparse
import csv
import datetime
import sys
from typing import Any

from smtprelay.cli.base import (Registry, UsageError, When, emit, positive_int, print_table, services, whole_day,
                                words)
from smtprelay.events.stats import COUNTS, IP_COUNTS


def ip_stats(args: argparse.Namespace) -> int:
    if args.recipient_domain or args.template or args.task:
        raise UsageError("stats --by ip takes --from, --to and --sender-domain only")
    result = services(args).reports.ip_stats(args.since, args.until, args.sender_domain, whole_day(args))
    rows = result.days
    if args.json or args.format == "json":
        args.json = True
        emit(args, result.doc(), lambda: None)
    elif args.format == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["day", "ip", "pool", *IP_COUNTS, "delivery_rate"])
        for r in rows:
            out.writerow([r["day"], r["ip"] or "", r["pool"] or "", *[r[c] for c in IP_COUNTS],
                          "" if r["delivery_rate"] is None else r["delivery_rate"]])
    else:
        if not rows:
            print("no delivery attempts in this period")
        print_table(["day", "ip", "pool", "delivered", "deferred", "bounced(inv/spam/other)", "expired", "delivery%"],
                    [[r["day"], r["ip"] or "(kernel's choice)", r["pool"], r["delivered"], r["deferred"],
                      f"{r['bounced']} ({r['bounced_invalid']}/{r['bounced_spam']}/{r['bounced_other']})",
                      r["expired"], "-" if r["delivery_rate"] is None else f"{r['delivery_rate'] * 100:.1f}"]
                     for r in rows])
    return 0


def stats(args: argparse.Namespace) -> int:
    if args.by == "ip":
        return ip_stats(args)
    result = services(args).reports.stats(args.since, args.until, args.sender_domain, args.recipient_domain,
                                          whole_day(args), args.template, args.account, args.task, args.run)
    rows = result.days
    if args.json or args.format == "json":
        args.json = True
        emit(args, result.doc(), lambda: None)
    elif args.format == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["day", "day_epoch_ms", "sender_domain", "recipient_domain", "tag", "template", *COUNTS,
                      "delivery_rate", "open_rate"])
        for r in rows:
            start = datetime.datetime.fromisoformat(r["day"]).replace(tzinfo=datetime.timezone.utc)
            out.writerow([r["day"] + "T00:00:00Z", int(start.timestamp() * 1000), r["sender_domain"] or "",
                          r["recipient_domain"] or "", r["tag"] or "", r["template"] or "", *[r[c] for c in COUNTS],
                          "" if r["delivery_rate"] is None else r["delivery_rate"],
                          "" if r["open_rate"] is None else r["open_rate"]])
    else:
        if not rows:
            print("no events in this period")
        print_table(["day", "sender_domain", "recipient_domain", "tag", "template", "requests", "accepted", "rejected",
                     "delivered", "deferred", "bounced(inv/spam/other)", "expired", "opened(u)", "clicked(u)",
                     "unsub", "complaints", "delivery%"],
                    [[r["day"], r["sender_domain"], r["recipient_domain"], r["tag"], r["template"], r["requests"],
                      r["accepted"],
                      r["rejected"], r["delivered"], r["deferred"],
                      f"{r['bounced']} ({r['bounced_invalid']}/{r['bounced_spam']}/{r['bounced_other']})",
                      r["expired"], f"{r['opened']} ({r['opened_unique']})",
                      f"{r['clicked']} ({r['clicked_unique']})", r["unsubscribed"], r["complained"],
                      "-" if r["delivery_rate"] is None else f"{r['delivery_rate'] * 100:.1f}"] for r in rows])
    return 0


def _print_recipient(r: dict[str, Any]) -> None:
    print(f"  {r['address']}: {r['state']} after {r['attempts']} attempt(s)"
          + (f", bounce class {r['bounce_class']}" if r.get("bounce_class") else ""))
    for e in r.get("events", []):
        detail = e.get("smtp_response") or e.get("reason") or e.get("rule") or ""
        print(f"    {e['at']}  {e['type']:<10} {detail}" + (f"  via {e['mx']}" if e.get("mx") else "")
              + (f"  tls {e.get('tls') or 'none'}" if e.get("mx") else ""))


def status(args: argparse.Namespace) -> int:
    if (args.queue_id is None) == (args.recipient is None):
        raise UsageError("status: give a queue id, or --recipient ADDRESS (not both)")
    reports = services(args).reports
    if args.queue_id is not None:
        doc = reports.message(args.queue_id).doc()

        def human_message() -> None:
            print(f"{doc['id']}  from <{doc['from']}>  accepted {doc['created_at']}  account {doc['account']}"
                  + (f"  on node {doc['node']}" if doc.get("node") else "")
                  + (f"  tag {doc['tag']}" if doc.get("tag") else "")
                  + (f"  template {t['name'] or t['id']} v{t['version']}" if (t := doc.get("template")) else ""))
            for r in doc["recipients"]:
                _print_recipient(r)
        emit(args, doc, human_message)
        return 0
    found = reports.recipient(args.recipient, args.since, args.until, whole_day(args))

    def human_recipient() -> None:
        if not found.messages:
            print(f"no message to {args.recipient} in this period")
        for m in found.messages:
            print(f"{m['queue_id']}  from <{m['from']}>  accepted {m['created_at']}"
                  + (f"  on node {m['node']}" if m.get("node") else ""))
            _print_recipient({**m, "address": m["recipient"]})
    emit(args, found.doc(), human_recipient)
    return 0


def explain(args: argparse.Namespace) -> int:
    doc = services(args).reports.explain(args.account, args.mail_from, args.rcpt).doc()

    def human() -> None:
        for p in doc["policies"]:
            print(f"{p['policy']}:")
            for key, value in p.items():
                if key != "policy":
                    print(f"  {key}: {words(value)}")
        print(f"verdict: {doc['verdict']}")
    emit(args, doc, human)
    return 0


def register(reg: Registry) -> None:
    p = reg.command(reg.top, "stats", stats, "daily counts by sender domain, recipient domain, tag and template, "
                                                  "from events")
    p.add_argument("--from", dest="since", action=When, default=None, help="first day (default: 7 days ago)")
    p.add_argument("--to", dest="until", action=When, default=None, help="last day, inclusive (default: now)")
    p.add_argument("--sender-domain")
    p.add_argument("--recipient-domain")
    p.add_argument("--template", help="one template's rows (its id, or its name)")
    p.add_argument("--account", help="the template's account, when several use its name")
    p.add_argument("--task", type=positive_int, metavar="ID", help="one sending task's rows")
    p.add_argument("--run", type=positive_int, metavar="N", help="with --task: one run's rows")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--by", choices=["group", "ip"], default="group",
                   help="ip: delivery outcomes per egress source address instead")
    p = reg.command(reg.top, "status", status,
                    "delivery status and history of a message, or of the mail to one address")
    p.add_argument("queue_id", nargs="?", help="the id from \"250 2.0.0 Ok: queued as <ID>\", or the Message-ID")
    p.add_argument("--recipient", help="every message to this address in the period")
    p.add_argument("--from", dest="since", action=When, default=None, help="default: 30 days ago")
    p.add_argument("--to", dest="until", action=When, default=None)
    p = reg.command(reg.top, "explain", explain, "every policy that applies now to a sender and recipient, and the "
                                                 "verdict the relay would give (sends nothing)")
    p.add_argument("--account", required=True)
    p.add_argument("--from", dest="mail_from", required=True)
    p.add_argument("--to", dest="rcpt", required=True)
