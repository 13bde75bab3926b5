"""Wires the payment service: provider, use cases, routes and consumers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from contracts.payments import (
    PaymentCompleted,
    PaymentCreated,
    PaymentExpired,
    PaymentFailed,
    PaymentUnderpaid,
)
from contracts.webhooks import KinguinWebhookReceived, NowPaymentsIpnReceived
from services.payment.handlers import PaymentService
from services.payment.metrics import PaymentMetrics
from services.payment.nowpayments import NowPaymentsProvider
from services.payment.providers import PaymentProvider, SimulatedProvider
from services.payment.routes import PaymentRoutes
from services.payment.settings import PaymentSettings
from shared.consumer import EventHandler
from shared.service import ConsumerSpec, Runtime, ServiceSpec

IPN_QUEUE = "payment.nowpayments-ipn"
KINGUIN_QUEUE = "payment.kinguin-orders"
ROUTES = web.AppKey("payment_routes", PaymentRoutes)
METRICS = web.AppKey("payment_metrics", PaymentMetrics)
SERVICE = web.AppKey("payment_service", PaymentService)


def setup(runtime: Runtime[PaymentSettings]) -> None:
    routes = PaymentRoutes(runtime.settings.order_max_items)
    routes.add_to(runtime.app)
    runtime.app[ROUTES] = routes
    runtime.app[METRICS] = PaymentMetrics(runtime.metrics.registry)
    runtime.metrics.prime_route("/v1/products", "GET", (200, 503))
    runtime.metrics.prime_route("/v1/orders/{order_id}", "GET", (200, 404, 503))
    runtime.metrics.prime_route(
        "/v1/orders", "POST", (200, 201, 400, 413, 422, 502, 503, 504)
    )


def make_provider(settings: PaymentSettings) -> PaymentProvider:
    """The provider the settings name; the NOWPayments key is checked at start."""
    if settings.payment_provider == "simulator":
        return SimulatedProvider()
    assert settings.nowpayments_api_key is not None
    return NowPaymentsProvider(
        api_key=settings.nowpayments_api_key.get_secret_value(),
        base_url=settings.nowpayments_api_url,
        ipn_callback_url=settings.ipn_callback_url,
        timeout=settings.nowpayments_timeout_seconds,
        retries=settings.nowpayments_retries,
    )


async def serve_payments(runtime: Runtime[PaymentSettings]) -> AsyncIterator[None]:
    """Open the provider and the use cases once the pool exists."""
    provider = make_provider(runtime.settings)
    service = PaymentService(
        runtime.require_pool(),
        provider,
        runtime.app[METRICS],
        runtime.settings.payment_tolerance_ratio,
    )
    runtime.app[SERVICE] = service
    runtime.app[ROUTES].service = service
    yield
    await provider.close()


def _ipn_handler(runtime: Runtime[PaymentSettings]) -> EventHandler:
    return runtime.app[SERVICE].apply_ipn


def _kinguin_handler(runtime: Runtime[PaymentSettings]) -> EventHandler:
    return runtime.app[SERVICE].apply_kinguin


SPEC = ServiceSpec(
    name="payment",
    schema="payment",
    settings_class=PaymentSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    setup=setup,
    published_types=(
        PaymentCreated.event_type,
        PaymentCompleted.event_type,
        PaymentUnderpaid.event_type,
        PaymentFailed.event_type,
        PaymentExpired.event_type,
    ),
    unconsumed_types=(PaymentFailed.event_type, PaymentExpired.event_type),
    contexts=(serve_payments,),
    consumers=(
        ConsumerSpec(IPN_QUEUE, (NowPaymentsIpnReceived.event_type,), _ipn_handler),
        ConsumerSpec(
            KINGUIN_QUEUE, (KinguinWebhookReceived.event_type,), _kinguin_handler
        ),
    ),
)
