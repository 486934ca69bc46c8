"""Sending limits shared by several relay nodes through Redis (issue 20): the per-recipient
hourly cap, the account's rolling 24 h quota and its per-second rate, and each sender domain's
warm-up budget per provider, exact across nodes; and the AUTH lockout of a client address.

How: each account's keys share one hash tag (`smtprelay:{a:<account>}:…`, one Redis Cluster
slot), and one Lua script per step runs atomically on Redis's own clock:
- **reserve** (at RCPT): drops what has aged out (sends older than 1 h / 24 h, reservations
  whose lease ended), refuses when committed sends + live reservations reach the cap or the
  quota, or faster than the account's rate (GCRA on one key), else adds a reservation with a
  lease (`cluster.lease`). A node that dies holds budget only until its leases end.
- **commit** (after the node's fsync): the reservation becomes a send, stored under a send id
  `<node>|<address>|<time>` that the node's own `sends` table also yields, so adding it twice
  (a retry, a rebuild) counts once.
- **release** (RSET, refusal, disconnect): the reservation goes.

After a Redis restart (its data gone: the `smtprelay:epoch` key is missing, or another node
set a new one), every node adds its last 24 h of sends again from its `sends` table; for
`REBUILD_GRACE` after a new epoch every node refuses new recipients (451), so that no node
admits on counters the others have not refilled yet.

Owns: the Redis connection, the scripts, the node's view of Redis's health.
- **grant** (before a delivery batch): a sender domain's warm-up budget at a provider today,
  counted over every node; a node gives back at once what its throttle did not use.
- **auth**: an AUTH failure counts in a window per client address on every node; the lock
  that `auth.max_failures` of them set holds on every node for `auth.lockout`.

Must never: decide anything but these limits (the gate asks, and says the reply).
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

log = logging.getLogger("smtprelay.cluster")

PREFIX = "smtprelay:"
EPOCH_KEY = PREFIX + "epoch"
HOUR, DAY = 3600, 86400
REBUILD_GRACE = 3.0      # seconds after a new epoch during which no node admits (each polls every second)
POLL = 1.0

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - 3600))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - 86400))
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. now)
if redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, oldest[2] or ''}
end
if redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  return {2, oldest[2] or ''}
end
-- The account's per-second rate (GCRA: one second's worth of burst, as a node's own bucket).
local rate = tonumber(ARGV[5])
local tat = now
if rate > 0 then
  tat = math.max(tonumber(redis.call('GET', KEYS[5]) or now), now)
  if tat - now > math.max(1, rate) / rate - 1 / rate + 0.000001 then
    return {3, ''}
  end
  redis.call('SET', KEYS[5], tostring(tat + 1 / rate), 'PX', math.ceil((tat + 1 / rate - now) * 1000) + 1000)
end
local lease = tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], now + lease, ARGV[3])
redis.call('ZADD', KEYS[4], now + lease, ARGV[3])
redis.call('EXPIRE', KEYS[2], math.ceil(lease) + 60)
redis.call('EXPIRE', KEYS[4], math.ceil(lease) + 60)
return {0, ''}
"""

# AUTH lockout across nodes: failures of one client address within the window, and the lock.
_AUTH = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'locked'
end
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  return 'ok'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', math.ceil(tonumber(ARGV[4]) * 1000))
  return 'locked_now'
end
return 'failed'
"""

# A sender domain's warm-up budget at one provider for one day, across nodes: a node takes
# grants (at most what is left of the cap) before sending, and gives back what it did not use.
_GRANT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.max(0, math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used))
if grant > 0 then
  redis.call('INCRBY', KEYS[1], grant)
  redis.call('EXPIRE', KEYS[1], 172800)
end
return grant
"""

_COMMIT = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[1], 'NX', ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], 3660)
redis.call('EXPIRE', KEYS[3], 86460)
return 1
"""

_RELEASE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""


class SharedUnavailable(Exception):
    """Redis cannot answer (or the counters are being rebuilt): the caller refuses for now."""


@dataclass(frozen=True, slots=True)
class Held:
    """A reservation in Redis: its token and the keys it lives under."""
    token: str
    account: str
    address: str


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str                  # "hourly", "quota" or "rate"
    oldest: float | None        # the oldest counted send (when the next slot opens, +1 h / +24 h)


def keys(account: str, address: str) -> list[str]:
    tag = f"{PREFIX}{{a:{account}}}"
    return [f"{tag}:sent:{address}", f"{tag}:held:{address}", f"{tag}:sent", f"{tag}:held", f"{tag}:rate"]


def warmup_key(sender_domain: str, provider: str, day: str) -> str:
    return f"{PREFIX}{{w:{sender_domain}}}:{provider}:{day}"


def auth_keys(ip: str) -> list[str]:
    tag = f"{PREFIX}{{ip:{ip}}}"
    return [f"{tag}:failures", f"{tag}:locked"]


def send_id(node: str, address: str, at: float) -> str:
    return f"{node}|{address}|{at!r}"


class SharedLimits:
    def __init__(self, url: str, node: str, lease: float, observe: Callable[[str, float, bool], None] | None = None,
                 sends: Callable[[float], Iterable[tuple[str, str, float]]] | None = None):
        """`observe(op, seconds, ok)`: each Redis round trip, for the metrics. `sends(since)`:
        this node's committed sends since then, as (account, address, time), for a rebuild."""
        import redis.asyncio as aioredis
        self.redis = aioredis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0,
                                       health_check_interval=0, decode_responses=True)
        self.node = node
        self.lease = lease
        self.observe = observe or (lambda op, seconds, ok: None)
        self.sends = sends
        self._reserve = self.redis.register_script(_RESERVE)
        self._commit = self.redis.register_script(_COMMIT)
        self._release = self.redis.register_script(_RELEASE)
        self._auth = self.redis.register_script(_AUTH)
        self._grant = self.redis.register_script(_GRANT)
        self._counter = 0
        self.healthy = False
        self.error: str | None = None     # why Redis failed, while it does
        self.epoch: str | None = None
        self.grace_until = 0.0        # wall clock: a new epoch's time + REBUILD_GRACE
        self._pending: list[tuple[Held, str, float]] = []     # commits Redis did not take yet
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Connects and counts this node's sends in; an unreachable Redis is not an error here:
        RCPT answers 451 until the poller finds it (it logs why)."""
        try:
            await self.check()
        except SharedUnavailable:
            pass
        self._task = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.redis.aclose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            try:
                await self.check()
            except SharedUnavailable:
                pass                   # logged once when it went away; 451 meanwhile
            except Exception:          # never let the poller die; the next round tries again
                log.exception("cluster: checking Redis failed")

    async def _call(self, op: str, work: Any) -> Any:
        started = time.perf_counter()
        try:
            result = await work
        except Exception as exc:
            self.observe(op, time.perf_counter() - started, False)
            if self.healthy:
                log.error("cluster: Redis is not answering (%s: %s): new recipients get 451 until it is back",
                          type(exc).__name__, exc)
            self.healthy, self.error = False, f"{type(exc).__name__}: {exc}"
            raise SharedUnavailable(self.error) from None
        self.observe(op, time.perf_counter() - started, True)
        return result

    async def check(self) -> None:
        """Every second: is Redis there, is its data the one we counted in (the epoch)?
        Rebuild our share after a restart; retry the commits it missed."""
        epoch = await self._call("epoch", self.redis.get(EPOCH_KEY))
        if epoch is None:
            fresh = f"{time.time():.3f}:{secrets.token_hex(4)}"
            await self._call("epoch", self.redis.set(EPOCH_KEY, fresh, nx=True))
            epoch = await self._call("epoch", self.redis.get(EPOCH_KEY))
        if epoch != self.epoch:
            if self.epoch is not None:
                log.warning("cluster: Redis's counters were reset (epoch %s → %s): adding this node's sends of "
                            "the last 24 h again", self.epoch, epoch)
            try:    # every node refuses until each has had the time to add its own sends
                self.grace_until = float(epoch.partition(":")[0]) + REBUILD_GRACE
            except ValueError:
                self.grace_until = time.time() + REBUILD_GRACE
            await self.rebuild()
            self.epoch = epoch
        if self._pending:
            pending, self._pending = self._pending, []
            for held, sid, at in pending:
                await self.commit(held, sid, at)
        if not self.healthy and self.error is not None:
            log.warning("cluster: Redis answers again: shared limits are back")
        self.healthy, self.error = True, None

    async def rebuild(self) -> int:
        if self.sends is None:
            return 0
        # Off the loop: a day of sends can be many rows (the reader connection is this one's own).
        rows = await asyncio.to_thread(lambda: list(self.sends(time.time() - DAY)))  # type: ignore[misc]
        for chunk in range(0, len(rows), 1000):
            pipe = self.redis.pipeline(transaction=False)
            for account, address, at in rows[chunk:chunk + 1000]:
                k = keys(account, address)
                sid = send_id(self.node, address, at)
                if at > time.time() - HOUR:
                    pipe.zadd(k[0], {sid: at}, nx=True)
                    pipe.expire(k[0], HOUR + 60)
                pipe.zadd(k[2], {sid: at}, nx=True)
                pipe.expire(k[2], DAY + 60)
            await self._call("rebuild", pipe.execute())
        log.info("cluster: %d send(s) of the last 24 h counted in Redis for node %s", len(rows), self.node)
        return len(rows)

    # -- the gate's calls ------------------------------------------------------------------------
    async def reserve(self, account: str, address: str, hourly_cap: int, daily_quota: int,
                      rate_per_second: float = 0.0) -> Held | Refusal:
        if time.time() < self.grace_until:
            raise SharedUnavailable("the shared counters are being rebuilt after a Redis restart")
        self._counter += 1
        token = f"{self.node}:{self._counter}:{secrets.token_hex(3)}"
        code, oldest = await self._call("reserve", self._reserve(
            keys=keys(account, address), args=[hourly_cap, daily_quota, token, self.lease, rate_per_second]))
        if int(code) == 0:
            return Held(token, account, address)
        return Refusal({1: "hourly", 2: "quota", 3: "rate"}[int(code)], float(oldest) if oldest else None)

    async def grants(self, wants: dict[tuple[str, str], tuple[int, int]], day: str) -> dict[tuple[str, str], int]:
        """Warm-up budget for (sender domain, provider) pairs: `wants` maps a pair to (how many,
        its cap today); what Redis grants of it (never past the cap, counted over every node)."""
        if time.time() < self.grace_until:
            raise SharedUnavailable("the shared counters are being rebuilt after a Redis restart")
        pipe = self.redis.pipeline(transaction=False)
        pairs = list(wants)
        for domain, provider in pairs:
            want, cap = wants[(domain, provider)]
            await self._grant(keys=[warmup_key(domain, provider, day)], args=[want, cap], client=pipe)
        answers = await self._call("grant", pipe.execute())
        return {pair: int(n) for pair, n in zip(pairs, answers)}

    async def give_back(self, unused: dict[tuple[str, str], int], day: str) -> None:
        """Grants a node took and did not use (the throttle waited for another reason)."""
        if not any(unused.values()):
            return
        pipe = self.redis.pipeline(transaction=False)
        for (domain, provider), n in unused.items():
            if n > 0:
                pipe.decrby(warmup_key(domain, provider, day), n)
        try:
            await self._call("grant", pipe.execute())
        except SharedUnavailable:
            pass        # counted as used until the day ends: an early refusal, never an excess

    async def auth(self, ip: str, valid: bool, max_failures: int, window: float, lockout: float) -> str:
        """The cluster's word on an AUTH attempt (the same words as the gate's own lockout)."""
        self._counter += 1
        return str(await self._call("auth", self._auth(
            keys=auth_keys(ip), args=[int(valid), max_failures, window, lockout,
                                      f"{self.node}:{self._counter}"])))

    async def commit(self, held: Held, sid: str, at: float) -> None:
        try:
            await self._call("commit", self._commit(keys=keys(held.account, held.address), args=[held.token, sid, at]))
        except SharedUnavailable:
            self._pending.append((held, sid, at))     # the poller tries again when Redis is back

    async def release(self, held: list[Held]) -> None:
        for h in held:
            try:
                await self._call("release", self._release(keys=keys(h.account, h.address), args=[h.token]))
            except SharedUnavailable:
                return          # its lease ends it


def sends_since(reader: sqlite3.Connection, names: Callable[[], dict[int, str]]) -> Callable[[float], list[
        tuple[str, str, float]]]:
    """This node's committed sends (the `sends` table) since a time, by account name."""
    def read(since: float) -> list[tuple[str, str, float]]:
        accounts = names()
        return [(accounts.get(a, str(a)), address, at) for a, address, at in reader.execute(
            "SELECT account_id, address, at FROM sends WHERE at > ?", (since,))]
    return read
