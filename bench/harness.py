"""What every benchmark shares: processes stopped by PID, CPU per process tree, Postfix's
smtp-source (load) and smtp-sink (receiver, counted), machine facts and raw results.

Nothing here listens beyond 127.0.0.1, and everything started is stopped by its PID.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
TICK = os.sysconf("SC_CLK_TCK")

# Debian packages the suite drives: Postfix (the anchor, and smtp-source/smtp-sink), OpenDKIM
# (the second anchor), dnsmasq (the relay's sender domain is verified against real DNS).
PACKAGES = ("postfix", "opendkim", "dnsmasq-base")


def ensure_packages(packages: Iterable[str] = PACKAGES) -> None:
    """Install missing Debian packages (as root), without starting any daemon: Postfix is
    pre-seeded with "No configuration", and this machine's OpenDKIM service is never enabled."""
    missing = [p for p in packages if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"bench: missing Debian packages {' '.join(missing)}; run as root so they can be installed")
    print(f"bench: installing {' '.join(missing)}", flush=True)
    if "postfix" in missing:
        subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                       check=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    for name in ("opendkim", "postfix"):   # a package's init script may start a daemon: stop it
        subprocess.run(["service", name, "stop"], capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
            time.sleep(0.05)


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not go away."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:   # not our child: poll for it
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


# -- CPU and memory per process tree ------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime + cutime + cstime in seconds) of one process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    # After the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based from state.
    return int(fields[1]), sum(int(x) for x in fields[11:15]) / TICK


def process_cpu(pid: int) -> float:
    """CPU seconds one process has used so far (0 if it is gone)."""
    found = _stat(pid)
    return found[1] if found is not None else 0.0


def tree_pids(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                parents[int(entry)] = found[0]
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def tree_cpu(root: int) -> float:
    """CPU seconds used by a process tree so far: each live process's own time plus the time of
    the children it has reaped (cutime/cstime), so processes that came and went are counted."""
    total = 0.0
    for pid in tree_pids(root):
        found = _stat(pid)
        if found is not None:
            total += found[1]
    return total


def rss_mb(pid: int) -> float:
    """One process's resident set (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def tree_rss_mb(root: int) -> float:
    total = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def machine_busy() -> tuple[float, float, float]:
    """(busy, total, stolen) jiffies of all CPUs, from /proc/stat. Stolen: time the virtual
    machine's host gave to someone else; a run with much of it measured a slower machine."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    steal = parts[7] if len(parts) > 7 else 0
    return sum(parts) - idle - steal, sum(parts), steal


# -- load and receiver ------------------------------------------------------------------------------
class Sink:
    """Postfix's smtp-sink on 127.0.0.1, counting the messages it received (its -c counter)."""

    def __init__(self, workdir: Path, backlog: int = 1024):
        self.port = free_port()
        self.count = 0
        self._changed = threading.Condition()
        self.proc = subprocess.Popen([SMTP_SINK, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", str(backlog)],
                                     stdout=subprocess.PIPE, stderr=open(workdir / "smtp-sink.log", "ab"))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(self.port, proc=self.proc)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        pending = b""
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                return
            pending += chunk
            *records, pending = re.split(rb"[\r\n]", pending)
            for record in reversed(records):
                m = re.search(rb"mesg=(\d+)", record)
                if m:
                    with self._changed:
                        self.count = int(m.group(1))
                        self._changed.notify_all()
                    break

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def stop(self) -> None:
        stop_pid(self.proc.pid)


def smtp_source(port: int, messages: int, sessions: int = 20, size: int = 4096,
                sender: str = "bench@bench.example", recipient: str = "rcpt@sink.test",
                recipients_per_message: int = 1) -> subprocess.Popen[bytes]:
    """smtp-source: one connection per message (like most submitting applications), -N: a new
    recipient address each time (no artificial cache hits, no per-recipient hourly cap)."""
    args = [SMTP_SOURCE, "-N", "-s", str(sessions), "-m", str(messages), "-l", str(size), "-f", sender,
            "-t", recipient, "-M", "source.bench"]
    if recipients_per_message > 1:
        args += ["-r", str(recipients_per_message)]
    return subprocess.Popen(args + [f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# -- numbers and results -----------------------------------------------------------------------------
@dataclass
class Series:
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def text(self, fmt: str = "{:.0f}") -> str:
        if not self.values:
            return "-"
        if len(self.values) == 1:
            return fmt.format(self.values[0])
        return f"{fmt.format(self.median)} ({fmt.format(min(self.values))}–{fmt.format(max(self.values))})"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an unsorted list."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def _version(cmd: list[str], pattern: str = r"[\d.]+") -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return "not installed"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(0) if m else "unknown"


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    facts: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(), "kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(),
        "memory_gb": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "postfix": _version(["postconf", "-d", "mail_version"]),
        "opendkim": _version(["opendkim", "-V"], r"v[\d.]+"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=ROOT).stdout.strip() or "unknown",
        "dirty": bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, cwd=ROOT).stdout.strip()),
    }
    try:
        from importlib.metadata import version
        for dist in ("aiosqlite", "cryptography", "dkimpy", "uvloop"):
            try:
                facts[dist] = version(dist)
            except Exception:
                facts[dist] = "not installed"
    except ImportError:
        pass
    return facts


class Report:
    """Everything a benchmark prints goes to stdout and to bench/results/<date>-<name>.txt; the
    figures also go to a .json beside it."""

    def __init__(self, name: str, save: bool = True):
        self.name = name
        self.lines: list[str] = []
        self.data: dict[str, Any] = {"benchmark": name, "machine": machine_facts()}
        self.save = save
        facts = self.data["machine"]
        self.line(f"# {name} — {facts['date']}")
        self.line(f"# {facts['cpu']}, {facts['cores']} cores, {facts['memory_gb']} GB; Linux {facts['kernel']}; "
                  f"Python {facts['python']}, SQLite {facts['sqlite']}, Postfix {facts['postfix']}, "
                  f"OpenDKIM {facts['opendkim']}; smtprelay {facts['commit']}{' (modified)' if facts['dirty'] else ''}")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        self.line("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
        self.line("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in rows:
            self.line("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")

    def write(self) -> Path | None:
        if not self.save:
            return None
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = self.data["machine"]["date"].replace(":", "").replace("-", "")
        base = RESULTS / f"{stamp}-{self.name}"
        base.with_suffix(".txt").write_text("\n".join(self.lines) + "\n")
        base.with_suffix(".json").write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        print(f"raw results: {base.with_suffix('.txt').relative_to(ROOT)} and .json", flush=True)
        return base


SCRATCH = Path(os.environ.get("SMTPRELAY_BENCH_DIR", "/var/lib/smtprelay-bench"))


def relay_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--set section.key=value` options (value in TOML syntax) as relay.toml overrides."""
    import tomllib
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (eq and dot and section and name):
            raise SystemExit(f"--set {item}: expected section.key=value, e.g. server.commit_window=\"2ms\"")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value     # a bare string
        overrides.setdefault(section, {})[name] = parsed
    return overrides


def scratch(prefix: str) -> Path:
    """A fresh working directory outside the repository. Not under /tmp: OpenDKIM refuses
    files below a directory other users may write to. Mode 0755: Postfix's and OpenDKIM's
    unprivileged users must reach their directories."""
    import tempfile
    SCRATCH.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=SCRATCH))
    path.chmod(0o755)
    return path


def tear_down(*running: Any, workdir: Path, keep: bool) -> None:
    """Stop what a benchmark started (anything with .stop(); None is skipped), then remove its
    scratch directory unless --keep."""
    for thing in running:
        if thing is not None:
            thing.stop()
    if not keep:
        remove(workdir)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def processes(root: int, measure: Callable[[int], float]) -> dict[str, float]:
    """A measure of each of the relay's processes (CPU, RSS, ...) by role and pid."""
    found = {}
    for pid in tree_pids(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except FileNotFoundError:
            continue
        role = "worker" if "_worker" in cmd else "back end" if " serve " in cmd else None
        if role is not None:
            found[f"{role} {pid}"] = measure(pid)
    return found


class Profiler:
    """py-spy sampling every process of a tree until stop(), one py-spy per process (its
    --subprocesses mode did not follow the relay's workers here); the raw collapsed stacks are
    merged into `output`, each stack's first frame naming its process like --subprocesses does:
    `process PID:"command line"`."""

    def __init__(self, root: int, output: Path):
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.parts: list[tuple[int, str, Path, subprocess.Popen[bytes]]] = []
        spy = str(Path(sys.executable).parent / "py-spy")
        for pid in tree_pids(root):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
            except FileNotFoundError:
                continue
            part = output.with_name(f"{output.name}.{pid}")
            proc = subprocess.Popen([spy, "record", "--format", "raw", "--rate", "200", "--output", str(part),
                                     "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.parts.append((pid, cmd, part, proc))
        time.sleep(1.0)   # py-spy attaches before the load starts

    def stop(self) -> None:
        for _, _, _, proc in self.parts:
            proc.send_signal(signal.SIGINT)   # py-spy writes its output on SIGINT
        with self.output.open("w") as merged:
            for pid, cmd, part, proc in self.parts:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    stop_pid(proc.pid)
                if part.exists():
                    for line in part.read_text(errors="replace").splitlines():
                        merged.write(f'process {pid}:"{cmd}";{line}\n')
                    part.unlink()
