"""Webhooks: every event POSTed to the tenant's URL from a durable outbox.

Owns: the `outbox` rows and their delivery. Flow:
1. Fan-out (a store job): events after `meta.webhook_cursor` become outbox rows for the
   account's webhook, or for the sender address's webhook, which overrides the account's for
   mail from that address. Domain events (warm-up, suspension) go to the domain's account.
2. Delivery: ready rows are claimed under a lease and POSTed with bounded concurrency and a
   timeout, one event per POST, signed `X-Smtprelay-Signature: t=<unix>,v1=<hex>` (one v1 per
   secret still valid, so a rotation has an overlap). Within one message and URL, events go
   strictly in order: a row waits while an earlier one of the same message is pending.
3. Outcome: 2xx → delivered; anything else (including any redirect: none is followed) →
   retried with exponential backoff until `webhooks.max_age` (24 h), then dead (a dead
   letter, `smtprelay webhook failures`, `webhook replay`).

A slow or dead endpoint costs only this task's connections: SMTP acceptance and delivery
never wait for it (their events are already committed).

Must never: block the event loop, or hold an event back from the store.
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import logging
import sqlite3
from typing import Any

import aiohttp

from smtprelay.clock import Clock
from smtprelay.config.model import WebhooksConfig
from smtprelay.http.metrics import Metrics
from smtprelay.logs import Outage
from smtprelay.queue.store import Job, QueueStore, StoreUnavailable

log = logging.getLogger("smtprelay.webhooks")

FANOUT_CHUNK = 2000

Row = tuple[int, int, str, int, int, float]   # outbox id, event id, url, account id, attempts, created_at


def sign(body: bytes, timestamp: int, keys: list[str]) -> str:
    parts = [f"t={timestamp}"]
    for key in keys:
        mac = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        parts.append(f"v1={mac}")
    return ",".join(parts)


def verify(header: str, body: bytes, key: str, now: float, tolerance: float = 300.0) -> bool:
    """What a receiver does (documented in the README; used by the tests)."""
    fields = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in fields if k == "t"]
    if not stamps or not stamps[0].isdigit() or abs(now - int(stamps[0])) > tolerance:
        return False
    expected = hmac.new(key.encode(), f"{stamps[0]}.".encode() + body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(v, expected) for k, v in fields)


def backoff(attempts: int, initial: float, maximum: float) -> float:
    return min(maximum, initial * (2 ** max(0, attempts - 1)))


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def fanout(now: float) -> Job:
    """Events since the cursor → outbox rows (address-level hook first, else account-level)."""
    def job(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = 'webhook_cursor'").fetchone()
        cursor = int(row[0]) if row else 0
        row = db.execute("SELECT max(id) FROM (SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?)",
                         (cursor, FANOUT_CHUNK)).fetchone()
        upto = row[0] if row and row[0] is not None else None
        if upto is None:
            return 0
        hooked = db.execute("SELECT 1 FROM webhooks LIMIT 1").fetchone() is not None
        if not hooked:   # nobody listens: move the cursor on without joining every new event
            db.execute("UPDATE meta SET value = ? WHERE key = 'webhook_cursor'", (upto,))
            return 0
        c = db.execute(
            "INSERT INTO outbox (event_id, url, account_id, queue_id, next_at, created_at, state)"
            " SELECT e.id, w.url, w.account_id, e.queue_id, ?, ?, 'pending' FROM"
            " (SELECT e.*, coalesce(e.account_id, (SELECT d.account_id FROM domains d WHERE d.name = e.sender_domain))"
            "   AS owner, coalesce(m.mail_from, json_extract(e.data, '$.from')) AS sender"
            "  FROM events e LEFT JOIN messages m ON m.id = e.queue_id WHERE e.id > ? AND e.id <= ?) e"
            " JOIN webhooks w ON w.account_id = e.owner AND (w.address = e.sender OR (w.address IS NULL AND NOT EXISTS"
            "   (SELECT 1 FROM webhooks w2 WHERE w2.account_id = e.owner AND w2.address = e.sender)))"
            " ORDER BY e.id", (now, now, cursor, upto))
        count = int(c.rowcount)
        db.execute("UPDATE meta SET value = ? WHERE key = 'webhook_cursor'", (upto,))
        return count
    return job


def claim(now: float, limit: int, lease: float) -> Job:
    def job(db: sqlite3.Connection) -> list[Row]:
        rows = db.execute(
                "UPDATE outbox SET next_at = ? WHERE id IN (SELECT o.id FROM outbox o WHERE o.state = 'pending'"
                " AND o.next_at <= ? AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending'"
                " AND p.url = o.url AND p.queue_id IS o.queue_id AND p.id < o.id) ORDER BY o.next_at, o.id LIMIT ?)"
                " RETURNING id, event_id, url, account_id, attempts, created_at", (now + lease, now, limit)).fetchall()
        return sorted((r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows)
    return job


def record(results: list[tuple[int, bool, str, float | None]], now: float, unleash: list[int] | None = None) -> Job:
    """(outbox id, delivered?, last error, next try or None for dead); `unleash`: claimed rows not
    tried (behind a failed event of the same message) get their lease back."""
    def job(db: sqlite3.Connection) -> None:
        if unleash:
            db.executemany("UPDATE outbox SET next_at = ? WHERE id = ?", [(now, oid) for oid in unleash])
        db.executemany(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, state = CASE WHEN ? THEN 'delivered'"
            " WHEN ? IS NULL THEN 'dead' ELSE 'pending' END, next_at = coalesce(?, next_at),"
            " delivered_at = CASE WHEN ? THEN ? ELSE NULL END WHERE id = ?",
            [(None if ok else error, ok, next_at, next_at, ok, now, oid) for oid, ok, error, next_at in results])
    return job


def prune(before: float, chunk: int = 5000) -> Job:
    def job(db: sqlite3.Connection) -> int:
        return int(db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 'delivered'"
                              " AND delivered_at < ? LIMIT ?)", (before, chunk)).rowcount)
    return job


def event_documents(db: sqlite3.Connection, event_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The JSON of each event as DESIGN §4 lists its fields."""
    marks = ",".join("?" * len(event_ids))
    rows = db.execute(
            "SELECT e.id, e.type, e.at, a.name, m.header_message_id, e.queue_id,"
            " coalesce(m.mail_from, json_extract(e.data, '$.from')), e.recipient, e.sender_domain, e.recipient_domain,"
            " e.provider, e.tag, e.data, coalesce(e.account_id, (SELECT d.account_id FROM domains d"
            " WHERE d.name = e.sender_domain)), e.template_id, e.template_version, t.name, e.task_id, e.task_run"
            f" FROM events e LEFT JOIN templates t ON t.id = e.template_id LEFT JOIN messages m ON m.id = e.queue_id LEFT JOIN accounts a ON a.id = coalesce("
            f"e.account_id, (SELECT d.account_id FROM domains d WHERE d.name = e.sender_domain))"
            f" WHERE e.id IN ({marks})", event_ids).fetchall()
    docs = {}
    for r in rows:
        extra = json.loads(r[12])
        extra.pop("from", None)
        docs[r[0]] = {"id": f"evt_{r[0]}", "type": r[1], "timestamp": _iso(r[2]), "account": r[3],
                      "message_id": r[4], "queue_id": r[5], "from": r[6], "recipient": r[7],
                      "sender_domain": r[8], "recipient_domain": r[9], "provider": r[10], "tag": r[11],
                      "template": {"id": r[14], "version": r[15], "name": r[16]} if r[14] is not None else None,
                      "task": r[17], "run": r[18],
                      **extra}
    return docs


class Dispatcher:
    def __init__(self, config: WebhooksConfig, store: QueueStore, db_path: Any, clock: Clock, metrics: Metrics):
        self.config = config
        self.store = store
        self.db_path = db_path
        self.clock = clock
        self.metrics = metrics
        self._reader: sqlite3.Connection | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def open(self) -> None:
        self._reader = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=1.0)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(
            limit=self.config.concurrency), headers={"User-Agent": "smtprelay-webhooks"})

    async def start(self) -> None:
        await self.open()
        self._task = asyncio.create_task(self._loop(), name="webhooks")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._session is not None:
            await self._session.close()
        if self._reader is not None:
            self._reader.close()

    async def _loop(self) -> None:
        outage = Outage(log, "webhooks")
        while not self._stopping:
            try:
                busy = await self.run_once()
                outage.ok()
            except Exception as exc:
                outage.failed(exc, expected=isinstance(exc, StoreUnavailable))
                busy = False
            if not busy:
                await asyncio.sleep(self.config.poll_interval)

    async def run_once(self) -> bool:
        """Fan out new events and deliver what is due; True when there may be more to do now."""
        now = self.clock.now()
        fanned = await self.store.run(fanout(now))
        rows = await self.store.run(claim(now, self.config.concurrency * 8, self.config.timeout * 2 + 30))
        if rows:
            await self._deliver(rows)
        return bool(fanned) or len(rows) >= self.config.concurrency * 8

    def _keys(self, account_ids: set[int]) -> dict[int, list[str]]:
        assert self._reader is not None
        now = self.clock.now()
        marks = ",".join("?" * len(account_ids))
        keys: dict[int, list[str]] = {}
        for account_id, secret in self._reader.execute(
                f"SELECT account_id, secret FROM webhook_secrets WHERE account_id IN ({marks})"
                " AND (retire_at IS NULL OR retire_at > ?) ORDER BY id DESC", (*account_ids, now)):
            keys.setdefault(account_id, []).append(secret)
        return keys

    async def _deliver(self, rows: list[Row]) -> None:
        assert self._reader is not None
        docs = event_documents(self._reader, sorted({r[1] for r in rows}))
        keys = self._keys({r[3] for r in rows})
        # Rows of one (url, message) go one after another; groups in parallel, bounded.
        groups: dict[tuple[str, Any], list[Row]] = {}
        for row in rows:
            doc = docs.get(row[1])
            groups.setdefault((row[2], doc.get("queue_id") if doc else None), []).append(row)
        gate = asyncio.Semaphore(self.config.concurrency)
        results: list[tuple[int, bool, str, float | None]] = []

        async def run(group: list[Row]) -> None:
            async with gate:
                for oid, event_id, url, account_id, attempts, created in group:
                    doc = docs.get(event_id)
                    ok, error = (True, "") if doc is None else await self._post(url, doc, keys.get(account_id, []))
                    results.append((oid, ok, error, None if ok else self._next_try(attempts, created)))
                    if not ok:   # the rest of this message waits behind it (claim skips them)
                        waiting.extend(r[0] for r in group[group.index((oid, event_id, url, account_id, attempts,
                                                                        created)) + 1:])
                        break
        waiting: list[int] = []
        await asyncio.gather(*(run(g) for g in groups.values()))
        if results:
            await self.store.run(record(results, self.clock.now(), waiting))
        for _, ok, _, next_at in results:
            self.metrics.webhook_deliveries.labels(
                result="delivered" if ok else ("retry" if next_at is not None else "dead")).inc()

    def _next_try(self, attempts: int, created: float) -> float | None:
        """Retry until the row is max_age old (the last try exactly then); after that: dead."""
        now = self.clock.now()
        if now - created >= self.config.max_age:
            return None
        delay = backoff(attempts + 1, self.config.retry_initial, self.config.retry_max)
        return min(now + delay, created + self.config.max_age)

    async def _post(self, url: str, doc: dict[str, Any], keys: list[str]) -> tuple[bool, str]:
        assert self._session is not None
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json",
                   "X-Smtprelay-Signature": sign(body, int(self.clock.now()), keys[:2]),
                   "X-Smtprelay-Event": doc["type"], "X-Smtprelay-Event-Id": doc["id"]}
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return True, ""
                return False, f"HTTP {resp.status}" + (" (redirects are not followed)"
                                                       if 300 <= resp.status < 400 else "")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"[:300]
