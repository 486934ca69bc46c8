"""Soak: a constant load for N minutes, then a table per minute of what should stay flat —
RSS (and its heap part, RssAnon) and open file descriptors of every relay process (the back
end first, then the workers), the WAL's size, the queue's depth,
and the p99 end-of-DATA latency — and whether any of them grew (issue 24, item 9).

The load is 60 % of the capacity measured first (smtp-source through the trusted listener,
one connection per message), over AUTH+STARTTLS connections like an application's. One
recipient in ten goes to a dead destination (a closed port) and one in ten to one that
answers every RCPT with 451: the queue holds deferred mail all along, as in production. It
stops by itself after --minutes.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate N] [--no-save]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import ROOT, Report, Sink, free_port, percentile, scratch, smtp_source, tear_down, tree_pids
from latency import BODY_LINE, Connection, connect
from relay_setup import SENDER, BenchRelay

DEAD, DEFER = "dead.test", "defer.test"


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """Resident memory in KiB: VmRSS, or its part RssAnon (the heaps: what a leak grows; the
    rest is mapped files and shared memory such as SQLite's WAL index)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def capacity(relay: BenchRelay, sink: Sink, messages: int = 3000) -> float:
    """Messages per second the relay takes and delivers, from an smtp-source burst."""
    start_count = sink.count
    started = time.monotonic()
    source = smtp_source(relay.smtp_port, messages, sessions=20)
    source.wait(timeout=600)
    sink.wait_for(start_count + messages, timeout=600)
    return messages / (time.monotonic() - started)


async def minute(relay: BenchRelay, rate: float, seconds: float, first: int) -> tuple[list[float], int, int]:
    """One minute of load at `rate` over 8 AUTH connections: (end-of-DATA latencies, sent, errors)."""
    conns = await asyncio.gather(*(connect(relay.submission_port, relay.username, relay.password) for _ in range(8)))
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        idle.put_nowait(conn)
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def send(conn: Connection, number: int) -> None:
        nonlocal errors
        domain = DEAD if number % 10 == 3 else DEFER if number % 10 == 7 else "sink.test"
        try:
            await conn.command(f"MAIL FROM:<{SENDER}>".encode(), b"250")
            await conn.command(f"RCPT TO:<r{number}@{domain}>".encode(), b"250")
            await conn.command(b"DATA", b"354")
            conn.writer.write(f"From: <{SENDER}>\r\nTo: <r{number}@{domain}>\r\nSubject: soak {number}\r\n\r\n".encode()
                              + BODY_LINE * 52 + b".\r\n")
            dot = time.perf_counter()
            reply = await conn.reply()
            if reply.startswith(b"250"):
                latencies.append(time.perf_counter() - dot)
            else:
                errors += 1
            idle.put_nowait(conn)
        except Exception:
            errors += 1

    count = int(rate * seconds)
    t0 = loop.time()
    for i in range(count):
        wait = t0 + i / rate - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        conn = await idle.get()
        task = asyncio.create_task(send(conn, first + i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=120)
    while not idle.empty():
        c = idle.get_nowait()
        c.writer.write(b"QUIT\r\n")
        c.writer.close()
    return latencies, count, errors


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (default: 60 %% of measured capacity)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    workdir = scratch("soak")
    sink = Sink(workdir)
    deferring_port = free_port()
    deferring = subprocess.Popen([sys.executable, str(ROOT / "tests" / "receiver.py"), "--port", str(deferring_port),
                                  "--log", str(workdir / "defer.jsonl"), "--rcpt-reply", "@=451 4.3.0 try later"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    relay = BenchRelay(workdir, sink.port, {"delivery": {"routes": {
        "*": f"127.0.0.1:{sink.port}", DEAD: f"127.0.0.1:{free_port()}", DEFER: f"127.0.0.1:{deferring_port}"}}})
    report = Report("soak", save=not args.no_save)
    try:
        relay.start()
        rate = args.rate or round(0.6 * capacity(relay, sink), 1)
        report.line(f"# {args.minutes} min at {rate} msgs/s (AUTH+STARTTLS, 8 connections); 1 in 10 recipients "
                    "to a dead destination, 1 in 10 to one answering 451")
        rows, samples = [], []
        number = 0
        for m in range(1, args.minutes + 1):
            latencies, sent, errors = asyncio.run(minute(relay, rate, 60.0, number))
            number += sent
            pids = tree_pids(relay.pid)
            wal = relay.data_dir / "relay.db-wal"
            depth = sum(relay.metric("smtprelay_queue_messages", f'state="{s}"')
                        for s in ("queued", "deferred", "throttled", "active", "hold"))
            sample = {"minute": m, "sent": sent, "errors": errors,
                      "rss_mb": {str(pid): round(rss_kb(pid) / 1024, 1) for pid in pids},
                      "anon_mb": {str(pid): round(rss_kb(pid, "RssAnon") / 1024, 1) for pid in pids},
                      "fds": {str(pid): fds(pid) for pid in pids},
                      "wal_mb": round(wal.stat().st_size / 2**20, 1) if wal.exists() else 0.0,
                      "queue": int(depth), "p99_ms": round(percentile([x * 1000 for x in latencies], 99), 1)
                      if latencies else None}
            samples.append(sample)
            rows.append([m, sent, errors, " ".join(f"{v}" for v in sample["rss_mb"].values()),
                         " ".join(f"{v}" for v in sample["anon_mb"].values()),
                         " ".join(f"{v}" for v in sample["fds"].values()), sample["wal_mb"], sample["queue"],
                         sample["p99_ms"]])
            print(rows[-1], flush=True)
        report.table(["min", "sent", "errors", "RSS MB per process", "of which heap (RssAnon)", "fds per process",
                      "WAL MB", "queue", "p99 ms"],
                     rows)
        report.data["samples"] = samples
        # Growth: the last third against the second (the first third includes the warm-up).
        third = max(1, len(samples) // 3)
        def total(s: dict, key: str) -> float:
            return sum(s[key].values())
        if len(samples) >= 3:
            mid = samples[third:2 * third]
            end = samples[-third:]
            for key in ("rss_mb", "anon_mb", "fds"):
                a = sum(total(s, key) for s in mid) / len(mid)
                b = sum(total(s, key) for s in end) / len(end)
                report.line(f"{key}: {a:.1f} → {b:.1f} (second third → last third, {100 * (b - a) / max(a, 1):+.1f} %)")
        report.write()
    finally:
        relay.stop()
        sink.stop()
        deferring.terminate()
        deferring.wait(timeout=30)
        tear_down(workdir=workdir, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
