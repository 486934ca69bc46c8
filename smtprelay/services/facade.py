"""The services as one object: `Services` builds each area over one Context, and
`open_services` opens them on the store relay.toml names."""
from __future__ import annotations

import sqlite3
from functools import cached_property
from pathlib import Path

from smtprelay.catalog import Catalog
from smtprelay.clock import Clock, clock_from_environment
from smtprelay.config import Config, load
from smtprelay.errors import StoreUnavailable
from smtprelay.services.accounts import AccountService
from smtprelay.services.batch import GroupService, TaskService
from smtprelay.services.blocklist import BlocklistService
from smtprelay.services.console import ConsoleService
from smtprelay.services.content import ContentService
from smtprelay.services.context import Context, register_errors
from smtprelay.services.domains import DomainService
from smtprelay.services.feedback import FeedbackService
from smtprelay.services.queue import QueueService
from smtprelay.services.reports import ReportService
from smtprelay.services.templates import TemplateService
from smtprelay.services.tracking import TrackingService
from smtprelay.services.warmup import WarmupService
from smtprelay.services.webhooks import WebhookService


class Services:
    """One set of services over one catalog and store; each area is built on first use."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    @property
    def config(self) -> Config:
        return self.ctx.config

    @cached_property
    def accounts(self) -> AccountService:
        return AccountService(self.ctx)

    @cached_property
    def domains(self) -> DomainService:
        return DomainService(self.ctx)

    @cached_property
    def blocklist(self) -> BlocklistService:
        return BlocklistService(self.ctx)

    @cached_property
    def queue(self) -> QueueService:
        return QueueService(self.ctx)

    @cached_property
    def warmup(self) -> WarmupService:
        return WarmupService(self.ctx)

    @cached_property
    def webhooks(self) -> WebhookService:
        return WebhookService(self.ctx)

    @cached_property
    def console(self) -> ConsoleService:
        return ConsoleService(self.ctx)

    @cached_property
    def feedback(self) -> FeedbackService:
        return FeedbackService(self.ctx)

    @cached_property
    def tracking(self) -> TrackingService:
        return TrackingService(self.ctx)

    @cached_property
    def templates(self) -> TemplateService:
        return TemplateService(self.ctx)

    @cached_property
    def groups(self) -> GroupService:
        return GroupService(self.ctx)

    @cached_property
    def tasks(self) -> TaskService:
        return TaskService(self.ctx)

    @cached_property
    def content(self) -> ContentService:
        return ContentService(self.ctx)

    @cached_property
    def reports(self) -> ReportService:
        return ReportService(self.ctx)

    def close(self) -> None:
        close = getattr(self.ctx.catalog, "close", None)
        if close is not None:
            close()
        self.ctx.store.close()


def make_catalog(config: Config, conn: sqlite3.Connection) -> Catalog:
    """The catalog relay.toml names: the store's own (SQLite), or PostgreSQL's with `[cluster]
    postgres` (the node's own parts still on `conn`, cluster.catalog)."""
    from smtprelay.catalog.sqlite import SqliteCatalog
    if config.cluster.postgres is None:
        return SqliteCatalog(conn)
    import psycopg
    from smtprelay.cluster import catalog as cluster_catalog
    register_errors((psycopg.Error,))
    return cluster_catalog.ClusterCatalog(config, conn)


def open_services(config_path: Path, clock: Clock | None = None, config: Config | None = None) -> Services:
    """The services over the store that relay.toml names (SQLite under server.data_dir; the
    catalog in PostgreSQL in cluster mode)."""
    from smtprelay.queue import schema
    config = config if config is not None else load(config_path)
    try:
        conn = schema.connect(config.server.data_dir, config.server.store_busy_timeout)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the store could not be used: {exc}") from None
    except RuntimeError as exc:     # a store migrated by a newer smtprelay
        raise StoreUnavailable(str(exc)) from None
    try:
        catalog = make_catalog(config, conn)
    except StoreUnavailable:
        conn.close()
        raise
    register_errors(catalog.errors)
    return Services(Context(config, catalog, conn, clock or clock_from_environment()))


