"""`smtprelay tracking set|show`: arguments and output (rules: services.tracking)."""
from __future__ import annotations

import argparse

from smtprelay.cli.base import Registry, UsageError, emit, print_table, services
from smtprelay.services.tracking import CHOICES, KINDS


def show(args: argparse.Namespace) -> int:
    view = services(args).tracking.show()

    def word(value: bool) -> str:
        return "on" if value else "off"

    def human() -> None:
        if view.base_url is None:
            print("tracking.base_url is not set: nothing is tracked until it is")
        print_table(["account", "domain", "opens", "clicks", "unsubscribe"],
                    [[d["account"] or "-", d["domain"] or "(all)", word(d["opens"]), word(d["clicks"]),
                      word(d["unsubscribe"])] for d in view.settings])
    emit(args, view.doc(), human)
    return 0


def set_(args: argparse.Namespace) -> int:
    if args.opens is None and args.clicks is None and args.unsubscribe is None:
        raise UsageError("tracking set needs --opens, --clicks or --unsubscribe (on, off or inherit)")
    if (args.account is None) == (args.domain is None):
        raise UsageError("tracking set needs --account ACCOUNT or --domain DOMAIN (one of them)")
    svc = services(args)
    doc = svc.tracking.set(args.account, args.domain, opens=args.opens, clicks=args.clicks,
                           unsubscribe=args.unsubscribe)
    where = doc.get("domain") or "account " + str(args.account)
    emit(args, doc, lambda: print(
        f"tracking for {where}: " + ", ".join(f"{k} {'on' if doc.get(k) else 'off'}" for k in KINDS)
        + ("" if svc.config.tracking.base_url else " (tracking.base_url is not set yet: nothing applies)")))
    return 0


def register(reg: Registry) -> None:
    tr = reg.group("tracking", "open/click tracking and List-Unsubscribe (off by default)")
    reg.command(tr, "show", show, "the settings per account and sender domain")
    p = reg.command(tr, "set", set_, "turn opens, clicks or unsubscribe on/off for an account or a sender domain")
    p.add_argument("--account")
    p.add_argument("--domain", help="a sender domain: overrides its account's settings")
    for name in KINDS:
        p.add_argument(f"--{name}", choices=list(CHOICES))
