"""The signer (dkimpy's semantics, OpenSSL's private-key step) against dkimpy's own verifier
(which runs dkimpy's pure-Python RSA and PyNaCl, not the signer's OpenSSL path; the
integration tests add Node's mailauth, which shares no code at all): generated headers and
bodies with folding, tabs, runs of spaces, trailing whitespace and blank lines, repeated
headers; long folded headers, 8-bit, empty and 1 MB bodies; RSA-2048 and Ed25519, alone and
dual."""
from __future__ import annotations

import base64
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.config import DkimAlgorithm
from smtprelay.dkim.signer import RelaxedBody, Signer, SigningKey

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()


def _pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


RECORDS = {
    b"r1._domainkey.example.com.": b"v=DKIM1; k=rsa; p=" + base64.b64encode(RSA.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)),
    b"e1._domainkey.example.com.": b"v=DKIM1; k=ed25519; p=" + base64.b64encode(ED.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)),
}
RSA_KEY = SigningKey("example.com", "r1", DkimAlgorithm.RSA_SHA256, _pem(RSA))
ED_KEY = SigningKey("example.com", "e1", DkimAlgorithm.ED25519_SHA256, _pem(ED))
SIGNER = Signer([RSA_KEY, ED_KEY])


def verify_all(message: bytes) -> list[bool]:
    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return RECORDS.get(name)
    def one(index: int) -> bool:
        try:
            return bool(dkim.DKIM(message).verify(idx=index, dnsfunc=dns))
        except dkim.DKIMException:     # a mismatch is raised, not returned, by DKIM.verify
            return False
    count = message.split(b"\r\n\r\n", 1)[0].count(b"DKIM-Signature:")
    return [one(i) for i in range(count)]


_text = st.text(alphabet=st.sampled_from("abc xyz\t.,;:<>@-="), min_size=0, max_size=60).map(str.encode)
_value = st.lists(_text, min_size=1, max_size=3).map(lambda parts: b"\r\n ".join(parts))   # folded
_header_name = st.sampled_from([b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"MIME-Version",
                                b"Content-Type", b"Reply-To", b"X-Other", b"subject", b"TO"])
_headers = st.lists(st.tuples(_header_name, _value), max_size=8)
_body_line = st.text(alphabet=st.sampled_from("ab .\t-=x"), max_size=90).map(str.encode)
_body = st.lists(_body_line, max_size=20).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(from_value=_value, headers=_headers, body=_body, trailing=st.integers(0, 3))
def test_generated_messages_verify(from_value: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                                   trailing: int) -> None:
    head = b"From: a@example.com" + from_value + b"\r\n" + b"".join(n + b":" + v + b"\r\n" for n, v in headers)
    message = head + b"\r\n" + body + b"\r\n" * trailing
    signed = SIGNER.sign(message)
    assert signed.endswith(message)                       # the message itself is never changed
    assert verify_all(signed) == [True, True]
    assert max(len(line) for line in signed[:len(signed) - len(message)].split(b"\r\n")) <= 78


def test_tampering_is_caught() -> None:
    signed = SIGNER.sign(b"From: a@example.com\r\nSubject: pay 10\r\n\r\nhello\r\n")
    assert verify_all(signed) == [True, True]
    assert verify_all(signed.replace(b"pay 10", b"pay 99")) == [False, False]    # a signed header
    assert verify_all(signed.replace(b"hello", b"hellO")) == [False, False]      # the body
    # A second From added below is caught by over-signing.
    assert verify_all(signed.replace(b"\r\n\r\nhello", b"\r\nFrom: evil@x.test\r\n\r\nhello")) == [False, False]


LONG_FOLDED = b"Subject: " + b"\r\n\t".join([b"word " * 15] * 6) + b"\r\n"
CASES = {
    "long folded headers": b"From: a@example.com\r\n" + LONG_FOLDED + b"To: " + b",\r\n ".join(
        b"user%d@example.org" % i for i in range(40)) + b"\r\n\r\nbody\r\n",
    "8-bit body": "From: a@example.com\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln \t — ünïcödé\r\n".encode(),
    "empty body": b"From: a@example.com\r\nSubject: empty\r\n\r\n",
    "no body at all": b"From: a@example.com\r\nSubject: none\r\n",
    "trailing blank lines": b"From: a@example.com\r\nSubject: t\r\n\r\nlast\r\n\r\n\r\n\r\n",
    "body over 1 MB": b"From: a@example.com\r\nSubject: big\r\n\r\n" + b"0123456789 abcdef  ghij\t\r\n" * 45_000,
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("keys", ["rsa", "ed25519", "dual"])
def test_message_shapes_verify(name: str, keys: str) -> None:
    chosen = {"rsa": [RSA_KEY], "ed25519": [ED_KEY], "dual": [RSA_KEY, ED_KEY]}[keys]
    message = CASES[name]
    signed = Signer(chosen).sign(message)
    assert signed.endswith(message)
    assert verify_all(signed) == [True] * len(chosen)
    assert max(len(line) for line in signed[:len(signed) - len(message)].split(b"\r\n")) <= 78


def test_header_selection_is_dkimpys_with_from_oversigned() -> None:
    message = (b"Received: from x\r\nFrom: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\nX-Mailer: m\r\n"
               b"List-Unsubscribe: <https://u.example/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
               b"\r\nhi\r\n")
    head = SIGNER.sign(message, now=1_700_000_000).split(b"\r\n\r\n")[0].replace(b"\r\n ", b" ")
    fields = dkim.util.parse_tag_value(head.split(b"DKIM-Signature:")[1].split(b"\r\nDKIM-Signature")[0].strip())
    names = [n.strip() for n in fields[b"h"].split(b":")]
    assert names == [b"from", b"to", b"subject", b"list-unsubscribe", b"list-unsubscribe-post", b"from"]
    assert fields[b"c"] == b"relaxed/relaxed" and fields[b"t"] == b"1700000000" and fields[b"d"] == b"example.com"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"b.", b" ", b"  ", b"\t", b"\r\n", b" \r\n", b"\t\r\n", b"\r\n\r\n", b"\r"]),
                max_size=40).map(b"".join))
def test_fast_relaxed_body_is_dkimpys(body: bytes) -> None:
    assert RelaxedBody.canonicalize_body(body) == dkim.canonicalization.Relaxed.canonicalize_body(body)


_PIECES = [b"a", b"Subject", b":", b" ", b"  ", b"\t", b"\r\n", b"\r\n ", b"\r\n\t", b"\n", b"\r", b"x-y",
           b"From ", b"\xc3\xa9"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40))
def test_linear_header_parse_equals_dkimpys(pieces: list[bytes]) -> None:
    """Issue 24, item 1: the linear parse gives dkimpy's rfc822_parse headers, and refuses what
    it refuses (and a leading continuation line, where dkimpy raises IndexError)."""
    from smtprelay.dkim.signer import MalformedMessage, rfc822_headers
    head = b"".join(pieces) + b"\r\n"
    try:
        expected: Any = dkim.rfc822_parse(head + b"\r\n")[0]
    except (dkim.MessageFormatError, IndexError) as exc:
        expected = type(exc)
    try:
        got: Any = rfc822_headers(head)
    except MalformedMessage:
        got = dkim.MessageFormatError if expected is not IndexError else IndexError
    assert got == expected


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"Subject", b"X-A ", b"FROM"]),
                          st.lists(st.sampled_from(_PIECES[3:]), max_size=12).map(b"".join)), max_size=5))
def test_relaxed_header_fast_path_equals_dkimpys(headers: list[tuple[bytes, bytes]]) -> None:
    from smtprelay.dkim.signer import RelaxedHeaders
    assert RelaxedHeaders.canonicalize_headers(headers) == \
        [tuple(h) for h in dkim.canonicalization.Relaxed.canonicalize_headers(headers)]


def test_a_1mb_folded_header_signs_and_verifies() -> None:
    """The linear parse signs what dkimpy verifies (cost is measured in bench/, not here)."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = base64.b64encode(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                            serialization.PublicFormat.Raw)).decode()
    signer = Signer([SigningKey("example.com", "s1", DkimAlgorithm.ED25519_SHA256, pem)])
    head = b"From: a@example.com\r\nX-Long: start\r\n" + \
        b"".join(b" " + b"y" * 47 + b"\r\n" for _ in range(20_000)) + b"Subject: big\r\n"
    signed = signer.sign(head + b"\r\nbody\r\n")   # (dkimpy's verifier parses quadratically: 1 MB, not 4)
    record = f"v=DKIM1; k=ed25519; p={public}".encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)
