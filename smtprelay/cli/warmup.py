"""`smtprelay warmup status|set-day` and `smtprelay domain resume`: arguments and output (rules:
services.warmup)."""
from __future__ import annotations

import argparse

from smtprelay.cli.base import Registry, UsageError, emit, positive_int, print_table, services


def status(args: argparse.Namespace) -> int:
    if args.ip and args.sender_domain:
        raise UsageError("warmup status takes --sender-domain or --ip, not both")
    warmup = services(args).warmup
    result = warmup.ip_status(args.ip) if args.ip else warmup.status(args.sender_domain)
    docs = result.pairs
    first = "ip" if args.ip else "sender_domain"

    def human() -> None:
        if not result.enabled:
            print("warm-up is disabled (warmup.enabled = false): nothing is capped")
        if not docs:
            print("no warm-up state yet: pairs appear with the first delivery attempt")
            return
        print_table([first, "provider", "day", "cap", "used", "remaining", "state", "why"],
                    [[d[first], d["provider"], d["day"],
                      "none" if d["cap"] is None and d["day"] else d["cap"],
                      d["used"], "unlimited" if d["remaining"] is None else d["remaining"],
                      f"{d['state']}" + (f" until {d['paused_until']}" if d["paused_until"] else ""), d["why"]]
                     for d in docs])
    emit(args, result.doc(), human)
    return 0


def set_day(args: argparse.Namespace) -> int:
    words = args.words
    if len(words) != (2 if args.ip else 3):
        raise UsageError("warmup set-day takes DOMAIN PROVIDER DAY, or --ip ADDRESS PROVIDER DAY")
    try:
        day = positive_int(words[-1])
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"DAY: {exc}") from None
    warmup = services(args).warmup
    done = warmup.set_ip_day(args.ip, words[0], day) if args.ip else warmup.set_day(words[0], words[1], day)
    emit(args, done.doc(), lambda: print(
        f"{done.sender_domain} at {done.provider}: warm-up day {done.day} "
        f"(cap {'none' if done.cap is None else done.cap}/day); a running relay applies it within 2 s"))
    return 0


def resume(args: argparse.Namespace) -> int:
    done = services(args).warmup.resume(args.domain)
    emit(args, done.doc(),
         lambda: print(f"{done.domain}: sending resumed; {done.released} held recipient(s) queued again"))
    return 0


def register(reg: Registry) -> None:
    wu = reg.group("warmup", "warm-up of sender domains and egress addresses per mailbox provider")
    p = reg.command(wu, "status", status, "per sender domain and provider: day, today's cap, used, remaining, state")
    p.add_argument("--sender-domain")
    p.add_argument("--ip", help="an egress pool address: its own warm-up per provider")
    p = reg.command(wu, "set-day", set_day, "put a pair on warm-up day N (for a domain or address that is already "
                                            "warm): DOMAIN PROVIDER DAY, or --ip ADDRESS PROVIDER DAY")
    p.add_argument("--ip", help="an egress pool address instead of a sender domain")
    p.add_argument("words", nargs="+", metavar="DOMAIN PROVIDER DAY")
    p = reg.command(reg.groups["domain"], "resume", resume, "lift a reputation suspension; held mail is queued again")
    p.add_argument("domain")
