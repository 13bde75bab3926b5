"""The webhook endpoints: verify, store durably, then answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from pydantic import SecretStr

from contracts.envelope import wrap
from contracts.webhooks import KinguinWebhookReceived, NowPaymentsIpnReceived
from services.webhook_ingest.domain import (
    KINGUIN_REQUIRED,
    NOWPAYMENTS_REQUIRED,
    Delivery,
    IncompleteDeliveryError,
    MalformedFieldError,
    Outcome,
    Provider,
    RejectionReason,
    as_reference,
    kinguin_dedup_key,
    kinguin_reference,
    nowpayments_dedup_key,
    require_fields,
)
from services.webhook_ingest.metrics import WebhookMetrics
from services.webhook_ingest.signature import (
    MalformedBodyError,
    canonical_json,
    parse_ipn_body,
    signature_matches,
    verify_kinguin_secret,
)
from services.webhook_ingest.store import DeliveryStore
from shared.http import ApiError, correlation_id_of, read_body

logger = structlog.get_logger(__name__)

PRODUCER = "webhook-ingest"
SIGNATURE_HEADERS = ("x-nowpayments-sig", "x-nowpayments-signature")


class WebhookRoutes:
    """Handlers for both providers, sharing the store and the metrics."""

    def __init__(
        self,
        metrics: WebhookMetrics,
        nowpayments_secret: SecretStr | None,
        kinguin_secret: SecretStr | None,
        body_limit: int,
    ) -> None:
        # The store needs the pool, which opens after the routes are frozen.
        self.store: DeliveryStore | None = None
        self._metrics = metrics
        self._nowpayments_secret = _configured(nowpayments_secret)
        self._kinguin_secret = _configured(kinguin_secret)
        self._body_limit = body_limit

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/nowpayments/ipn", self.nowpayments_ipn)
        app.router.add_post("/webhooks/kinguin", self.kinguin)

    async def nowpayments_ipn(self, request: web.Request) -> web.Response:
        provider = Provider.NOWPAYMENTS
        secret = self._require_secret(provider, self._nowpayments_secret)
        raw = await self._read(request, provider)
        given = next(
            (request.headers[h] for h in SIGNATURE_HEADERS if h in request.headers), ""
        )
        if not given:
            self._refuse(provider, RejectionReason.VERIFICATION_FAILED)
            raise _unauthorized("the x-nowpayments-sig header is missing")

        try:
            parsed = parse_ipn_body(raw)
        except MalformedBodyError as error:
            self._reject(provider)
            raise ApiError(400, "invalid_json", str(error)) from None
        try:
            canonical = canonical_json(parsed)
            valid = signature_matches(secret, canonical, given)
        except Exception:
            logger.exception("signature_check_crashed", provider=provider.value)
            self._refuse(provider, RejectionReason.EXCEPTION)
            raise _unauthorized("the signature could not be checked") from None
        if not valid:
            self._refuse(provider, RejectionReason.VERIFICATION_FAILED)
            raise _unauthorized("the signature does not match the body")

        body: dict[str, Any] = json.loads(raw)
        with self._rejecting_invalid(provider):
            require_fields(body, NOWPAYMENTS_REQUIRED, "the IPN")
            reference = as_reference(body["payment_id"], "payment_id")
        delivery = Delivery(
            id=uuid.uuid4(),
            provider=provider,
            event_name="ipn",
            dedup_key=nowpayments_dedup_key(canonical),
            reference=reference,
            raw_body=raw,
            body=body,
            received_at=datetime.now(UTC),
        )
        event = NowPaymentsIpnReceived(
            delivery_id=delivery.id,
            received_at=delivery.received_at,
            payment_id=delivery.reference,
            payment_status=str(body["payment_status"]),
            body=body,
        )
        return await self._record(request, delivery, event)

    async def kinguin(self, request: web.Request) -> web.Response:
        provider = Provider.KINGUIN
        secret = self._require_secret(provider, self._kinguin_secret)
        raw = await self._read(request, provider)
        if not verify_kinguin_secret(secret, request.headers.get("X-Event-Secret", "")):
            self._refuse(provider, RejectionReason.VERIFICATION_FAILED)
            raise _unauthorized("the X-Event-Secret header does not match")

        event_name = request.headers.get("X-Event-Name", "").strip()
        if not event_name:
            self._reject(provider)
            raise ApiError(
                400, "missing_event_name", "the X-Event-Name header is missing"
            )
        body = _json_object(raw)
        if body is None:
            self._reject(provider)
            raise ApiError(400, "invalid_json", "the body is not a JSON object")
        with self._rejecting_invalid(provider):
            require_fields(body, KINGUIN_REQUIRED.get(event_name, ()), event_name)
            reference = kinguin_reference(event_name, body)

        delivery = Delivery(
            id=uuid.uuid4(),
            provider=provider,
            event_name=event_name,
            dedup_key=kinguin_dedup_key(event_name, body),
            reference=reference,
            raw_body=raw,
            body=body,
            received_at=datetime.now(UTC),
        )
        event = KinguinWebhookReceived(
            delivery_id=delivery.id,
            received_at=delivery.received_at,
            event_name=event_name,
            body=body,
        )
        return await self._record(request, delivery, event)

    async def _record(
        self,
        request: web.Request,
        delivery: Delivery,
        data: NowPaymentsIpnReceived | KinguinWebhookReceived,
    ) -> web.Response:
        correlation_id = correlation_id_of(request)
        envelope = wrap(data, PRODUCER, correlation_id, delivery.received_at)
        try:
            assert self.store is not None, "the store opens before requests arrive"
            outcome = await self.store.record_delivery(delivery, envelope)
        except Exception as error:
            logger.warning(
                "delivery_not_stored",
                provider=delivery.provider.value,
                error=str(error),
            )
            raise ApiError(
                503,
                "storage_unavailable",
                "the delivery could not be stored; send it again later",
                {"Retry-After": "5"},
            ) from None

        provider = delivery.provider.value
        self._metrics.deliveries.labels(provider=provider, outcome=outcome.value).inc()
        if outcome is Outcome.DUPLICATE:
            self._metrics.duplicates.labels(provider=provider).inc()
        # The request's one log line, written by the middleware, carries these.
        structlog.contextvars.bind_contextvars(
            provider=provider,
            outcome=outcome.value,
            reference=delivery.reference,
            delivery_id=str(delivery.id) if outcome is Outcome.ACCEPTED else None,
        )
        return web.json_response({"status": outcome.value})

    async def _read(self, request: web.Request, provider: Provider) -> bytes:
        try:
            return await read_body(request, self._body_limit)
        except ApiError:
            self._reject(provider)
            raise

    def _require_secret(self, provider: Provider, secret: str | None) -> str:
        if secret is None:
            self._refuse(provider, RejectionReason.MISSING_SECRET)
            detail = f"no {provider.value} secret is configured on this service"
            raise ApiError(503, "missing_secret", detail)
        return secret

    @contextmanager
    def _rejecting_invalid(self, provider: Provider) -> Iterator[None]:
        """Answer 400 for a body that lacks or garbles what the provider sends."""
        try:
            yield
        except IncompleteDeliveryError as error:
            self._reject(provider)
            raise ApiError(400, "missing_fields", str(error)) from None
        except MalformedFieldError as error:
            self._reject(provider)
            raise ApiError(400, "invalid_field", str(error)) from None

    def _refuse(self, provider: Provider, reason: RejectionReason) -> None:
        self._metrics.invalid_hmac.labels(
            provider=provider.value, reason=reason.value
        ).inc()
        self._reject(provider)
        logger.warning(
            "webhook_signature_refused", provider=provider.value, reason=reason.value
        )

    def _reject(self, provider: Provider) -> None:
        self._metrics.deliveries.labels(
            provider=provider.value, outcome="rejected"
        ).inc()


def _configured(secret: SecretStr | None) -> str | None:
    if secret is None or not secret.get_secret_value():
        return None
    return secret.get_secret_value()


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "invalid_signature", detail)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
