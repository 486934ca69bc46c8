"""Sending tasks (issue 17): how fast a group is imported and materialised, and the relay's
memory while a 100 000-row task runs.

For each group size (10 000 and 100 000 rows by default): `group add` of a CSV (email and three
variables) through the CLI, timed; then `task add --now` with a template of about 4 KB
rendered, and the time from the task's start to the end of its run (every row rendered,
checked by the same policy as SMTP, signed with RSA-2048, committed with fsync; delivery to
smtp-sink runs meanwhile). The relay's resident memory (back end, workers) is sampled every
second of the run. Each wait is bounded and the script stops by itself.

    .venv/bin/python bench/batch.py [--rows 10000 100000] [--no-save]
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from harness import Report, Sink, processes, rss_mb, scratch, tear_down
from relay_setup import SENDER, BenchRelay

HTML = ("<html><body><h1>Hello {{first_name}}</h1><p>Your plan {{plan}} renews on {{date}}.</p>"
        + "<p>" + "Thank you for being with us. " * 120 + "</p></body></html>")


def write_csv(path: Path, rows: int, offset: int) -> None:
    with path.open("w") as f:
        f.write("email,first_name,plan,date\n")
        for i in range(rows):
            f.write(f"u{offset + i}@sink.test,User {i},pro,4 December\n")


def run_size(relay: BenchRelay, sink: Sink, workdir: Path, rows: int, number: int) -> dict[str, float]:
    path = workdir / f"group{number}.csv"
    write_csv(path, rows, number * 1_000_000)
    started = time.monotonic()
    relay.cli("group", "add", "bench", f"g{number}", "--csv", str(path))
    imported = time.monotonic() - started
    delivered_before = sink.count
    task = relay.cli("task", "add", "bench", "--group", f"g{number}", "--template", "bench", "--from",
                     f"Bench <{SENDER}>", "--now")
    db = sqlite3.connect(f"file:{relay.data_dir / 'relay.db'}?mode=ro", uri=True)
    samples: dict[str, list[float]] = {}
    began = finished = None
    deadline = time.monotonic() + 60 + rows / 20          # at least 20 rows a second, or it is reported
    while time.monotonic() < deadline:
        row = db.execute("SELECT started_at, finished_at, status FROM task_runs WHERE task_id = ?",
                         (task["id"],)).fetchone()
        for name, mb in processes(relay.pid, rss_mb).items():
            samples.setdefault(name.split()[0] + (" " + name.split()[1] if name.startswith("back") else ""),
                               []).append(mb)
        if row is not None and began is None:
            began = time.monotonic()
        if row is not None and row[2] == "finished":
            finished = time.monotonic()
            break
        time.sleep(0.5)       # sampling a separate process; bounded by the deadline
    done = db.execute("SELECT count(*) FROM task_rows WHERE task_id = ?", (task["id"],)).fetchone()[0]
    db.close()
    elapsed = (finished or time.monotonic()) - (began or started)
    sink.wait_for(delivered_before + done, 300)
    back = max(samples.get("back end", [0.0]))
    workers = max(samples.get("worker", [0.0]))
    return {"rows": rows, "import_s": round(imported, 2), "import_rows_per_s": round(rows / imported),
            "run_s": round(elapsed, 1), "rows_per_s": round(done / elapsed, 1), "materialised": done,
            "finished": finished is not None, "rss_back_end_mb": round(back, 1), "rss_worker_mb": round(workers, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    workdir = scratch("batch")
    sink = Sink(workdir)
    relay = BenchRelay(workdir, sink.port, {"batch": {"max_group_size": max(args.rows)}})
    (workdir / "bench.html").write_text(HTML)
    relay.cli("template", "add", "bench", "bench", "--html", str(workdir / "bench.html"), "--subject",
              "Hello {{first_name}}")
    report = Report("batch", save=not args.no_save)
    rows = []
    try:
        relay.start()
        for number, size in enumerate(args.rows, 1):
            result = run_size(relay, sink, workdir, size, number)
            report.data.setdefault("results", []).append(result)
            rows.append([size, result["import_s"], result["import_rows_per_s"], result["run_s"], result["rows_per_s"],
                         result["materialised"], result["rss_back_end_mb"], result["rss_worker_mb"]])
            print(result, flush=True)
        report.line("# group add (CLI, one transaction), then task add --now: rows rendered from a ~4 KB template, "
                    "policy, RSA-2048 DKIM, synced commit; delivery to smtp-sink meanwhile; peak RSS of the back "
                    "end and of a worker, sampled twice a second")
        report.table(["rows", "import s", "import rows/s", "run s", "rows/s", "materialised", "back end MB",
                      "worker MB"], rows)
        report.write()
    finally:
        tear_down(relay, sink, workdir=workdir, keep=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
