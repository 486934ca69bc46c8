"""DKIM key pairs: generation, files on disk (0600), and the public part for DNS.

Owns: `data_dir/dkim/<domain>/<selector>.key`. The private key never leaves that file
except into the signer's memory; only the public part is ever printed.
"""
from __future__ import annotations

import base64
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtprelay.config import DkimAlgorithm


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key a domain signs with (the signer, dkim.signer, loads it; kept here so that what
    only lists keys — the back end's domain service — does not import dkimpy)."""
    domain: str
    selector: str
    algorithm: DkimAlgorithm
    private_pem: bytes


@dataclass(frozen=True, slots=True)
class KeyPair:
    algorithm: DkimAlgorithm
    private_pem: bytes
    public_b64: str          # the p= value


def generate(algorithm: DkimAlgorithm, rsa_bits: int = 2048) -> KeyPair:
    if algorithm is DkimAlgorithm.RSA_SHA256:
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        public_der = key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return KeyPair(algorithm, pem, base64.b64encode(public_der).decode())
    ed = ed25519.Ed25519PrivateKey.generate()
    raw_public = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    # RFC 8463: p= is the raw 32-byte public key, base64.
    return KeyPair(algorithm, pem, base64.b64encode(raw_public).decode())


def key_tag(algorithm: DkimAlgorithm) -> str:
    return "rsa" if algorithm is DkimAlgorithm.RSA_SHA256 else "ed25519"


def selector_for(algorithm: DkimAlgorithm, now: float, taken: set[str]) -> str:
    """`r20261122` / `e20261122`, with a suffix if that one exists already."""
    day = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y%m%d")
    base = ("r" if algorithm is DkimAlgorithm.RSA_SHA256 else "e") + day
    selector, n = base, 1
    while selector in taken:
        n += 1
        selector = f"{base}-{n}"
    return selector


def key_path(data_dir: Path, domain: str, selector: str) -> Path:
    return data_dir / "dkim" / domain / f"{selector}.key"


def save_private_key(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent.parent, 0o700)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())


def dns_value(algorithm: DkimAlgorithm, public_b64: str) -> str:
    return f"v=DKIM1; k={key_tag(algorithm)}; p={public_b64}"
