"""What the front end makes of the scanners: a message's judgement after DATA, before it is
signed and committed.

Owns: which messages go to which scanner (clamd: those with an attachment, or all, by
`content.scanners.clamav.scan`; rspamd: all), the order (the virus scan first: a virus is
refused whatever its score), and the verdicts:
- a virus → `554 5.7.1 Message rejected: virus <name> found` (rule `virus`);
- a score at or over `reject_score` → `550 5.7.1` (rule `spam`); at or over `hold_score` →
  accepted and held for an operator (`queue list --state hold`);
- a scanner down or too slow → `451 4.7.1` (`content.scanner_failure = "tempfail"`) or the
  message goes on unscanned (`"accept"`), each time logged and counted.
`X-Smtprelay-Spam-Score` is added to accepted mail when `add_header` is set.

Must never: store anything, or decide for a message without a scanner configured.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from smtprelay.config import ContentConfig, ScannerFailure, ScanScope
from smtprelay.content import clamav
from smtprelay.content.clamav import ScannerError
from smtprelay.content.rspamd import Rspamd, Score
from smtprelay.policy import verdict as V

log = logging.getLogger("smtprelay.content")

_ATTACHMENT = re.compile(rb"^content-disposition:[ \t]*attachment|^content-type:(?![ \t]*(?:text/|multipart/))"
                         rb"|filename\*?=", re.MULTILINE)
_TOP_TYPE = re.compile(rb"^content-type:[ \t]*([a-z0-9!#$&^_.+-]+/)", re.MULTILINE)

SCANNER_FAILURE = V.temporary(451, "4.7.1", "Content scanner unavailable; try again later", "scanner_failure")


def has_attachment(content: bytes) -> bool:
    """Whether a message carries something other than text: a part with a file name, a part
    marked as an attachment, or a non-text, non-multipart type (at the top or in a part)."""
    head, _, body = content.partition(b"\r\n\r\n")
    top = _TOP_TYPE.search(head.lower())
    if top is None or top.group(1) == b"text/":
        return False
    if top.group(1) != b"multipart/":
        return True
    return _ATTACHMENT.search(body.lower()) is not None


def virus_verdict(name: str) -> V.Verdict:
    return V.reject(554, "5.7.1", f"Message rejected: virus {name[:100]} found", "virus")


def spam_verdict(score: float) -> V.Verdict:
    return V.reject(550, "5.7.1", f"Message rejected as spam (score {score:.1f})", "spam")


@dataclass
class Judgement:
    verdict: V.Verdict | None = None         # a refusal
    hold: str | None = None                  # accepted, held for an operator: why
    header: bytes | None = None              # to add to the message (signed with it)
    failures: list[str] = field(default_factory=list)   # scanners that failed (accepted unscanned)
    virus: str | None = None
    score: Score | None = None


class Scanners:
    """One per process (the rspamd client keeps its connections)."""

    def __init__(self) -> None:
        self.rspamd = Rspamd()

    async def judge(self, config: ContentConfig, content: bytes, envelope: dict[str, str]) -> Judgement:
        result = Judgement()
        if config.clamav is not None and (config.clamav.scan is ScanScope.ALL or has_attachment(content)):
            try:
                result.virus = await clamav.scan(config.clamav.address, content, config.clamav.timeout)
            except ScannerError as exc:
                if not self._failed(config, "clamav", exc, result):
                    return result
            if result.virus is not None:
                result.verdict = virus_verdict(result.virus)
                return result
        rs = config.rspamd
        if rs is not None:
            try:
                result.score = await self.rspamd.check(rs.url, content, rs.timeout, envelope)
            except ScannerError as exc:
                if not self._failed(config, "rspamd", exc, result):
                    return result
            score = result.score
            if score is not None:
                if rs.reject_score is not None and score.score >= rs.reject_score:
                    result.verdict = spam_verdict(score.score)
                    return result
                if rs.hold_score is not None and score.score >= rs.hold_score:
                    result.hold = f"spam score {score.score:.1f} (content.scanners.rspamd.hold_score {rs.hold_score:g})"
                if rs.add_header:
                    result.header = f"X-Smtprelay-Spam-Score: {score.score:.1f}\r\n".encode()
        return result

    def _failed(self, config: ContentConfig, scanner: str, exc: ScannerError, result: Judgement) -> bool:
        """A scanner failed: True when the message goes on unscanned."""
        result.failures.append(scanner)
        if config.scanner_failure is ScannerFailure.ACCEPT:
            log.warning("content: %s failed (%s); the message goes on unscanned (content.scanner_failure = accept)",
                        scanner, exc)
            return True
        log.warning("content: %s failed (%s); the message gets 451 4.7.1", scanner, exc)
        result.verdict = SCANNER_FAILURE
        return False

    async def close(self) -> None:
        await self.rspamd.close()
