"""Queue ids: short, unique across restarts, sortable by arrival time.

13 hex digits of microseconds since the epoch, then 5 random base32 characters
(Postfix's long queue ids follow the same idea). Sorting ids sorts by arrival.
"""
from __future__ import annotations

import secrets

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"


def new_queue_id(now: float) -> str:
    stamp = f"{int(now * 1_000_000):013X}"
    n = secrets.randbelow(len(_ALPHABET) ** 5)  # one draw from the OS, not five
    tail = []
    for _ in range(5):
        n, digit = divmod(n, len(_ALPHABET))
        tail.append(_ALPHABET[digit])
    return stamp + "".join(tail)
