"""Running the relay: metrics, health, SIGHUP reload, SIGTERM drain, log formats, swaks."""
from __future__ import annotations

import json
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT, Relay, client_tls, queued_id


def test_metrics_and_health(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.sendmail("app@apps.example", ["b@example.org"], b"From: app@apps.example\r\nSubject: m\r\n\r\nhi\r\n")
        s.ehlo()
        s.mail("app@apps.example")
        s.rcpt("nobody@[10.0.0.1]")
    status, body = relay.http_get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, text = relay.http_get("/metrics")
    assert status == 200
    for name in ("smtprelay_smtp_connections_total", "smtprelay_smtp_sessions_active",
                 "smtprelay_auth_attempts_total", "smtprelay_messages_accepted_total",
                 "smtprelay_recipients_rejected_total", "smtprelay_build_info"):
        assert f"# TYPE {name.removesuffix('_total')}" in text or f"# TYPE {name}" in text, name
    assert relay.metric("smtprelay_messages_accepted_total") == 1
    assert relay.metric("smtprelay_smtp_connections_total", 'listener="local"') == 1
    assert 'smtprelay_build_info{version="0.1.0"} 1.0' in text
    assert "example.org" not in text  # no addresses in labels


def test_sighup_reloads_limits_and_names_what_needs_restart(relay: Relay) -> None:
    def recipients_allowed() -> int:
        with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
            s.ehlo()
            s.mail("app@apps.example")
            return sum(1 for i in range(5) if s.rcpt(f"r{i}@example.org")[0] == 250)

    assert recipients_allowed() == 5
    relay.doc["limits"] = {"max_recipients": 2}
    relay.doc["http"]["port"] = relay.http_port + 1 if relay.http_port < 65000 else relay.http_port - 1
    relay.write_config()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload: applied" not in relay.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)  # waiting for the child's log line
    assert "reload: applied limits; changed but needs a restart: http" in relay.log()
    assert recipients_allowed() == 2
    # A broken file is refused and the running configuration stays.
    relay.config_path.write_text("[limits]\nmax_recipients = \"many\"\n")
    relay.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload refused" not in relay.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert 'limits.max_recipients: must be a positive integer, got "many"' in relay.log()
    assert recipients_allowed() == 2


def test_sigterm_lets_a_message_in_progress_finish(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        s.mail("app@apps.example")
        s.rcpt("b@example.org")
        assert s.docmd("DATA")[0] == 354
        s.send(b"From: app@apps.example\r\nSubject: in flight\r\n\r\nfirst half\r\n")
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "shutting down" not in relay.log():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # New connections are no longer accepted ...
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", relay.trusted_port), timeout=2).recv(10) or (_ for _ in ()).throw(OSError())
        # ... but the message being received completes and is acknowledged.
        s.send(b"second half\r\n.\r\n")
        code, reply = s.getreply()
    assert code == 250
    assert relay.proc.wait(timeout=15) == 0
    qid = queued_id(reply)
    assert b"second half" in relay.body(qid)
    assert "smtprelay stopped" in relay.log()


def test_json_log_format(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = make_relay().start("--log-format", "json")
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.sendmail("app@apps.example", ["b@example.org"], b"From: app@apps.example\r\nSubject: j\r\n\r\nhi\r\n")
    relay.stop()
    lines = [json.loads(line) for line in relay.log().splitlines() if line.strip()]
    queued = [doc for doc in lines if doc.get("queue_id") and "nrcpt" in doc]   # the acceptance line
    assert len(queued) == 1 and queued[0]["account"] == "apps" and queued[0]["nrcpt"] == 1
    assert queued[0]["message"].startswith(queued[0]["queue_id"] + ": client=[127.0.0.1]")


def test_text_log_lines_start_with_queue_id(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        _, reply = s.sendmail("app@apps.example", ["b@example.org"], b"From: app@apps.example\r\nSubject: t\r\n\r\nhi\r\n"), s.noop()
    qid = relay.queued_ids().pop()
    line = next(line for line in relay.log().splitlines() if qid in line)
    assert line.split(" INFO ", 1)[1].startswith(f"{qid}: client=[127.0.0.1], trusted_account=apps, tls=none")
    assert "from=<app@apps.example>" in line and "nrcpt=1 (queue active)" in line


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by `make test`")
@pytest.mark.parametrize("tls_flag,port_attr", [("--tls", "starttls_port"), ("--tls-on-connect", "implicit_port")])
def test_swaks(relay: Relay, tls_flag: str, port_attr: str) -> None:
    proc = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{getattr(relay, port_attr)}", tls_flag, "--auth", "PLAIN",
         "--auth-user", relay.user, "--auth-password", relay.password,  # type: ignore[attr-defined]
         "--from", "a@example.com", "--to", "b@example.org", "--helo", "swaks.test",
         "--header", "Subject: swaks test"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "<~  250 2.0.0 Ok: queued as " in proc.stdout
    qid = proc.stdout.split("queued as ", 1)[1].split()[0]
    assert relay.recipients(qid) == ["b@example.org"]
    assert b"From: a@example.com\r\nSubject: swaks test" in relay.body(qid)


def test_a_second_serve_names_the_busy_listener_and_exits_1(relay: Relay) -> None:
    """Issue 23, item 21: the port in use named, before anything starts (no 'stopped', no traceback)."""
    proc = subprocess.run([sys.executable, "-m", "smtprelay", "serve", "--config", str(relay.config_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1
    assert (f"cannot start: listener submission cannot listen on 127.0.0.1:{relay.starttls_port}: "
            "Address already in use") in proc.stderr
    assert "Traceback" not in proc.stderr and "stopped" not in proc.stderr and "Unclosed" not in proc.stderr
    assert relay.http_get("/healthz")[0] == 200          # the first one is untouched


def test_a_missing_config_file_says_how_to_name_one(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "smtprelay", "check-config", "--config", str(tmp_path / "no.toml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 2 and "file not found (name the file with --config PATH or SMTPRELAY_CONFIG" in proc.stderr
