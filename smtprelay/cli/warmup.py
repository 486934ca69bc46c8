"""`smtprelay warmup status|set-day` and `smtprelay domain resume`: arguments and output (rules:
services.warmup)."""
from __future__ import annotations

import argparse

from smtprelay.cli.base import Registry, emit, positive_int, print_table, services


def status(args: argparse.Namespace) -> int:
    result = services(args).warmup.status(args.sender_domain)
    docs = result.pairs

    def human() -> None:
        if not result.enabled:
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
    emit(args, result.doc(), human)
    return 0


def set_day(args: argparse.Namespace) -> int:
    done = services(args).warmup.set_day(args.domain, args.provider, args.day)
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
    wu = reg.group("warmup", "warm-up of sender domains per mailbox provider")
    p = reg.command(wu, "status", status, "per sender domain and provider: day, today's cap, used, remaining, state")
    p.add_argument("--sender-domain")
    p = reg.command(wu, "set-day", set_day, "put a pair on warm-up day N (for a domain that is already warm)")
    p.add_argument("domain")
    p.add_argument("provider")
    p.add_argument("day", type=positive_int)
    p = reg.command(reg.groups["domain"], "resume", resume, "lift a reputation suspension; held mail is queued again")
    p.add_argument("domain")
