"""Inbound feedback (issue 18) on one machine: what the VERP return path costs on the sending
side, and how fast the feedback listener takes bounces.

1. "sender": the relay without a feedback listener (the submitted envelope sender), then
   "VERP": with one (bench.example's bounce MX and SPF verify, so every recipient gets a signed
   return path). throughput.py's load: smtp-source, 20 sessions, one 4 KB message of one
   recipient per connection, delivered to smtp-sink.
2. "intake": after the VERP run, one Postfix-style DSN (multipart/report, 5.1.1) per delivered
   recipient, addressed to its VERP return path, from 4 concurrent smtplib sessions to the
   feedback listener; the clock stops when the last is answered 250. Every DSN must have been
   applied (the recipient `bounced`).
Every wait is bounded; it stops by itself.

    .venv/bin/python bench/feedback.py [--messages 3000] [--dsns 1000] [--no-save]
"""
from __future__ import annotations

import argparse
import smtplib
import sqlite3
import sys
import threading
import time
from typing import Any

from harness import ROOT, Report, Sink, free_port, scratch, tear_down, tree_cpu
from relay_setup import SINK_DOMAIN, BenchRelay
from throughput import offer

sys.path.insert(0, str(ROOT))
from smtprelay.feedback import verp  # noqa: E402
from tests.support import to_toml  # noqa: E402


def dsn(return_path: str, recipient: str, n: int) -> bytes:
    return (f"From: MAILER-DAEMON@mx.{SINK_DOMAIN} (Mail Delivery System)\r\nTo: {return_path}\r\n"
            f"Subject: Undelivered Mail Returned to Sender\r\nMessage-Id: <dsn{n}@mx.{SINK_DOMAIN}>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b{n}\"\r\n"
            f"\r\n--b{n}\r\nContent-Type: text/plain\r\n\r\n<{recipient}>: unknown user\r\n\r\n"
            f"--b{n}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.{SINK_DOMAIN}\r\n\r\n"
            f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown\r\n"
            f"\r\n--b{n}--\r\n").encode()


def run(name: str, messages: int, feedback: bool, dsns: int) -> dict[str, Any]:
    workdir = scratch("feedback-" + name)
    sink = Sink(workdir)
    relay = None
    try:
        relay = BenchRelay(workdir, sink.port)
        port = free_port()
        if feedback:
            relay.doc["listeners"].append({"name": "feedback", "address": "127.0.0.1", "port": port, "tls": "none",
                                           "role": "feedback"})
            relay.config_path.write_text(to_toml(relay.doc))
        relay.start()
        offer(relay.smtp_port, sink, min(500, messages), 20, 4096, timeout=300)     # warm-up, not timed
        cpu = tree_cpu(relay.pid)
        accepted, elapsed, _ = offer(relay.smtp_port, sink, messages, 20, 4096, timeout=900)
        used = tree_cpu(relay.pid) - cpu
        result: dict[str, Any] = {"config": name, "messages": messages, "rate": round(messages / elapsed, 1),
                                  "cpu_ms_per_message": round(used * 1000 / messages, 2)}
        if feedback:
            result.update(intake(relay, port, dsns))
        return result
    finally:
        tear_down(relay, sink, workdir=workdir, keep=False)


def intake(relay: BenchRelay, port: int, count: int) -> dict[str, Any]:
    secret = (relay.data_dir / "feedback.key").read_text().strip().encode()
    db = sqlite3.connect(relay.data_dir / "relay.db")
    rows = db.execute("SELECT r.message_id, r.id, r.address, m.sender_domain FROM recipients r JOIN messages m"
                      " ON m.id = r.message_id WHERE r.state = 'delivered' ORDER BY r.id LIMIT ?", (count,)).fetchall()
    mails = [(verp.address("bounces", secret, q, r, d, "bounce"), a) for q, r, a, d in rows]
    failures: list[str] = []

    def session(part: list[tuple[str, str]], offset: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=f"mx.{SINK_DOMAIN}", timeout=60) as s:
            for i, (path, address) in enumerate(part):
                try:
                    s.sendmail("", [path], dsn(path, address, offset + i))
                except smtplib.SMTPException as exc:
                    failures.append(str(exc))

    threads = [threading.Thread(target=session, args=(mails[i::4], i * len(mails))) for i in range(4)]
    cpu = tree_cpu(relay.pid)
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    elapsed = time.monotonic() - started
    used = tree_cpu(relay.pid) - cpu
    bounced = db.execute("SELECT count(*) FROM recipients WHERE state = 'bounced' AND bounce_class ="
                         " 'invalid_address'").fetchone()[0]
    applied = db.execute("SELECT count(*) FROM feedback_messages WHERE result = 'applied'").fetchone()[0]
    db.close()
    if failures or bounced != len(mails) or applied != len(mails):
        raise RuntimeError(f"{len(failures)} refused ({failures[:2]}), {bounced} bounced, {applied} applied "
                           f"of {len(mails)}")
    return {"dsns": len(mails), "dsn_rate": round(len(mails) / elapsed, 1),
            "dsn_cpu_ms": round(used * 1000 / len(mails), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--dsns", type=int, default=1000)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    report = Report("feedback", save=not args.no_save)
    rows = []
    for name, feedback in (("sender", False), ("verp", True)):
        result = run(name, args.messages, feedback, args.dsns)
        report.data.setdefault("results", []).append(result)
        rows.append([name, args.messages, result["rate"], result["cpu_ms_per_message"]])
        print(result, flush=True)
    report.line("# smtp-source, 20 sessions, 4 KB messages of one recipient, one per connection; trusted listener, "
                "every policy, RSA-2048 DKIM, synced commit, delivery to smtp-sink over loopback")
    report.table(["return path", "messages", "delivered msgs/s", "relay CPU ms/msg"], rows)
    verp_run = report.data["results"][-1]
    report.line()
    report.line("# feedback listener: Postfix-style DSNs (5.1.1) to VERP return paths, 4 smtplib sessions")
    report.table(["DSNs", "applied per s", "relay CPU ms/DSN"],
                 [[verp_run["dsns"], verp_run["dsn_rate"], verp_run["dsn_cpu_ms"]]])
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
