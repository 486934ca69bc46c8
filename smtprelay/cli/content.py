"""`smtprelay check-message FILE.eml [--account A]`: the quality check (services.content)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smtprelay.cli.base import Registry, UsageError, emit, print_table, services


def check_message(args: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    report = services(args).content.check(raw, args.account)
    doc = report.doc()

    def human() -> None:
        m = doc["message"]
        print(f"score:        {doc['score']}/100 ({doc['scoring']})")
        print(f"from domain:  {m['from_domain'] or '-'} (verified: {'yes' if doc['from_domain_verified'] else 'no'}, "
              f"DKIM aligned: {'yes' if doc['dkim_aligned'] else 'no'})")
        print(f"size:         {m['size']} bytes; subject: {m['subject_chars'] if m['subject'] is not None else '-'} "
              f"characters; text part: {'yes' if m['text_part'] else 'no'}; images: {m['images']}")
        virus = doc["virus_scan"]
        print(f"virus scan:   {'not configured' if virus is None else virus.get('name') or virus.get('error') or 'clean'}")
        spam = doc["spam"]
        if spam is None:
            print("spam score:   not configured")
        elif "error" in spam:
            print(f"spam score:   {spam['error']}")
        else:
            rules = ", ".join(f"{r['name']} ({r['score']:g})" for r in spam["rules"] if r["score"])
            print(f"spam score:   {spam['score']:g} (refused at {spam['reject_score']}); rules: {rules or 'none'}")
        if m["link_domains"]:
            print(f"link domains: {', '.join(m['link_domains'])}")
        if doc["findings"]:
            print_table(["level", "rule", "cost", "finding"],
                        [[f["level"], f["rule"], f["cost"], f["message"]] for f in doc["findings"]])
    emit(args, doc, human)
    return 1 if any(f["level"] == "error" for f in doc["findings"]) else 0


def register(reg: Registry) -> None:
    p = reg.command(reg.top, "check-message", check_message,
                    "what the relay and its scanners would make of a message, without sending it (a score 0-100)")
    p.add_argument("file", metavar="FILE.eml", help="the message ('-': standard input)")
    p.add_argument("--account", help="judge the From: domain as this account's")
