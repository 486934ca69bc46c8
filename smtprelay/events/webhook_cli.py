"""`smtprelay webhook set|list|delete|secret|failures|replay`: the webhook service and its CLI.

Owns: the `webhooks` and `webhook_secrets` rows (synchronous; the admin API should call the
same functions) and presentation. Delivery is events.webhooks.Dispatcher in the server.
"""
from __future__ import annotations

import argparse
import sqlite3
import time
import urllib.parse
from typing import Any, Callable

from smtprelay.accounts import AccountService, RefusedError

Emit = Callable[[argparse.Namespace, Any, Callable[[], None]], None]
Open = Callable[[argparse.Namespace], Any]


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedError(f"a webhook URL must be http:// or https:// with a host, got \"{url}\"")
    if parts.username or parts.password:
        raise RefusedError("a webhook URL must not carry a user name or password; requests are signed instead")
    return url


def owner(conn: sqlite3.Connection, account: str | None, address: str | None) -> tuple[int, str, str | None]:
    """(account id, account name, sender address or None) for --account / --address."""
    if (account is None) == (address is None):
        raise RefusedError("give --account ACCOUNT or --address ADDRESS (one of them)")
    if account is not None:
        found = AccountService(conn, time.time()).get_account(account)
        return found.id, found.name, None
    row = conn.execute("SELECT d.account_id, a.name FROM addresses x JOIN domains d ON d.id = x.domain_id"
                       " JOIN accounts a ON a.id = d.account_id WHERE x.address = ?", (address,)).fetchone()
    if row is None:
        raise RefusedError(f"{address} is not a registered sender address (see 'smtprelay address add')")
    return int(row[0]), str(row[1]), address


def set_hook(conn: sqlite3.Connection, url: str, account: str | None, address: str | None) -> dict[str, Any]:
    account_id, name, sender = owner(conn, account, address)
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM webhooks WHERE account_id = ? AND address IS ?", (account_id, sender))
        conn.execute("INSERT INTO webhooks (account_id, address, url, created_at) VALUES (?,?,?,?)",
                     (account_id, sender, check_url(url), now))
        from smtprelay.events import webhooks as W   # aiohttp: not for every CLI command
        secret, created = W.ensure_secret(conn, account_id, now)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return {"account": name, "address": sender, "url": url, "secret": secret if created else None}


def replay(conn: sqlite3.Connection, since: float, now: float) -> int:
    """Dead letters that failed since `since` are queued again, with a fresh max_age."""
    return int(conn.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?, created_at = ?"
                            " WHERE state = 'dead' AND created_at >= ?", (now, now, since)).rowcount)


def register(sub: Any, command: Callable[..., Any], group: Callable[[str, str], Any], emit: Emit, open_store: Open,
             iso: Callable[[float | None], str | None], print_table: Callable[..., None]) -> None:
    def hook_set(args: argparse.Namespace) -> int:
        _, conn = open_store(args)
        doc = set_hook(conn, args.url, args.account, args.address)

        def human() -> None:
            print(f"webhook for {doc['address'] or 'account ' + doc['account']}: {doc['url']}")
            if doc["secret"]:
                print(f"signing secret: {doc['secret']}  ('webhook secret --account {doc['account']}' shows it again, "
                      "'--rotate' makes a new one)")
        emit(args, doc, human)
        return 0

    def hook_list(args: argparse.Namespace) -> int:
        _, conn = open_store(args)
        docs = [{"account": r[0], "address": r[1], "url": r[2], "created_at": iso(r[3]), "pending": r[4],
                 "dead": r[5]} for r in conn.execute(
            "SELECT a.name, w.address, w.url, w.created_at,"
            " (SELECT count(*) FROM outbox o WHERE o.url = w.url AND o.account_id = w.account_id"
            "  AND o.state = 'pending'),"
            " (SELECT count(*) FROM outbox o WHERE o.url = w.url AND o.account_id = w.account_id AND o.state = 'dead')"
            " FROM webhooks w JOIN accounts a ON a.id = w.account_id ORDER BY a.name, w.address")]
        emit(args, {"webhooks": docs}, lambda: print_table(
            ["account", "address", "url", "pending", "dead"],
            [[d["account"], d["address"] or "(all)", d["url"], d["pending"], d["dead"]] for d in docs]))
        return 0

    def hook_delete(args: argparse.Namespace) -> int:
        _, conn = open_store(args)
        account_id, name, sender = owner(conn, args.account, args.address)
        if conn.execute("DELETE FROM webhooks WHERE account_id = ? AND address IS ?",
                        (account_id, sender)).rowcount == 0:
            raise RefusedError(f"no webhook is set for {sender or 'account ' + name}")
        emit(args, {"account": name, "address": sender, "deleted": True},
             lambda: print(f"webhook for {sender or 'account ' + name} deleted (events already queued still go)"))
        return 0

    def hook_secret(args: argparse.Namespace) -> int:
        config, conn = open_store(args)
        account_id, name, _ = owner(conn, args.account, None)
        now = time.time()
        if args.rotate:
            from smtprelay.events import webhooks as W
            secret = W.rotate_secret(conn, account_id, now, config.webhooks.secret_overlap)
        else:
            from smtprelay.events import webhooks as W
            secret, _ = W.ensure_secret(conn, account_id, now)
        emit(args, {"account": name, "secret": secret, "rotated": args.rotate},
             lambda: print(f"{name}: {secret}" + ("  (the previous secret keeps signing for "
                                                   "webhooks.secret_overlap)" if args.rotate else "")))
        return 0

    def hook_failures(args: argparse.Namespace) -> int:
        _, conn = open_store(args)
        docs = [{"outbox_id": r[0], "event_id": r[1], "type": r[2], "queue_id": r[3], "url": r[4],
                 "attempts": r[5], "last_error": r[6], "created_at": iso(r[7])} for r in conn.execute(
            "SELECT o.id, o.event_id, e.type, o.queue_id, o.url, o.attempts, o.last_error, o.created_at FROM outbox o"
            " LEFT JOIN events e ON e.id = o.event_id WHERE o.state = 'dead' ORDER BY o.id LIMIT 1000")]
        emit(args, {"failures": docs}, lambda: print_table(
            ["event", "type", "queue_id", "url", "attempts", "last_error"],
            [[d["event_id"], d["type"], d["queue_id"], d["url"], d["attempts"], d["last_error"]] for d in docs]))
        return 0

    def hook_replay(args: argparse.Namespace) -> int:
        _, conn = open_store(args)
        count = replay(conn, 0.0 if args.since is None else args.since, time.time())
        emit(args, {"replayed": count}, lambda: print(f"{count} dead letter(s) queued again"))
        return 0

    from smtprelay.events.cli import _When
    wh = group("webhook", "event callbacks (signed HTTP POSTs)")
    for name, func, text in (("set", hook_set, "set the account's or a sender address's webhook URL"),
                             ("delete", hook_delete, "delete a webhook")):
        p = command(wh, name, func, text)
        if name == "set":
            p.add_argument("url")
        p.add_argument("--account")
        p.add_argument("--address", help="a registered sender address: overrides the account's webhook")
    command(wh, "list", hook_list, "list webhooks with pending and dead deliveries")
    p = command(wh, "secret", hook_secret, "show (or --rotate) the account's signing secret")
    p.add_argument("--account", required=True)
    p.add_argument("--rotate", action="store_true")
    command(wh, "failures", hook_failures, "dead letters: events that could not be delivered within webhooks.max_age")
    p = command(wh, "replay", hook_replay, "queue dead letters again")
    p.add_argument("--since", action=_When, default=None, help="only those that failed since (date or time)")
