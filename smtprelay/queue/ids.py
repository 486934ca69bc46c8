"""Queue ids: short, unique across restarts, sortable by arrival time.

13 hex digits of microseconds since the epoch, then 5 random base32 characters
(Postfix's long queue ids follow the same idea). Sorting ids sorts by arrival.
"""
from __future__ import annotations

import os
import random

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"
# Unique, not secret: a generator seeded once per process from the OS (every worker is a new
# process, so each has its own seed) instead of a system call per id.
_random = random.Random(os.urandom(32))


def token(bits: int) -> str:
    """Random hex for identifiers that must not collide (not for secrets)."""
    return f"{_random.getrandbits(bits):0{bits // 4}x}"


def new_queue_id(now: float) -> str:
    stamp = f"{int(now * 1_000_000):013X}"
    n = _random.randrange(len(_ALPHABET) ** 5)
    tail = []
    for _ in range(5):
        n, digit = divmod(n, len(_ALPHABET))
        tail.append(_ALPHABET[digit])
    return stamp + "".join(tail)
