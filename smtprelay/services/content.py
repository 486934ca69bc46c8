"""The quality check (`check-message`, `POST /api/v1/check-message`): what the relay and the
configured scanners would make of a message, without sending it.

Rules: the From: domain counts as verified when it is a sender domain of the account (of any
account when none is given) that may send now (verified, or failing within `domains.grace`),
and DKIM aligns when that domain has an active signing key. The scanners of
`content.scanners` are asked as the front end asks them; one that cannot be reached is
reported, not fatal. The score and its findings are `content.quality`'s.
"""
from __future__ import annotations

import asyncio
import uuid
from email.utils import formatdate
from dataclasses import dataclass
from typing import Any

from smtprelay.content import clamav, quality
from smtprelay.content.clamav import ScannerError
from smtprelay.content.rspamd import Rspamd, Score
from smtprelay.domains.status import sending_refusal
from smtprelay.errors import Invalid
from smtprelay.services.accounts import AccountService
from smtprelay.services.context import Context

MAX_CHECKED = 64 * 1024 * 1024      # a file larger than this is not a message to check


@dataclass
class QualityReport:
    facts: quality.Facts
    findings: list[quality.Finding]
    domain_verified: bool
    dkim_aligned: bool
    virus: dict[str, Any] | None
    spam: dict[str, Any] | None

    @property
    def score(self) -> int:
        return quality.score(self.findings)

    def doc(self) -> dict[str, Any]:
        return {"score": self.score, "scoring": "100 minus the cost of each finding (content.quality); a virus is 0",
                "findings": [f.doc() for f in self.findings], "message": self.facts.doc(),
                "from_domain_verified": self.domain_verified, "dkim_aligned": self.dkim_aligned,
                "virus_scan": self.virus, "spam": self.spam}


class ContentService:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def check(self, raw: bytes, account: str | None = None) -> QualityReport:
        if not raw.strip():
            raise Invalid("the message is empty", "message")
        if len(raw) > MAX_CHECKED:
            raise Invalid(f"the message is larger than {MAX_CHECKED} bytes", "message")
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        owner = AccountService(self.ctx).get(account) if account is not None else None
        facts = quality.read(raw)
        verified = aligned = False
        if facts.from_domain is not None:
            domain = self.ctx.catalog.domain(facts.from_domain)
            if domain is not None and (owner is None or domain.account_id == owner.id):
                verified = sending_refusal(domain.name, domain.state, self.ctx.now(),
                                           self.ctx.config.domains.grace) is None
                aligned = any(k.state == "active" for k in domain.keys)
        virus, spam, score = asyncio.run(self._scan(self._as_sent(raw), {
            "From": facts.from_address or "", "Rcpt": facts.first_recipient or "", "IP": "127.0.0.1",
            "Helo": self.ctx.config.server.hostname, "User": account or "check-message"}))
        rspamd_config = self.ctx.config.content.rspamd
        findings = quality.judge(facts, self.ctx.config.limits.max_message_bytes, verified, aligned,
                                 virus.get("name") if virus else None, score.score if score else None,
                                 rspamd_config.reject_score if rspamd_config else None)
        return QualityReport(facts, findings, verified, aligned, virus, spam)

    def _as_sent(self, raw: bytes) -> bytes:
        """The message with what stamping adds when it is missing (Date, Message-ID), so the
        scanners see what the relay would send."""
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        added = b""
        if not head.startswith(b"date:") and b"\r\ndate:" not in head:
            added += f"Date: {formatdate(self.ctx.now(), usegmt=True)}\r\n".encode()
        if not head.startswith(b"message-id:") and b"\r\nmessage-id:" not in head:
            added += f"Message-ID: <{uuid.uuid4().hex}@{self.ctx.config.server.hostname}>\r\n".encode()
        return added + raw

    async def _scan(self, raw: bytes, envelope: dict[str, str]) -> tuple[dict[str, Any] | None,
                                                                          dict[str, Any] | None, Score | None]:
        content = self.ctx.config.content
        virus = spam = None
        score = None
        if content.clamav is not None:
            try:
                name = await clamav.scan(content.clamav.address, raw, content.clamav.timeout)
                virus = {"result": "found", "name": name} if name else {"result": "clean"}
            except ScannerError as exc:
                virus = {"result": "error", "error": str(exc)}
        if content.rspamd is not None:
            client = Rspamd()
            try:
                score = await client.check(content.rspamd.url, raw, content.rspamd.timeout, envelope)
                spam = score.doc()
                spam["reject_score"] = content.rspamd.reject_score
                spam["hold_score"] = content.rspamd.hold_score
            except ScannerError as exc:
                spam = {"error": str(exc)}
            finally:
                await client.close()
        return virus, spam, score
