"""Test support: a real relay process on 127.0.0.1 with its own config, store and ports."""
from __future__ import annotations

import json
import os
import re
import random
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _below_ephemeral() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections take theirs there)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1", udp_too: bool = False) -> int:
    """A port that is free now, chosen below the ephemeral range: a port the kernel handed out
    for port 0 could next be taken by an outgoing connection (a relay's delivery, a test client)
    before the relay under test binds it — a flaky 'Address already in use'. A port is never
    handed out twice in one test process: a relay's listeners are picked one after another and
    only bound later, so a repeat would collide with a sibling (CI once got its HTTP port equal
    to its own SMTP port)."""
    top = _below_ephemeral()
    for _ in range(1000):
        port = random.randint(10000, top - 1)
        if port in _HANDED_OUT:
            continue
        kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp_too else (socket.SOCK_STREAM,)
        probes = [socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) for kind in kinds]
        try:
            for probe in probes:
                probe.bind((host, port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port below {top} on {host}")


def client_tls() -> ssl.SSLContext:
    """The relay's test certificate is self-signed: clients skip verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # inline table
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(doc: dict[str, Any]) -> str:
    out = []
    for section, body in doc.items():
        if isinstance(body, list):
            for table in body:
                out.append(f"[[{section}]]")
                out += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        else:
            out.append(f"[{section}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(out) + "\n"


class Relay:
    """One relay: `start()` runs `smtprelay serve` as a child process; `stop()` ends it by PID."""

    def __init__(self, tmp: Path, overrides: dict[str, dict[str, Any]] | None = None,
                 trusted_networks: tuple[str, ...] = ("127.0.0.1/32",), seed: bool = True):
        self.dir = tmp
        self.data_dir = tmp / "var"
        self.config_path = tmp / "relay.toml"
        self.log_path = tmp / "relay.log"
        self.starttls_port = free_port()
        self.implicit_port = free_port()
        self.trusted_port = free_port()
        self.http_port = free_port()
        self.doc: dict[str, Any] = {
            "server": {"hostname": "relay.test", "data_dir": str(self.data_dir), "shutdown_grace": "5s",
                       "store_busy_timeout": "500ms",
                       # Two workers whatever the machine: sessions of one test meet on different
                       # processes, so the gate's exactness across workers is what every test checks.
                       "workers": 2},
            "listeners": [
                {"name": "submission", "address": "127.0.0.1", "port": self.starttls_port, "tls": "starttls"},
                {"name": "submissions", "address": "127.0.0.1", "port": self.implicit_port, "tls": "implicit"},
                {"name": "local", "address": "127.0.0.1", "port": self.trusted_port, "tls": "none",
                 "trusted_networks": list(trusted_networks), "trusted_account": "apps"},
            ],
            "http": {"address": "127.0.0.1", "port": self.http_port},
            # Never the system resolver: a port where nothing answers, unless a test starts dnsmasq.
            "dns": {"nameservers": [f"127.0.0.1:{free_port()}"], "timeout": "1s"},
            "log": {"level": "info"},
            # Generous sending limits so bursts in tests that are not about limits are not
            # throttled; the limit tests set their own.
            "limits": {"account_daily_quota": 10_000_000, "account_rate_per_second": 1_000_000.0,
                       "recipient_hourly_cap": 1000},
            # Warm-up caps a new domain at 50 a day per provider; its own tests turn it on.
            "warmup": {"enabled": False},
        }
        for section, values in (overrides or {}).items():
            self.doc.setdefault(section, {}).update(values)
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None
        self._seed = seed
        self.env: dict[str, str] = {}      # extra environment of the relay and the CLI

    def fake_clock(self) -> "Relay":
        """The relay and its CLI read their time as the system's plus an offset from a file
        (smtprelay.clock.FileClock); `advance` moves it. Call before `start`."""
        self.clock_path = self.dir / "clock-offset"
        self.clock_path.write_text("0")
        self.env["SMTPRELAY_CLOCK_FILE"] = str(self.clock_path)
        return self

    def advance(self, seconds: float) -> None:
        offset = float(self.clock_path.read_text()) + seconds
        tmp = self.clock_path.with_suffix(".tmp")
        tmp.write_text(repr(offset))
        tmp.replace(self.clock_path)       # never a half-written file

    def seed_sender(self, account: str, domain: str, addresses: tuple[str, ...]) -> None:
        """Register a sender domain and addresses and mark it verified, in-process.

        A shortcut for tests that are not about DNS: the domain tests verify through a real
        DNS server and the CLI instead."""
        from smtprelay.services import open_services
        services = open_services(self.config_path)
        conn = services.ctx.store
        try:
            services.accounts.ensure(account)
            services.domains.add(account, domain)
            for address in addresses:
                services.domains.add_address(address)
            conn.execute("UPDATE domains SET status = 'verified', verified_at = ?, last_checked_at = ?"
                         " WHERE name = ?", (time.time(), time.time(), domain))
        finally:
            conn.close()

    def write_config(self) -> None:
        self.config_path.write_text(to_toml(self.doc))

    # -- CLI -----------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "smtprelay", *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, **self.env})
        if check and proc.returncode != 0:
            raise AssertionError(f"smtprelay {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def add_account_with_credential(self, name: str = "acme") -> tuple[str, str]:
        self.cli("account", "add", name)
        cred = self.cli_json("credential", "add", name)
        return cred["username"], cred["password"]

    # -- process -------------------------------------------------------------------------
    def start(self, *extra: str) -> "Relay":
        if self._seed:
            self._seed = False
            self.seed_sender("acme", "example.com", ("a@example.com",))
            self.seed_sender("apps", "apps.example", ("app@apps.example",))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "smtprelay", "serve", "--config",
                                      str(self.config_path), *extra], stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env={**os.environ, **self.env})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)  # polling for the child to come up; not a stand-in for an injected clock
        raise AssertionError(f"relay did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        code = self.proc.returncode
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds `text` (lines are written within a loop turn of the event)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, f"{text!r} not logged within {timeout} s:\n{log[-3000:]}"
            time.sleep(0.02)   # polling a child's log file; nothing to inject
        return log

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of the series of `name` that carry all of `labels` ('result="delivered"'):
        a series may have more labels than a test names (deliveries_total has the pool too)."""
        _, text = self.http_get("/metrics")
        wanted = set(re.findall(r'\w+="[^"]*"', labels))
        total, found = 0.0, False
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            base, _, rest = series.partition("{")
            if base == name and wanted <= set(re.findall(r'\w+="[^"]*"', rest)):
                total, found = total + float(value), True
        return total if found else 0.0

    # -- store ---------------------------------------------------------------------------
    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.data_dir / "relay.db")

    def queued_ids(self) -> set[str]:
        with self.db() as conn:
            return {r[0] for r in conn.execute("SELECT id FROM messages")}

    def body(self, queue_id: str) -> bytes:
        with self.db() as conn:
            return bytes(conn.execute("SELECT body FROM messages WHERE id = ?", (queue_id,)).fetchone()[0])

    def recipients(self, queue_id: str) -> list[str]:
        with self.db() as conn:
            return [r[0] for r in conn.execute("SELECT address FROM recipients WHERE message_id = ? ORDER BY id",
                                               (queue_id,))]


def queued_id(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    assert "queued as " in text, text
    return text.rsplit("queued as ", 1)[1].strip()
