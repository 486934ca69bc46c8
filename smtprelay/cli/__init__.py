"""The `smtprelay` command (also `python -m smtprelay`): the CLI front door over the services.

Owns: the parser and `main` (errors → messages and exit statuses: 0 success, 1 refused
operation, 2 bad usage or bad config). Each area's commands live in their own module of this
package (accounts, domains, warmup, queue, reports, webhooks, tracking, blocklist, templates, batch), which
registers them through `cli.base.Registry`; a new command goes there, over a service method.
Management commands act on the same store as the server; a running server sees changes
within 2 seconds.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from smtprelay import __version__
from smtprelay.cli import (accounts, batch, blocklist, cluster, console, content, domains, feedback, queue, reports,
                           templates, tracking, warmup, webhooks)
from smtprelay.cli.base import ParseError, Registry, UsageError, default_config, emit
from smtprelay.config import ConfigError, load
from smtprelay.config.pools import unbindable
from smtprelay.errors import Invalid, ServiceError
from smtprelay.services import guard

__all__ = ["main", "build_parser", "ParseError", "UsageError"]


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
    if config.cluster.postgres is not None:     # a host fact that stops the start: said as a problem
        from smtprelay.cluster.mirror import key_file_problem
        found = key_file_problem(config)
        if found is not None:
            emit(args, {"ok": False, "problems": [found]}, lambda: print(found, file=sys.stderr))
            return 2
    warnings = config.warnings()
    for pool, address in config.egress.addresses():     # a host fact, not a syntax problem: the relay
        why = unbindable(address)                        # starts, and that address's mail waits or falls back
        if why is not None:
            warnings.append(f"egress pool \"{pool.name}\": {why}; mail bound to it cannot use it until "
                            f"the host owns it")
    doc = {"ok": True, "listeners": [f"{l.name} {l.address}:{l.port} ({l.tls.value})" for l in config.listeners],
           "data_dir": str(config.server.data_dir), "warnings": warnings}

    def human() -> None:
        print(f"{args.config}: ok ({len(config.listeners)} listener(s), data_dir {config.server.data_dir})")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    emit(args, doc, human)
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

    reg = Registry(sub, common, _Parser)
    p = reg.command(sub, "serve", cmd_serve, "run the relay")
    p.add_argument("--log-format", choices=["text", "json"], default=None,
                   help="log line format (default: [log] format in relay.toml)")
    reg.command(sub, "check-config", cmd_check_config, "validate relay.toml and print each problem with its key path")

    for module in (accounts, queue, domains, warmup, reports, webhooks, tracking, blocklist, templates, batch, content,
                   feedback, console, cluster):
        module.register(reg)
    return parser


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
    args.config = getattr(args, "config", None) or default_config()
    args.json = getattr(args, "json", False)
    try:
        with guard():
            status = int(args.func(args))
        sys.stdout.flush()        # inside the try: a reader that went away fails here, not at exit
        return status
    except BrokenPipeError:
        # The reader went away (`... | head -1`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ConfigError as exc:
        return fail(list(exc.problems), 2)
    except (UsageError, Invalid) as exc:
        return fail([f"smtprelay: {exc}"], 2)
    except ServiceError as exc:          # NotFound, Refused, StoreUnavailable
        return fail([f"smtprelay: {exc}"], 1)
    finally:
        found = getattr(args, "_services", None)
        if found is not None:
            found.close()
