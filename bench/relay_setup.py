"""smtprelay as the benchmarks run it: set up through its own CLI the way an operator would.

- a trusted-network listener (like Postfix's mynetworks) mapped to the account `bench`, and a
  STARTTLS submission listener for AUTH;
- `bench.example` registered with `domain add` (DKIM RSA-2048), its records served by a
  dnsmasq started here, and verified with `domain verify` (SPF evaluated for 127.0.0.1);
- the sender address registered (policy.require_registered_address stays on), the account's
  quota and rate raised for the load, the domain imported as already warm for the sink's
  provider (`warmup set-day`), so warm-up admission runs but does not cap;
- delivery to the benchmark's sink through `[delivery.routes]`, durable queue as always.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import ROOT, free_port, stop_pid

sys.path.insert(0, str(ROOT))
from tests.dnsserver import DnsServer, records_from_cli  # noqa: E402
from tests.support import to_toml  # noqa: E402

DOMAIN = "bench.example"
SENDER = f"bench@{DOMAIN}"
SINK_DOMAIN = "sink.test"


class BenchRelay:
    def __init__(self, workdir: Path, sink_port: int | None, overrides: dict[str, dict[str, Any]] | None = None,
                 warm: tuple[str, ...] = (SINK_DOMAIN,)):
        self.dir = workdir
        self.data_dir = workdir / "var"
        self.config_path = workdir / "relay.toml"
        self.smtp_port, self.submission_port, self.http_port = free_port(), free_port(), free_port()
        self.dns = DnsServer(workdir, (DOMAIN,))
        self.doc: dict[str, Any] = {
            "server": {"hostname": "relay.bench", "data_dir": str(self.data_dir), "public_ips": ["127.0.0.1"]},
            "listeners": [
                {"name": "local", "address": "127.0.0.1", "port": self.smtp_port, "tls": "none",
                 "trusted_networks": ["127.0.0.0/8"], "trusted_account": "bench"},
                {"name": "submission", "address": "127.0.0.1", "port": self.submission_port, "tls": "starttls"},
            ],
            "http": {"address": "127.0.0.1", "port": self.http_port},
            "dns": {"nameservers": [self.dns.nameserver], "timeout": "2s"},
            "delivery": {"routes": {"*": f"127.0.0.1:{sink_port}"}} if sink_port else {},
        }
        for section, values in (overrides or {}).items():
            self.doc.setdefault(section, {}).update(values)
        self.config_path.write_text(to_toml(self.doc))
        self.proc: subprocess.Popen[bytes] | None = None
        self.username = self.password = ""
        self._prepare(warm)

    def cli(self, *args: str) -> Any:
        out = subprocess.run([sys.executable, "-m", "smtprelay", *args, "--config", str(self.config_path), "--json"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"smtprelay {' '.join(args)}: {out.stderr.strip()}")
        return json.loads(out.stdout) if out.stdout.strip() else None

    def _prepare(self, warm: tuple[str, ...]) -> None:
        self.cli("account", "add", "bench", "--daily-quota", "100000000", "--rate", "1000000")
        records = self.cli("domain", "add", "bench", DOMAIN)
        self.dns.publish(records_from_cli(records))
        verified = self.cli("domain", "verify", DOMAIN)
        assert verified["status"] == "verified", verified
        self.cli("address", "add", SENDER)
        for provider in warm:
            # An already-warm domain being imported (README "Warm-up"): the last day + 1.
            self.cli("warmup", "set-day", DOMAIN, provider, "31")
        credential = self.cli("credential", "add", "bench")
        self.username, self.password = credential["username"], credential["password"]

    def start(self) -> "BenchRelay":
        self.proc = subprocess.Popen([sys.executable, "-m", "smtprelay", "serve", "--config", str(self.config_path)],
                                     stdout=open(self.dir / "relay.log", "ab"), stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1).read()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the relay did not start: " + (self.dir / "relay.log").read_text()[-3000:])
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10).read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        key = f"{name}{{{labels}}}" if labels else name
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(key + " ") or (not labels and line.startswith(name + "{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, timeout=60)
            self.proc = None
        self.dns.stop()
