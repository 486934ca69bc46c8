"""Scale: a million recipients queued for a destination that is down.

The relay routes `down.test` to a closed port on 127.0.0.1 (connection refused: the
destination is dead) and `up.test` to the benchmark's smtp-sink. Then:

1. enqueue rate on the empty store: smtp-source offers single-recipient 4 KB messages for
   `down.test` (20 sessions), accepted msgs/s; the median of three probes, each after the
   machine settled (dirty pages synced, the relay idle);
2. fill: smtp-source submits the rest of `--recipients` recipients for `down.test` (50 per
   message, every address distinct), all through SMTP, with the scheduler deferring them as
   it finds the destination dead;
3. once the relay is idle again: the same enqueue probes (with the relay's CPU per message
   in both probes, so a slower probe can be told from a busier machine); resident memory of every relay process;
   `smtprelay queue list --domain down.test` and `--domain up.test` (wall time of the CLI);
   and how long a message for `up.test` takes from its 250 to the sink — the scheduler must
   find the one ready recipient of another domain behind a million waiting ones.

    .venv/bin/python bench/scale.py [--recipients 1000000] [--profile DIR]

`--profile DIR` samples the relay's processes with py-spy during both probes (collapsed
stacks in DIR/probe-empty-1.txt ... DIR/probe-full-3.txt; the sampling costs CPU, so the rates
of such a run are lower).
"""
from __future__ import annotations

import argparse
import json
import os
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (Profiler, Report, Sink, ensure_packages, free_port, machine_busy, process_cpu, processes, rss_mb,
                     relay_settings, scratch, smtp_source, tear_down, tree_cpu)
from relay_setup import ROOT, SENDER, BenchRelay


def pss_mb(pid: int) -> float:
    """Proportional set size: private pages plus a share of those mapped by several processes
    (libpython and the C extensions, mapped by every relay process)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def probe(relay: BenchRelay, messages: int, sessions: int,
          profile: Path | None = None) -> tuple[float, float, dict[str, float]]:
    """Accepted single-recipient messages per second (smtp-source, one connection each), and
    the relay's CPU milliseconds per message meanwhile; with `profile`, py-spy samples the
    relay's processes meanwhile (collapsed stacks)."""
    spy = Profiler(relay.pid, profile) if profile is not None else None
    cpu, each, busy = tree_cpu(relay.pid), processes(relay.pid, process_cpu), machine_busy()
    started = time.monotonic()
    proc = smtp_source(relay.smtp_port, messages, sessions, 4096, sender=SENDER, recipient="probe@down.test")
    _, err = proc.communicate()
    took = time.monotonic() - started
    cpu = tree_cpu(relay.pid) - cpu
    split = {role: (used - each.get(role, 0.0)) * 1000 / messages
             for role, used in processes(relay.pid, process_cpu).items()}
    after = machine_busy()
    split["machine busy %"] = (after[0] - busy[0]) / max(1, after[1] - busy[1]) * 100
    split["stolen %"] = (after[2] - busy[2]) / max(1, after[1] - busy[1]) * 100
    if spy is not None:
        spy.stop()
    if proc.returncode != 0 or err.strip():
        raise RuntimeError(f"smtp-source: {err.decode(errors='replace')[:300]}")
    return messages / took, cpu * 1000 / messages, split


def probes(relay: BenchRelay, args: argparse.Namespace, name: str, report: Report) -> tuple[float, float, list[Any]]:
    """`args.repeat` probes, each after the machine settled; the medians of rate and CPU per
    message (this VM's host takes CPU at times: one probe can be a fifth slower)."""
    found = []
    for i in range(args.repeat):
        settle(relay)
        spy = args.profile / f"probe-{name}-{i + 1}.txt" if args.profile else None
        rate, cpu, split = probe(relay, args.probe, args.sessions, spy)
        report.line(f"  probe {name} {i + 1}: {rate:.0f} msgs/s, relay CPU {cpu:.2f} ms/msg ("
                    + ", ".join(f"{k} {v:.2f}" for k, v in split.items()) + ")")
        found.append({"rate": rate, "cpu_ms": cpu, **split})
    return statistics.median(f["rate"] for f in found), statistics.median(f["cpu_ms"] for f in found), found


def settle(relay: BenchRelay, limit: float = 180.0) -> float:
    """Wait (at most `limit` s) until the machine has settled — the page cache's dirty pages
    written (sync), the relay under 10 % of a core over 2 s — so a probe measures enqueueing,
    not the tail of the fill (the kernel writing back a gigabyte, the scheduler deferring
    what it claimed from the dead destination). Returns the seconds waited."""
    started = time.monotonic()
    os.sync()          # the fill's dirty pages are written now, not by the kernel during the probe
    while time.monotonic() - started < limit:
        cpu = tree_cpu(relay.pid)
        time.sleep(2.0)
        if tree_cpu(relay.pid) - cpu < 0.2:
            break
    return time.monotonic() - started


def depth(relay: BenchRelay) -> tuple[int, dict[str, int]]:
    db = sqlite3.connect(relay.data_dir / "relay.db", timeout=30)
    try:
        states = dict(db.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall())
    finally:
        db.close()
    return sum(v for k, v in states.items() if k in ("queued", "active", "hold")), states


def cli_seconds(relay: BenchRelay, *args: str) -> tuple[float, int]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "smtprelay", *args, "--config", str(relay.config_path), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    took = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(f"smtprelay {' '.join(args)}: {out.stderr.strip()}")
    doc = json.loads(out.stdout)
    return took, len(doc) if isinstance(doc, list) else len(doc.get("messages", doc))


def next_ready(relay: BenchRelay, sink: Sink, tries: int) -> list[float]:
    """Seconds from the 250 of a message for up.test to the sink counting it."""
    times = []
    for i in range(tries):
        before = sink.count
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, local_hostname="probe.bench", timeout=60) as s:
            s.sendmail(SENDER, [f"next{i}@up.test"], f"From: {SENDER}\r\nSubject: next {i}\r\n\r\nhello\r\n")
        started = time.monotonic()
        if not sink.wait_for(before + 1, 300):
            raise RuntimeError("the message for up.test did not arrive within 300 s")
        times.append(time.monotonic() - started)
        time.sleep(0.5)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipients", type=int, default=1_000_000, help="queue depth to reach (default 1 000 000)")
    p.add_argument("--per-message", type=int, default=50, help="recipients per message while filling")
    p.add_argument("--probe", type=int, default=5000, help="messages in each enqueue-rate probe")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--repeat", type=int, default=3, help="enqueue-rate probes at each depth (median)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy the relay during the probes: DIR/probe-empty-1.txt ... DIR/probe-full-N.txt")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    ensure_packages()
    report = Report("scale", save=not args.no_save)
    if args.set:
        report.line(f"# smtprelay settings: {', '.join(args.set)}")
    workdir = scratch("scale")
    sink = Sink(workdir)
    dead_port = free_port()          # nothing listens here: connection refused
    settings = {"limits": {"max_recipients": max(50, args.per_message), "account_rate_per_second": 1_000_000.0},
                "delivery": {"routes": {"down.test": f"127.0.0.1:{dead_port}", "up.test": f"127.0.0.1:{sink.port}"}}}
    for section, values in relay_settings(args.set).items():
        settings.setdefault(section, {}).update(values)
    relay = None
    try:
        relay = BenchRelay(workdir, None, settings, warm=("down.test", "up.test")).start()
        report.line(f"# {args.recipients} recipients for a dead destination (connection refused), filled through "
                    f"SMTP with {args.per_message} per message; probes of {args.probe} single-recipient 4 KB messages")
        empty_rate, empty_cpu, empty_probes = probes(relay, args, "empty", report)
        rss_start = processes(relay.pid, rss_mb)
        queued, _ = depth(relay)
        messages = max(0, (args.recipients - queued) // args.per_message)
        started = time.monotonic()
        fill = smtp_source(relay.smtp_port, messages, args.sessions, 1024, sender=SENDER, recipient="r@down.test",
                           recipients_per_message=args.per_message)
        _, err = fill.communicate()
        if fill.returncode != 0 or err.strip():
            raise RuntimeError(f"fill: smtp-source: {err.decode(errors='replace')[:300]}")
        fill_seconds = time.monotonic() - started
        queued, states = depth(relay)
        report.line(f"fill: {messages} messages, {messages * args.per_message} recipients in {fill_seconds:.0f} s "
                    f"({messages * args.per_message / fill_seconds:.0f} recipients/s); queue now {queued} ({states})")
        full_rate, full_cpu, full_probes = probes(relay, args, "full", report)
        report.line(f"enqueue rate at depth {queued}: {full_rate:.0f} msgs/s = {full_rate / empty_rate * 100:.0f}% of "
                    f"the rate at depth ~0 ({empty_rate:.0f}); relay CPU per message {full_cpu:.2f} ms = "
                    f"{full_cpu / empty_cpu * 100:.0f}% of {empty_cpu:.2f} ms")
        files = {name: (relay.data_dir / name).stat().st_size / 1e6 for name in ("relay.db", "relay.db-wal")
                 if (relay.data_dir / name).exists()}
        report.line("store files: " + ", ".join(f"{k} {v:.0f} MB" for k, v in files.items()))
        rss = processes(relay.pid, rss_mb)
        pss = processes(relay.pid, pss_mb)
        total, pss_total = sum(rss.values()), sum(pss.values())
        report.line(f"resident memory at depth {queued}: RSS {total:.0f} MB in all ("
                    + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()) + f"), PSS {pss_total:.0f} MB in all; "
                    f"RSS at start {sum(rss_start.values()):.0f} MB ("
                    + ", ".join(f"{k} {v:.0f} MB" for k, v in rss_start.items()) + ")")
        down_s, down_n = cli_seconds(relay, "queue", "list", "--domain", "down.test")
        up_s, up_n = cli_seconds(relay, "queue", "list", "--domain", "up.test")
        report.line(f"queue list --domain down.test: {down_s:.2f} s ({down_n} messages listed); "
                    f"--domain up.test: {up_s:.2f} s ({up_n})")
        ready = next_ready(relay, sink, 5)
        report.line(f"a message for up.test, from its 250 to the sink: "
                    f"median {statistics.median(ready) * 1000:.1f} ms "
                    f"(" + ", ".join(f"{t * 1000:.1f}" for t in ready) + ")")
        report.data.update({"recipients": queued, "states": states, "fill_seconds": fill_seconds,
                            "enqueue_empty": empty_rate, "enqueue_full": full_rate,
                            "cpu_ms_empty": empty_cpu, "cpu_ms_full": full_cpu,
                            "probes_empty": empty_probes, "probes_full": full_probes, "store_files_mb": files,
                            "rss_mb": rss,
                            "rss_total_mb": total, "pss_mb": pss, "pss_total_mb": pss_total,
                            "rss_start_mb": rss_start, "queue_list_down_s": down_s, "queue_list_up_s": up_s,
                            "next_ready_s": ready})
        report.line()
        report.table(["figure", "value", "target"], [
            ["memory with the queue full: RSS of all processes", f"{total:.0f} MB", "≤ 150 MB"],
            ["  RSS: back end / each worker", " / ".join(f"{v:.0f}" for v in rss.values()) + " MB", ""],
            ["  PSS of all processes (shared pages once)", f"{pss_total:.0f} MB", ""],
            [f"enqueue rate at {queued:,} / at 0", f"{full_rate / empty_rate * 100:.0f}%", "≥ 90% at 1 M"],
            ["queue list --domain (the dead one)", f"{down_s:.2f} s", ""],
            ["next ready recipient of another domain", f"{statistics.median(ready) * 1000:.1f} ms", ""],
        ])
    finally:
        tear_down(relay, sink, workdir=workdir, keep=args.keep)
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
