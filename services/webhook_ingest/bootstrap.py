"""Wires webhook-ingest: settings, store, routes and the shared runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from contracts.webhooks import KinguinWebhookReceived, NowPaymentsIpnReceived
from services.webhook_ingest.metrics import WebhookMetrics
from services.webhook_ingest.routes import WebhookRoutes
from services.webhook_ingest.settings import WebhookIngestSettings
from services.webhook_ingest.store import DeliveryStore
from shared.service import Runtime, ServiceSpec

WEBHOOK_ROUTES = ("/webhooks/nowpayments/ipn", "/webhooks/kinguin")
ROUTES = web.AppKey("webhook_routes", WebhookRoutes)
METRICS = web.AppKey("webhook_metrics", WebhookMetrics)


def setup(runtime: Runtime[WebhookIngestSettings]) -> None:
    settings = runtime.settings
    metrics = WebhookMetrics(runtime.metrics.registry)
    routes = WebhookRoutes(
        metrics,
        settings.nowpayments_ipn_secret,
        settings.kinguin_webhook_secret,
        settings.webhook_max_body_bytes,
    )
    routes.add_to(runtime.app)
    runtime.app[ROUTES] = routes
    runtime.app[METRICS] = metrics
    for route in WEBHOOK_ROUTES:
        runtime.metrics.prime_route(route, "POST", (200, 400, 401, 413, 503))


async def serve_webhooks(
    runtime: Runtime[WebhookIngestSettings],
) -> AsyncIterator[None]:
    """Open the store once the pool exists; close it after requests finish."""
    metrics = runtime.app[METRICS]
    store = DeliveryStore(runtime.require_pool(), on_batch=metrics.commit_batch.observe)
    runtime.app[ROUTES].store = store
    yield
    await store.close()


SPEC = ServiceSpec(
    name="webhook-ingest",
    schema="webhook_ingest",
    settings_class=WebhookIngestSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    setup=setup,
    published_types=(
        NowPaymentsIpnReceived.event_type,
        KinguinWebhookReceived.event_type,
    ),
    contexts=(serve_webhooks,),
)
