"""The task runner, in the back end: starts each sending task's runs when they are due and
materialises their rows into the durable queue through the front end's pipeline.

How a row is sent: the runner builds a send request (the task's template, the row's values
over the task's `data`, To: the row's address alone) and hands it to a front-end worker
(`smtp.api.submit_task`) as one trusted session of the task's account — MAIL (sender
policy), RCPT (blocklist, hourly cap, quota, rate: the gate), then content checks, stamping,
DKIM and the group commit — so a task follows every rule an SMTP client does. The message
carries (task, run, row) and the store writes the row's `task_rows` line in the message's own
transaction: after SIGKILL a row is queued and recorded, or neither, and a restarted runner
sends exactly the rows with no line (every group row once per run).

Owns: the progress of runs (task_runs, `rejected` rows, the task's `state`, waits and next
run). Operators' flags (`held`, `cancelled_at`) it only reads, within a second.
- Memory: per running run, at most `batch.chunk_rows` rows read ahead, plus the rows in
  flight (`batch.concurrency` for all tasks together) and those waiting for a retry.
- Fairness: all runs take turns for the concurrency slots (asyncio's semaphore wakes its
  waiters in order), so the tasks of one account share its quota round robin.
- Waits: the account's daily quota used up (asked of the gate before each row, so no row
  is refused for it) → its running tasks show `paused (daily quota: resumes at <time>)` and go
  on when the window has room; the sender refused at MAIL (domain unverified or suspended,
  template inactive) → that task waits and tries again every 30 s. A row refused for a while
  (hourly cap, rate, store unavailable) is retried when the reply says; a 5xx is final
  (`rejected`, with the reply). An operator's pause is never lifted here.
- Recurring tasks: run N+1 is due at first_at + N × every; a run still going when the next is
  due is not overlapped — the next starts when it ends (logged), and runs that were missed
  meanwhile fold into that one.

Must never: decide a policy (the pipeline does), or write a row as sent before its message is.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import math
import re
import time
from collections import Counter, deque
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from smtprelay.batch import progress
from smtprelay.clock import Clock
from smtprelay.config import Config
from smtprelay.queue import schema
from smtprelay.queue.store import QueueStore, StoreUnavailable
from smtprelay.smtp.channel import ChannelClosed, RemoteError
from smtprelay.templates.request import SendRequest
from smtprelay.when import iso

log = logging.getLogger("smtprelay.tasks")
T = TypeVar("T")

TICK = 1.0              # operators' flags and due runs are seen within this
HOLD_RETRIES = (2.0, 5.0, 15.0, 30.0)   # a task whose sender is refused tries again after these
QUICK_RETRY = 2.0       # a row refused for a moment (store busy, a worker restarting)
Submit = Callable[[SendRequest, str, tuple[int, int, int]], Awaitable[tuple[str, str]]]
_MOMENT = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


class Limits(Protocol):
    def quota_room(self, account_id: int) -> tuple[int, float | None]: ...
    def rate(self, account_id: int) -> float: ...


class Counters(Protocol):
    def recipients(self, result: str) -> None: ...
    def statuses(self, counts: dict[str, int]) -> None: ...


@dataclass
class Task:
    """One row of progress.open_tasks."""
    id: int
    account_id: int
    account: str
    group_id: int
    template_id: int
    mail_from: str
    subject: str | None
    tag: str | None
    data: str
    kind: str
    first_at: float
    every: float | None
    held: int
    cancelled_at: float | None
    state: str
    wait_reason: str | None
    next_run_at: float | None
    runs: int
    size: int
    cursor: int | None


class Run:
    """A run being materialised: rows read ahead, in flight, and waiting for a retry."""

    def __init__(self, task: Task, number: int, after: int):
        self.task = task
        self.number = number
        self.after = after                      # the last row read from the group
        self.pending: deque[tuple[int, str, str]] = deque()
        self.inflight: set[int] = set()
        self.later: list[tuple[float, tuple[int, str, str], bool]] = []   # (due, row, check it first)
        self.exhausted = False
        self.changed = asyncio.Event()
        self.driver: asyncio.Task[None] | None = None
        self.counts = {"accepted": 0, "rejected": 0}
        name, address = parseaddr(task.mail_from)
        self.sender = (name, address)
        self.data: dict[str, Any] = json.loads(task.data)

    def cursor(self) -> int:
        """Every row up to here is resolved (where a restart reads on from)."""
        rows = list(self.inflight) + [r[1][0] for r in self.later] + ([self.pending[0][0]] if self.pending else [])
        return min(rows) - 1 if rows else self.after


def moment(reply: str) -> float | None:
    found = _MOMENT.search(reply)
    if not found:
        return None
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def next_after(first_at: float, every: float, now: float) -> float:
    """The first run time of the series after `now`."""
    k = math.floor((now - first_at) / every) + 1 if now >= first_at else 0
    return first_at + max(k, 1) * every if now >= first_at else first_at


class TaskRunner:
    def __init__(self, config: Callable[[], Config], store: QueueStore, data_dir: Path, clock: Clock,
                 limits: Limits, submit: Submit, counters: Counters | None = None):
        self.config = config
        self.store = store
        self.clock = clock
        self.limits = limits
        self.submit = submit
        self.counters = counters
        self.runs: dict[int, Run] = {}
        self.quota_waits: dict[int, float] = {}               # account → until
        self.holds: dict[int, tuple[str, float, int]] = {}    # task → (reason, until, times)
        self.rejected: list[tuple[int, int, int, str, float]] = []
        self.slots = asyncio.Semaphore(config().batch.concurrency)
        self._slot_count = config().batch.concurrency
        self._paced: dict[int, float] = {}
        self._account_inflight: Counter[int] = Counter()      # rows in flight per account
        self._written: dict[int, tuple[str | None, float | None]] = {}
        self._due_logged: set[tuple[int, int]] = set()
        self._ended: set[tuple[int, int]] = set()         # (task, run) this process ended
        self._inflight: set[asyncio.Task[None]] = set()
        self._reads: set[asyncio.Future[Any]] = set()      # reads on self._conn running in a thread
        self._conn = schema.reader(data_dir)
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="task-runner")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        """No new rows; rows in flight finish (up to `grace`); what is known is written."""
        self._stopping = True
        self._wake.set()
        tasks = [t for t in [self._loop_task, *(r.driver for r in self.runs.values())] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=grace)
        try:
            await self._save_waits(self.clock.now())
            await self._flush()
        except StoreUnavailable:
            pass        # the rows are retried after the restart: a rejection costs nothing twice
        if self._reads:
            await asyncio.wait(list(self._reads))
        self._conn.close()

    async def _read_db(self, read: Callable[..., T], *args: Any) -> T:
        """`read(self._conn, *args)` in a thread. Cancelling the caller does not stop the thread:
        stop() waits for every such read before it closes the connection (closing it under a
        thread crashed the process in a test run)."""
        job = asyncio.ensure_future(asyncio.to_thread(read, self._conn, *args))
        self._reads.add(job)
        job.add_done_callback(self._reads.discard)
        return await asyncio.shield(job)

    async def _loop(self) -> None:
        # stop() sets _stopping before it cancels: Python 3.11's wait_for can swallow a
        # cancellation that meets the event being set (a test run hung in stop()), so the
        # loop also ends by the flag, and waits with asyncio.timeout (no inner task).
        while not self._stopping:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except (StoreUnavailable, OSError) as exc:
                log.warning("task runner: %s; trying again", exc)
            except Exception:
                log.exception("task runner: a round failed; trying again")
            self._wake.clear()
            if self._stopping:
                return
            try:
                async with asyncio.timeout(TICK):
                    await self._wake.wait()
            except TimeoutError:
                pass

    # -- one round: due runs, operators' flags, waits --------------------------------------------
    async def _tick(self) -> None:
        rows, statuses = await self._read_db(progress.open_tasks)
        if self.counters is not None:
            self.counters.statuses(statuses)
        self._resize()
        now = self.clock.now()
        seen = set()
        for row in rows:
            task = Task(*row)
            seen.add(task.id)
            run = self.runs.get(task.id)
            if task.cancelled_at is not None:
                await self._end(task, run, "cancelled")
                continue
            if run is not None:
                run.task = task
                if run.driver is not None and run.driver.done() and not self._stopping:
                    run.driver = asyncio.create_task(self._driver(run), name=f"task-{task.id}")   # it failed
            if task.state == "scheduled":
                if not task.held and task.next_run_at is not None and task.next_run_at <= now:
                    await self._start_run(task, now)
            elif task.state == "running" and (task.id, task.runs) not in self._ended:   # not a stale read
                if run is None:     # after a restart: on from the stored cursor
                    self._drive(Run(task, task.runs, task.cursor or 0))
                    log.info("task %d run %d: continuing after row %d", task.id, task.runs, task.cursor or 0)
                if task.every and task.next_run_at is not None and task.next_run_at <= now \
                        and (task.id, task.runs + 1) not in self._due_logged:
                    self._due_logged.add((task.id, task.runs + 1))
                    log.warning("task %d: run %d is due but run %d has not finished; it waits for it", task.id,
                                task.runs + 1, task.runs)
        for task_id in [t for t in self.runs if t not in seen]:
            self._forget(task_id)
        await self._save_waits(now)
        await self._flush()

    def _resize(self) -> None:
        """batch.concurrency changed (SIGHUP): slots are added or taken away."""
        wanted = self.config().batch.concurrency
        while self._slot_count < wanted:
            self._slot_count += 1
            self.slots.release()
        if self._slot_count > wanted and self.slots._value > 0:     # shrink as slots come free
            take = min(self._slot_count - wanted, self.slots._value)
            self.slots._value -= take
            self._slot_count -= take

    async def _start_run(self, task: Task, now: float) -> None:
        number = task.runs + 1
        due = task.next_run_at if task.next_run_at is not None else now
        following = next_after(task.first_at, task.every, now) if task.every else None
        await self.store.run(progress.start_run(task.id, number, due, now, task.size, following))
        task.state, task.runs, task.next_run_at, task.wait_reason = "running", number, following, None
        self._written.pop(task.id, None)
        log.info("task %d run %d started: %d recipient(s), from=<%s>%s", task.id, number, task.size,
                 parseaddr(task.mail_from)[1], f"; next run at {iso(following)}" if following else "")
        self._drive(Run(task, number, 0))

    async def _end(self, task: Task, run: Run | None, status: str) -> None:
        if run is not None:
            self._forget(task.id)
        await self._flush()
        state = status if status == "cancelled" or not task.every else "scheduled"
        await self.store.run(progress.end_run(task.id, task.runs, self.clock.now(), status, state))
        self._written.pop(task.id, None)
        self.holds.pop(task.id, None)
        self._ended.add((task.id, task.runs))
        if task.runs == 0:
            log.info("task %d cancelled before its first run", task.id)
        else:
            log.info("task %d run %d %s: %d accepted, %d rejected in this process%s", task.id, task.runs, status,
                     run.counts["accepted"] if run else 0, run.counts["rejected"] if run else 0,
                     f"; next run at {iso(task.next_run_at)}" if state == "scheduled" else "")
        self.wake()

    def _forget(self, task_id: int) -> None:
        run = self.runs.pop(task_id, None)
        if run is not None and run.driver is not None and run.driver is not asyncio.current_task():
            run.driver.cancel()

    # -- a run's driver: one row at a time into the slots ----------------------------------------
    def _drive(self, run: Run) -> None:
        self.runs[run.task.id] = run
        run.driver = asyncio.create_task(self._driver(run), name=f"task-{run.task.id}")

    async def _driver(self, run: Run) -> None:
        chunk = self.config().batch.chunk_rows
        try:
            while not self._stopping and self.runs.get(run.task.id) is run:
                now = self.clock.now()
                if not run.pending and not run.exhausted:
                    await self._read(run, chunk)
                    continue
                due = min((d for d, _, _ in run.later), default=None)
                if not run.pending and (due is None or due > now):
                    if due is None and not run.inflight:      # every row resolved
                        await self._end(run.task, run, "finished")
                        return
                    await self._pause(run, max(0.01, min(TICK, (due or now + TICK) - now)))
                    continue
                wait = self._blocked(run, now)      # only with a row to send: the last one may use the quota up
                if wait > 0:
                    await self._pause(run, wait)
                    continue
                item = self._take(run, now)
                if item is None:
                    continue
                row, check = item
                if check and await self._read_db(progress.resolved, run.task.id, run.number, row[0]):
                    continue        # its answer was lost, but its message was committed
                await self.slots.acquire()
                if self._blocked(run, self.clock.now()) > 0 or self.runs.get(run.task.id) is not run:
                    self.slots.release()
                    run.pending.appendleft(row)
                    continue
                await self._pace(run.task.account_id)
                run.inflight.add(row[0])
                self._account_inflight[run.task.account_id] += 1
                one = asyncio.create_task(self._one(run, row))
                self._inflight.add(one)
                one.add_done_callback(self._inflight.discard)
                if not run.exhausted and len(run.pending) < chunk // 4:
                    await self._read(run, chunk)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The run stays (its rows in flight are still its own); the next round restarts it.
            log.exception("task %d run %d: the driver failed; it starts again within a second", run.task.id,
                          run.number)

    async def _read(self, run: Run, chunk: int) -> None:
        want = chunk - len(run.pending)
        if want <= 0:
            return
        rows = await self._read_db(progress.unresolved, run.task.group_id, run.task.id, run.number,
                                       run.after, want)
        run.pending.extend(rows)
        if rows:
            run.after = rows[-1][0]
        if len(rows) < want:
            run.exhausted = True

    def _take(self, run: Run, now: float) -> tuple[tuple[int, str, str], bool] | None:
        for i, (due, row, check) in enumerate(run.later):
            if due <= now:
                del run.later[i]
                return row, check
        if run.pending:
            return run.pending.popleft(), False
        return None

    async def _pause(self, run: Run, seconds: float) -> None:
        run.changed.clear()
        try:
            async with asyncio.timeout(min(seconds, TICK)):     # not wait_for: see _loop
                await run.changed.wait()
        except TimeoutError:
            pass

    def _blocked(self, run: Run, now: float) -> float:
        """Seconds this run must wait before its next row (0: go)."""
        task = run.task
        if task.held or task.cancelled_at is not None:
            return TICK
        until = self.quota_waits.get(task.account_id)
        if until is not None:       # only a round ends it, after reading operators' flags
            return max(until - now, 0.1)
        hold = self.holds.get(task.id)
        if hold is not None and hold[1] > now:
            return hold[1] - now
        room, reset = self.limits.quota_room(task.account_id)
        if room - self._account_inflight[task.account_id] > 0:
            return 0.0
        if self._account_inflight[task.account_id]:
            return 0.05     # rows in flight may not have reserved yet: see what they leave
        until = reset if reset is not None and reset > now else now + 60.0
        self.quota_waits[task.account_id] = until
        log.info("account %s: daily quota used up; its tasks wait until %s", task.account, iso(until))
        return until - now

    async def _pace(self, account_id: int) -> None:
        """No faster than the account's rate: the gate would refuse the excess."""
        interval = 1.0 / max(self.limits.rate(account_id), 0.001)
        real = time.monotonic()
        at = self._paced.get(account_id, 0.0)
        if at > real:
            await asyncio.sleep(at - real)
        self._paced[account_id] = max(real, at) + interval

    # -- one row ---------------------------------------------------------------------------------
    async def _one(self, run: Run, row: tuple[int, str, str]) -> None:
        task = run.task
        number, email, values = row
        try:
            data = {**run.data, **json.loads(values)}
            request = SendRequest(sender=run.sender, to=(("", email),), cc=(), bcc=(), reply_to=(),
                                  subject=task.subject, template=str(task.template_id), data=data, html=None,
                                  text=None, attachments=(), headers=(), tag=task.tag)
            try:
                stage, reply = await self.submit(request, task.account, (task.id, run.number, number))
            except (ChannelClosed, RemoteError):
                stage, reply = "LOST", "451 4.3.0 no front-end worker answered"
            except Exception as exc:     # whatever it was, the row is looked up and tried again
                log.error("task %d run %d row %d: the submission failed (%r); trying again", task.id, run.number,
                          number, exc)
                stage, reply = "LOST", "451 4.3.0 the submission failed"
            self._answered(run, row, stage, reply)
        finally:
            run.inflight.discard(number)
            self._account_inflight[task.account_id] -= 1
            self.slots.release()
            run.changed.set()

    def _answered(self, run: Run, row: tuple[int, str, str], stage: str, reply: str) -> None:
        task = run.task
        now = self.clock.now()
        if stage == "DATA" and reply.startswith("250"):
            run.counts["accepted"] += 1
            self.holds.pop(task.id, None)
            self._count("accepted")
        elif stage == "MAIL":
            # The whole task waits: 2 s the first time (a template or domain added a moment ago
            # reaches the workers within a second), then longer up to 30 s; rows answered in
            # the same window do not count again.
            reason, until, times = self.holds.get(task.id, ("", 0.0, 0))
            if until <= now:
                retry = HOLD_RETRIES[min(times, len(HOLD_RETRIES) - 1)]
                until, times = now + retry, times + 1
                self.holds[task.id] = (f"sender refused: {reply}", until, times)
                if times <= 2:
                    log.warning("task %d: %s; trying again in %ds", task.id, reply, retry)
            run.later.append((until, row, False))
            self._count("deferred")
        elif reply.startswith("5"):
            run.counts["rejected"] += 1
            self.rejected.append((task.id, run.number, row[0], reply, now))
            self._count("rejected")
        elif "Daily message quota" in reply:
            until = moment(reply) or now + 60.0
            self.quota_waits[task.account_id] = max(until, self.quota_waits.get(task.account_id, 0.0))
            run.later.append((now, row, False))
            self._count("deferred")
        else:       # the hourly cap (its moment), the rate, the store, a worker gone (check first)
            at = moment(reply) if "already been sent" in reply else None
            run.later.append((at or now + (0.5 if "sending rate" in reply else QUICK_RETRY), row, stage == "LOST"))
            self._count("deferred")

    def _count(self, result: str) -> None:
        if self.counters is not None:
            self.counters.recipients(result)

    # -- what the store learns -------------------------------------------------------------------
    async def _save_waits(self, now: float) -> None:
        """The runs' waits as the task's `wait_reason` (what `task show` reads). A quota wait
        ends here, for paused tasks too (an operator's pause stays)."""
        names = {run.task.account_id: run.task.account for run in self.runs.values()}
        for account_id, ends in list(self.quota_waits.items()):
            if ends <= now:
                del self.quota_waits[account_id]
                log.info("account %s: the daily quota has room again; its tasks go on", names.get(account_id,
                                                                                                   account_id))
        changes: dict[tuple[str | None, float | None], list[int]] = {}
        for task_id, run in self.runs.items():
            wanted: tuple[str | None, float | None] = (None, None)
            quota_until = self.quota_waits.get(run.task.account_id)
            hold = self.holds.get(task_id)
            if quota_until is not None and quota_until > now:
                wanted = ("daily quota", quota_until)
            elif hold is not None and hold[2] >= 2:
                wanted = (hold[0][:300], hold[1])
            if self._written.setdefault(task_id, (run.task.wait_reason, None)) != wanted:
                changes.setdefault(wanted, []).append(task_id)
                self._written[task_id] = wanted
                if wanted[0] is not None:
                    log.info("task %d run %d paused (%s%s)", task_id, run.number, wanted[0],
                             f": resumes at {iso(wanted[1])}" if wanted[0] == "daily quota" else "")
                else:
                    log.info("task %d run %d resumed", task_id, run.number)
        for (reason, wait_until), ids in changes.items():
            await self.store.run(progress.set_wait(ids, reason, wait_until, now))

    async def _flush(self) -> None:
        rejected, self.rejected = self.rejected, []
        cursors = [(run.cursor(), run.task.id, run.number) for run in self.runs.values()]
        if rejected or cursors:
            try:
                await self.store.run(progress.record(rejected, cursors))
            except BaseException:
                self.rejected = rejected + self.rejected
                raise
