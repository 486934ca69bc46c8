"""The web console's pages: how long each takes to answer (issue 21).

One relay with `[console] enabled`, an admin console user and a template. For --send-seconds
20 SMTP clients send messages, delivered to smtp-sink (so statistics, message search and
the overview have rows to read). Then one logged-in client asks each page --requests times,
one request at a time, and reports p50/p99 of the answer. A second run has --clients clients
asking the statistics page at once, closed loop, for --seconds: pages per second. Every page
goes through the admin API's route table in a thread, as in production. It stops by itself.

    .venv/bin/python bench/console.py [--send-seconds 5] [--requests 200] [--clients 10] [--seconds 10] [--no-save]
"""
from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from typing import Any

import aiohttp

from api import run as send_for
from harness import Report, Sink, percentile, scratch, tear_down
from relay_setup import DOMAIN, BenchRelay

HTML = "<html><body><h1>Hello {{name}}</h1><p>Your order {{order.id}} ships on {{date}}.</p></body></html>"


async def login(session: aiohttp.ClientSession, base: str, password: str) -> str:
    async with session.post(base + "/console/login", data={"name": "ops", "password": password}) as resp:
        assert resp.status == 200 and resp.url.path == "/console/", (resp.status, resp.url)
        return re.search(r'name="csrf" value="([^"]+)"', await resp.text()).group(1)   # type: ignore[union-attr]


async def timed(session: aiohttp.ClientSession, method: str, url: str, data: dict[str, str] | None) -> float:
    started = time.perf_counter()
    async with session.request(method, url, data=data) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: {resp.status}")
    return time.perf_counter() - started


async def pages(relay: BenchRelay, password: str, requests: int, template_id: int) -> list[list[Any]]:
    base = f"http://127.0.0.1:{relay.http_port}"
    jar = aiohttp.CookieJar(unsafe=True)          # the relay is an IP address
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        csrf = await login(session, base, password)
        draft = {"csrf": csrf, "subject": "Hi {{name}}", "html": HTML, "text": "",
                 "data": '{"name": "Ann", "order": {"id": 42}, "date": "4 December"}'}
        cases = [("overview", "GET", "/console/", None), ("statistics (7 days)", "GET", "/console/stats", None),
                 ("statistics CSV", "GET", "/console/stats.csv", None),
                 ("sender domain page", "GET", f"/console/domains/{DOMAIN}", None),
                 ("blocklist", "GET", "/console/blocklist", None), ("queue", "GET", "/console/queue", None),
                 ("template editor", "GET", f"/console/templates/{template_id}", None),
                 ("live preview (draft)", "POST", "/console/templates/draft", draft)]
        rows = []
        for name, method, path, data in cases:
            await timed(session, method, base + path, data)       # warm: templates compiled, caches
            times = [await timed(session, method, base + path, data) for _ in range(requests)]
            ms = [t * 1000 for t in times]
            rows.append([name, requests, round(percentile(ms, 50), 1), round(percentile(ms, 99), 1)])
            print(rows[-1], flush=True)
        return rows


async def load(relay: BenchRelay, password: str, clients: int, seconds: float) -> dict[str, Any]:
    base = f"http://127.0.0.1:{relay.http_port}"
    jar = aiohttp.CookieJar(unsafe=True)
    latencies: list[float] = []
    async with aiohttp.ClientSession(cookie_jar=jar, connector=aiohttp.TCPConnector(limit=clients)) as session:
        await login(session, base, password)
        deadline = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < deadline:
                latencies.append(await timed(session, "GET", base + "/console/stats", None))
        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - started
    ms = [t * 1000 for t in latencies]
    return {"pages": len(ms), "rate": round(len(ms) / elapsed, 1), "p50_ms": round(percentile(ms, 50), 1),
            "p99_ms": round(percentile(ms, 99), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--send-seconds", type=float, default=5.0)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    workdir = scratch("console")
    sink = Sink(workdir)
    relay = BenchRelay(workdir, sink.port, {"console": {"enabled": True}})
    password = relay.cli("console-user", "add", "ops", "--role", "admin")["password"]
    (workdir / "t.html").write_text(HTML)
    template_id = relay.cli("template", "add", "bench", "welcome", "--html", str(workdir / "t.html"),
                            "--subject", "Hi {{name}}")["id"]
    report = Report("console", save=not args.no_save)
    try:
        relay.start()
        sending = asyncio.run(send_for("smtp", relay, 20, args.send_seconds))
        sent = sending["sent"]
        if sending["errors"]:
            raise RuntimeError(sending["first_error"])
        rows = asyncio.run(pages(relay, password, args.requests, template_id))
        result = asyncio.run(load(relay, password, args.clients, args.seconds))
        report.data.update(pages=rows, load=result, messages=sent)
        report.line(f"# one client, one request at a time, {args.requests} requests per page, after {sent} "
                    "messages sent and delivered (the statistics have their rows)")
        report.table(["page", "requests", "p50 ms", "p99 ms"], rows)
        report.line(f"# {args.clients} clients asking the statistics page at once for {args.seconds:.0f} s: "
                    f"{result['rate']} pages/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
        report.write()
    finally:
        relay.stop()
        sink.stop()
        tear_down(workdir=workdir, keep=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
