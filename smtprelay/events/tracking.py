"""Open/click tracking and List-Unsubscribe: signed tokens and the per-recipient rewrite.

Pure apart from the key file and the settings SQL at the bottom. Applied at acceptance, before stamping and
DKIM signing, to one copy of the message per recipient (each copy has its own tokens):
- opens: a 1×1 image `<base_url>/t/o/<token>` before `</body>` of each HTML part;
- clicks: every http(s) `href` of the HTML parts becomes `<base_url>/t/c/<token>`; the target
  is inside the signed token, so the endpoint can never be used as an open redirect;
- unsubscribe: `List-Unsubscribe: <https://.../u/<token>>` (plus `<mailto:...>` when
  `tracking.unsubscribe_mailto` is set) and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
  (RFC 8058).
Plain-text parts are never changed. Settings: per sender domain, else per account, else off.

Tokens: base64url(JSON [kind, queue id, recipient, url]) "." base64url(HMAC-SHA256[:16]).
"""
from __future__ import annotations

import base64
import os
import secrets
import hashlib
import hmac
import html
import io
import json
import quopri
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtprelay.policy.content import remove_headers

if TYPE_CHECKING:
    from smtprelay.catalog.records import TrackingRow
    from smtprelay.config import Config

_HREF = re.compile(r"""(href\s*=\s*)(["'])(https?://[^"'\s>]+)\2""", re.I)
_BODY_END = re.compile(r"</body\s*>", re.I)


@dataclass(frozen=True, slots=True)
class Settings:
    opens: bool = False
    clicks: bool = False
    unsubscribe: bool = False

    @property
    def any(self) -> bool:
        return self.opens or self.clicks or self.unsubscribe


OFF = Settings()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: bytes, kind: str, queue_id: str, recipient: str, url: str = "") -> str:
    payload = _b64(json.dumps([kind, queue_id, recipient, url], separators=(",", ":")).encode())
    return payload + "." + _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:16])


def read_token(secret: bytes, token: str, kind: str) -> tuple[str, str, str] | None:
    """(queue id, recipient, url) of a genuine token of this kind; None for anything forged."""
    payload, _, mac = token.partition(".")
    try:
        expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:16])
        if not hmac.compare_digest(mac, expected):
            return None
        fields = json.loads(_unb64(payload))
    except (ValueError, TypeError):
        return None
    if not isinstance(fields, list) or len(fields) != 4 or fields[0] != kind:
        return None
    return str(fields[1]), str(fields[2]), str(fields[3])


def _rewrite_html(text: str, settings: Settings, base: str, secret: bytes, queue_id: str, rcpt: str) -> str:
    if settings.clicks:
        def link(m: re.Match[str]) -> str:
            url = html.unescape(m.group(3))
            if url.startswith(base):   # our own links (unsubscribe) stay as they are
                return m.group(0)
            return f"{m.group(1)}{m.group(2)}{base}/t/c/{make_token(secret, 'c', queue_id, rcpt, url)}{m.group(2)}"
        text = _HREF.sub(link, text)
    if settings.opens:
        pixel = (f'<img src="{base}/t/o/{make_token(secret, "o", queue_id, rcpt)}" width="1" height="1" alt=""'
                 ' style="display:none">')
        found = list(_BODY_END.finditer(text))
        text = text[:found[-1].start()] + pixel + text[found[-1].start():] if found else text + pixel
    return text


def personalize(content: bytes, settings: Settings, base_url: str, secret: bytes, queue_id: str, recipient: str,
                unsubscribe_mailto: str | None = None) -> bytes:
    """This recipient's copy: HTML parts rewritten, List-Unsubscribe headers added."""
    base = base_url.rstrip("/")
    out = content
    if settings.opens or settings.clicks:
        # The email package (its policies alone are megabytes) is loaded only where tracking is on.
        import email
        import email.policy
        from email.generator import BytesGenerator
        policy = email.policy.compat32.clone(linesep="\r\n")
        msg = email.message_from_bytes(content, policy=policy)
        changed = False
        for part in msg.walk():
            if part.get_content_type() != "text/html" or part.get_content_disposition() == "attachment":
                continue
            raw = part.get_payload(decode=True)
            if not isinstance(raw, bytes):
                continue
            charset = part.get_content_charset() or "utf-8"
            try:
                text = raw.decode(charset)
            except (LookupError, UnicodeDecodeError):
                continue   # an HTML part we cannot read is left alone
            new = _rewrite_html(text, settings, base, secret, queue_id, recipient)
            if new != text:
                del part["Content-Transfer-Encoding"]
                part["Content-Transfer-Encoding"] = "quoted-printable"
                part.set_payload(quopri.encodestring(new.encode(charset)).replace(b"\r\n", b"\n")
                                 .replace(b"\n", b"\r\n").decode("ascii"))
                changed = True
        if changed:
            buf = io.BytesIO()
            BytesGenerator(buf, mangle_from_=False, maxheaderlen=0, policy=policy).flatten(msg)
            out = buf.getvalue()
    if settings.unsubscribe:
        token = make_token(secret, "u", queue_id, recipient)
        targets = [f"<{base}/u/{token}>"]
        if unsubscribe_mailto:
            targets.append(f"<mailto:{unsubscribe_mailto}?subject=unsubscribe%20{token}>")
        added = (f"List-Unsubscribe: {', '.join(targets)}\r\n"
                 "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").encode("ascii")
        # The client's own List-Unsubscribe headers give way to ours (one of each).
        out = added + remove_headers(out, (b"list-unsubscribe:", b"list-unsubscribe-post:"))
    return out


def load_key(config: "Config") -> bytes:
    """The key that signs tracking and unsubscribe tokens: tracking.secret; in cluster mode one
    derived from cluster.key_file (the same on every node); else one generated once into
    data_dir/tracking.key (0600) so that links keep working across restarts."""
    if config.tracking.secret:
        return config.tracking.secret.encode()
    if config.cluster.postgres is not None and config.cluster.key_file is not None:
        from smtprelay.cluster.secrets import derived
        return derived(config.cluster.key_file, "tracking")     # every node's: a click may reach any node
    path = config.server.data_dir / "tracking.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


# -- settings ------------------------------------------------------------------------------

def resolve(rows: "list[TrackingRow]") -> tuple[dict[int, Settings], dict[str, Settings]]:
    """The catalog's rows as (per account, per sender domain), each already resolved
    (domain → account → off)."""
    accounts = {r.account_id: Settings(bool(r.opens), bool(r.clicks), bool(r.unsubscribe))
                for r in rows if r.domain is None}
    domains: dict[str, Settings] = {}
    for r in rows:
        if r.domain is None:
            continue
        base = accounts.get(r.account_id, OFF)
        domains[r.domain] = Settings(base.opens if r.opens is None else r.opens,
                                     base.clicks if r.clicks is None else r.clicks,
                                     base.unsubscribe if r.unsubscribe is None else r.unsubscribe)
    return accounts, domains
