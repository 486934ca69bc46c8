"""`smtprelay webhook set|list|delete|secret|failures|replay`: arguments and output (rules:
services.webhooks)."""
from __future__ import annotations

import argparse

from smtprelay.cli.base import Registry, UsageError, When, emit, print_table, services
from smtprelay.services.webhooks import webhook_doc


def _one_owner(args: argparse.Namespace) -> None:
    if (args.account is None) == (args.address is None):
        raise UsageError(f"webhook {args.subcommand} needs --account ACCOUNT or --address ADDRESS (one of them)")


def hook_set(args: argparse.Namespace) -> int:
    _one_owner(args)
    done = services(args).webhooks.set(args.url, args.account, args.address)
    doc = done.doc()

    def human() -> None:
        print(f"webhook for {doc['address'] or 'account ' + doc['account']}: {doc['url']}")
        if doc["secret"]:
            print(f"signing secret: {doc['secret']}  ('webhook secret --account {doc['account']}' shows it again, "
                  "'--rotate' makes a new one)")
    emit(args, doc, human)
    return 0


def hook_list(args: argparse.Namespace) -> int:
    docs = [webhook_doc(w) for w in services(args).webhooks.all()]
    emit(args, {"webhooks": docs}, lambda: print_table(
        ["account", "address", "url", "pending", "dead"],
        [[d["account"], d["address"] or "(all)", d["url"], d["pending"], d["dead"]] for d in docs]))
    return 0


def hook_delete(args: argparse.Namespace) -> int:
    _one_owner(args)
    owner = services(args).webhooks.delete(args.account, args.address)
    emit(args, {"account": owner.account, "address": owner.address, "deleted": True},
         lambda: print(f"webhook for {owner.label} deleted (events already queued still go)"))
    return 0


def hook_secret(args: argparse.Namespace) -> int:
    found = services(args).webhooks.secret(args.account, args.rotate)
    emit(args, found.doc(), lambda: print(f"{found.account}: {found.secret}" + (
        "  (the previous secret keeps signing for webhooks.secret_overlap)" if found.rotated else "")))
    return 0


def hook_failures(args: argparse.Namespace) -> int:
    docs = services(args).webhooks.failures()
    emit(args, {"failures": docs}, lambda: print_table(
        ["event", "type", "queue_id", "url", "attempts", "last_error"],
        [[d["event_id"], d["type"], d["queue_id"], d["url"], d["attempts"], d["last_error"]] for d in docs]))
    return 0


def hook_replay(args: argparse.Namespace) -> int:
    count = services(args).webhooks.replay(args.since)
    emit(args, {"replayed": count}, lambda: print(f"{count} dead letter(s) queued again"))
    return 0


def register(reg: Registry) -> None:
    wh = reg.group("webhook", "event callbacks (signed HTTP POSTs)")
    for name, func, text in (("set", hook_set, "set the account's or a sender address's webhook URL"),
                             ("delete", hook_delete, "delete a webhook")):
        p = reg.command(wh, name, func, text)
        if name == "set":
            p.add_argument("url")
        p.add_argument("--account")
        p.add_argument("--address", help="a registered sender address: overrides the account's webhook")
    reg.command(wh, "list", hook_list, "list webhooks with pending and dead deliveries")
    p = reg.command(wh, "secret", hook_secret, "show (or --rotate) the account's signing secret")
    p.add_argument("--account", required=True)
    p.add_argument("--rotate", action="store_true")
    reg.command(wh, "failures", hook_failures,
                "dead letters: events that could not be delivered within webhooks.max_age")
    p = reg.command(wh, "replay", hook_replay, "queue dead letters again")
    p.add_argument("--since", action=When, default=None, help="only those that failed since (date or time)")
