"""Cluster mode's shared limits (issue 20): what Redis adds per RCPT, and how many reservations
several nodes get through one Redis with the caps still exact.

1. **RCPT latency**: one relay as a single node, then the same relay with `[cluster] redis`
   (a redis-server on this machine). One client, closed loop: MAIL, then --rcpts RCPTs to
   distinct addresses, RSET; p50/p99 of each RCPT's answer, and the difference.
2. **8 simulated nodes**: --nodes processes, each with its own `SharedLimits` (the relay's
   module) and 20 concurrent callers, reserve and commit for --seconds against 200 addresses
   with an hourly cap of 10 and an account quota of --quota. Afterwards every address must
   hold at most 10 sends and the account at most the quota: exactness is checked, not assumed.

Two cores here: the nodes compete with Redis for CPU, so the rate is a floor. It stops by itself.

    .venv/bin/python bench/cluster.py [--rcpts 2000] [--nodes 8] [--seconds 10] [--quota 1500] [--no-save]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import Report, Sink, free_port, percentile, scratch, tear_down
from latency import connect
from relay_setup import SENDER, BenchRelay

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)     # waiting for the server process to listen


async def rcpt_latencies(relay: BenchRelay, count: int) -> list[float]:
    conn = await connect(relay.submission_port, relay.username, relay.password)
    out: list[float] = []
    n = 0
    while len(out) < count:
        await conn.command(f"MAIL FROM:<{SENDER}>".encode(), b"250")
        for _ in range(50):
            started = time.perf_counter()
            await conn.command(f"RCPT TO:<r{n}@sink.test>".encode(), b"250")
            out.append(time.perf_counter() - started)
            n += 1
        await conn.command(b"RSET", b"250")
    conn.writer.write(b"QUIT\r\n")
    conn.writer.close()
    return out[:count]


def measure_rcpt(workdir: Path, redis_port: int | None, count: int) -> dict[str, Any]:
    sink = Sink(workdir)
    overrides: dict[str, dict[str, Any]] = {"limits": {"recipient_hourly_cap": 1000}}
    if redis_port is not None:
        overrides["cluster"] = {"node": "bench-1", "redis": f"redis://127.0.0.1:{redis_port}/0"}
    relay = BenchRelay(workdir, sink.port, overrides)
    try:
        relay.start()
        if redis_port is not None:
            time.sleep(3.5)      # a new epoch: every node refuses for 3 s while counters are rebuilt
        asyncio.run(rcpt_latencies(relay, 200))          # warm-up
        ms = [x * 1000 for x in asyncio.run(rcpt_latencies(relay, count))]
    finally:
        relay.stop()
        sink.stop()
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3), "count": len(ms)}


def node_process(port: int, node: str, seconds: float, quota: int, out: Any) -> None:
    from smtprelay.cluster.counters import Held, SharedLimits, send_id

    async def run() -> tuple[int, int]:
        shared = SharedLimits(f"redis://127.0.0.1:{port}/0", node, 600.0)
        await shared.start()
        await asyncio.sleep(max(0.0, shared.grace_until - time.time()))   # a new epoch: nobody admits for 3 s
        deadline = time.monotonic() + seconds
        done = refused = 0
        reserve_s: list[float] = []
        commit_s: list[float] = []

        async def caller(number: int) -> None:
            nonlocal done, refused
            i = 0
            while time.monotonic() < deadline:
                address = f"a{(number * 7919 + i) % 200}@x.example"
                i += 1
                started = time.perf_counter()
                got = await shared.reserve("bench", address, 10, quota)
                reserve_s.append(time.perf_counter() - started)
                if isinstance(got, Held):
                    now = time.time()
                    started = time.perf_counter()
                    await shared.commit(got, send_id(node, address, now), now)
                    commit_s.append(time.perf_counter() - started)
                    done += 1
                else:
                    refused += 1
        await asyncio.gather(*(caller(n) for n in range(20)))
        await shared.close()
        return done, refused, reserve_s, commit_s
    out.put(asyncio.run(run()))


def simulated_nodes(port: int, nodes: int, seconds: float, quota: int) -> dict[str, Any]:
    import redis
    redis.Redis(port=port).flushall()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=node_process, args=(port, f"sim-{n}", seconds, quota, out)) for n in range(nodes)]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 90) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    elapsed = time.monotonic() - started
    client = redis.Redis(port=port, decode_responses=True)
    per_address = [client.zcard(k) for k in client.scan_iter("smtprelay:{a:bench}:sent:*")]
    account = client.zcard("smtprelay:{a:bench}:sent")
    committed = sum(r[0] for r in results)
    calls = committed + sum(r[1] for r in results)
    reserve_ms = [x * 1000 for r in results for x in r[2]]
    commit_ms = [x * 1000 for r in results for x in r[3]]
    return {"nodes": nodes, "calls": calls, "calls_per_s": round(calls / seconds, 0), "committed": committed,
            "max_per_address": max(per_address or [0]), "account_sends": account, "quota": quota,
            "exact": max(per_address or [0]) <= 10 and account <= quota and account == committed,
            "reserve_p50_ms": round(percentile(reserve_ms, 50), 2), "reserve_p99_ms": round(percentile(reserve_ms, 99), 2),
            "commit_p50_ms": round(percentile(commit_ms, 50), 2) if commit_ms else None,
            "commit_p99_ms": round(percentile(commit_ms, 99), 2) if commit_ms else None,
            "elapsed_s": round(elapsed, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rcpts", type=int, default=2000)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--quota", type=int, default=1500)     # below 200 x 10: the quota binds, and the caps
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    workdir = scratch("cluster")
    redis_proc, port = start_redis(workdir)
    report = Report("cluster", save=not args.no_save)
    try:
        (workdir / "single").mkdir()
        (workdir / "cluster").mkdir()
        single = measure_rcpt(workdir / "single", None, args.rcpts)
        shared = measure_rcpt(workdir / "cluster", port, args.rcpts)
        report.line("# (a commit runs after the node's fsync, beside the 250 reply: it adds nothing to it)")
        report.line(f"# RCPT answer, one client, {args.rcpts} RCPTs (50 per transaction), Redis on this machine")
        report.table(["relay", "p50 ms", "p99 ms"], [
            ["single node", single["p50_ms"], single["p99_ms"]],
            ["[cluster] redis", shared["p50_ms"], shared["p99_ms"]],
            ["added by Redis", round(shared["p50_ms"] - single["p50_ms"], 3),
             round(shared["p99_ms"] - single["p99_ms"], 3)]])
        sim = simulated_nodes(port, args.nodes, args.seconds, args.quota)
        report.line(f"# {sim['nodes']} simulated nodes x 20 callers, {args.seconds:.0f} s, 200 addresses, "
                    f"hourly cap 10, quota {sim['quota']}")
        report.table(["reserve calls/s", "reserve p50/p99 ms", "commit p50/p99 ms", "committed", "max per address",
                      "account sends", "exact"],
                     [[sim["calls_per_s"], f"{sim['reserve_p50_ms']}/{sim['reserve_p99_ms']}",
                       f"{sim['commit_p50_ms']}/{sim['commit_p99_ms']}", sim["committed"], sim["max_per_address"],
                       sim["account_sends"], sim["exact"]]])
        report.data.update(single=single, cluster=shared, simulated=sim)
        report.write()
        if not sim["exact"]:
            print("NOT EXACT: a cap was exceeded", file=sys.stderr)
            return 1
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        tear_down(workdir=workdir, keep=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
