"""The recipient blocklist: entries by type, per-account allows, CSV import and export, and
the check that explains a verdict.

Removal rules: the operator may remove any entry; acting for an account (`account=`), an
`invalid` entry may only be removed by its origin account; any other account may only
`allow` the address for itself.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from typing import Any, Callable, TextIO

from smtprelay.catalog.records import Account
from smtprelay.errors import Invalid, NotFound, Refused
from smtprelay.policy.address import canonical
from smtprelay.policy.blocklist import TYPES, Entry
from smtprelay.services.context import Context
from smtprelay.services.accounts import AccountService
from smtprelay.when import iso

CSV_COLUMNS = ("address", "type", "account", "sender_domain", "expires_at", "note")


@dataclass(frozen=True, slots=True)
class ImportReport:
    imported: int
    bad_rows: list[tuple[int, str]]

    def doc(self) -> dict[str, Any]:
        return {"imported": self.imported, "bad_rows": [{"line": n, "error": e} for n, e in self.bad_rows]}


@dataclass(frozen=True, slots=True)
class Check:
    address: str
    account: str | None
    sender_domain: str | None
    reply: str | None
    allowed: bool
    entries: list[dict[str, Any]]

    @property
    def blocked(self) -> bool:
        return self.reply is not None

    def doc(self) -> dict[str, Any]:
        return {"address": self.address, "account": self.account, "sender_domain": self.sender_domain,
                "blocked": self.blocked, "reply": self.reply, "allowed": self.allowed, "entries": self.entries}


class BlocklistService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.catalog = ctx.catalog
        self.accounts = AccountService(ctx)

    def _account(self, name: str | None) -> Account | None:
        return None if name is None else self.accounts.get(name)

    def _account_id(self, name: str | None) -> int | None:
        account = self._account(name)
        return None if account is None else account.id

    def doc(self, e: Entry, names: dict[int, str] | None = None) -> dict[str, Any]:
        names = self.catalog.account_names() if names is None else names
        d = asdict(e)
        d["account"] = names.get(e.account_id) if e.account_id else None
        d["origin_account"] = names.get(e.origin_account_id) if e.origin_account_id else None
        d["created_at"], d["expires_at"] = iso(e.created_at), iso(e.expires_at)
        del d["account_id"], d["origin_account_id"]
        return d

    def docs(self, entries: list[Entry]) -> list[dict[str, Any]]:
        names = self.catalog.account_names()
        return [self.doc(e, names) for e in entries]

    def add(self, address: str, type_: str = "custom", account: str | None = None, expires_at: float | None = None,
            note: str | None = None, sender_domain: str | None = None, reason: str | None = None,
            origin: str | None = None) -> Entry:
        if type_ not in TYPES:
            raise Invalid(f"type must be one of {', '.join(TYPES)}, got \"{type_}\"", "type")
        address = canonical(address)
        if type_ == "reject" and not sender_domain:
            raise Invalid("a reject entry needs the sender domain it applies to", "sender_domain")
        now = self.ctx.now()
        if expires_at is not None and expires_at <= now:
            raise Invalid("the expiry must be in the future", "expires")
        account_id = self._account_id(account) if type_ == "custom" else None
        origin_id = self._account_id(origin or account)
        if type_ == "custom" and any(e.type == "custom" and e.account_id == account_id
                                     for e in self.entries(address=address)):
            raise Refused(f"{address} is already blocked for "
                          f"{'account ' + str(account) if account else 'all accounts'}; "
                          "'smtprelay blocklist set' changes its expiry or note")
        return self.catalog.insert_block(address, type_, account_id, sender_domain.lower() if sender_domain else None,
                                         origin_id, reason or {"custom": "added by the operator"}.get(type_, type_),
                                         note, now, expires_at)

    def _scoped(self, address: str, account: str | None, type_: str | None) -> list[Entry]:
        """The active entries for an address, of one type if given; acting for an account, the
        ones that account may change (an `invalid` entry only by its origin account)."""
        if type_ is not None and type_ not in TYPES:
            raise Invalid(f"type must be one of {', '.join(TYPES)}, got \"{type_}\"", "type")
        address = canonical(address)
        entries = [e for e in self.entries(address=address) if type_ is None or e.type == type_]
        if not entries:
            raise NotFound(f"{address} is not on the blocklist" + (f" as {type_}" if type_ else ""))
        if account is not None:
            account_id = self._account_id(account)
            mine = []
            for e in entries:
                if e.type == "invalid" and e.origin_account_id != account_id:
                    raise Refused(f"only the account whose mail bounced may remove the invalid entry for "
                                  f"{address}; account {account} can 'smtprelay blocklist allow' it instead")
                if e.type == "custom" and e.account_id not in (None, account_id):
                    continue
                mine.append(e)
            entries = mine
        return entries

    def remove(self, address: str, account: str | None = None, type_: str | None = None) -> int:
        entries = self._scoped(address, account, type_)
        with self.catalog.transaction():
            for e in entries:
                self.catalog.delete_block(e.id)
        return len(entries)

    def remove_triggered(self, origin: str, type_: str | None = None, since: float | None = None,
                         until: float | None = None) -> int:
        """Bulk removal of the entries one account's mail triggered ("my trigger list"), of one
        type and created in [since, until) if given; returns how many."""
        entries = self.entries(type_, origin=origin, since=since, until=until)
        with self.catalog.transaction():
            for e in entries:
                self.catalog.delete_block(e.id)
        return len(entries)

    def set(self, address: str, expires_at: float | None, clear_expiry: bool = False, note: str | None = None,
            account: str | None = None, type_: str | None = None) -> list[Entry]:
        """Change the validity (or the note) of an address's entries instead of adding a
        second row: a new expiry, or none (`clear_expiry`)."""
        if expires_at is None and not clear_expiry and note is None:
            raise Invalid("nothing to change: give an expiry (or none) or a note", "expires")
        if expires_at is not None and expires_at <= self.ctx.now():
            raise Invalid("the expiry must be in the future", "expires")
        entries = self._scoped(address, account, type_)
        fields: dict[str, Any] = {}
        if expires_at is not None or clear_expiry:
            fields["expires_at"] = expires_at
        if note is not None:
            fields["note"] = note
        with self.catalog.transaction():
            for e in entries:
                self.catalog.update_block(e.id, fields)
        return self.entries(address=canonical(address), type_=type_)

    def allow(self, address: str, account: str) -> str:
        address = canonical(address)
        self.catalog.allow(self.accounts.get(account).id, address, self.ctx.now())
        return address

    def disallow(self, address: str, account: str) -> str:
        address = canonical(address)
        self.catalog.disallow(self.accounts.get(account).id, address)
        return address

    def entries(self, type_: str | None = None, account: str | None = None, origin: str | None = None,
             address: str | None = None, since: float | None = None, until: float | None = None,
             include_expired: bool = False) -> list[Entry]:
        if type_ is not None and type_ not in TYPES:
            raise Invalid(f"type must be one of {', '.join(TYPES)}, got \"{type_}\"", "type")
        return self.catalog.blocks(now=self.ctx.now(), include_expired=include_expired, type_=type_,
                                   account_id=self._account_id(account), origin_account_id=self._account_id(origin),
                                   address=canonical(address) if address else None, since=since, until=until)

    def check(self, address: str, account: str | None = None, sender_domain: str | None = None) -> Check:
        address = canonical(address)
        now = self.ctx.now()
        view = self.catalog.blocklist_view(now)
        account_id = self._account_id(account)
        domain = (sender_domain or "").lower()
        findings = view.explain(address, account_id, domain, now)
        verdict = view.check(address, account_id, domain, now)
        allowed = account_id is not None and (account_id, address) in view.allowed
        names = self.catalog.account_names()
        entries = [{**self.doc(f.entry, names), "applies": f.applies, "why": f.why} for f in findings]
        return Check(address, account, domain or None, verdict.reply if verdict else None, allowed, entries)

    # -- CSV ---------------------------------------------------------------------------------
    def export_rows(self) -> list[list[str]]:
        """Every active entry as the CSV's rows (CSV_COLUMNS), which `import_csv` reads back."""
        names = self.catalog.account_names()
        # A custom entry's account is its scope; any other type's is the account whose mail
        # triggered it (a reject entry's unsubscriber's sender), which import reads back as origin.
        return [[e.address, e.type, names.get((e.account_id if e.type == "custom" else e.origin_account_id) or -1, ""),
                 e.sender_domain or "", iso(e.expires_at) or "", e.note or ""] for e in self.entries()]

    def export(self, out: TextIO) -> int:
        rows = self.export_rows()
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
        with self.catalog.transaction():
            for line_no, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                values = dict(zip(columns, (c.strip() for c in row)))
                try:
                    kind = values.get("type") or "custom"
                    expires = parse_time(values["expires_at"]) if values.get("expires_at") else None
                    if expires is None and kind == "invalid":      # as the relay's own invalid entries
                        expires = self.ctx.now() + self.ctx.config.blocklist.invalid_address_days * 86400.0
                    account = values.get("account") or None
                    self.add(values["address"], kind, account if kind == "custom" else None, expires,
                             values.get("note") or None, values.get("sender_domain") or None,
                             origin=None if kind == "custom" else account)
                    imported += 1
                except (Refused, Invalid, ValueError) as exc:
                    bad.append((line_no, str(exc)))
                if progress is not None and line_no % 1000 == 0:
                    progress(line_no)
        return ImportReport(imported, bad)
