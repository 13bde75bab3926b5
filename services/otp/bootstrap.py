"""Wires the otp service: hasher, token issuer, use cases, routes and the sweep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import structlog
from aiohttp import web

from contracts.otp import EmailOtpRequested, OtpIssued, UserRegistered
from services.otp.domain import (
    FAILURE_WINDOW,
    Clock,
    KeyedHasher,
    SlidingWindow,
    utc_now,
)
from services.otp.handlers import OtpService
from services.otp.metrics import OtpMetrics
from services.otp.routes import OtpRoutes
from services.otp.settings import OtpSettings
from shared.auth import KeyFileError, TokenIssuer, load_private_key
from shared.service import Runtime, ServiceSpec, StartupError

logger = structlog.get_logger(__name__)

SWEEP_SECONDS = 60.0
ROUTES = web.AppKey("otp_routes", OtpRoutes)
METRICS = web.AppKey("otp_metrics", OtpMetrics)
ISSUER = web.AppKey("otp_token_issuer", TokenIssuer)
SERVICE = web.AppKey("otp_service", OtpService)


def setup(runtime: Runtime[OtpSettings]) -> None:
    settings = runtime.settings
    runtime.app[ISSUER] = _token_issuer(settings)
    routes = OtpRoutes()
    routes.add_to(runtime.app)
    runtime.app[ROUTES] = routes
    runtime.app[METRICS] = OtpMetrics(runtime.metrics.registry)
    runtime.metrics.prime_route(
        "/v1/otp/request", "POST", (202, 400, 413, 422, 429, 503)
    )
    runtime.metrics.prime_route(
        "/v1/otp/verify", "POST", (200, 400, 401, 413, 422, 503)
    )


def _token_issuer(settings: OtpSettings) -> TokenIssuer:
    path = settings.jwt_private_key_file
    assert path is not None, "the settings refuse to load without a key file"
    try:
        key = load_private_key(path)
    except KeyFileError as error:
        raise StartupError(f"BITLOOT_JWT_PRIVATE_KEY_FILE: {error}") from None
    return TokenIssuer(key, settings.jwt_issuer, settings.jwt_audience)


def build_spec(clock: Clock = utc_now) -> ServiceSpec[OtpSettings]:
    """The otp service, telling time by ``clock``; tests pass one they can move."""

    async def serve_logins(runtime: Runtime[OtpSettings]) -> AsyncIterator[None]:
        """Open the use cases once the pool exists; sweep while the service runs."""
        settings = runtime.settings
        assert settings.otp_hash_secret is not None
        service = OtpService(
            runtime.require_pool(),
            KeyedHasher(settings.otp_hash_secret.get_secret_value().encode()),
            runtime.app[ISSUER],
            runtime.app[METRICS],
            clock,
            admin_emails=settings.admin_emails,
            client_window=SlidingWindow(
                settings.otp_client_requests_per_minute, timedelta(minutes=1)
            ),
            failure_window=SlidingWindow(
                settings.otp_failed_verifications_per_hour, FAILURE_WINDOW
            ),
            token_ttl_seconds=settings.otp_token_ttl_seconds,
        )
        runtime.app[SERVICE] = service
        runtime.app[ROUTES].service = service
        sweeper = asyncio.create_task(_sweep_forever(service), name="otp-sweep")
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

    return ServiceSpec(
        name="otp",
        schema="otp",
        settings_class=OtpSettings,
        migrations_dir=Path(__file__).parent / "migrations",
        setup=setup,
        published_types=(
            OtpIssued.event_type,
            EmailOtpRequested.event_type,
            UserRegistered.event_type,
        ),
        # Never email.otp.requested: the event log would keep its codes for days.
        unconsumed_types=(OtpIssued.event_type,),
        contexts=(serve_logins,),
    )


async def _sweep_forever(service: OtpService) -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            swept = await service.sweep()
        except Exception as error:
            # A failed sweep only leaves rows no decision reads; try next time.
            logger.warning("otp_sweep_failed", error=f"{type(error).__name__}: {error}")
            continue
        if swept.requests or swept.failures or swept.codes:
            logger.info(
                "otp_swept",
                requests=swept.requests,
                failures=swept.failures,
                codes=swept.codes,
            )


SPEC = build_spec()
