"""The `smtprelay` command (also `python -m smtprelay`).

Owns: argument parsing and output (human tables, or exactly one JSON document with
--json). Management commands act on the same store as the server through the service
layer (smtprelay.accounts, smtprelay.queue.store); a running server sees changes within
2 seconds. Exit status: 0 success, 1 refused operation, 2 bad usage or bad config.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from smtprelay import __version__
from smtprelay.accounts import AccountService, RefusedError
from smtprelay.config import Config, ConfigError, load
from smtprelay.queue import schema
from smtprelay.queue import admin as queue_admin
from smtprelay.queue.listing import STATES, list_queue, show_message


class UsageError(Exception):
    pass


class ParseError(UsageError):
    """Bad arguments; the text is complete (it names the command)."""


def _default_config() -> str:
    return os.environ.get("SMTPRELAY_CONFIG", "./relay.toml")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _emit(args: argparse.Namespace, doc: Any, human: Callable[[], None]) -> None:
    sink = getattr(args, "sink", None)
    if sink is not None:   # the admin API runs the same command and takes its document
        sink.append(doc)
        return
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        human()


def _open(args: argparse.Namespace) -> tuple[Config, sqlite3.Connection]:
    config = load(Path(args.config))
    return config, schema.connect(config.server.data_dir, config.server.store_busy_timeout)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got \"{text}\"") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got \"{text}\"")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got \"{text}\"") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got \"{text}\"")
    return value


# -- commands ---------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from smtprelay.app import serve
    return serve(Path(args.config), args.log_format)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load(Path(args.config))
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"ok": False, "problems": exc.problems}, indent=2))
        else:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
        return 2
    warnings = config.warnings()
    doc = {"ok": True, "listeners": [f"{l.name} {l.address}:{l.port} ({l.tls.value})" for l in config.listeners],
           "data_dir": str(config.server.data_dir), "warnings": warnings}

    def human() -> None:
        print(f"{args.config}: ok ({len(config.listeners)} listener(s), data_dir {config.server.data_dir})")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    _emit(args, doc, human)
    return 0


def _account_doc(account: Any, config: Config, credentials: int | None = None) -> dict[str, Any]:
    from smtprelay.policy.reputation import AccountRow, effective_limits
    limits = effective_limits(AccountRow(account.id, account.name, account.daily_quota, account.rate_per_second,
                                         account.level), config)
    doc = {"name": account.name,
           "daily_quota": limits.daily_quota,
           "rate_per_second": limits.rate_per_second,
           "quota_source": "account" if account.daily_quota else ("reputation level" if config.reputation.levels
                                                                  else "default"),
           "delivery_tls": account.delivery_tls or config.delivery.tls.value,
           "level": account.level,
           "created_at": _iso(account.created_at)}
    if credentials is not None:
        doc["credentials"] = credentials
    return doc


def cmd_account_add(args: argparse.Namespace) -> int:
    config, conn = _open(args)
    account = AccountService(conn, time.time()).add_account(args.name, args.daily_quota, args.rate)
    doc = _account_doc(account, config)
    _emit(args, doc, lambda: print(f"account {account.name} created (daily quota {doc['daily_quota']}, "
                                   f"rate {doc['rate_per_second']}/s)"))
    return 0


def cmd_account_set(args: argparse.Namespace) -> int:
    if args.daily_quota is None and args.rate is None and args.delivery_tls is None:
        raise UsageError("account set needs --daily-quota, --rate or --delivery-tls")
    config, conn = _open(args)
    account = AccountService(conn, time.time()).set_account(args.name, args.daily_quota, args.rate,
                                                            args.delivery_tls)
    doc = _account_doc(account, config)
    _emit(args, doc, lambda: print(f"account {account.name}: daily quota {doc['daily_quota']}, "
                                   f"rate {doc['rate_per_second']}/s"))
    return 0


def cmd_account_list(args: argparse.Namespace) -> int:
    config, conn = _open(args)
    rows = AccountService(conn, time.time()).list_accounts()
    docs = [_account_doc(a, config, n) for a, n in rows]
    _emit(args, {"accounts": docs}, lambda: print_table(
        ["name", "daily_quota", "rate/s", "level", "credentials", "created"],
        [[d["name"], d["daily_quota"], d["rate_per_second"], d["level"], d["credentials"], d["created_at"]]
         for d in docs]))
    return 0


def cmd_credential_add(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    cred = AccountService(conn, time.time()).add_credential(args.account)
    doc = {"account": cred.account, "username": cred.username, "password": cred.password}

    def human() -> None:
        print(f"account:  {cred.account}")
        print(f"username: {cred.username}")
        print(f"password: {cred.password}")
        print("The password is shown only this once; only its digest is stored.")
    _emit(args, doc, human)
    return 0


def cmd_credential_list(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    creds = AccountService(conn, time.time()).list_credentials(args.account)
    docs = [{"username": c.username, "account": c.account, "created_at": _iso(c.created_at),
             "revoked_at": _iso(c.revoked_at), "active": c.revoked_at is None} for c in creds]
    _emit(args, {"credentials": docs}, lambda: print_table(
        ["username", "created", "revoked"], [[d["username"], d["created_at"], d["revoked_at"]] for d in docs]))
    return 0


def cmd_credential_revoke(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    cred = AccountService(conn, time.time()).revoke_credential(args.username)
    doc = {"username": cred.username, "account": cred.account, "revoked_at": _iso(cred.revoked_at)}
    _emit(args, doc, lambda: print(f"credential {cred.username} revoked (a running server refuses it within 2 s)"))
    return 0


def cmd_queue_list(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    entries = list_queue(conn, state=args.state, domain=args.domain, limit=args.limit, include_finished=args.all)
    now = time.time()
    docs: list[dict[str, Any]] = [{"id": e.id, "age_seconds": round(now - e.created_at, 1), "created_at": _iso(e.created_at),
             "size": e.size, "from": e.mail_from, "recipients": list(e.recipients), "state": e.state,
             "last_reply": e.last_reply} for e in entries]

    def human() -> None:
        if not docs:
            print("Mail queue is empty")
            return
        print_table(["id", "age", "size", "sender", "state", "recipients"],
                     [[d["id"], f"{int(d['age_seconds'])}s", d["size"], d["from"], d["state"],
                       ", ".join(d["recipients"])] for d in docs])
        print(f"-- {len(docs)} message(s)")
    _emit(args, {"messages": docs}, human)
    return 0


def cmd_queue_show(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    doc = show_message(conn, args.id)
    if doc is None:
        raise RefusedError(f"no queued message with id {args.id}")
    doc["created_at"] = _iso(doc["created_at"])  # type: ignore[arg-type]

    def human() -> None:
        for key in ("id", "account", "username", "from", "size", "created_at", "client_address", "tls",
                    "message_id"):
            print(f"{key + ':':16}{doc[key] if doc[key] is not None else '-'}")
        print_table(["recipient", "state", "attempts", "last_reply"],
                     [[r["address"], r["state"], r["attempts"], r["last_reply"]] for r in doc["recipients"]])  # type: ignore[attr-defined]
    _emit(args, doc, human)
    return 0


def cmd_queue_flush(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    count = queue_admin.flush(conn, time.time(), args.domain)
    _emit(args, {"due_now": count, "domain": args.domain},
          lambda: print(f"{count} deferred recipient(s) will be retried now"))
    return 0


def cmd_queue_hold(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    count = queue_admin.hold(conn, args.id)
    _emit(args, {"id": args.id, "held": count}, lambda: print(f"{args.id}: {count} recipient(s) on hold"))
    return 0


def cmd_queue_release(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    count = queue_admin.release(conn, args.id, time.time())
    _emit(args, {"id": args.id, "released": count}, lambda: print(f"{args.id}: {count} recipient(s) released"))
    return 0


def cmd_queue_delete(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    count = queue_admin.delete(conn, args.id)
    _emit(args, {"id": args.id, "undelivered_recipients": count},
          lambda: print(f"{args.id}: deleted ({count} undelivered recipient(s); no bounce sent)"))
    return 0


def _words(value: Any) -> str:
    """A value as a person reads it, never a Python literal: -, yes/no, none, a list or table."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_words(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_words(v)}" for k, v in value.items()) or "none"
    return str(value)


def cmd_explain(args: argparse.Namespace) -> int:
    from smtprelay.explain import explain
    config, conn = _open(args)
    doc = explain(conn, config, args.account, args.mail_from, args.rcpt, time.time(), _iso)

    def human() -> None:
        for p in doc["policies"]:
            name = p.pop("policy")
            print(f"{name}:")
            for key, value in p.items():
                print(f"  {key}: {_words(value)}")
        print(f"verdict: {doc['verdict']}")
    _emit(args, doc, human)
    return 0


# -- parser -----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one clear sentence, exit 2 (main prints it)
        raise ParseError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="path to relay.toml (default ./relay.toml or $SMTPRELAY_CONFIG)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print exactly one JSON document")

    parser = _Parser(prog="smtprelay", description="Self-hosted SMTP relay with policy enforcement.",
                     parents=[common])
    parser.add_argument("--version", action="version", version=f"smtprelay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(parent: Any, name: str, func: Callable[[argparse.Namespace], int], help: str) -> Any:
        p = parent.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    def group(name: str, help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        g = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
        g.required = True
        return g

    p = command(sub, "serve", cmd_serve, "run the relay")
    p.add_argument("--log-format", choices=["text", "json"], default=None,
                   help="log line format (default: [log] format in relay.toml)")
    command(sub, "check-config", cmd_check_config, "validate relay.toml and print each problem with its key path")

    acc = group("account", "manage accounts (tenants)")
    p = command(acc, "add", cmd_account_add, "create an account")
    p.add_argument("name")
    p.add_argument("--daily-quota", type=_positive_int, help="recipients per rolling 24 h (default from [limits])")
    p.add_argument("--rate", type=_positive_float, help="recipients per second (default from [limits])")
    p = command(acc, "set", cmd_account_set, "change an account's quota, rate or delivery TLS policy")
    p.add_argument("name")
    p.add_argument("--daily-quota", type=_positive_int)
    p.add_argument("--rate", type=_positive_float)
    p.add_argument("--delivery-tls", choices=["opportunistic", "required", "default"],
                   help="TLS policy for this account's outgoing mail (default: delivery.tls)")
    command(acc, "list", cmd_account_list, "list accounts")

    cred = group("credential", "manage SMTP credentials")
    p = command(cred, "add", cmd_credential_add, "create SMTP credentials; the password is printed once")
    p.add_argument("account")
    p = command(cred, "list", cmd_credential_list, "list an account's credentials")
    p.add_argument("account")
    p = command(cred, "revoke", cmd_credential_revoke, "revoke a credential (a running server refuses it within 2 s)")
    p.add_argument("username")

    q = group("queue", "inspect the queue")
    p = command(q, "list", cmd_queue_list, "list queued messages (like mailq)")
    p.add_argument("--state", choices=STATES, help="only recipients in this state")
    p.add_argument("--all", action="store_true", help="include delivered, bounced and expired messages")
    p.add_argument("--domain", help="only recipients at this domain")
    p.add_argument("--limit", type=_positive_int, default=1000, help="at most this many messages (default 1000)")
    p = command(q, "show", cmd_queue_show, "show one queued message and its recipients")
    p.add_argument("id")
    p = command(q, "flush", cmd_queue_flush, "retry deferred mail now (like postqueue -f)")
    p.add_argument("domain", nargs="?", help="only recipients at this domain")
    for name, func, text in (("hold", cmd_queue_hold, "put a message on hold (like postsuper -h)"),
                             ("release", cmd_queue_release, "release a held message (like postsuper -H)"),
                             ("delete", cmd_queue_delete, "delete a message, without a bounce (like postsuper -d)")):
        p = command(q, name, func, text)
        p.add_argument("id")

    from smtprelay.domains import cli as domain_cli
    dom = domain_cli.register(sub, command, group, _emit, _open, _iso)
    from smtprelay.queue import warmup_cli
    warmup_cli.register(sub, dom, command, group, _emit, _open, _iso, print_table)
    from smtprelay.events import cli as events_cli
    events_cli.register(sub, command, _emit, _open, _iso, print_table)
    from smtprelay.events import webhook_cli
    webhook_cli.register(sub, command, group, _emit, _open, _iso, print_table)
    from smtprelay.events import tracking_cli
    tracking_cli.register(sub, command, group, _emit, _open, print_table)
    from smtprelay.blocklist import cli as blocklist_cli
    blocklist_cli.register(sub, command, group, _emit, _open, _iso, print_table)
    p = command(sub, "explain", cmd_explain, "every policy that applies now to a sender and recipient, and the "
                                             "verdict the relay would give (sends nothing)")
    p.add_argument("--account", required=True)
    p.add_argument("--from", dest="mail_from", required=True)
    p.add_argument("--to", dest="rcpt", required=True)
    return parser


def run_for_api(argv: list[str], config_path: str) -> tuple[int, Any]:
    """Run one command as the admin API does: (exit status, the JSON document it would print).
    Raises what main() turns into messages (ParseError, RefusedError, ConfigError, ...)."""
    args = build_parser().parse_args(argv)
    args.config, args.json, args.sink = config_path, True, []
    status = int(args.func(args))
    return status, args.sink[0] if args.sink else None


def _worker(argv: Sequence[str]) -> int:
    """`smtprelay _worker`: a front-end process, started by `serve` (never by hand) with its
    channel and the listening sockets as inherited file descriptors."""
    parser = argparse.ArgumentParser(prog="smtprelay _worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--listener", action="append", default=[], metavar="NAME=FD")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--log-format", choices=["text", "json"], default=None)
    args = parser.parse_args(argv)
    from smtprelay.smtp import worker
    listeners = {name: int(fd) for name, _, fd in (item.partition("=") for item in args.listener)}
    tls_files = (Path(args.tls[0]), Path(args.tls[1])) if args.tls else None
    return worker.run(Path(args.config), args.channel, listeners, tls_files, args.log_format)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        return _worker(argv[1:])
    parser = build_parser()
    wants_json = "--json" in argv
    # A command says what it did once, on stdout; the services' log lines are for the server's
    # log (serve replaces this handler), not Python's last-resort printing to stderr.
    logging.getLogger().addHandler(logging.NullHandler())

    def fail(lines: list[str], status: int) -> int:
        """The error on stderr; with --json also as the one JSON document on stdout."""
        for line in lines:
            print(line, file=sys.stderr)
        if wants_json:
            print(json.dumps({"error": "; ".join(line.removeprefix("smtprelay: ") for line in lines),
                              "code": status}, indent=2, sort_keys=True))
        return status

    try:
        args = parser.parse_args(argv)
    except ParseError as exc:
        return fail([str(exc)], 2)
    args.config = getattr(args, "config", None) or _default_config()
    args.json = getattr(args, "json", False)
    try:
        status = int(args.func(args))
        sys.stdout.flush()        # inside the try: a reader that went away fails here, not at exit
        return status
    except BrokenPipeError:
        # The reader went away (`... | head -1`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ConfigError as exc:
        return fail(list(exc.problems), 2)
    except UsageError as exc:
        return fail([f"smtprelay: {exc}"], 2)
    except RefusedError as exc:
        return fail([f"smtprelay: {exc}"], 1)
    except sqlite3.Error as exc:
        return fail([f"smtprelay: the store could not be used: {exc}"], 1)
