"""The DKIM signer: message bytes in, signed message bytes out (RFC 6376, relaxed/relaxed;
RFC 8463 for Ed25519), on dkimpy. Pure and thread-safe.

Owns: which keys sign a domain's mail, parsed once when the signer is built. The DKIM
semantics come from dkimpy's public module API, exactly as `dkim.DKIM.sign` composes them:
`rfc822_parse`, `DKIM.default_sign_headers` (dkimpy's recommended header list, From signed
once more than present: over-signing), `CanonicalizationPolicy` (relaxed/relaxed; its body
algorithm given a fast path through that public hook, see RelaxedBody), the body hash, the
tag list, `hash_headers` and `fold`. Only the private-key operation differs:
dkimpy's RSA is pure Python and re-parses the PEM key on every call (8.5 ms per RSA-2048
signature here), so the SHA-256 digest dkimpy's hasher produced is signed by OpenSSL through
`cryptography` (~0.4 ms, keys loaded once) — for Ed25519 too (dkimpy would use PyNaCl; the
signature over the digest is the same, RFC 8463).

Must never: print private keys; change the message (signatures are prepended).
"""
from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import (CanonicalizationPolicy, Relaxed, compress_whitespace, correct_empty_body,
                                   strip_trailing_lines)

from smtprelay.config import DkimAlgorithm
from smtprelay.dkim.keys import SigningKey

# A header block dkimpy cannot parse (a line that is neither a field nor a continuation).
MalformedMessage = dkim.MessageFormatError



class RelaxedBody(Relaxed):
    """dkimpy's relaxed canonicalisation, given to its CanonicalizationPolicy as the body
    algorithm, with dkimpy's two whole-body regex passes skipped when they cannot change
    anything (no tab, no run of spaces, no space before a line end): its compress_whitespace
    rewrites every single space, 186 µs of the 190 µs it takes for a 4 KB text body
    (bench/signing.py). Otherwise dkimpy's own function runs. tests/test_dkim_signer.py holds
    the two equal on generated bodies."""

    @staticmethod
    def canonicalize_body(body: bytes) -> bytes:
        if b"\t" in body or b"  " in body or b" \r\n" in body:
            return bytes(Relaxed.canonicalize_body(body))
        return bytes(correct_empty_body(strip_trailing_lines(body)))


_LINE_END = re.compile(b"\r?\n")
_FIELD_NAME = re.compile(br"([\x21-\x7e]+?):")


def rfc822_headers(head: bytes) -> list[list[bytes]]:
    """dkimpy's `rfc822_parse` for a header block — the same [name, value] pairs, value with
    its continuation lines, each ending in CRLF — in linear time. dkimpy grows a folded header
    by bytes concatenation per continuation line, which is quadratic: a 1 MB folded header cost
    0.35 s of a worker's loop, 2 MB 1.1 s (issue 24). The result is given to dkimpy as
    `DKIM.headers`; tests/test_dkim_signer.py holds it equal to rfc822_parse on generated
    header blocks. A continuation line before any field (dkimpy: an IndexError) is refused
    like any other malformed line."""
    headers: list[list[bytes]] = []
    parts: list[bytes] = []
    # The front end hands over CRLF only: bytes.split then, dkimpy's regex otherwise.
    lines = head.split(b"\r\n") if head.count(b"\n") == head.count(b"\r\n") else _LINE_END.split(head)
    for line in lines:
        if not line:
            break
        if line[0] in (0x09, 0x20):
            if not headers:
                raise MalformedMessage(f"Unexpected characters in RFC822 header: {line!r}")
            parts.append(line)
            parts.append(b"\r\n")
            continue
        if parts:
            headers[-1][1] += b"".join(parts)
            parts = []
        m = _FIELD_NAME.match(line)
        if m is not None:
            headers.append([m.group(1), line[m.end(0):] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise MalformedMessage(f"Unexpected characters in RFC822 header: {line!r}")
    if parts:
        headers[-1][1] += b"".join(parts)
    return headers


class RelaxedHeaders(Relaxed):
    """dkimpy's relaxed header canonicalisation, given to CanonicalizationPolicy as the header
    algorithm, with its regex passes done by bytes.replace, and the whitespace one skipped when
    it cannot change anything (no tab, no run of spaces): dkimpy's two re.sub per field cost
    25 ms per MB of folded header on the worker's loop, this ~2 ms. tests/test_dkim_signer.py
    holds it equal to dkimpy's Relaxed on generated headers."""

    @staticmethod
    def canonicalize_headers(headers: Any) -> list[tuple[bytes, bytes]]:
        out = []
        for name, value in headers:
            value = value.replace(b"\r\n", b"")          # unfold_header_value: \r?\n removed
            if b"\n" in value:
                value = value.replace(b"\n", b"")
            if b"\t" in value or b"  " in value:
                value = compress_whitespace(value)
            out.append((name.lower().rstrip(), value.strip() + b"\r\n"))
        return out


RELAXED = CanonicalizationPolicy(RelaxedHeaders, RelaxedBody)     # c=relaxed/relaxed
# dkimpy's recommended list (RFC 6376 5.4.1) plus RFC 8058's one-click header, which a
# receiver only honours when it is signed.
SHOULD_SIGN = frozenset(dkim.DKIM.SHOULD) | {b"list-unsubscribe-post"}


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

    def signature(self, headers: list[Any], include: tuple[bytes, ...], body_hash: bytes,
                  timestamp: bytes) -> bytes:
        """One DKIM-Signature header field, as dkimpy's DKIM.sign and gen_header build it."""
        fields = [(b"v", b"1"), (b"a", self.algorithm), (b"c", RELAXED.to_c_value()), (b"d", self.domain),
                  (b"i", b"@" + self.domain), (b"q", b"dns/txt"), (b"s", self.selector), (b"t", timestamp),
                  (b"h", b" : ".join(include)), (b"bh", body_hash),
                  (b"b", b"0" * 60)]   # dkimpy's placeholder: b= folds onto its own line
        name = b"DKIM-Signature"
        value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(name))
        value = dkim.RE_BTAG.sub(b"\\1", value)
        hasher = dkim.HashThrough(hashlib.sha256())
        dkim.hash_headers(hasher, RELAXED, headers, include, (name, b" " + value), dict(fields))
        fields[-1] = (b"b", base64.b64encode(self.sign(hasher.digest())))
        signed = b"; ".join(b"=".join(f) for f in fields) + b"\r\n"
        return name + b": " + dkim.fold(signed, namelen=len(name))


class Signer:
    """Signs with every key given (dual signing: RSA and Ed25519)."""

    def __init__(self, keys: list[SigningKey]):
        if not keys:
            raise ValueError("a signer needs at least one key")
        self._keys = [_Loaded(k) for k in keys]

    def sign(self, message: bytes, now: float | None = None) -> bytes:
        """The DKIM-Signature header(s) for `message` (CRLF line ends), followed by the
        message. Raises MalformedMessage for a header block dkimpy cannot parse."""
        # dkimpy parses the header block (rfc822_parse); the body is everything after the first
        # empty line, as rfc822_parse would rejoin it for a CRLF message (what the front end
        # hands over), without splitting it into lines and joining them again.
        end = message.find(b"\r\n\r\n")
        head, body = (message, b"") if end < 0 else (message[:end + 2], message[end + 4:])
        parsed = dkim.DKIM()
        parsed.headers = rfc822_headers(head)    # dkimpy's parse, in linear time
        parsed.should_sign = SHOULD_SIGN     # read-only here: no copy per message
        include = tuple(name.lower() for name in parsed.default_sign_headers())
        headers = RELAXED.canonicalize_headers(parsed.headers)
        body_hash = base64.b64encode(hashlib.sha256(RELAXED.canonicalize_body(body)).digest())
        timestamp = str(int(time.time() if now is None else now)).encode()
        signatures = b""
        for key in self._keys:
            signatures += key.signature(headers, include, body_hash, timestamp)
        return signatures + message
