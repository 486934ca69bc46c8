"""VERP return paths (issue 18): the envelope sender of delivered mail names the message and the
recipient it was sent to, signed, so a bounce that comes back days later is tied to exactly
that recipient and a forged one is ignored.

    bounces+661BEC30393E01DR54-2s-k3v9q2mx7f4ta1pd@bounce.example.com
    <prefix>+<queue id>-<recipient id, base 36>-<HMAC-SHA256, 80 bits, base 32>

The queue id is 18 characters (queue.ids), the recipient id a few; with the default prefix the
local part stays under 60 octets (RFC 5321's limit is 64). Case does not matter: some MTAs
lower-case the local part they bounce to, so the token is read case-insensitively and the MAC
is over the upper-cased queue id.

Must never: touch the store or know where the secret is kept (callers pass it).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re

MAC_BYTES = 10                   # 80 bits: 16 base-32 characters
MAX_LOCAL_PART = 64
_TOKEN = re.compile(r"^(?P<prefix>[a-z0-9._-]+)\+(?P<queue>[0-9a-z]{10,32})-(?P<rcpt>[0-9a-z]{1,13})-"
                    r"(?P<mac>[a-z2-7]{16})$", re.IGNORECASE)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _mac(secret: bytes, queue_id: str, rcpt_id: int) -> str:
    digest = hmac.new(secret, f"{queue_id.upper()}:{rcpt_id}".encode("ascii"), hashlib.sha256).digest()
    return base64.b32encode(digest[:MAC_BYTES]).decode("ascii").lower()


def local_part(prefix: str, secret: bytes, queue_id: str, rcpt_id: int) -> str:
    """The VERP local part for one recipient of one message."""
    if rcpt_id < 0:
        raise ValueError("a recipient id is not negative")
    part = f"{prefix}+{queue_id}-{_base36(rcpt_id)}-{_mac(secret, queue_id, rcpt_id)}"
    if len(part) > MAX_LOCAL_PART:
        raise ValueError(f"the VERP local part would be {len(part)} octets (limit {MAX_LOCAL_PART}): shorten "
                         "feedback.return_path_prefix")
    return part


def address(prefix: str, secret: bytes, queue_id: str, rcpt_id: int, sender_domain: str, host: str) -> str:
    """`<prefix>+<token>@<host>.<sender domain>` (host: domains.return_path_host, "bounce")."""
    return f"{local_part(prefix, secret, queue_id, rcpt_id)}@{host}.{sender_domain.lower()}"


def looks_like(recipient: str) -> bool:
    """Whether the address has the shape of a VERP token (valid or not)."""
    local = recipient.rpartition("@")[0] if "@" in recipient else recipient
    return _TOKEN.match(local.strip("<>")) is not None


def parse(recipient: str, secrets: list[bytes]) -> tuple[str, int] | None:
    """(queue id, recipient id) of a VERP address whose MAC one of `secrets` (the current one
    first, then retired ones) made; None for anything else, a forged or altered token included."""
    local = recipient.rpartition("@")[0] if "@" in recipient else recipient
    found = _TOKEN.match(local.strip("<>"))
    if found is None:
        return None
    queue_id = found["queue"].upper()
    rcpt_id = int(found["rcpt"].lower(), 36)
    given = found["mac"].lower()
    for secret in secrets:
        if hmac.compare_digest(given, _mac(secret, queue_id, rcpt_id)):
            return queue_id, rcpt_id
    return None
