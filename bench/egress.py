"""Throughput with egress pools (issue 19), beside the kernel's choice, on one machine.

Three configurations of smtprelay, one after the other, each with a fresh smtp-sink:
- "kernel": no pool addresses (the default: the kernel picks the source address);
- "pool of 2": the shared pool with two loopback aliases (127.0.8.1, 127.0.8.2), already warm
  (`warmup set-day --ip ... 31`), max_rate high enough never to wait: the cost of choosing an
  address per recipient, binding and per-address destinations;
- "pool of 2, max_rate 25": the same with each address held to 25 messages per second: the
  measured rate should be 2 × 25 = 50 msgs/s, never more.
The load is throughput.py's: smtp-source, 20 sessions, one 4 KB message per connection; the
clock stops when the sink has counted every one. Every wait is bounded; it stops by itself.

    .venv/bin/python bench/egress.py [--messages 5000] [--paced 600] [--no-save]
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from harness import Report, Sink, scratch, tear_down, tree_cpu
from relay_setup import SINK_DOMAIN, BenchRelay
from throughput import offer

ADDRESSES = ("127.0.8.1", "127.0.8.2")


def run(name: str, messages: int, max_rate: float | None) -> dict[str, Any]:
    workdir = scratch("egress-" + "".join(c if c.isalnum() else "-" for c in name))
    sink = Sink(workdir)
    overrides = None
    if max_rate is not None:
        overrides = {"egress": {"pools": [{"name": "shared", "addresses": list(ADDRESSES), "max_rate": max_rate}]}}
    relay = None
    try:
        relay = BenchRelay(workdir, sink.port, overrides)
        if max_rate is not None:
            for address in ADDRESSES:      # addresses that have sent for years: past the last day
                relay.cli("warmup", "set-day", "--ip", address, SINK_DOMAIN, "31")
        relay.start()
        offer(relay.smtp_port, sink, min(500, messages), 20, 4096, timeout=300)     # warm-up, not timed
        cpu = tree_cpu(relay.pid)
        accepted, elapsed, _ = offer(relay.smtp_port, sink, messages, 20, 4096, timeout=900)
        used = tree_cpu(relay.pid) - cpu
        return {"config": name, "messages": messages, "rate": round(messages / elapsed, 1),
                "accept_rate": round(messages / accepted, 1),
                "cpu_ms_per_message": round(used * 1000 / messages, 2)}
    finally:
        tear_down(relay, sink, workdir=workdir, keep=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--paced", type=int, default=600, help="messages for the max_rate run")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    report = Report("egress", save=not args.no_save)
    rows = []
    for name, messages, rate in (("kernel", args.messages, None), ("pool of 2", args.messages, 100000.0),
                                 ("pool of 2, max_rate 25", args.paced, 25.0)):
        result = run(name, messages, rate)
        report.data.setdefault("results", []).append(result)
        rows.append([name, messages, result["rate"], result["accept_rate"], result["cpu_ms_per_message"]])
        print(result, flush=True)
    report.line(f"# smtp-source, 20 sessions, 4 KB messages, one per connection; trusted listener, every policy, "
                "RSA-2048 DKIM, synced commit, delivery to smtp-sink over loopback")
    report.table(["source addresses", "messages", "delivered msgs/s", "accepted msgs/s", "relay CPU ms/msg"], rows)
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
