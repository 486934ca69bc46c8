"""The DKIM private keys in the shared catalog (cluster mode): sealed with `[cluster] key_file`.

Why encrypted in PostgreSQL and not on disk per node: a key made through one node's CLI must
sign on every node at once, and copying key files between machines is the step operators
forget. The database (and its backups) hold only ciphertext; the key file, the same on every
node (0600, like the keys themselves), holds the secret. Fernet (AES-128-CBC + HMAC-SHA256)
from `cryptography`, under a key derived from the file's content by SHA-256.

Must never: log or return a key's plaintext other than to the caller that writes it to disk.
"""
from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from pathlib import Path

MIN_SECRET = 32     # bytes of content in the key file


class SecretError(Exception):
    """The key file is missing, too short, or not the one the keys were sealed with."""


@lru_cache(maxsize=4)
def _fernet(path: Path) -> object:
    from cryptography.fernet import Fernet
    try:
        content = path.read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cluster.key_file {path}: {exc.strerror or exc}") from None
    if len(content) < MIN_SECRET:
        raise SecretError(f"cluster.key_file {path}: holds {len(content)} bytes, needs at least {MIN_SECRET} "
                          "(for example: head -c 48 /dev/urandom | base64 > FILE)")
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(content).digest()))


def check(path: Path) -> None:
    _fernet(path)


def derived(path: Path, purpose: str) -> bytes:
    """A key for `purpose` every node derives alike from the key file (cluster mode's tracking
    and VERP keys when tracking.secret / feedback.secret are not set: a link or a bounce may
    reach any node)."""
    import hmac
    _fernet(path)       # the same checks
    return hmac.new(path.read_bytes().strip(), f"smtprelay {purpose}".encode(), hashlib.sha256).hexdigest().encode()


def seal(path: Path | None, plaintext: bytes) -> str:
    if path is None:
        raise SecretError("cluster.key_file is not set")
    return _fernet(path).encrypt(plaintext).decode("ascii")      # type: ignore[attr-defined]


def unseal(path: Path | None, token: str) -> bytes:
    from cryptography.fernet import InvalidToken
    if path is None:
        raise SecretError("cluster.key_file is not set")
    try:
        return _fernet(path).decrypt(token.encode("ascii"))     # type: ignore[attr-defined, no-any-return]
    except InvalidToken:
        raise SecretError(f"cluster.key_file {path}: not the key this DKIM key was sealed with "
                          "(every node needs the same key file)") from None
