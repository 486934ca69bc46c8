"""What a remote reply means: delivered, deferred or bounced, and the bounce class.

Pure. Classes: `invalid_address` (5.1.1, 5.1.10, "user unknown"), `mailbox_full`
(5.2.2/4.2.2), `spam` (content rejected as spam), `reputation` (our IP or domain blocked
or rate limited: 421, 4.7.x, 5.7.x with block-list wording), `other`. Only recipient
faults may feed the blocklist later; reputation faults feed the throttle.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")

_INVALID = re.compile(r"user unknown|unknown user|no such user|mailbox unavailable|does not exist|"
                      r"recipient (address )?rejected|invalid recipient|no mailbox|address rejected|"
                      r"unrouteable|undeliverable address|doesn't have an? [\w.-]+ account|"
                      r"account (that you tried to reach )?(does not exist|is disabled)", re.I)
_FULL = re.compile(r"mailbox (is )?full|over ?quota|quota exceeded|insufficient storage", re.I)
_SPAM = re.compile(r"spam|content|message (was )?rejected|virus|malware|phish|policy violation", re.I)
_REPUTATION = re.compile(r"block ?list|blacklist|blocked|listed|reputation|rate limit|too many|try again later|"
                         r"spamhaus|rbl|dnsbl|not allowed to send|throttl|deferred due to", re.I)


# Greylisting (postgrey and friends): "450 4.2.0 ... Greylisted", "451 4.7.1 Please try again
# later". A plain temporary refusal of a first attempt: retried on the normal schedule, never a
# reputation signal (it is not about us, and it passes on the next try).
_GREYLIST = re.compile(r"gr[ae]y ?list|come back later|please (try again|retry) later", re.I)
_BLOCK_WORDS = re.compile(r"block ?list|blacklist|blocked|reputation|rate limit|too many|spamhaus|rbl|dnsbl|"
                          r"not allowed to send|throttl", re.I)


def is_greylisting(reply: Reply) -> bool:
    return reply.code in (450, 451) and bool(_GREYLIST.search(reply.text)) and not _BLOCK_WORDS.search(reply.text)


class Result(str, enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    EXPIRED = "expired"


class BounceClass(str, enum.Enum):
    INVALID_ADDRESS = "invalid_address"
    MAILBOX_FULL = "mailbox_full"
    SPAM = "spam"
    REPUTATION = "reputation"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str

    @property
    def enhanced(self) -> str | None:
        m = _ENHANCED.match(self.text)
        return ".".join(m.groups()) if m else None

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def classify(reply: Reply) -> tuple[Result, BounceClass | None]:
    """The result of one reply to RCPT or end of DATA, and its class when it is a failure."""
    if 200 <= reply.code < 300:
        return Result.DELIVERED, None
    result = Result.BOUNCED if 500 <= reply.code < 600 else Result.DEFERRED
    return result, bounce_class(reply)


def bounce_class(reply: Reply) -> BounceClass:
    enhanced = reply.enhanced or ""
    text = reply.text
    if is_greylisting(reply):
        return BounceClass.OTHER
    if enhanced in ("5.1.1", "5.1.10", "5.1.0", "5.1.2", "5.1.6") or (reply.code >= 500 and _INVALID.search(text)
                                                                     and not _REPUTATION.search(text)):
        return BounceClass.INVALID_ADDRESS
    if enhanced in ("5.2.2", "4.2.2") or _FULL.search(text):
        return BounceClass.MAILBOX_FULL
    if reply.code == 421 or (enhanced.startswith(("4.7.", "5.7.")) and _REPUTATION.search(text)) \
            or (reply.code < 500 and _REPUTATION.search(text)):
        return BounceClass.REPUTATION
    if enhanced in ("5.7.1", "5.6.0", "5.7.0") and _SPAM.search(text) or _SPAM.search(text) and reply.code >= 500:
        return BounceClass.SPAM
    if enhanced.startswith("4.7."):
        return BounceClass.REPUTATION
    return BounceClass.OTHER
