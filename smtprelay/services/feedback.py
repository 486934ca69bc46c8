"""What the feedback listener received (issue 18): `feedback list` and `feedback show`, and
/api/v1/feedback. Read-only: the listener's store job writes (feedback.receive).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from smtprelay.errors import Invalid, NotFound
from smtprelay.services.context import Context
from smtprelay.when import iso

TYPES = ("dsn", "arf", "unsubscribe", "unparsed")
RESULTS = ("applied", "duplicate", "unmatched", "ignored", "kept")
MAX_RAW_SHOWN = 1_048_576 + 65_536


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    id: int
    received_at: float
    listener: str
    peer: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    type: str
    result: str
    queue_id: str | None
    recipient: str | None
    sender_domain: str | None
    account: str | None
    size: int
    detail: dict[str, Any] | None = None     # show only: the parsed report and the actions
    raw: bytes | None = None                 # show only

    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id, "received_at": iso(self.received_at), "listener": self.listener, "peer": self.peer,
            "mail_from": self.mail_from, "rcpt_to": list(self.rcpt_to), "type": self.type, "result": self.result,
            "queue_id": self.queue_id, "recipient": self.recipient, "sender_domain": self.sender_domain,
            "account": self.account, "size": self.size}
        if self.detail is not None:
            doc["report"] = self.detail.get("report")
            doc["actions"] = self.detail.get("actions", [])
        if self.raw is not None:
            doc["raw"] = self.raw.decode("utf-8", "replace")
        return doc


_COLUMNS = ("f.id, f.received_at, f.listener, f.peer, f.mail_from, f.rcpt_to, f.type, f.result, f.queue_id,"
            " f.recipient, f.sender_domain, a.name, length(f.raw)")


def _entry(row: Any, detail: Any = None, raw: Any = None) -> FeedbackEntry:
    return FeedbackEntry(int(row[0]), float(row[1]), row[2], row[3], row[4], tuple(row[5].split("\n")) if row[5] else (),
                         row[6], row[7], row[8], row[9], row[10], row[11], int(row[12] or 0),
                         json.loads(detail) if detail is not None else None, bytes(raw) if raw is not None else None)


class FeedbackService:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def list(self, type: str | None = None, since: float | None = None, until: float | None = None,
             result: str | None = None, limit: int = 100) -> list[FeedbackEntry]:
        if type is not None and type not in TYPES:
            raise Invalid(f"type must be one of {', '.join(TYPES)}, got \"{type}\"", "type")
        if result is not None and result not in RESULTS:
            raise Invalid(f"result must be one of {', '.join(RESULTS)}, got \"{result}\"", "result")
        if limit < 1:
            raise Invalid(f"limit must be at least 1, got {limit}", "limit")
        where, params = [], []   # type: ignore[var-annotated]
        for clause, value in (("f.type = ?", type), ("f.result = ?", result), ("f.received_at >= ?", since),
                              ("f.received_at < ?", until)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = (f"SELECT {_COLUMNS} FROM feedback_messages f LEFT JOIN accounts a ON a.id = f.account_id"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY f.id DESC LIMIT ?")
        return [_entry(r) for r in self.ctx.store.execute(sql, (*params, limit))]

    def show(self, feedback_id: int) -> FeedbackEntry:
        row = self.ctx.store.execute(f"SELECT {_COLUMNS}, f.detail, f.raw FROM feedback_messages f"
                                     " LEFT JOIN accounts a ON a.id = f.account_id WHERE f.id = ?",
                                     (feedback_id,)).fetchone()
        if row is None:
            raise NotFound(f"no feedback mail {feedback_id} (it may be older than feedback.retention)")
        return _entry(row, row[13], row[14])
