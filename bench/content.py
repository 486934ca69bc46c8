"""Throughput with content scanning (issue 22), beside the default, on one machine.

Three configurations of smtprelay, one after the other, each with a fresh smtp-sink: no scanner
(the default), ClamAV scanning every message (`scan = "all"`: smtp-source's messages have no
attachment), and ClamAV plus rspamd. The scanners are Debian's clamd and rspamd, started here as
the tests start them (tests/scanners.py): clamd with a one-signature database (EICAR's hash),
so its cost here is the protocol and MIME parsing, not matching against ClamAV's ~8 million
production signatures; rspamd with its packaged rules and its network modules off. The load is
throughput.py's: smtp-source, 20 sessions, one connection per 4 KB message, and the clock stops
when the sink has counted every one. Every wait is bounded; it stops by itself.

    .venv/bin/python bench/content.py [--messages 5000] [--no-save]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness import Report, Sink, scratch, tear_down, tree_cpu
from relay_setup import ROOT, BenchRelay
from throughput import offer

sys.path.insert(0, str(ROOT))
from tests.scanners import Clamd, Rspamd  # noqa: E402

CONFIGS = ("none", "clamav", "clamav+rspamd")


def run(name: str, messages: int, clamd: Clamd, rspamd: Rspamd) -> dict[str, Any]:
    workdir = scratch(f"content-{name.replace('+', '-')}")
    sink = Sink(workdir)
    scanners: dict[str, Any] = {}
    if "clamav" in name:
        scanners["clamav"] = {"address": clamd.address, "scan": "all"}
    if "rspamd" in name:
        scanners["rspamd"] = {"url": rspamd.url}
    relay = None
    try:
        relay = BenchRelay(workdir, sink.port, {"content": {"scanners": scanners}} if scanners else None).start()
        offer(relay.smtp_port, sink, 500, 20, 4096, timeout=300)                 # warm-up, not timed
        cpu = {"smtprelay": tree_cpu(relay.pid), "clamd": tree_cpu(clamd.proc.pid) if clamd.proc else 0.0,
               "rspamd": tree_cpu(rspamd.proc.pid) if rspamd.proc else 0.0}
        accepted, elapsed, _ = offer(relay.smtp_port, sink, messages, 20, 4096, timeout=900)
        used = {"smtprelay": tree_cpu(relay.pid) - cpu["smtprelay"],
                "clamd": (tree_cpu(clamd.proc.pid) if clamd.proc else 0.0) - cpu["clamd"],
                "rspamd": (tree_cpu(rspamd.proc.pid) if rspamd.proc else 0.0) - cpu["rspamd"]}
        return {"config": name, "messages": messages, "rate": round(messages / elapsed, 1),
                "accept_rate": round(messages / accepted, 1),
                "cpu_ms_per_message": {k: round(v * 1000 / messages, 2) for k, v in used.items()}}
    finally:
        tear_down(relay, sink, workdir=workdir, keep=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    workdir = scratch("scanners")
    clamd, rspamd = Clamd(Path(workdir)), Rspamd(Path(workdir))
    report = Report("content", save=not args.no_save)
    rows = []
    try:
        clamd.start()
        rspamd.start()
        for name in CONFIGS:
            result = run(name, args.messages, clamd, rspamd)
            report.data.setdefault("results", []).append(result)
            cpu = result["cpu_ms_per_message"]
            rows.append([name, result["rate"], round(result["rate"] / rows[0][1], 2) if rows else 1.0,
                         cpu["smtprelay"], cpu["clamd"], cpu["rspamd"]])
            print(result, flush=True)
        report.line(f"# smtp-source, 20 sessions, {args.messages} messages of 4 KB each, one per connection; trusted "
                    "listener, every policy, RSA-2048 DKIM, synced commit, delivery to smtp-sink")
        report.table(["scanning", "msgs/s", "vs none", "relay CPU ms/msg", "clamd CPU ms/msg", "rspamd CPU ms/msg"],
                     rows)
        report.write()
    finally:
        tear_down(clamd, rspamd, workdir=workdir, keep=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
