"""Accounts' secrets and standing: SMTP passwords and reputation levels.

Owns: how passwords are generated (about 190 bits of entropy), digested (salted SHA-256) and
checked, and the daily judgement that moves an account between reputation levels. A slow KDF
(scrypt, argon2) protects human-chosen passwords against guessing; a random 192-bit secret
cannot be guessed, and a fast digest keeps the synchronous AUTH check well under a millisecond.
The accounts themselves are the catalog's (smtprelay.catalog) and their rules the service's
(smtprelay.services.accounts).

Must never: print or log a password after it is returned.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import string
from typing import TYPE_CHECKING

from smtprelay.catalog.sqlite import ACCOUNT_ROWS_SQL, account_rows

if TYPE_CHECKING:
    from smtprelay.config import Config


_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def new_password(length: int = 32) -> str:
    """32 letters and digits: about 190 bits. No symbols, so it never starts with '-' (which
    command-line clients such as swaks would read as an option) and survives any shell."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def digest_password(password: str, salt: str | None = None) -> str:
    salt = salt if salt is not None else secrets.token_hex(16)
    value = hashlib.sha256((salt + password).encode("utf-8", "surrogateescape")).hexdigest()
    return f"sha256${salt}${value}"


def check_password(password: str, digest: str) -> bool:
    try:
        scheme, salt, _ = digest.split("$", 2)
    except ValueError:
        return False
    if scheme != "sha256":
        return False
    return hmac.compare_digest(digest_password(password, salt), digest)


def evaluate_levels(conn: sqlite3.Connection, config: "Config", now: float) -> list[tuple[str, int, int, str]]:
    """Judge every finished UTC day not judged yet (only when levels are configured).
    Returns (account, old level, new level, why) for each change."""
    import datetime
    from smtprelay.policy.reputation import AccountRow, DayStats, effective_limits, judge_day
    if not config.reputation.levels:
        return []
    today = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()
    changes = []
    for row in account_rows(conn.execute(ACCOUNT_ROWS_SQL)).values():
        last = conn.execute("SELECT level_evaluated_day, created_at FROM accounts WHERE id = ?", (row.id,)).fetchone()
        start = (datetime.date.fromisoformat(last[0]) + datetime.timedelta(days=1) if last[0] else
                 datetime.datetime.fromtimestamp(last[1], datetime.timezone.utc).date())
        level = row.level
        day = start
        while day < today:
            t0 = datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc).timestamp()
            t1 = t0 + 86400
            used = conn.execute("SELECT count(*) FROM sends WHERE account_id = ? AND at >= ? AND at < ?",
                                (row.id, t0, t1)).fetchone()[0]
            delivered, bounced = conn.execute(
                "SELECT coalesce(sum(a.result = 'delivered'), 0), coalesce(sum(a.result = 'bounced'), 0)"
                " FROM attempts a JOIN recipients r ON r.id = a.recipient_id JOIN messages m ON m.id = r.message_id"
                " WHERE m.account_id = ? AND m.mail_from != '' AND a.at >= ? AND a.at < ?",
                (row.id, t0, t1)).fetchone()
            complaints = conn.execute("SELECT count(*) FROM feedback WHERE account_id = ? AND kind = 'complaint'"
                                      " AND at >= ? AND at < ?", (row.id, t0, t1)).fetchone()[0]
            quota = effective_limits(AccountRow(row.id, row.name, row.daily_quota, row.rate_per_second, level),
                                     config).daily_quota
            new, why = judge_day(level, quota, DayStats(used, delivered, bounced, complaints), config)
            if new != level:
                changes.append((row.name, level, new, f"{day.isoformat()}: {why}"))
                level = new
            day += datetime.timedelta(days=1)
        if day != start or level != row.level:
            conn.execute("UPDATE accounts SET level = ?, level_evaluated_day = ? WHERE id = ?",
                         (level, (today - datetime.timedelta(days=1)).isoformat(), row.id))
    return changes
