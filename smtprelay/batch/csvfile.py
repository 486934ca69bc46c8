"""A recipient group's CSV: a header row with an `email` column and one column per variable,
then one recipient per row. UTF-8, with or without a byte-order mark.

Owns: reading the file row by row (never the whole file in memory, so a 100 000-row upload
costs a set of addresses, not a list of dicts), and judging each row: the address, its
column count, duplicates (case-insensitive), the group's size limit. Every bad row becomes a
`Problem` with its line number; the caller decides (all or nothing, or --skip-invalid).
A column named `a.b` becomes the nested variable {"a": {"b": ...}}, as templates write it.

Must never: write anything; it only reads and judges.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator

from smtprelay.errors import Invalid
from smtprelay.policy.address import AddressError, parse_address

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
MAX_FIELD = 64 * 1024        # characters in one cell
SHOWN_PROBLEMS = 20          # problems spelled out in the error; the rest are counted

SAMPLE = ("email,first_name,plan\r\n"
          "ada@example.com,Ada,pro\r\n"
          "\"\"\"Grace Hopper\"\" <grace@example.com>\",Grace,free\r\n")


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    text: str

    def doc(self) -> dict[str, Any]:
        return {"line": self.line, "problem": self.text}


@dataclass(frozen=True, slots=True)
class Row:
    row: int        # 1, 2, ... among the rows kept
    line: int       # where it starts in the file
    email: str
    data: str       # JSON object of its variables


@dataclass
class Reading:
    """The header's columns and, once the rows are consumed, the problems and counts."""
    columns: list[str]
    problems: list[Problem]
    rows: int = 0
    lines: int = 0


def problems_message(problems: list[Problem], what: str = "the CSV") -> str:
    shown = "; ".join(f"line {p.line}: {p.text}" for p in problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    return (f"{what} has {len(problems)} bad row{'s' if len(problems) != 1 else ''}: {shown}"
            + (f"; and {more} more" if more > 0 else ""))


def read(raw: IO[bytes], max_rows: int, progress: Callable[[int], None] | None = None) -> tuple[Reading, Iterator[Row]]:
    """The header now (Invalid if it is unusable, naming line 1), and the rows as they are read.
    `progress` is told how many bytes were consumed, now and then."""
    problems: list[Problem] = []
    reader = csv.reader(_lines(io.BufferedReader(_Counting(raw, progress)), problems), strict=True)
    csv.field_size_limit(MAX_FIELD)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise Invalid(f"line 1: the header row cannot be read: {exc}", "csv") from None
    if problems:
        raise Invalid(f"line 1: the header row cannot be read: it {problems[0].text}", "csv")
    if not header or not any(h.strip() for h in header):
        raise Invalid("line 1: the CSV needs a header row with an \"email\" column", "csv")
    names = [h.strip() for h in header]
    lowered = [n.lower() for n in names]
    if "email" not in lowered:
        raise Invalid(f"line 1: the header has no \"email\" column (it has: {', '.join(names)})", "csv")
    email_at = lowered.index("email")
    columns = [n for i, n in enumerate(names) if i != email_at]
    bad = [n for n in columns if not _VARIABLE.fullmatch(n)]
    if bad:
        raise Invalid(f"line 1: column names must be variable names (letters, digits, _ and . between them): "
                      f"{', '.join(repr(b) for b in bad)}", "csv")
    seen_names = set()
    for n in lowered:
        if n in seen_names:
            raise Invalid(f"line 1: the column \"{n}\" appears twice", "csv")
        seen_names.add(n)
    _nesting_conflicts(columns)
    reading = Reading(columns, problems)
    return reading, _rows(reader, reading, names, email_at, max_rows)


def _rows(reader: Any, reading: Reading, names: list[str], email_at: int, max_rows: int) -> Iterator[Row]:
    seen: dict[str, int] = {}
    line = 2
    width = len(names)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            reading.problems.append(Problem(line, f"cannot be read: {exc}"))
            line = reader.line_num + 1
            continue
        start, line = line, reader.line_num + 1
        reading.lines = reader.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue        # a blank line
        if len(cells) != width:
            reading.problems.append(Problem(start, f"has {len(cells)} columns, the header has {width}"))
            continue
        given = cells[email_at].strip()
        try:
            address = str(parse_address(_angle(given)))
        except AddressError as exc:
            reading.problems.append(Problem(start, f"\"{given[:100]}\" is not a valid address: {exc}"))
            continue
        key = address.lower()
        if key in seen:
            reading.problems.append(Problem(start, f"{address} is a duplicate of line {seen[key]}"))
            continue
        if reading.rows >= max_rows:
            reading.problems.append(Problem(start, f"the group would have more than {max_rows} rows "
                                                   f"(batch.max_group_size)"))
            continue
        seen[key] = start
        reading.rows += 1
        values = {n: c for i, (n, c) in enumerate(zip(names, cells)) if i != email_at}
        yield Row(reading.rows, start, address, json.dumps(nest(values), ensure_ascii=False,
                                                           separators=(",", ":")))


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "c": 2} → {"a": {"b": 1}, "c": 2}."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        *parents, last = name.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _nesting_conflicts(columns: list[str]) -> None:
    names = set(columns)
    for c in columns:
        parts = c.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in names:
                raise Invalid(f"line 1: the columns \"{'.'.join(parts[:i])}\" and \"{c}\" cannot both be given "
                              "(one would hold the other)", "csv")


def _angle(text: str) -> str:
    """"Name <a@b>" or "<a@b>" → a@b; a bare address as it is."""
    if text.endswith(">") and "<" in text:
        return text[text.rindex("<") + 1:-1].strip()
    return text


def _lines(raw: IO[bytes], problems: list[Problem]) -> Iterator[str]:
    """The file's lines as text, decoded one by one so that a line that is not UTF-8 is named
    (and read as blank) rather than failing the file somewhere in a buffer."""
    number = 0
    while True:
        line = raw.readline()
        if not line:
            return
        number += 1
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[3:]
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(Problem(number, "is not UTF-8 text"))
            yield "\n"


class _Counting(io.RawIOBase):
    """Reads through, telling `progress` the bytes consumed every 256 KiB."""

    def __init__(self, raw: IO[bytes], progress: Callable[[int], None] | None):
        self.raw = raw
        self.progress = progress
        self.done = 0
        self._told = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.raw.read(len(buffer))
        n = len(chunk)
        buffer[:n] = chunk
        self.done += n
        if self.progress is not None and (self.done - self._told >= 256 * 1024 or not n):
            self._told = self.done
            self.progress(self.done)
        return n
