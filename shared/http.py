"""The aiohttp application every service starts from.

It serves ``/healthz``, ``/readyz`` and ``/metrics`` (behind a bearer token with
the ``metrics:read`` scope), answers every error as JSON, bounds request bodies,
and counts requests by route template.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.auth import METRICS_SCOPE, TokenError, TokenVerifier
from shared.db import TRANSIENT_DATABASE_ERRORS
from shared.logging import bind_correlation_id
from shared.metrics import ServiceMetrics

logger = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

READINESS_TIMEOUT_SECONDS = 2.0
UNMATCHED_ROUTE = "unmatched"


class ApiError(Exception):
    """An answer other than success, carried to the edge as JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


class BodyTooLargeError(ApiError):
    def __init__(self, limit: int) -> None:
        detail = f"the request body is larger than {limit} bytes"
        super().__init__(413, "body_too_large", detail)


@dataclass
class ServiceState:
    """What the shared routes need to know about the running service."""

    name: str
    metrics: ServiceMetrics
    verifier: TokenVerifier | None
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)


STATE = web.AppKey("bitloot_state", ServiceState)
CORRELATION_ID = web.RequestKey("bitloot_correlation_id", str)


def correlation_id_of(request: web.Request) -> str:
    """The id bound to this request's logs, to carry on into its events."""
    return request[CORRELATION_ID]


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": code, "detail": detail}, status=status, headers=headers
    )


@asynccontextmanager
async def storage_unavailable(detail: str) -> AsyncIterator[None]:
    """Turn a transient database failure into a 503 that tells the client to retry.

    Any other database error is a bug: it reaches the 500 path, which logs it.
    """
    try:
        yield
    except TRANSIENT_DATABASE_ERRORS as error:
        logger.warning("storage_unavailable", error=str(error))
        raise ApiError(
            503, "storage_unavailable", detail, {"Retry-After": "5"}
        ) from None


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the whole body, refusing more than ``limit`` bytes before buffering it."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLargeError(limit)
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _route_template(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource
    if resource is None or isinstance(request.match_info.http_exception, Exception):
        return UNMATCHED_ROUTE
    return resource.canonical


@web.middleware
async def observe_requests(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Bind the correlation id, then log and count the request once answered."""
    state = request.app[STATE]
    correlation_id = (request.headers.get("X-Request-ID") or str(uuid.uuid4()))[:128]
    request[CORRELATION_ID] = correlation_id
    structlog.contextvars.clear_contextvars()
    bind_correlation_id(correlation_id)
    route = _route_template(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        # Clients choose the method; an unknown one must not mint a series.
        method = request.method if request.method in _KNOWN_METHODS else "other"
        state.metrics.http_requests.labels(
            route=route, method=method, status=str(status)
        ).inc()
        state.metrics.http_duration.labels(route=route, method=method).observe(elapsed)
        if route not in _QUIET_ROUTES or status >= 400:
            logger.info(
                "http_request",
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
    response.headers["X-Request-ID"] = correlation_id
    return response


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def answer_errors_as_json(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Translate domain errors and aiohttp's own into the JSON error shape."""
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, error.code, error.detail, error.headers)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "body_too_large", "the request body is too large")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = error.reason.lower().replace(" ", "_").replace("-", "_")
        headers = {k: v for k, v in error.headers.items() if k == "Allow"}
        return error_response(error.status, code, error.reason, headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unhandled_error", path=request.path)
        return error_response(
            500, "internal_error", "the server failed to answer; it has been logged"
        )


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    failing: dict[str, str] = {}
    names = list(state.readiness)
    results = await asyncio.gather(
        *(
            asyncio.wait_for(state.readiness[name](), READINESS_TIMEOUT_SECONDS)
            for name in names
        ),
        return_exceptions=True,
    )
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            failing[name] = str(result) or type(result).__name__
    if failing:
        detail = "not ready: " + ", ".join(f"{k} ({v})" for k, v in failing.items())
        return web.json_response(
            {
                "status": "unavailable",
                "error": "not_ready",
                "detail": detail,
                "failing": failing,
            },
            status=503,
        )
    return web.json_response({"status": "ready", "checks": names})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.verifier is None:
        raise ApiError(503, "metrics_disabled", "no JWT public key is configured")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "send Authorization: Bearer <token> with the metrics:read scope",
            {"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    try:
        state.verifier.verify(token.strip(), METRICS_SCOPE)
    except TokenError as error:
        raise ApiError(
            401,
            "unauthorized",
            str(error),
            {"WWW-Authenticate": 'Bearer realm="metrics", error="invalid_token"'},
        ) from None

    payload = generate_latest(state.metrics.registry)
    response = web.Response(body=payload)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def create_app(
    state: ServiceState, client_max_size: int = 1024 * 1024
) -> web.Application:
    """An application with the shared routes and middlewares; add the service's own."""
    app = web.Application(
        middlewares=[observe_requests, answer_errors_as_json],
        client_max_size=client_max_size,
    )
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    for route in ("/healthz", "/readyz", "/metrics"):
        state.metrics.prime_route(route, "GET", (200,))
    return app
