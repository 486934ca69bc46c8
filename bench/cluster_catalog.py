"""Cluster mode's shared catalog (issue 20): what PostgreSQL costs a node, and how fast a change
reaches it.

1. **RCPT latency**: one relay as a single node, then with `[cluster] postgres` (a PostgreSQL on
   this machine, started here as the `postgres` user). The catalog is mirrored into the node's
   store, so PostgreSQL is not on the SMTP path: the two should match.
2. **Propagation**: a blocklist entry written through the services (what `smtprelay blocklist
   add` runs, on "another node") until the running node refuses it at RCPT; --trials times,
   p50/p99. Then the same with --blocklist entries already in the catalog (each change re-reads
   the blocklist group: the cost of the snapshot design at that size).
3. **Events forwarded**: --messages messages through the node (smtp-source-like, 20 sessions):
   how long after the last one was accepted PostgreSQL holds all their `accepted` events.

Everything on 127.0.0.1; every loop is bounded. Two cores here: figures are a floor.

    .venv/bin/python bench/cluster_catalog.py [--rcpts 2000] [--trials 30] [--blocklist 100000]
                                              [--messages 2000] [--no-save]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
from pathlib import Path
from typing import Any

from cluster import rcpt_latencies
from harness import Report, Sink, percentile, scratch, smtp_source, tear_down
from relay_setup import SENDER, BenchRelay

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rcpt_ms(relay: BenchRelay, count: int) -> dict[str, Any]:
    asyncio.run(rcpt_latencies(relay, 200))          # warm-up
    ms = [x * 1000 for x in asyncio.run(rcpt_latencies(relay, count))]
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3), "count": len(ms)}


def refused(relay: BenchRelay, address: str) -> bool:
    import smtplib
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, local_hostname="bench.test", timeout=10) as s:
        s.ehlo()
        s.mail(SENDER)
        return s.rcpt(address)[0] == 550


def propagation(relay: BenchRelay, trials: int, tag: str) -> dict[str, Any]:
    """Write through the services (another node's CLI), then RCPT on the node until refused."""
    from smtprelay.services import open_services
    services = open_services(relay.config_path)
    seconds = []
    try:
        for n in range(trials):
            address = f"{tag}-{n}@blocked.test"
            started = time.perf_counter()
            services.blocklist.add(address)
            deadline = time.monotonic() + 30
            while not refused(relay, address):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{address} was not refused within 30 s")
            seconds.append(time.perf_counter() - started)
    finally:
        services.close()
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1), "trials": trials}


def fill_blocklist(url: str, count: int) -> None:
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY blocklist (address, type, reason, created_at) FROM STDIN") as copy:
                now = time.time()
                for n in range(count):
                    copy.write_row((f"bulk{n}@bulk.test", "custom", "bench", now))
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'blocklist_version'")
        conn.execute("NOTIFY smtprelay_catalog")


def wait_blocklist(relay: BenchRelay, count: int) -> float:
    import sqlite3
    started = time.perf_counter()
    deadline = time.monotonic() + 300
    while True:
        with sqlite3.connect(relay.data_dir / "relay.db") as db:
            copied = db.execute("SELECT count(*) FROM blocklist WHERE reason = 'bench'").fetchone()[0] >= count
        if copied and refused(relay, f"bulk{count - 1}@bulk.test"):     # and the gate holds them
            return time.perf_counter() - started
        if time.monotonic() > deadline:
            raise RuntimeError("the bulk blocklist did not arrive in 300 s")
        time.sleep(0.05)    # polling the node's store for a bulk copy; measured to this resolution


def events_lag(relay: BenchRelay, url: str, messages: int) -> dict[str, Any]:
    import psycopg
    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT count(*) FROM events WHERE type = 'accepted'").fetchone()[0]
    started = time.perf_counter()
    proc = smtp_source(relay.smtp_port, messages, sessions=20, size=2048, sender=SENDER)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {err.decode()[-500:]}")
    accepted_s = time.perf_counter() - started
    deadline = time.monotonic() + 120
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM events WHERE type = 'accepted'").fetchone()[0] < before + messages:
            if time.monotonic() > deadline:
                raise RuntimeError("the events did not all reach PostgreSQL in 120 s")
            time.sleep(0.05)    # polling PostgreSQL; measured to this resolution
    done = time.perf_counter() - started
    return {"messages": messages, "accepted_s": round(accepted_s, 2), "in_postgres_s": round(done, 2),
            "lag_after_last_s": round(done - accepted_s, 2), "msgs_per_s": round(messages / accepted_s, 0)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rcpts", type=int, default=2000)
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--blocklist", type=int, default=100_000)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    from smtprelay.cluster import catalog as cluster_catalog, pg_schema
    from tests.pgserver import PgServer
    workdir = scratch("cluster-catalog")
    pg = PgServer().start()
    report = Report("cluster_catalog", save=not args.no_save)
    sink = Sink(workdir)
    relays: list[BenchRelay] = []
    try:
        conn = cluster_catalog.connect_any(pg.url)
        pg_schema.migrate(conn)
        conn.close()
        key = workdir / "cluster.key"
        key.write_text(base64.b64encode(os.urandom(48)).decode())
        for name in ("single", "cluster"):
            (workdir / name).mkdir()
        single = BenchRelay(workdir / "single", sink.port, {"limits": {"recipient_hourly_cap": 1000}})
        relays.append(single)
        single.start()
        alone = rcpt_ms(single, args.rcpts)
        single.stop()
        relays.remove(single)
        node = BenchRelay(workdir / "cluster", sink.port, {
            "limits": {"recipient_hourly_cap": 1000},
            "cluster": {"node": "bench-1", "postgres": pg.url, "key_file": str(key)}})
        relays.append(node)
        node.start()
        mirrored = rcpt_ms(node, args.rcpts)
        report.line(f"# RCPT answer, one client, {args.rcpts} RCPTs (50 per transaction), PostgreSQL on this machine")
        report.table(["relay", "p50 ms", "p99 ms"], [
            ["single node", alone["p50_ms"], alone["p99_ms"]],
            ["[cluster] postgres", mirrored["p50_ms"], mirrored["p99_ms"]],
            ["added", round(mirrored["p50_ms"] - alone["p50_ms"], 3), round(mirrored["p99_ms"] - alone["p99_ms"], 3)]])
        small = propagation(node, args.trials, "small")
        started = time.perf_counter()
        fill_blocklist(pg.url, args.blocklist)
        copied = wait_blocklist(node, args.blocklist)
        large = propagation(node, args.trials, "large")
        cycles = node.metric("smtprelay_cluster_store_latency_seconds_sum", 'store="postgres"')
        count = node.metric("smtprelay_cluster_store_latency_seconds_count", 'store="postgres"')
        report.line(f"# a blocklist entry written on another node -> refused at RCPT here ({args.trials} trials)")
        report.table(["catalog", "p50 ms", "p99 ms"], [
            ["small", small["p50_ms"], small["p99_ms"]],
            [f"{args.blocklist} blocklist entries", large["p50_ms"], large["p99_ms"]]])
        report.line(f"# {args.blocklist} entries bulk-loaded into PostgreSQL were refused by the node {copied:.2f} s later "
                    f"(after the load, {time.perf_counter() - started:.1f} s in all)")
        events = events_lag(node, pg.url, args.messages)
        report.line(f"# {events['messages']} messages at {events['msgs_per_s']:.0f}/s: every accepted event in "
                    f"PostgreSQL {events['lag_after_last_s']} s after the last was accepted")
        report.data.update(single=alone, cluster=mirrored, propagation_small=small, propagation_large=large,
                           bulk_copy_s=round(copied, 2), events=events,
                           mirror_cycle_mean_ms=round(cycles / count * 1000, 2) if count else None)
        report.write()
    finally:
        for relay in relays:
            relay.stop()
        sink.stop()
        pg.remove()
        tear_down(workdir=workdir, keep=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
