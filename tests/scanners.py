"""clamd and rspamd for the tests, from Debian's packages, on test-owned sockets and ports with
test-owned configuration; each started once per test module and stopped by its PID.

- clamd loads only a signature file the test writes: the MD5 hash signature of the EICAR test
  file (nothing is downloaded; freshclam never runs).
- rspamd runs its packaged rules (GTUBE is built in) with the modules that reach the network
  turned off (RBLs, fuzzy hashes, maps, ...), DNS pointed at a port where nothing answers, and no
  Redis: a test never leaves 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_NAME = "Smtprelay-Test-EICAR.UNOFFICIAL"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
NETWORK_MODULES = ("fuzzy_check", "rbl", "multimap", "asn", "emails", "phishing", "dkim_signing", "arc", "ratelimit",
                   "replies", "neural", "reputation", "url_redirector", "metadata_exporter", "history_redis",
                   "dynamic_conf", "greylist")


def available() -> bool:
    return shutil.which("clamd") is not None and shutil.which("rspamd") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Daemon:
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None


class Clamd(_Daemon):
    def __init__(self, tmp: Path):
        self.dir = tmp / "clamd"
        (self.dir / "db").mkdir(parents=True, exist_ok=True)
        (self.dir / "db" / "smtprelay-test.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:"
                                                           "Smtprelay-Test-EICAR\n")
        self.socket = self.dir / "clamd.sock"
        self.port = free_port()
        self.address = f"unix:{self.socket}"
        self.tcp_address = f"127.0.0.1:{self.port}"
        (self.dir / "clamd.conf").write_text(
            f"Foreground yes\nLocalSocket {self.socket}\nTCPSocket {self.port}\nTCPAddr 127.0.0.1\n"
            f"DatabaseDirectory {self.dir / 'db'}\nLogFile {self.dir / 'clamd.log'}\nUser root\n"
            "StreamMaxLength 50M\n")

    def start(self) -> "Clamd":
        self.proc = subprocess.Popen(["clamd", f"--config-file={self.dir / 'clamd.conf'}"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "ab"))
        deadline = time.monotonic() + 60
        while not self._pong():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("clamd did not start: " + (self.dir / "stderr.log").read_text()[-2000:])
            time.sleep(0.1)     # waiting for a child daemon to load its signatures
        return self

    def _pong(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False


class Rspamd(_Daemon):
    def __init__(self, tmp: Path):
        self.dir = tmp / "rspamd"
        for sub in ("run", "log", "db", "local/local.d", "local/override.d"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for module in NETWORK_MODULES:
            (self.dir / "local" / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        silent = free_port()
        (self.dir / "rspamd.conf").write_text(f"""
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    disable_hyperscan = true;
    dns {{ nameserver = ["127.0.0.1:{silent}"]; timeout = 0.2s; retransmits = 0; }}
}}
logging {{ type = "file"; filename = "$LOGDIR/rspamd.log"; level = "warning"; }}
worker "normal" {{
    bind_socket = "127.0.0.1:{self.port}";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}
""")

    def start(self) -> "Rspamd":
        d = self.dir
        self.proc = subprocess.Popen(
            ["rspamd", "-f", "-i", "-u", "root", "-g", "root", "-c", str(d / "rspamd.conf"), f"--var=RUNDIR={d / 'run'}",
             f"--var=LOGDIR={d / 'log'}", f"--var=DBDIR={d / 'db'}", f"--var=LOCAL_CONFDIR={d / 'local'}"],
            stdout=open(d / "stdout.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        import urllib.request
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as r:
                    if r.read().strip() == b"pong":
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rspamd did not start: " + (d / "stdout.log").read_text()[-2000:])
            time.sleep(0.1)     # waiting for a child daemon to load its rules

    def stop(self) -> None:
        # rspamd's main process stops its workers on SIGTERM.
        super().stop()
