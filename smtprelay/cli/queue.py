"""`smtprelay queue ...`: arguments and output (rules: services.queue)."""
from __future__ import annotations

import argparse

from smtprelay.cli.base import Registry, emit, positive_int, print_table, services
from smtprelay.queue.listing import STATES


def queue_list(args: argparse.Namespace) -> int:
    doc = services(args).queue.list(args.state, args.domain, args.limit, args.all).doc()
    docs = doc["messages"]

    def human() -> None:
        if not docs:
            print("Mail queue is empty")
            return
        print_table(["id", "age", "size", "sender", "state", "recipients"],
                    [[d["id"], f"{int(d['age_seconds'])}s", d["size"], d["from"], d["state"],
                      ", ".join(d["recipients"])] for d in docs])
        print(f"-- {len(docs)} message(s)")
    emit(args, doc, human)
    return 0


def queue_show(args: argparse.Namespace) -> int:
    doc = services(args).queue.show(args.id).doc()

    def human() -> None:
        for key in ("id", "account", "username", "from", "size", "created_at", "client_address", "tls",
                    "message_id"):
            print(f"{key + ':':16}{doc[key] if doc[key] is not None else '-'}")
        for r in doc["recipients"]:
            print(f"\n{r['address']}: {r['state']} after {r['attempts']} attempt(s)"
                  + (f", next attempt {r['next_attempt_at']}" if r["next_attempt_at"] else "")
                  + (f", bounce class {r['bounce_class']}" if r["bounce_class"] else ""))
            for a in r["history"]:
                print(f"  {a['at']}  {a['result']:<9} via {a['relay'] or '-'}"
                      + (f" from {a['source']}" if a.get("source") else "")
                      + f"  tls {a['tls'] or 'none'}  {a['reply'] or ''}".rstrip())
            if not r["history"]:
                print("  no attempt yet")
    emit(args, doc, human)
    return 0


def queue_flush(args: argparse.Namespace) -> int:
    done = services(args).queue.flush(args.domain)
    emit(args, done.doc(), lambda: print(
        f"{done.count} deferred recipient(s) will be retried now; the running relay also tries dead "
        f"destinations again and lifts the backoff pauses " +
        (f"at {args.domain}'s mailbox provider" if args.domain else "of every sender domain") + " within 2 s"))
    return 0


def queue_hold(args: argparse.Namespace) -> int:
    done = services(args).queue.hold(args.id)
    emit(args, done.doc(), lambda: print(f"{args.id}: {done.count} recipient(s) on hold"))
    return 0


def queue_release(args: argparse.Namespace) -> int:
    done = services(args).queue.release(args.id)
    emit(args, done.doc(), lambda: print(f"{args.id}: {done.count} recipient(s) released"))
    return 0


def queue_delete(args: argparse.Namespace) -> int:
    done = services(args).queue.delete(args.id)
    emit(args, done.doc(),
         lambda: print(f"{args.id}: deleted ({done.count} undelivered recipient(s); no bounce sent)"))
    return 0


def register(reg: Registry) -> None:
    q = reg.group("queue", "inspect the queue")
    p = reg.command(q, "list", queue_list, "list queued messages (like mailq)")
    p.add_argument("--state", choices=STATES, help="only recipients in this state")
    p.add_argument("--all", action="store_true", help="include delivered, bounced and expired messages")
    p.add_argument("--domain", help="only recipients at this domain")
    p.add_argument("--limit", type=positive_int, default=1000, help="at most this many messages (default 1000)")
    p = reg.command(q, "show", queue_show, "show one queued message and its recipients")
    p.add_argument("id")
    p = reg.command(q, "flush", queue_flush, "retry deferred mail now (like postqueue -f)")
    p.add_argument("domain", nargs="?", help="only recipients at this domain")
    for name, func, text in (("hold", queue_hold, "put a message on hold (like postsuper -h)"),
                             ("release", queue_release, "release a held message (like postsuper -H)"),
                             ("delete", queue_delete, "delete a message, without a bounce (like postsuper -d)")):
        p = reg.command(q, name, func, text)
        p.add_argument("id")
