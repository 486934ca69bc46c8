"""`smtprelay cluster ...`: the PostgreSQL catalog's schema, and the nodes (cluster.admin)."""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from smtprelay.cli.base import Registry, emit, print_table


def _config(args: argparse.Namespace):   # type: ignore[no-untyped-def]
    from smtprelay.config import load
    return load(Path(args.config))


def migrate(args: argparse.Namespace) -> int:
    from smtprelay.cluster import admin
    config = _config(args)
    local = None
    if args.import_local:
        from smtprelay.queue import schema
        local = schema.connect(config.server.data_dir, config.server.store_busy_timeout)
    try:
        done = admin.migrate(config, local)
    finally:
        if local is not None:
            local.close()
    doc = {"schema_version_before": done.before, "schema_version": done.after, "imported": done.imported}

    def human() -> None:
        print(f"PostgreSQL catalog at schema version {done.after}" +
              (f" (was {done.before})" if done.before != done.after else " (already current)"))
        if done.imported:
            print("imported from this node: " + ", ".join(f"{n} {t}" for t, n in done.imported.items()))
    emit(args, doc, human)
    return 0


def status(args: argparse.Namespace) -> int:
    from smtprelay.cluster import admin
    nodes, version = admin.status(_config(args))
    docs = [{"name": n.name, "state": n.state, "version": n.version, "queue_depth": n.queue_depth,
             "last_contact_seconds": round(n.seen_ago, 1), "catalog_version": n.catalog_version, "redis": n.redis,
             "started_at": datetime.datetime.fromtimestamp(n.started_at, datetime.timezone.utc).isoformat(
                 timespec="seconds")} for n in nodes]
    emit(args, {"nodes": docs, "catalog_version": version}, lambda: print_table(
        ["node", "state", "version", "queue", "last contact", "catalog", "redis", "started"],
        [[d["name"], d["state"], d["version"], d["queue_depth"], f"{d['last_contact_seconds']}s ago",
          "in sync" if d["catalog_version"] == version else f"{d['catalog_version']} of {version}",
          d["redis"] or "-", d["started_at"]] for d in docs]))
    return 0


def forget(args: argparse.Namespace) -> int:
    from smtprelay.cluster import admin
    admin.forget(_config(args), args.node)
    emit(args, {"forgotten": args.node}, lambda: print(f"node {args.node} forgotten"))
    return 0


def register(reg: Registry) -> None:
    cl = reg.group("cluster", "several nodes sharing one catalog ([cluster] postgres) and limits ([cluster] redis)")
    p = reg.command(cl, "migrate", migrate, "create or upgrade the catalog's schema in PostgreSQL")
    p.add_argument("--import-local", action="store_true",
                   help="also copy this node's catalog (accounts, domains and DKIM keys, ...) into it; the "
                        "cluster's catalog must be empty (stop this node first)")
    reg.command(cl, "status", status, "list the nodes: state, version, queue depth, last contact (heartbeats)")
    p = reg.command(cl, "forget", forget, "drop a node taken out for good from `cluster status` (a stopped one)")
    p.add_argument("node")
