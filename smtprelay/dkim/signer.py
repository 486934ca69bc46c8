"""The DKIM signer: message bytes in, signed message bytes out (RFC 6376, relaxed/relaxed;
RFC 8463 for Ed25519). Pure and thread-safe.

Owns: canonicalisation, the body hash, the DKIM-Signature header and the signature itself.
RSA and Ed25519 both run in OpenSSL through `cryptography`, which releases the GIL, so the
signing threads run beside the event loop. Keys are parsed once, when the signer is built.

Why not dkimpy here: its pure-Python canonicalisation (a dozen regex passes over the whole
message and a line-by-line header parser) held the GIL for about 0.3 ms per message, as
long as the RSA step itself, on the thread the event loop competes with. This module does
the same relaxed canonicalisation with fast paths: a body without tabs, double spaces or
trailing spaces needs no rewriting at all. dkimpy stays the verifier in the tests, next to
Node's mailauth, so the signer is checked by code it does not share.

Must never: run on the event loop (callers use a thread pool), or print private keys.
"""
from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from smtprelay.config import DkimAlgorithm

# Headers signed when present (From is always signed, twice: over-signing stops a second
# From being added in transit without breaking the signature).
SIGNED_HEADERS = (b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
                  b"reply-to", b"list-unsubscribe", b"list-unsubscribe-post")

_WSP_RUN = re.compile(rb"[\t ]+")
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_FOLD = 76          # keep DKIM-Signature lines below RFC 5322's recommended 78 characters


@dataclass(frozen=True, slots=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: DkimAlgorithm
    private_pem: bytes


class _Loaded:
    __slots__ = ("domain", "selector", "algorithm", "key")

    def __init__(self, key: SigningKey):
        self.domain = key.domain.encode("ascii")
        self.selector = key.selector.encode("ascii")
        self.algorithm = key.algorithm.value.encode("ascii")
        private = serialization.load_pem_private_key(key.private_pem, password=None)
        if key.algorithm is DkimAlgorithm.RSA_SHA256:
            if not isinstance(private, rsa.RSAPrivateKey):
                raise ValueError(f"DKIM key {key.selector} for {key.domain} is not an RSA key")
        elif not isinstance(private, ed25519.Ed25519PrivateKey):
            raise ValueError(f"DKIM key {key.selector} for {key.domain} is not an Ed25519 key")
        self.key: Any = private

    def sign(self, digest: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self.key.sign(digest)   # RFC 8463: Ed25519 over the SHA-256 hash (PureEdDSA)


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: no whitespace at line ends, runs of whitespace as one space, no empty
    lines at the end; an empty body stays empty."""
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        body = _WSP_RUN.sub(b" ", _TRAILING_WSP.sub(b"\r\n", body))
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    if end == 0:
        return b""
    return body[:end] + b"\r\n"


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, unfolded value with whitespace runs as one space,
    no whitespace around the colon or at the end."""
    value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return name + b":" + value.strip(b" \t") + b"\r\n"


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes, bytes]], bytes]:
    """([(lower-case name, raw name, raw value incl. folding)], body) — header fields in order."""
    end = message.find(b"\r\n\r\n")
    if message.startswith(b"\r\n"):
        head, body = b"", message[2:]
    elif end < 0:
        head, body = message, b""
    else:
        head, body = message[:end], message[end + 4:]
    fields: list[tuple[bytes, bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if fields:
                lower, raw, value = fields[-1]
                fields[-1] = (lower, raw, value + b"\r\n" + line)
            continue
        raw, colon, value = line.partition(b":")
        if colon:
            raw = raw.rstrip(b" \t")
            fields.append((raw.lower(), raw, value))
    return fields, body


def _fold(prefix: bytes, tags: list[list[bytes]]) -> bytes:
    """Tags separated by "; ", each a list of pieces that may be split between (h= after its
    colons, where RFC 6376 allows folding); a new line, with one leading space, whenever the
    next piece would run past _FOLD."""
    lines = [prefix]
    for i, pieces in enumerate(tags):
        pieces = pieces[:-1] + [pieces[-1] + (b";" if i < len(tags) - 1 else b"")]
        for j, piece in enumerate(pieces):
            joint = b" " if j == 0 else b""
            if len(lines[-1]) + len(joint) + len(piece) > _FOLD and len(lines[-1]) > 1:
                lines.append(b" " + piece)
            else:
                lines[-1] += joint + piece
    return b"\r\n".join(lines)


def _chunks(value: bytes, first: int, width: int = 70) -> list[bytes]:
    out = [value[:first]]
    out += [value[i:i + width] for i in range(first, len(value), width)]
    return [c for c in out if c]


class Signer:
    """Signs with every key given (dual signing: RSA and Ed25519)."""

    def __init__(self, keys: list[SigningKey]):
        if not keys:
            raise ValueError("a signer needs at least one key")
        self._keys = [_Loaded(k) for k in keys]

    def sign(self, message: bytes, now: float | None = None) -> bytes:
        fields, body = split_message(message)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        by_name: dict[bytes, list[tuple[bytes, bytes, bytes]]] = {}
        for field in fields:
            by_name.setdefault(field[0], []).append(field)
        include = [b"from", b"from"] + [h for h in SIGNED_HEADERS if h in by_name]
        # RFC 6376 5.4.2: repeated names take instances from the bottom up; a name with no
        # instance left (the second "from") contributes nothing but stops one being added.
        canonical = []
        remaining = {name: list(found) for name, found in by_name.items()}
        for name in include:
            stack = remaining.get(name)
            if stack:
                lower, _, value = stack.pop()
                canonical.append(relaxed_header(lower, value))
        signed_headers = b"".join(canonical)
        timestamp = str(int(time.time() if now is None else now)).encode()
        h_tag = [b"h=" + include[0] + b":"] + [name + b":" for name in include[1:-1]] + [include[-1]]
        signatures = b""
        for key in self._keys:
            tags = [[b"v=1"], [b"a=" + key.algorithm], [b"c=relaxed/relaxed"], [b"d=" + key.domain],
                    [b"s=" + key.selector], [b"t=" + timestamp], h_tag, [b"bh=" + body_hash], [b"b="]]
            unsigned = _fold(b"DKIM-Signature:", tags)
            _, _, value = unsigned.partition(b":")
            data = signed_headers + relaxed_header(b"dkim-signature", value)[:-2]   # no CRLF after itself
            signature = base64.b64encode(key.sign(hashlib.sha256(data).digest()))
            # The b= value may be folded anywhere (RFC 6376 3.5): verifiers remove it before hashing.
            room = _FOLD - len(unsigned.rsplit(b"\r\n", 1)[-1])
            folded = b"\r\n ".join(_chunks(signature, room)) if room >= 8 else b"\r\n " + b"\r\n ".join(
                _chunks(signature, 70))
            signatures += unsigned + folded + b"\r\n"
        return signatures + message
