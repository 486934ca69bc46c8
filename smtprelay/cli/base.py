"""What every command module of the CLI shares: registration, output and argument types.

Owns: `Registry` (how a command or a group is added), `emit` (a human rendering, or exactly one
JSON document with --json), `print_table`, `words`, the argument types (positive numbers,
WHEN), and opening the services a command runs on. A leaf: it imports no command module.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from typing import TYPE_CHECKING

from smtprelay import when

if TYPE_CHECKING:
    from smtprelay.services import Services

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    pass


class ParseError(UsageError):
    """Bad arguments; the text is complete (it names the command)."""


def default_config() -> str:
    return os.environ.get("SMTPRELAY_CONFIG", "./relay.toml")


def services(args: argparse.Namespace) -> Services:
    """The services over the store relay.toml names (opened once per command)."""
    from smtprelay.services import open_services    # the services load with the first command that needs them
    found = getattr(args, "_services", None)
    if found is None:
        found = args._services = open_services(Path(args.config))
    return found


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def emit(args: argparse.Namespace, doc: Any, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        human()


def words(value: Any) -> str:
    """A value as a person reads it, never a Python literal: -, yes/no, none, a list or table."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(words(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {words(v)}" for k, v in value.items()) or "none"
    return str(value)


def _positive(text: str, convert: Callable[[str], Any], what: str) -> Any:
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive {what}, got \"{text}\"")
    return value


def positive_int(text: str) -> int:
    return int(_positive(text, int, "integer"))


def positive_float(text: str) -> float:
    return float(_positive(text, float, "number"))


def moment(text: str | None, option: str, future: bool = False) -> float | None:
    """A WHEN option: a deadline (--expires) counts a duration forward, a starting point
    (--since, --until) backward; a bad one is bad usage."""
    if text is None:
        return None
    try:
        return when.parse_when(text, time.time(), future=future)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


class When(argparse.Action):
    """--from/--to/--since: a date, a time or a duration back from now; keeps the text too
    (`<dest>_text`), since a bare date as an end means the whole day."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        try:
            setattr(namespace, self.dest, when.parse_when(values, time.time(), future=False))
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest + "_text", values)


def whole_day(args: argparse.Namespace, dest: str = "until") -> bool:
    text = getattr(args, dest + "_text", None)
    return text is not None and len(text) == 10


class Registry:
    """Adds commands to the parser: `command(parent, name, func, help)` under the top level
    (`reg.top`) or a group made by `group(name, help)` (kept in `reg.groups` by name, so a
    module may add to another's group: warm-up adds `domain resume`)."""

    def __init__(self, top: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]):
        self.top = top
        self.common = common
        self.parser_class = parser_class
        self.groups: dict[str, Any] = {}

    def command(self, parent: Any, name: str, func: Command, help: str) -> Any:
        p = parent.add_parser(name, parents=[self.common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    def group(self, name: str, help: str) -> Any:
        p = self.top.add_parser(name, help=help, description=help)
        g = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=self.parser_class)
        g.required = True
        self.groups[name] = g
        return g
