"""The send API's throughput beside SMTP's, on one relay (issue 16).

20 concurrent clients, closed loop (each sends its next message when the last one is
answered), for --seconds each:
- **api**: `POST /api/v1/send` with a template (subject, text and HTML with 4 variables, about
  4 KB rendered) over keep-alive HTTP connections (aiohttp), Basic auth with an SMTP credential;
- **api-html**: the same request with the HTML and text given in the request (no template);
- **smtp**: AUTH + STARTTLS sessions (opened once each), MAIL, RCPT, DATA with a 4 KB body.

Every message is signed (RSA-2048), committed with fsync and delivered to smtp-sink, as in
throughput.py. Reported: accepted messages per second, p50/p99 of the answer, and errors.
It stops by itself.

    .venv/bin/python bench/api.py [--seconds 20] [--clients 20] [--no-save]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp

from harness import Report, Sink, percentile, scratch, tear_down
from latency import BODY_LINE, connect
from relay_setup import SENDER, BenchRelay

HTML = ("<html><body><h1>Hello {{name}}</h1><p>Your order {{order.id}} of {{order.total}} ships on "
        "{{date}}.</p>" + "<p>" + "Thank you for shopping with us. " * 100 + "</p></body></html>")
TEXT = "Hello {{name}}, your order {{order.id}} of {{order.total}} ships on {{date}}.\n" + \
    "Thank you for shopping with us. " * 10


async def api_client(relay: BenchRelay, session: aiohttp.ClientSession, body: Any, number: int,
                     deadline: float, latencies: list[float], errors: list[str]) -> int:
    sent = 0
    url = f"http://127.0.0.1:{relay.http_port}/api/v1/send"
    auth = aiohttp.BasicAuth(relay.username, relay.password)
    while time.monotonic() < deadline:
        request = {**body, "to": [f"c{number}n{sent}@sink.test"]}
        started = time.perf_counter()
        async with session.post(url, json=request, auth=auth) as resp:
            answer = await resp.json()
            if resp.status != 202:
                errors.append(f"{resp.status} {answer.get('error')}")
                continue
        latencies.append(time.perf_counter() - started)
        sent += 1
    return sent


async def smtp_client(relay: BenchRelay, number: int, deadline: float, latencies: list[float],
                      errors: list[str]) -> int:
    conn = await connect(relay.submission_port, relay.username, relay.password)
    sent = 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            await conn.command(f"MAIL FROM:<{SENDER}>".encode(), b"250")
            await conn.command(f"RCPT TO:<s{number}n{sent}@sink.test>".encode(), b"250")
            await conn.command(b"DATA", b"354")
            conn.writer.write(f"From: <{SENDER}>\r\nTo: <s{number}n{sent}@sink.test>\r\nSubject: bench\r\n\r\n"
                              .encode() + BODY_LINE * 52 + b".\r\n")
            reply = await conn.reply()
        except Exception as exc:      # a broken session ends this client; reported
            errors.append(f"{type(exc).__name__}: {exc}")
            break
        if not reply.startswith(b"250"):
            errors.append(reply.decode(errors="replace").strip())
            continue
        latencies.append(time.perf_counter() - started)
        sent += 1
    conn.writer.write(b"QUIT\r\n")
    conn.writer.close()
    return sent


async def run(kind: str, relay: BenchRelay, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    data = {"name": "Ann <& Co>", "order": {"id": 42, "total": "€120.00"}, "date": "4 December"}
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    if kind == "smtp":
        counts = await asyncio.gather(*(smtp_client(relay, i, deadline, latencies, errors) for i in range(clients)))
    else:
        body: dict[str, Any] = {"from": f"Bench <{SENDER}>"}
        if kind == "api":
            body["template"] = {"id": "bench", "data": data}
        else:
            body.update(subject="Hello Ann", html=HTML.replace("{{", "").replace("}}", ""),
                        text=TEXT.replace("{{", "").replace("}}", ""))
        connector = aiohttp.TCPConnector(limit=clients, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            counts = await asyncio.gather(*(api_client(relay, session, body, i, deadline, latencies, errors)
                                            for i in range(clients)))
    elapsed = time.monotonic() - started
    return {"kind": kind, "sent": sum(counts), "rate": round(sum(counts) / elapsed, 1),
            "p50_ms": round(percentile([x * 1000 for x in latencies], 50), 1) if latencies else None,
            "p99_ms": round(percentile([x * 1000 for x in latencies], 99), 1) if latencies else None,
            "errors": len(errors), "first_error": errors[0] if errors else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    workdir = scratch("api")
    sink = Sink(workdir)
    relay = BenchRelay(workdir, sink.port)
    (workdir / "bench.html").write_text(HTML)
    (workdir / "bench.txt").write_text(TEXT)
    relay.cli("template", "add", "bench", "bench", "--html", str(workdir / "bench.html"), "--text",
              str(workdir / "bench.txt"), "--subject", "Hello {{name}}")
    report = Report("api", save=not args.no_save)
    rows = []
    try:
        relay.start()
        asyncio.run(run("smtp", relay, args.clients, 3.0))          # warm-up: connections, caches
        for kind in ("smtp", "api", "api-html"):
            result = asyncio.run(run(kind, relay, args.clients, args.seconds))
            report.data.setdefault("results", []).append(result)
            rows.append([kind, result["sent"], result["rate"], result["p50_ms"], result["p99_ms"], result["errors"]])
            print(rows[-1], result["first_error"] or "", flush=True)
        report.line(f"# {args.clients} concurrent clients, closed loop, {args.seconds:.0f} s each; RSA-2048 "
                    "signing, synced commit, delivery to smtp-sink")
        report.table(["door", "accepted", "msgs/s", "p50 ms", "p99 ms", "errors"], rows)
        report.write()
    finally:
        relay.stop()
        sink.stop()
        tear_down(workdir=workdir, keep=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
