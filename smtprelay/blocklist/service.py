"""Blocklist service: the SQL of `blocklist`, `allowlist` and `feedback`, shared by the CLI,
the server (loading its snapshot), delivery (automatic entries) and the events side
(unsubscribes and complaints → `reject` entries).

Removal rules: the operator may remove any entry; acting for an account (`--account`), an
`invalid` entry may only be removed by its origin account; any other account may only
`allow` the address for itself.
"""
from __future__ import annotations

import builtins
import csv
import sqlite3
from dataclasses import asdict, dataclass
from collections.abc import Iterable
from typing import Any, Callable, TextIO

from smtprelay.accounts import AccountService, RefusedError
from smtprelay.policy.address import AddressError, parse_address
from smtprelay.policy.blocklist import TYPES, BlocklistView, Entry

CSV_COLUMNS = ("address", "type", "account", "sender_domain", "expires_at", "note")


def canonical(address: str) -> str:
    try:
        return str(parse_address(address.strip().strip("<>")))
    except AddressError as exc:
        raise RefusedError(f"\"{address}\" is not a valid address: {exc}") from None


def _entry(row: sqlite3.Row | tuple) -> Entry:  # type: ignore[type-arg]
    return Entry(*row)


_COLUMNS = ("id, address, type, account_id, sender_domain, origin_account_id, reason, note, created_at,"
            " expires_at")


VIEW_SQL = f"SELECT {_COLUMNS} FROM blocklist WHERE expires_at IS NULL OR expires_at > ?"   # (now,)
ALLOWED_SQL = "SELECT account_id, address FROM allowlist"


def blocklist_view(entries: Iterable[Any], allowed: Iterable[Any]) -> BlocklistView:
    """The rows of VIEW_SQL and ALLOWED_SQL as the gate checks them."""
    return BlocklistView([_entry(r) for r in entries], {(r[0], r[1]) for r in allowed})


def load_view(conn: sqlite3.Connection, now: float) -> BlocklistView:
    return blocklist_view(conn.execute(VIEW_SQL, (now,)), conn.execute(ALLOWED_SQL))


def blocklist_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'blocklist_version'").fetchone()[0])


@dataclass(frozen=True, slots=True)
class ImportReport:
    imported: int
    bad_rows: list[tuple[int, str]]


class BlocklistService:
    def __init__(self, conn: sqlite3.Connection, now: float):
        self.conn = conn
        self.now = now
        self.accounts = AccountService(conn, now)

    def _account_id(self, name: str | None) -> int | None:
        return None if name is None else self.accounts.get_account(name).id

    def _account_names(self) -> dict[int, str]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT id, name FROM accounts")}

    def add(self, address: str, type_: str = "custom", account: str | None = None, expires_at: float | None = None,
            note: str | None = None, sender_domain: str | None = None, reason: str | None = None,
            origin: str | None = None) -> Entry:
        if type_ not in TYPES:
            raise RefusedError(f"type must be one of {', '.join(TYPES)}, got {type_}")
        address = canonical(address)
        if type_ == "reject" and not sender_domain:
            raise RefusedError("a reject entry needs the sender domain it applies to")
        if expires_at is not None and expires_at <= self.now:
            raise RefusedError("the expiry must be in the future")
        account_id = self._account_id(account) if type_ == "custom" else None
        origin_id = self._account_id(origin or account)
        cur = self.conn.execute(
            "INSERT INTO blocklist (address, type, account_id, sender_domain, origin_account_id, reason, note,"
            " created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (address, type_, account_id, sender_domain.lower() if sender_domain else None, origin_id,
             reason or {"custom": "added by the operator"}.get(type_, type_), note, self.now, expires_at))
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM blocklist WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _entry(row)

    def remove(self, address: str, account: str | None = None, type_: str | None = None) -> int:
        address = canonical(address)
        entries = [e for e in self.list(address=address) if type_ is None or e.type == type_]
        if not entries:
            raise RefusedError(f"{address} is not on the blocklist" + (f" as {type_}" if type_ else ""))
        if account is not None:
            account_id = self._account_id(account)
            mine = []
            for e in entries:
                if e.type == "invalid" and e.origin_account_id != account_id:
                    raise RefusedError(f"only the account whose mail bounced may remove the invalid entry for "
                                       f"{address}; account {account} can 'smtprelay blocklist allow' it instead")
                if e.type == "custom" and e.account_id not in (None, account_id):
                    continue
                mine.append(e)
            entries = mine
        for e in entries:
            self.conn.execute("DELETE FROM blocklist WHERE id = ?", (e.id,))
        return len(entries)

    def allow(self, address: str, account: str) -> None:
        address = canonical(address)
        account_id = self._account_id(account)
        self.conn.execute("INSERT OR IGNORE INTO allowlist (account_id, address, created_at) VALUES (?,?,?)",
                          (account_id, address, self.now))

    def disallow(self, address: str, account: str) -> int:
        return self.conn.execute("DELETE FROM allowlist WHERE account_id = ? AND address = ?",
                                 (self._account_id(account), canonical(address))).rowcount

    def list(self, type_: str | None = None, account: str | None = None, origin: str | None = None,
             address: str | None = None, since: float | None = None, until: float | None = None,
             include_expired: bool = False) -> list[Entry]:
        where: list[str] = []
        args: list[object] = []
        if not include_expired:
            where.append("(expires_at IS NULL OR expires_at > ?)")
            args.append(self.now)
        for column, value in (("type", type_), ("account_id", self._account_id(account)),
                              ("origin_account_id", self._account_id(origin)),
                              ("address", canonical(address) if address else None)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("created_at < ?")
            args.append(until)
        sql = f"SELECT {_COLUMNS} FROM blocklist" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [_entry(r) for r in self.conn.execute(sql, args)]

    def doc(self, e: Entry, iso: Callable[[float | None], str | None]) -> dict[str, object]:
        names = self._account_names()
        d = asdict(e)
        d["account"] = names.get(e.account_id) if e.account_id else None
        d["origin_account"] = names.get(e.origin_account_id) if e.origin_account_id else None
        d["created_at"], d["expires_at"] = iso(e.created_at), iso(e.expires_at)
        del d["account_id"], d["origin_account_id"]
        return d

    # -- CSV ---------------------------------------------------------------------------------
    def export_rows(self, iso: Callable[[float | None], str | None]) -> builtins.list[builtins.list[str]]:
        """Every active entry as the CSV's rows (CSV_COLUMNS), which `blocklist import` reads back."""
        names = self._account_names()
        return [[e.address, e.type, names.get(e.account_id or -1, ""), e.sender_domain or "",
                 iso(e.expires_at) or "", e.note or ""] for e in self.list()]

    def export(self, out: TextIO, iso: Callable[[float | None], str | None]) -> int:
        rows = self.export_rows(iso)
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
        return len(rows)

    def import_csv(self, text: TextIO, parse_time: Callable[[str], float],
                   progress: Callable[[int], None] | None = None) -> ImportReport:
        reader = csv.reader(text)
        imported, bad = 0, []
        header = next(reader, None)
        if header is None:
            return ImportReport(0, [(1, "the file is empty")])
        columns = [h.strip().lower() for h in header]
        if "address" not in columns:
            return ImportReport(0, [(1, f"the header must name the columns ({', '.join(CSV_COLUMNS)}); "
                                        "'address' is required")])
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for line_no, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                values = dict(zip(columns, (c.strip() for c in row)))
                try:
                    expires = parse_time(values["expires_at"]) if values.get("expires_at") else None
                    self.add(values["address"], values.get("type") or "custom", values.get("account") or None,
                             expires, values.get("note") or None, values.get("sender_domain") or None)
                    imported += 1
                except (RefusedError, ValueError) as exc:
                    bad.append((line_no, str(exc)))
                if progress is not None and line_no % 1000 == 0:
                    progress(line_no)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return ImportReport(imported, bad)


def record_feedback(conn: sqlite3.Connection, now: float, account_id: int | None, sender_domain: str, address: str,
                    kind: str, queue_id: str | None = None) -> None:
    """An unsubscribe or a complaint: remember it (reputation) and block that recipient for
    that sender domain (`reject`). Called by the events side; tests call it directly."""
    if kind not in ("unsubscribe", "complaint"):
        raise ValueError(kind)
    address = canonical(address)
    conn.execute("INSERT INTO feedback (account_id, sender_domain, address, kind, at) VALUES (?,?,?,?,?)",
                 (account_id, sender_domain.lower(), address, kind, now))
    from smtprelay.events import types as events
    # Every event of a message carries its tag, so stats count this under the same tag as the
    # message's opens and deliveries.
    found = conn.execute("SELECT tag FROM messages WHERE id = ?", (queue_id,)).fetchone() if queue_id else None
    conn.execute(events.INSERT, ("complained" if kind == "complaint" else "unsubscribed", now, account_id, queue_id,
                                 address, sender_domain.lower(), address.rpartition("@")[2], None,
                                 found[0] if found else None, events.data()))
    exists = conn.execute("SELECT 1 FROM blocklist WHERE address = ? AND type = 'reject' AND sender_domain = ?",
                          (address, sender_domain.lower())).fetchone()
    if not exists:
        conn.execute("INSERT INTO blocklist (address, type, sender_domain, origin_account_id, reason, created_at)"
                     " VALUES (?, 'reject', ?, ?, ?, ?)",
                     (address, sender_domain.lower(), account_id,
                      "unsubscribed" if kind == "unsubscribe" else "complained", now))

