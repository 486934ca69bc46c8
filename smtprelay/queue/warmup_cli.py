"""`smtprelay warmup status|set-day` and `smtprelay domain resume`: arguments and output.

Owns: presentation only; the arithmetic is queue.warmup, the SQL queue.ledger.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from smtprelay.accounts import RefusedError
from smtprelay.queue import ledger
from smtprelay.queue import warmup as W

Emit = Callable[[argparse.Namespace, Any, Callable[[], None]], None]
Open = Callable[[argparse.Namespace], Any]


def register(sub: Any, dom: Any, command: Callable[..., Any], group: Callable[[str, str], Any], emit: Emit,
             open_store: Open, iso: Callable[[float | None], str | None],
             print_table: Callable[..., None]) -> None:
    def status(args: argparse.Namespace) -> int:
        config, conn = open_store(args)
        now = time.time()
        if args.sender_domain and not ledger.domain_exists(conn, args.sender_domain):
            raise RefusedError(f"no sender domain named {args.sender_domain.lower().rstrip('.')}")
        pairs, suspended = ledger.status_rows(conn, args.sender_domain)
        docs = []
        for pair in pairs:
            doc = W.view(pair, config.warmup, now, suspended.get(pair.sender_domain))
            doc["paused_until"] = iso(doc["paused_until"])  # type: ignore[arg-type]
            doc["resets_at"] = iso(doc["resets_at"])  # type: ignore[arg-type]
            docs.append(doc)
        # Suspended domains with no pair yet still show up.
        for domain, why in suspended.items():
            if (not args.sender_domain or args.sender_domain.lower() == domain) and \
                    not any(d["sender_domain"] == domain for d in docs):
                docs.append({"sender_domain": domain, "provider": None, "day": None, "cap": None, "used": 0,
                             "remaining": 0, "state": "suspended", "why": why, "paused_until": None,
                             "resets_at": None})

        def human() -> None:
            if not config.warmup.enabled:
                print("warm-up is disabled (warmup.enabled = false): nothing is capped")
            if not docs:
                print("no warm-up state yet: pairs appear with the first delivery attempt")
                return
            print_table(["sender_domain", "provider", "day", "cap", "used", "remaining", "state", "why"],
                        [[d["sender_domain"], d["provider"], d["day"],
                          "none" if d["cap"] is None and d["day"] else d["cap"],
                          d["used"], "unlimited" if d["remaining"] is None else d["remaining"],
                          f"{d['state']}" + (f" until {d['paused_until']}" if d["paused_until"] else ""), d["why"]]
                         for d in docs])
        emit(args, {"enabled": config.warmup.enabled, "pairs": docs}, human)
        return 0

    def set_day(args: argparse.Namespace) -> int:
        config, conn = open_store(args)
        now = time.time()
        provider = args.provider.lower()
        # A provider is one of [warmup.providers], or the registered domain that keys an MX set no
        # provider claims (example.net); a bare unknown word is a typo ("gmial"), not a new provider.
        if provider not in config.warmup.providers and "." not in provider:
            from smtprelay.cli import UsageError   # loaded by the time a command runs
            raise UsageError(f"unknown provider \"{args.provider}\": the known providers are "
                             f"{', '.join(sorted(config.warmup.providers))}, or the registered domain of the MX "
                             "hosts of any other (like example.net)")
        schedule = config.warmup.schedule_for(args.provider)
        if args.day > len(schedule) + 1:
            raise RefusedError(f"day must be from 1 to {len(schedule) + 1} (day {len(schedule) + 1} means warmed "
                               f"up: the schedule for {args.provider} has {len(schedule)} days), got {args.day}")
        ledger.set_day(conn, args.domain, args.provider.lower(), args.day, W.local_day(now, config.warmup.timezone),
                       now)
        cap = W.daily_cap(args.day, schedule, config.warmup.max_daily_for(args.provider))
        doc = {"sender_domain": args.domain.lower(), "provider": args.provider.lower(), "day": args.day, "cap": cap}
        emit(args, doc, lambda: print(f"{doc['sender_domain']} at {doc['provider']}: warm-up day {args.day} "
                                      f"(cap {'none' if cap is None else cap}/day); a running relay applies it "
                                      "within 2 s"))
        return 0

    def resume(args: argparse.Namespace) -> int:
        _, conn = open_store(args)
        released = ledger.resume(conn, args.domain, time.time())
        emit(args, {"domain": args.domain.lower(), "released": released},
             lambda: print(f"{args.domain.lower()}: sending resumed; {released} held recipient(s) queued again"))
        return 0

    wu = group("warmup", "warm-up of sender domains per mailbox provider")
    p = command(wu, "status", status, "per sender domain and provider: day, today's cap, used, remaining, state")
    p.add_argument("--sender-domain")
    p = command(wu, "set-day", set_day, "put a pair on warm-up day N (for a domain that is already warm)")
    p.add_argument("domain")
    p.add_argument("provider")
    from smtprelay.cli import _positive_int   # the CLI module is loaded by the time it registers us
    p.add_argument("day", type=_positive_int)
    p = command(dom, "resume", resume, "lift a reputation suspension; held mail is queued again")
    p.add_argument("domain")

