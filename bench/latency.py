"""Latency of the end-of-DATA reply at fixed offered loads, with AUTH over STARTTLS.

A Python client (asyncio, uvloop) keeps a pool of connections to the relay's STARTTLS
submission listener, each greeted, upgraded and authenticated once (AUTH PLAIN). Messages
are offered open-loop at a fixed rate — message i is due at t0 + i/rate whether or not the
previous ones are done — each on an idle connection: MAIL, RCPT, DATA, then 4 KB and the
final dot. Measured: from writing the final dot to reading the reply (what the relay spends
on checks, signing and the synced commit), and the whole transaction from MAIL on. A send
that had to wait for a free connection is counted as late, so a backlog cannot hide.

Each SMTP protocol (server.protocol: aiosmtpd, the default, and native) gets its own relay.

    .venv/bin/python bench/latency.py [--rates 100,300] [--seconds 20] [--protocols aiosmtpd,native]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import ssl
import sys
import time
from dataclasses import dataclass, field

import uvloop

from harness import Report, Sink, ensure_packages, percentile, relay_settings, scratch, tear_down
from relay_setup import SENDER, BenchRelay

BODY_LINE = b"x" * 76 + b"\r\n"


@dataclass
class Result:
    rate: float
    offered: int = 0
    end_of_data: list[float] = field(default_factory=list)
    when: list[float] = field(default_factory=list)     # seconds since the start of the load, per sample
    transaction: list[float] = field(default_factory=list)
    late: int = 0
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    protocol: str = ""


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def reply(self) -> bytes:
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("the relay closed the connection")
            if line[3:4] != b"-":
                return line

    async def command(self, line: bytes, expect: bytes) -> None:
        self.writer.write(line + b"\r\n")
        reply = await self.reply()
        if not reply.startswith(expect):
            raise RuntimeError(f"{line.split(b' ')[0].decode()} got {reply.decode(errors='replace').strip()}")


async def connect(port: int, username: str, password: str) -> Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = Connection(reader, writer)
    await conn.reply()
    await conn.command(b"EHLO client.bench", b"250")
    await conn.command(b"STARTTLS", b"220")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE    # the relay's self-signed certificate
    await writer.start_tls(context, server_hostname="relay.bench")
    await conn.command(b"EHLO client.bench", b"250")
    token = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode())
    await conn.command(b"AUTH PLAIN " + token, b"235")
    return conn


def message(number: int) -> bytes:
    head = (f"From: <{SENDER}>\r\nTo: <rcpt{number}@sink.test>\r\nSubject: latency {number}\r\n"
            f"Message-ID: <lat{number}.{time.time_ns()}@client.bench>\r\n\r\n").encode()
    return head + BODY_LINE * 52 + b".\r\n"


async def offer(port: int, username: str, password: str, rate: float, seconds: float, connections: int,
                first: int) -> Result:
    result = Result(rate)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in await asyncio.gather(*(connect(port, username, password) for _ in range(connections))):
        idle.put_nowait(conn)
    loop = asyncio.get_running_loop()
    tasks = set()

    async def send(conn: Connection, number: int) -> None:
        try:
            started = time.perf_counter()     # (uvloop's loop.time() has millisecond steps)
            await conn.command(f"MAIL FROM:<{SENDER}>".encode(), b"250")
            await conn.command(f"RCPT TO:<rcpt{number}@sink.test>".encode(), b"250")
            await conn.command(b"DATA", b"354")
            conn.writer.write(message(number))
            dot = time.perf_counter()
            reply = await conn.reply()
            done = time.perf_counter()
            if not reply.startswith(b"250"):
                result.errors.append(reply.decode(errors="replace").strip())
            else:
                result.end_of_data.append(done - dot)
                result.when.append(dot - begun)
                result.transaction.append(done - started)
            idle.put_nowait(conn)
        except Exception as exc:     # a broken connection is an error of the run, reported
            result.errors.append(f"{type(exc).__name__}: {exc}")

    count = int(rate * seconds)
    t0 = loop.time()
    begun = time.perf_counter()
    for i in range(count):
        due = t0 + i / rate
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if idle.empty():
            result.late += 1
        conn = await idle.get()
        task = asyncio.create_task(send(conn, first + i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=120)
    result.elapsed = loop.time() - t0
    result.offered = count
    while not idle.empty():
        conn = idle.get_nowait()
        conn.writer.write(b"QUIT\r\n")
        conn.writer.close()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="100,300", help="offered loads in msgs/s, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per load (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds at each load before measuring")
    p.add_argument("--connections", type=int, default=32, help="client connections (default 32)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a relay.toml setting for smtprelay's runs, e.g. --set server.workers=3")
    p.add_argument("--protocols", default="aiosmtpd,native",
                   help="server.protocol values to measure, one relay each (default aiosmtpd,native)")
    p.add_argument("--samples", help="write every measurement (offered rate, seconds into the load, ms) to this CSV")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    ensure_packages()
    report = Report("latency", save=not args.no_save)
    if args.set:
        report.line(f"# smtprelay settings: {', '.join(args.set)}")
    report.line(f"# end-of-DATA reply latency, AUTH PLAIN over STARTTLS, {args.connections} connections, "
                f"4 KB messages, open-loop arrivals; {args.seconds:.0f} s per load after {args.warmup:.0f} s")
    rows, results = [], []
    for protocol in [x for x in args.protocols.split(",") if x]:
        workdir = scratch(f"latency-{protocol}")
        sink = Sink(workdir)
        relay = None
        try:
            settings = relay_settings([f"server.protocol={protocol}"] + args.set)
            relay = BenchRelay(workdir, sink.port, settings).start()
            number = 0
            for rate in rates:
                uvloop.run(offer(relay.submission_port, relay.username, relay.password, rate, args.warmup,
                                 args.connections, number))
                number += int(rate * args.warmup)
                r = uvloop.run(offer(relay.submission_port, relay.username, relay.password, rate, args.seconds,
                                     args.connections, number))
                number += r.offered
                r.protocol = protocol
                results.append(r)
                ms = [x * 1000 for x in r.end_of_data]
                tx = [x * 1000 for x in r.transaction]
                rows.append([protocol, f"{rate:.0f}", f"{len(ms) / r.elapsed:.0f}", f"{percentile(ms, 50):.1f}",
                             f"{percentile(ms, 99):.1f}", f"{percentile(ms, 99.9):.1f}", f"{max(ms):.1f}",
                             f"{percentile(tx, 50):.1f}", f"{percentile(tx, 99):.1f}", str(r.late),
                             str(len(r.errors))])
                report.data.setdefault("loads", []).append({
                    "protocol": protocol, "offered_per_second": rate, "measured": len(ms),
                    "achieved_per_second": len(ms) / r.elapsed,
                    "end_of_data_ms": {q: percentile(ms, q) for q in (50, 90, 99, 99.9)}, "max_ms": max(ms),
                    "transaction_ms": {q: percentile(tx, q) for q in (50, 99)}, "late": r.late,
                    "errors": r.errors[:20]})
        finally:
            tear_down(relay, sink, workdir=workdir, keep=args.keep)
    if args.samples:
        with open(args.samples, "w") as out:
            out.write("protocol,offered_per_second,seconds,end_of_data_ms\n")
            for r in results:
                out.writelines(f"{r.protocol},{r.rate:.0f},{w:.4f},{x * 1000:.3f}\n"
                               for w, x in zip(r.when, r.end_of_data))
    report.line()
    report.table(["protocol", "offered msgs/s", "achieved", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "txn p50 ms",
                  "txn p99 ms", "late sends", "errors"], rows)
    for r in results:
        for error in r.errors[:5]:
            report.line(f"error at {r.rate:.0f} msgs/s ({r.protocol}): {error}")
    report.write()
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
