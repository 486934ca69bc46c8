"""`smtprelay tracking set|show`: open/click tracking and List-Unsubscribe settings.

Owns: presentation; the settings SQL is events.tracking. A running relay applies a change
within 2 s (the settings table bumps the catalog version).
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from smtprelay.accounts import AccountService, RefusedError
from smtprelay.events import tracking

Emit = Callable[[argparse.Namespace, Any, Callable[[], None]], None]
Open = Callable[[argparse.Namespace], Any]
_CHOICE = {"on": True, "off": False, "inherit": None}


def register(sub: Any, command: Callable[..., Any], group: Callable[[str, str], Any], emit: Emit, open_store: Open,
             print_table: Callable[..., None]) -> None:
    def show(args: argparse.Namespace) -> int:
        config, conn = open_store(args)
        docs = tracking.show_settings(conn)

        def human() -> None:
            if config.tracking.base_url is None:
                print("tracking.base_url is not set: nothing is tracked until it is")
            def word(value: bool) -> str:
                return "on" if value else "off"
            print_table(["account", "domain", "opens", "clicks", "unsubscribe"],
                        [[d["account"] or "-", d["domain"] or "(all)", word(d["opens"]), word(d["clicks"]),
                          word(d["unsubscribe"])] for d in docs])
        emit(args, {"base_url": config.tracking.base_url, "settings": docs}, human)
        return 0

    def set_(args: argparse.Namespace) -> int:
        config, conn = open_store(args)
        values = {k: _CHOICE[v] for k, v in (("opens", args.opens), ("clicks", args.clicks),
                                             ("unsubscribe", args.unsubscribe)) if v is not None}
        if not values:
            raise RefusedError("give --opens, --clicks or --unsubscribe (on, off or inherit)")
        if (args.account is None) == (args.domain is None):
            raise RefusedError("give --account ACCOUNT or --domain DOMAIN (one of them)")
        domain = args.domain.lower() if args.domain else None
        if domain is not None:
            row = conn.execute("SELECT account_id FROM domains WHERE name = ?", (domain,)).fetchone()
            if row is None:
                raise RefusedError(f"no sender domain named {domain}")
            account_id = int(row[0])
        else:
            account_id = AccountService(conn, time.time()).get_account(args.account).id
        conn.execute("BEGIN IMMEDIATE")
        try:
            tracking.set_settings(conn, account_id, domain, values)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        docs = [d for d in tracking.show_settings(conn) if d["domain"] == domain and
                (domain is not None or d["account"] == args.account)]
        emit(args, docs[0] if docs else {}, lambda: print(
            f"tracking for {domain or 'account ' + args.account}: " +
            ", ".join(f"{k} {'on' if docs and docs[0][k] else 'off'}" for k in ("opens", "clicks", "unsubscribe"))
            + ("" if config.tracking.base_url else " (tracking.base_url is not set yet: nothing applies)")))
        return 0

    tr = group("tracking", "open/click tracking and List-Unsubscribe (off by default)")
    command(tr, "show", show, "the settings per account and sender domain")
    p = command(tr, "set", set_, "turn opens, clicks or unsubscribe on/off for an account or a sender domain")
    p.add_argument("--account")
    p.add_argument("--domain", help="a sender domain: overrides its account's settings")
    for name in ("opens", "clicks", "unsubscribe"):
        p.add_argument(f"--{name}", choices=list(_CHOICE))
