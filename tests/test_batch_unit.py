"""Recipient groups and sending tasks without a running relay: the CSV reader (line numbers,
whatever the cells hold), task times, and the task runner on a real store with a fake clock and
a fake front end — a 100 000-row group is read in chunks (bounded memory), the daily quota
stops it without a refusal, and a new runner (a restart) goes on from where the first stopped,
every row once."""
from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.batch import csvfile, progress, schedule
from smtprelay.batch.runner import Run, TaskRunner, next_after
from smtprelay.catalog.sqlite import SqliteCatalog
from smtprelay.clock import FakeClock
from smtprelay.config import parse
from smtprelay.errors import Invalid
from smtprelay.queue import schema
from smtprelay.queue.ids import new_queue_id
from smtprelay.queue.store import QueuedMessage, QueueStore
from smtprelay.services import Context, Services
from smtprelay.templates.request import SendRequest

START = 1_800_000_000.0

cell = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(cell, cell), min_size=1, max_size=20))
def test_any_cells_come_back_as_written_and_lines_are_counted(values: list[tuple[str, str]]) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["email", "name", "note"])
    lines = [2]
    for i, (name, note) in enumerate(values):
        writer.writerow([f"u{i}@d.test", name, note])
        lines.append(out.getvalue().count("\n") + 1)
    reading, rows = csvfile.read(io.BytesIO(out.getvalue().encode()), 1000)
    got = list(rows)
    assert reading.problems == [] and reading.columns == ["name", "note"]
    assert [json.loads(r.data) for r in got] == [{"name": n, "note": m} for n, m in values]
    assert [r.line for r in got] == lines[:-1]      # where each row starts, quoted newlines counted


def test_problems_name_their_lines_and_the_header_is_checked() -> None:
    raw = (b"\xef\xbb\xbfEmail,user.name,user.plan\r\n"
           b"a@d.test,Ann,pro\r\n"
           b"\r\n"
           b"<b@d.test>,\"B\r\nB\",x\r\n"
           b"bad@,C,y\r\n"
           b"A@d.test,D,z\r\n"
           b"e@d.test,E\r\n")
    reading, rows = csvfile.read(io.BytesIO(raw), 10)
    got = list(rows)
    assert [(r.row, r.line, r.email) for r in got] == [(1, 2, "a@d.test"), (2, 4, "b@d.test")]
    assert json.loads(got[0].data) == {"user": {"name": "Ann", "plan": "pro"}}
    assert [(p.line, p.text.split(" ")[0]) for p in reading.problems] == [(6, '"bad@"'), (7, "A@d.test"), (8, "has")]
    for whole, words in ((b"name,code\nx@d.test,1\n", "no \"email\" column"),
                         (b"email,first name\nx@d.test,1\n", "variable names"),
                         (b"email,a,A\nx@d.test,1,2\n", "appears twice"),
                         (b"email,a,a.b\nx@d.test,1,2\n", "cannot both be given"), (b"", "needs a header row"),
                         (b"\xff,email\n", "not UTF-8")):
        with pytest.raises(Invalid, match=words) as exc:
            csvfile.read(io.BytesIO(whole), 10)
        assert str(exc.value).startswith("line 1:")


def test_task_times() -> None:
    assert schedule.parse_at("2031-01-15T09:00 Europe/Paris", START) == 1926201600.0 + 8 * 3600   # CET: UTC+1
    assert schedule.parse_at("2031-01-15T09:00:00+01:00", START) == 1926201600.0 + 8 * 3600
    assert schedule.parse_at("2031-01-15T09:00", START) == 1926201600.0 + 9 * 3600                 # UTC
    assert schedule.parse_at("2h", START) == START + 7200
    for bad in ("tomorrow", "2031-01-15T09:00 Mars/Olympus", "2031-01-15T09:00+01:00 Europe/Paris"):
        with pytest.raises(ValueError):
            schedule.parse_at(bad, START)
    assert schedule.parse_every("7d") == 7 * 86400
    with pytest.raises(ValueError, match="shorter than an hour"):
        schedule.parse_every("30m")
    # The next run after a late start folds the missed ones into it.
    assert next_after(START, 86400, START) == START + 86400
    assert next_after(START, 86400, START + 3.5 * 86400) == START + 4 * 86400


class Limits:
    def __init__(self, quota: int):
        self.quota = quota
        self.used = 0

    def quota_room(self, account_id: int) -> tuple[int, float | None]:
        return self.quota - self.used, START + 86400

    def rate(self, account_id: int) -> float:
        return 1e9


class FrontEnd:
    """What a worker does with a row, as far as the runner can tell: commit a message that
    carries (task, run, row), or refuse one address (the blocklist)."""

    def __init__(self, store: QueueStore, clock: FakeClock, limits: Limits):
        self.store, self.clock, self.limits = store, clock, limits
        self.sent: list[int] = []
        self.tasks: list[int] = []

    async def __call__(self, request: SendRequest, account: str, ref: tuple[int, int, int]) -> tuple[str, str]:
        address = request.to[0][1]
        if address == "blocked@d.test":
            return "RCPT", "550 5.7.1 Recipient address rejected: blocked@d.test is blocked"
        self.limits.used += 1
        qid = f"{new_queue_id(self.clock.now())[:13]}{len(self.sent) + self.limits.used:05d}"   # the clock stands still
        await self.store.enqueue(QueuedMessage(
            id=qid, account_id=1, username=None, mail_from="a@acme.example", recipients=(address,),
            body=b"Subject: x\r\n\r\nx\r\n", created_at=self.clock.now(), client_address="127.0.0.1", tls=None,
            header_message_id=f"<{qid}@t>", task=ref))
        self.sent.append(ref[2])
        self.tasks.append(ref[0])
        return "DATA", f"250 2.0.0 Ok: queued as {qid}"


def make_group(tmp_path: Path, rows: int, tasks: int = 1) -> Any:
    config = parse({"server": {"hostname": "relay.test", "data_dir": str(tmp_path / "var")},
                    "listeners": [{"name": "s", "port": 1}], "batch": {"max_group_size": rows, "chunk_rows": 500}})
    conn = schema.connect(config.server.data_dir)
    services = Services(Context(config, SqliteCatalog(conn), conn, FakeClock(START)))
    services.accounts.add("acme")
    services.domains.add("acme", "acme.example")
    services.templates.add("acme", "hello", text="Hello {{name}}", subject="Hi")
    body = "email,name\n" + "".join(f"u{i}@d.test,N{i}\n" for i in range(rows - 1)) + "blocked@d.test,B\n"
    services.groups.add("acme", "big", io.BytesIO(body.encode()))
    for _ in range(tasks):
        services.tasks.add("acme", "big", "hello", "a@acme.example", now=True)
    conn.close()
    return config


async def run_until(runner: TaskRunner, done: Any, rounds: int = 4000) -> None:
    for _ in range(rounds):
        if done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the runner did not get there")


async def test_a_100000_row_task_is_read_in_chunks_stops_at_the_quota_and_restarts_where_it_stopped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "smtprelay.tasks")
    config = make_group(tmp_path, 100_000)
    clock = FakeClock(START)
    limits = Limits(quota=3000)
    store = QueueStore(config.server.data_dir)
    await store.open()
    front = FrontEnd(store, clock, limits)
    most_pending = 0
    read = TaskRunner._read

    async def watched_read(self: TaskRunner, run: Run, chunk: int) -> None:
        nonlocal most_pending
        await read(self, run, chunk)
        most_pending = max(most_pending, len(run.pending))
    TaskRunner._read = watched_read  # type: ignore[method-assign]
    try:
        tracemalloc.start()
        runner = TaskRunner(lambda: config, store, config.server.data_dir, clock, limits, front)
        runner.start()
        await run_until(runner, lambda: limits.used == 3000 and runner.quota_waits)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        await runner.stop()
        assert most_pending <= 500                    # chunk_rows: never the whole group
        assert peak < 6 * 2**20, f"{peak / 2**20:.1f} MiB"   # the 100 000 rows as tuples would be ~25 MiB
        assert "daily quota used up" in caplog.text
        assert len(front.sent) == 3000 and sorted(front.sent) == list(range(1, 3001))

        # A new runner (a restart): more quota, and on it goes from the stored cursor.
        limits.quota = 8000
        clock.advance(60)
        runner = TaskRunner(lambda: config, store, config.server.data_dir, clock, limits, front)
        runner.start()
        await run_until(runner, lambda: limits.used == 8000 and runner.quota_waits)
        await runner.stop()
        assert "task 1 run 1: continuing after row 3000" in caplog.text
        assert sorted(front.sent) == list(range(1, 8001))          # every row once
        conn = schema.reader(config.server.data_dir)
        try:
            assert conn.execute("SELECT count(*), count(DISTINCT row) FROM task_rows").fetchone() == (8000, 8000)
            assert conn.execute("SELECT count(*) FROM messages WHERE task_id = 1 AND task_run = 1").fetchone() \
                == (8000,)
            assert conn.execute("SELECT wait_reason FROM tasks").fetchone() == ("daily quota",)
        finally:
            conn.close()
    finally:
        TaskRunner._read = read  # type: ignore[method-assign]
        await store.close()


@contextlib.asynccontextmanager
async def running(config: Any, quota: int) -> AsyncIterator[tuple[QueueStore, FakeClock, Limits, FrontEnd,
                                                                    TaskRunner]]:
    """A store, a clock, the quota, the fake front end and a started runner on them."""
    clock = FakeClock(START)
    limits = Limits(quota=quota)
    store = QueueStore(config.server.data_dir)
    await store.open()
    try:
        front = FrontEnd(store, clock, limits)
        runner = TaskRunner(lambda: config, store, config.server.data_dir, clock, limits, front)
        runner.start()
        yield store, clock, limits, front, runner
    finally:
        await store.close()


async def test_the_blocked_row_is_rejected_once_and_the_run_finishes(tmp_path: Path) -> None:
    async with running(make_group(tmp_path, 50), 1000) as (store, clock, limits, front, runner):
        conn = schema.reader(tmp_path / "var")
        await run_until(runner, lambda: conn.execute("SELECT state FROM tasks").fetchone() == ("finished",))
        await runner.stop()
        assert conn.execute("SELECT result, count(*) FROM task_rows GROUP BY 1 ORDER BY 1").fetchall() == \
            [("accepted", 49), ("rejected", 1)]
        assert conn.execute("SELECT status, cursor, size FROM task_runs").fetchone() == ("finished", 50, 50)
        # Past events.retention its rows go; its counts stay, frozen.
        before = SqliteCatalog(conn).run_counts(1, 1)
        assert (before["requested"], before["accepted"], before["rejected"]) == (50, 49, 1)
        assert await store.run(progress.prune(clock.now() - 1)) == 0          # it ended just now
        assert await store.run(progress.prune(clock.now() + 1, chunk=30)) == 30
        assert await store.run(progress.prune(clock.now() + 1, chunk=30)) == 20
        assert conn.execute("SELECT count(*) FROM task_rows").fetchone() == (0,)
        assert SqliteCatalog(conn).run_counts(1, 1) == before
        conn.close()


async def test_the_tasks_of_one_account_share_its_quota_round_robin(tmp_path: Path) -> None:
    async with running(make_group(tmp_path, 5000, tasks=3), 900) as (store, clock, limits, front, runner):
        await run_until(runner, lambda: limits.used == 900 and runner.quota_waits)
        await runner.stop()
        shares = Counter(front.tasks)
        assert sorted(shares) == [1, 2, 3] and sum(shares.values()) == 900
        # Round robin: each close to a third (the first started a commit earlier than the others).
        assert min(shares.values()) >= 0.85 * max(shares.values()), shares
