"""End-to-end throughput: smtprelay against Postfix and Postfix + OpenDKIM, same load, same sink.

Each round runs, one after the other on this machine: plain Postfix, Postfix with OpenDKIM
(RSA-2048 milter), smtprelay with its default front end (aiosmtpd) and smtprelay with
`server.protocol = "native"` (trusted listener, verified sender domain, policy, DKIM
RSA-2048 through dkimpy, durable queue, warm-up admission, events, delivery through a route). For each:
a fresh smtp-sink, a warm-up batch (not timed), then smtp-source offers the messages (20
sessions, one connection per message, 4 KB) and the clock stops when the sink has counted
every one. Prints msgs/s, CPU per process tree and the ratios; median and range over rounds.

    .venv/bin/python bench/throughput.py [--rounds 3] [--messages 20000] [--profile DIR]

With --profile, py-spy samples each smtprelay run's processes during the timed part, and the
report shows CPU milliseconds per message by layer and process (bench/layers.py).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from anchor import OpenDkim, Postfix
from harness import (Profiler, Report, Series, Sink, ensure_packages, free_port, machine_busy, process_cpu, processes,
                     relay_settings, scratch, smtp_source, tear_down, tree_cpu)
from layers import breakdown
from relay_setup import DOMAIN, SENDER, BenchRelay

# smtprelay: the default front end (aiosmtpd, server.protocol = "aiosmtpd"); smtprelay-native: the
# same relay with server.protocol = "native".
SYSTEMS = ("postfix", "postfix+opendkim", "smtprelay", "smtprelay-native")
RELAYS = ("smtprelay", "smtprelay-native")


@dataclass
class Run:
    rate: float            # messages per second, until the sink counted the last one
    accept_rate: float     # messages per second, until smtp-source got the last 250
    cpu: dict[str, float]  # CPU seconds per process tree during the timed part
    busy: float            # share of all cores busy during the timed part
    stolen: float          # share of all cores taken by the VM host (steal) during the timed part
    extra: dict[str, Any] = field(default_factory=dict)


class Started:
    """A running system under test: its process trees, by name, and how to stop it."""

    def __init__(self, port: int, trees: dict[str, int], stop: Callable[[], None], extra: Callable[[], dict[str, Any]]):
        self.port, self.trees, self.stop, self.extra = port, trees, stop, extra


def start_system(name: str, workdir: Path, sink: Sink, settings: list[str]) -> Started:
    if name in RELAYS:
        protocol = ["server.protocol=native"] if name == "smtprelay-native" else []
        relay = BenchRelay(workdir, sink.port, relay_settings(protocol + settings)).start()
        return Started(relay.smtp_port, {"smtprelay": relay.pid}, relay.stop,
                       lambda: {"relay_peak_rss_mb": _peak_rss(relay.pid)})
    milter = OpenDkim(workdir, DOMAIN) if name == "postfix+opendkim" else None
    try:
        postfix = Postfix(workdir, free_port(), sink.port, milter.socket if milter else None)
    except BaseException:
        if milter:
            milter.stop()
        raise
    trees = {"postfix": postfix.pid}
    if milter:
        trees["opendkim"] = milter.pid

    def stop() -> None:
        postfix.stop()
        if milter:
            milter.stop()
    return Started(postfix.port, trees, stop, dict)


def _peak_rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def offer(port: int, sink: Sink, messages: int, sessions: int, size: int, timeout: float) -> tuple[float, float, float]:
    """Run smtp-source; returns (seconds until it finished, seconds until the sink had everything,
    smtp-source's own CPU seconds)."""
    target = sink.count + messages
    started = time.monotonic()
    proc = smtp_source(port, messages, sessions, size, sender=SENDER)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    accepted = time.monotonic() - started
    errors = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0 or errors.strip():
        raise RuntimeError(f"smtp-source exited {proc.returncode}: {errors.strip()[:500]}")
    if not sink.wait_for(target, timeout):
        raise RuntimeError(f"the sink counted {sink.count - (target - messages)} of {messages} after {timeout:.0f} s")
    return accepted, time.monotonic() - started, usage.ru_utime + usage.ru_stime


def measure(name: str, args: argparse.Namespace) -> Run:
    workdir = scratch(name.replace("+", "-"))
    sink = Sink(workdir)
    system = None
    try:
        system = start_system(name, workdir, sink, args.set)
        offer(system.port, sink, args.warmup, args.sessions, args.size, timeout=600)
        relay_pid = system.trees.get("smtprelay")
        spy = None
        if args.profile is not None and relay_pid is not None:
            stacks = args.profile / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.txt"
            spy = Profiler(relay_pid, stacks)
        roles_before = processes(relay_pid, process_cpu) if relay_pid is not None else {}
        cpu_before = {tree: tree_cpu(pid) for tree, pid in {**system.trees, "smtp-sink": sink.proc.pid}.items()}
        busy_before = machine_busy()
        accepted, elapsed, source_cpu = offer(system.port, sink, args.messages, args.sessions, args.size,
                                              timeout=args.timeout)
        busy_after = machine_busy()
        extra: dict[str, Any] = {}
        if relay_pid is not None:
            # CPU ms per message of each process role (the back end, the front-end workers).
            roles: dict[str, float] = {}
            for key, used in processes(relay_pid, process_cpu).items():
                who = key.rsplit(" ", 1)[0]
                roles[who] = roles.get(who, 0.0) + (used - roles_before.get(key, 0.0)) * 1000 / args.messages
            extra["cpu_ms_per_message"] = roles
            if spy is not None:
                spy.stop()
                extra["layers"] = breakdown(stacks, roles)
        cpu = {tree: tree_cpu(pid) - cpu_before[tree] for tree, pid in
               {**system.trees, "smtp-sink": sink.proc.pid}.items()}
        cpu["smtp-source"] = source_cpu
        total = max(1, busy_after[1] - busy_before[1])
        busy = (busy_after[0] - busy_before[0]) / total
        stolen = (busy_after[2] - busy_before[2]) / total
        return Run(args.messages / elapsed, args.messages / accepted, cpu, busy, stolen, {**system.extra(), **extra})
    finally:
        tear_down(system, sink, workdir=workdir, keep=args.keep)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--warmup", type=int, default=1000, help="messages sent before timing (default 1000)")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--timeout", type=float, default=1800, help="give up on a run after this many seconds")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a relay.toml setting for smtprelay's runs, e.g. --set server.workers=3")
    p.add_argument("--keep", action="store_true", help="keep the scratch directories (logs, stores)")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="sample smtprelay's processes with py-spy during the timed part; print CPU per message "
                        "by layer (stacks kept in DIR)")
    args = p.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        p.error(f"--systems: unknown {', '.join(sorted(unknown))}")
    ensure_packages()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # children inherit it
    report = Report("throughput", save=not args.no_save)
    if args.set:
        report.line(f"# smtprelay settings: {', '.join(args.set)}")
    report.line(f"# {args.messages} messages of {args.size} bytes from {args.sessions} smtp-source sessions "
                f"(one connection per message), after {args.warmup} not timed; {args.rounds} round(s)")
    runs: dict[str, list[Run]] = {s: [] for s in systems}
    for number in range(1, args.rounds + 1):
        for name in systems:
            run = measure(name, args)
            runs[name].append(run)
            cpu = ", ".join(f"{tree} {seconds:.1f} s" for tree, seconds in run.cpu.items())
            report.line(f"round {number} {name}: {run.rate:.0f} msgs/s end to end ({run.accept_rate:.0f} accepted); "
                        f"CPU {cpu}; machine {run.busy * 100:.0f}% busy, {run.stolen * 100:.0f}% stolen"
                        + "".join(f"; {k} {v:.0f}" for k, v in run.extra.items() if isinstance(v, (int, float)))
                        + "".join(f"; {who} {ms:.2f} ms/msg" for who, ms in
                                  run.extra.get("cpu_ms_per_message", {}).items()))
            for who, layer, share, ms in run.extra.get("layers", []):
                report.line(f"    {who:9} {layer:52} {share * 100:5.1f}%  {ms:.3f} ms/msg")
    rows = []
    for name in systems:
        rate, accept, busy, per_msg = Series(), Series(), Series(), Series()
        for run in runs[name]:
            rate.add(run.rate)
            accept.add(run.accept_rate)
            busy.add(run.busy * 100)
            own = sum(v for k, v in run.cpu.items() if k not in ("smtp-source", "smtp-sink"))
            per_msg.add(own / args.messages * 1000)
        rows.append([name, rate.text(), accept.text(), per_msg.text("{:.2f}"), busy.text()])
    report.line()
    report.table(["system", "msgs/s end to end", "msgs/s accepted", "CPU ms per message (system)",
                  "machine busy %"], rows)
    report.data["runs"] = {name: [vars(r) for r in rs] for name, rs in runs.items()}
    report.line()
    for relay in (r for r in RELAYS if r in runs):
        for anchor in ("postfix", "postfix+opendkim"):
            if anchor not in runs:
                continue
            ratios = Series()
            for ours, theirs in zip(runs[relay], runs[anchor]):
                ratios.add(ours.rate / theirs.rate)
            median = Series([r.rate for r in runs[relay]]).median / Series([r.rate for r in runs[anchor]]).median
            report.line(f"{relay} / {anchor}: {median:.2f}× (medians); per round {ratios.text('{:.2f}')}")
            report.data[f"ratio_{relay}_{anchor}" if relay != "smtprelay" else f"ratio_{anchor}"] = median
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
