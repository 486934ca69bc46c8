"""Blocklist decisions: is this recipient blocked for this account and sender domain?

Pure: works on a snapshot of entries (loaded by the app when the blocklist changes). Types:
`invalid` (global, from hard bounces), `full_inbox` (global, from repeated mailbox_full),
`reject` (unsubscribe/complaint: only for the sender domain refused), `custom` (operator,
for one account or all). An account's allow entry overrides `invalid` and `full_inbox`
for that account only.
"""
from __future__ import annotations

from dataclasses import dataclass

from smtprelay.policy.verdict import Verdict, reject

GLOBAL_TYPES = ("invalid", "full_inbox")
TYPES = ("invalid", "reject", "custom", "full_inbox")


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    address: str
    type: str
    account_id: int | None
    sender_domain: str | None
    origin_account_id: int | None
    reason: str | None
    note: str | None
    created_at: float
    expires_at: float | None

    def active(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class Finding:
    entry: Entry
    applies: bool
    why: str


class BlocklistView:
    def __init__(self, entries: list[Entry], allowed: set[tuple[int, str]]):
        self.by_address: dict[str, list[Entry]] = {}
        self.by_id: dict[int, Entry] = {}
        for e in entries:
            self.by_address.setdefault(e.address, []).append(e)
            self.by_id[e.id] = e
        self.allowed = allowed

    def put(self, entry: Entry) -> None:
        """A new or changed entry (the gate's incremental refresh)."""
        self.drop(entry.id)
        self.by_address.setdefault(entry.address, []).append(entry)
        self.by_id[entry.id] = entry

    def drop(self, entry_id: int) -> None:
        old = self.by_id.pop(entry_id, None)
        if old is not None:
            left = [e for e in self.by_address.get(old.address, []) if e.id != entry_id]
            if left:
                self.by_address[old.address] = left
            else:
                self.by_address.pop(old.address, None)

    def __len__(self) -> int:
        return len(self.by_id)

    def explain(self, address: str, account_id: int | None, sender_domain: str, now: float) -> list[Finding]:
        """Every entry for this address and whether it applies, with the reason."""
        out = []
        allowed = account_id is not None and (account_id, address) in self.allowed
        for e in self.by_address.get(address, []):
            if not e.active(now):
                out.append(Finding(e, False, "expired"))
            elif e.type in GLOBAL_TYPES:
                out.append(Finding(e, not allowed, "allowed for this account" if allowed else f"{e.type}: global"))
            elif e.type == "reject":
                hit = e.sender_domain == sender_domain
                out.append(Finding(e, hit, f"reject for sender domain {e.sender_domain}"))
            else:
                hit = e.account_id is None or e.account_id == account_id
                out.append(Finding(e, hit, "custom: " + ("all accounts" if e.account_id is None
                                                         else "this account" if hit else "another account")))
        return out

    def check(self, address: str, account_id: int | None, sender_domain: str, now: float) -> Verdict | None:
        entries = self.by_address.get(address)
        if not entries:
            return None
        for finding in self.explain(address, account_id, sender_domain, now):
            if finding.applies:
                kind = finding.entry.type
                if kind == "invalid":
                    return reject(550, "5.1.1", f"Recipient {address} is on the blocklist (type invalid: earlier "
                                                "deliveries bounced as an invalid address)", "blocklist_invalid")
                what = {"reject": "the recipient unsubscribed or complained", "custom": "blocked by the operator",
                        "full_inbox": "the mailbox was repeatedly full"}[kind]
                return reject(550, "5.7.1", f"Recipient {address} is on the blocklist (type {kind}: {what})",
                              f"blocklist_{kind}")
        return None
