"""A quick end-to-end throughput check of one relay on this machine (NOT issue 8's suite:
no Postfix anchor, one round). Run as root from the repository: .venv/bin/python bench/smoke.py

It starts Postfix's smtp-sink as the receiver and the relay (trusted-network listener, a
verified sender domain already warmed up, DKIM RSA-2048, policy, durable queue, delivery to
the sink through [delivery.routes]), offers N messages of 4 KB from 20 smtp-source sessions,
and reports accepted msgs/s and the time until every message is delivered. Everything it
starts it stops by PID; nothing listens beyond 127.0.0.1.
"""
from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import free_port, to_toml  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--sessions", type=int, default=20)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="smtprelay-smoke-"))
    sink_port, smtp_port, http_port = free_port(), free_port(), free_port()
    doc = {"server": {"hostname": "relay.bench", "data_dir": str(tmp / "var")},
           "listeners": [{"name": "local", "address": "127.0.0.1", "port": smtp_port, "tls": "none",
                          "trusted_networks": ["127.0.0.0/8"], "trusted_account": "bench"}],
           "http": {"address": "127.0.0.1", "port": http_port},
           "dns": {"nameservers": [f"127.0.0.1:{free_port()}"], "timeout": "1s"},
           "limits": {"account_daily_quota": 10_000_000, "account_rate_per_second": 1_000_000.0,
                      "recipient_hourly_cap": 10_000_000, "max_connections_per_client": 1000},
           "policy": {"require_registered_address": False},
           "delivery": {"routes": {"*": f"127.0.0.1:{sink_port}"}}}
    (tmp / "relay.toml").write_text(to_toml(doc))
    from smtprelay.accounts import AccountService
    from smtprelay.config import load
    from smtprelay.domains.service import DomainService
    from smtprelay.queue import ledger, schema
    config = load(tmp / "relay.toml")
    conn = schema.connect(config.server.data_dir)
    AccountService(conn, time.time()).ensure_account("bench")
    DomainService(conn, config, time.time()).add_domain("bench", "bench.example")
    conn.execute("UPDATE domains SET status = 'verified', verified_at = ? WHERE name = 'bench.example'",
                 (time.time(),))
    ledger.set_day(conn, "bench.example", "sink.test", 31, time.strftime("%Y-%m-%d", time.gmtime()), time.time())
    conn.close()
    sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    relay = subprocess.Popen([sys.executable, "-m", "smtprelay", "serve", "--config", str(tmp / "relay.toml")],
                             stdout=open(tmp / "relay.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "relay did not start"
                time.sleep(0.1)
        started = time.monotonic()
        subprocess.run(["/usr/sbin/smtp-source", "-s", str(args.sessions), "-m", str(args.messages), "-l", "4096",
                        "-f", "bench@bench.example", "-t", "rcpt@sink.test", f"127.0.0.1:{smtp_port}"], check=True)
        accepted = time.monotonic() - started
        db = sqlite3.connect(tmp / "var" / "relay.db")
        count = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        while db.execute("SELECT count(*) FROM recipients WHERE state = 'delivered'").fetchone()[0] < count:
            assert time.monotonic() - started < 900, "delivery did not finish in 15 minutes"
            time.sleep(0.2)
        delivered = time.monotonic() - started
        print(f"accepted {count} of {args.messages} in {accepted:.1f} s = {count / accepted:.0f} msgs/s; "
              f"all delivered after {delivered:.1f} s = {count / delivered:.0f} msgs/s end to end")
    finally:
        for proc in (relay, sink):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
