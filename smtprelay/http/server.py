"""One aiohttp server: GET /metrics (Prometheus text format), GET /healthz, the admin API
under /api/v1/ (http.admin), and what the app adds (the send API, tracking endpoints).

Must never: block the loop; everything it serves is in memory.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from smtprelay.http.metrics import Metrics

if TYPE_CHECKING:
    from smtprelay.services import Services


def build_app(metrics: Metrics, health: Callable[[], dict[str, object]],
              admin_token: Callable[[], str | None] | None = None, admin_services: Callable[[], Services] | None = None,
              extra: Callable[[web.Application], None] | None = None,
              client_max_size: int = 1 << 20) -> web.Application:
    async def get_metrics(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_health(request: web.Request) -> web.Response:
        doc = health()
        return web.json_response(doc, status=200 if doc.get("status") == "ok" else 503)

    app = web.Application(client_max_size=client_max_size)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_health)
    if extra is not None:        # before the admin API's catch-all under /api/v1/
        extra(app)
    if admin_token is not None and admin_services is not None:
        from smtprelay.http.admin import add_routes
        add_routes(app, admin_token, admin_services)
    return app
