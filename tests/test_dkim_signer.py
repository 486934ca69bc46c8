"""The signer against a verifier it shares no code with (dkimpy; the integration tests add
Node's mailauth): generated headers and bodies with folding, tabs, runs of spaces, trailing
whitespace and blank lines, repeated headers; RSA-2048 and Ed25519, alone and dual."""
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
from smtprelay.dkim.signer import Signer, SigningKey, relaxed_body, relaxed_header

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
SIGNER = Signer([SigningKey("example.com", "r1", DkimAlgorithm.RSA_SHA256, _pem(RSA)),
                 SigningKey("example.com", "e1", DkimAlgorithm.ED25519_SHA256, _pem(ED))])


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


@pytest.mark.parametrize("body,canonical", [
    (b"", b""), (b"\r\n", b""), (b"\r\n\r\n", b""), (b"x", b"x\r\n"), (b"x\r\n\r\n\r\n", b"x\r\n"),
    (b"a  b\t\tc \t\r\n", b"a b c\r\n"), (b" lead\r\n", b" lead\r\n"),
])
def test_relaxed_body(body: bytes, canonical: bytes) -> None:
    assert relaxed_body(body) == canonical


def test_relaxed_header() -> None:
    assert relaxed_header(b"subject", b"  Hello \r\n\t  World\t ") == b"subject:Hello World\r\n"
