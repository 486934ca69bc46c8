"""Verdicts: what a rule decides, and the SMTP reply that carries it.

A verdict is a value: accept, temporary failure (4xx) or rejection (5xx), with an
enhanced status code and a `reason` label that metrics and events use.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    code: int
    status: str          # enhanced status code, e.g. "5.7.1"
    text: str
    reason: str          # low-cardinality label: "ok", "max_recipients", "bad_address", ...

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"


def accept(status: str = "2.0.0", text: str = "Ok") -> Verdict:
    return Verdict(250, status, text, "ok")


def temporary(code: int, status: str, text: str, reason: str) -> Verdict:
    return Verdict(code, status, text, reason)


def reject(code: int, status: str, text: str, reason: str) -> Verdict:
    return Verdict(code, status, text, reason)


MAIL_OK = accept("2.1.0", "Sender ok")
RCPT_OK = accept("2.1.5", "Recipient ok")
SHARED_UNAVAILABLE = temporary(451, "4.3.0", "Sending limits temporarily unavailable; try again later",
                               "shared_limits_unavailable")
CATALOG_UNAVAILABLE = temporary(451, "4.3.0", "Sender policy temporarily unavailable; try again later",
                                "catalog_unavailable")
STORE_UNAVAILABLE = temporary(452, "4.3.1", "Insufficient system storage", "store_unavailable")
TOO_MANY_RECIPIENTS = temporary(452, "4.5.3", "Too many recipients", "max_recipients")
