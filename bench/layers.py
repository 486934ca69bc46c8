"""CPU per message by layer: py-spy's raw (collapsed) stacks of the relay's processes, each
sample put in the layer of its innermost frame that belongs to one, scaled by each process's
measured CPU per message. Used by `throughput.py --profile DIR`.

An approximation: py-spy samples a thread that is running or inside a system call, so a layer
that waits in the kernel (the store's fsync, socket writes) gets a larger share of the
process's CPU than it uses; threads waiting for work are left out.

    .venv/bin/python bench/layers.py STACKS.txt CPU_MS_PER_MESSAGE_BY_ROLE_JSON
"""
from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

# Innermost match wins; checked in this order within one frame.
LAYERS = (
    ("dkim: RSA/Ed25519 (OpenSSL)", ("_Loaded.sign (",)),
    ("dkim: dkimpy (parse, canonicalise, hash, fold)", ("dkim/", "dkim/signer.py")),
    ("smtp: aiosmtpd protocol (incl. socket writes)", ("aiosmtpd/", "smtp/submission.py", "asyncio/streams.py")),
    ("smtp: native protocol (incl. socket writes)", ("smtp/server.py", "smtp/secure.py")),
    ("smtp: syntax, policy, stamping, front end", ("smtp/commands.py", "policy/", "smtp/stamp.py", "smtp/handler.py",
                                                    "events/tracking.py", "email/", "ipaddress.py")),
    ("worker <-> back end channel", ("smtp/channel.py", "pickle")),
    ("gate (caps, limits, blocklist)", ("smtp/gate.py", "policy/limits.py")),
    ("store: commit incl. fsync", ("queue/store.py",)),
    ("scheduler, warm-up, delivery client", ("queue/", "delivery/", "warmup")),
    ("events, webhooks, metrics", ("events/", "prometheus_client/")),
    ("logging", ("smtprelay/logs.py", "logging/")),
)
LOOP = "event loop (uvloop, C)"
# Threads waiting for work: py-spy counts a thread blocked on a queue as busy; these are not.
IDLE = ("_worker (concurrent/futures/thread.py:81)", "_connection_worker_thread (aiosqlite/core.py:59)",
        "Condition.wait (threading.py", "Event.wait (threading.py")


def role(first_frame: str) -> str:
    """py-spy --subprocesses names each stack's process in its first frame."""
    return "worker" if "_worker" in first_frame else "back end"


def layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in LAYERS:
            if any(n in frame for n in needles):
                return name
    if frames and frames[-1].startswith("Runner.run (asyncio/runners.py"):
        return LOOP
    return "other (interpreter, libraries)"


def breakdown(stacks: Path, cpu_ms: dict[str, float]) -> list[tuple[str, str, float, float]]:
    """(role, layer, share of the role's samples, CPU ms per message) for each role and layer."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for line in stacks.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(IDLE):
            continue
        counts[role(frames[0])][layer(frames[1:])] += int(n)
    rows = []
    for who, by_layer in sorted(counts.items()):
        total = sum(by_layer.values())
        for name, n in by_layer.most_common():
            rows.append((who, name, n / total, cpu_ms.get(who, 0.0) * n / total))
    return rows


def main() -> int:
    for who, name, share, ms in breakdown(Path(sys.argv[1]), json.loads(sys.argv[2])):
        print(f"{who:9} {name:52} {share * 100:5.1f}%  {ms:.3f} ms/msg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
