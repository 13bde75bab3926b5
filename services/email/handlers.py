"""Events that ask for an email, turned into owed emails recorded once per fact."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from decimal import Decimal
from typing import Any

import structlog
from pydantic import ValidationError

from contracts.envelope import Envelope, EventData, describe_invalid, unwrap
from contracts.otp import EmailOtpRequested, UserRegistered
from contracts.payments import PaymentCompleted, PaymentCreated, PaymentUnderpaid
from services.email import store
from services.email.domain import EmailType, idempotency_key
from services.email.metrics import EmailMetrics
from shared.consumer import AfterCommit, PoisonMessageError
from shared.db import Connection

logger = structlog.get_logger(__name__)

Wake = Callable[[], None]


def email_request(envelope: Envelope) -> store.EmailRequest:
    """The email an event asks for; PoisonMessageError if no retry can fix it."""
    try:
        event = unwrap(envelope)
    except (ValidationError, ValueError) as error:
        reason = describe_invalid(error)
        raise PoisonMessageError(f"unusable {envelope.type}: {reason}") from None
    email_type, business_key, recipient, data = _describe(event, envelope)
    return store.EmailRequest(
        email_type=email_type,
        idempotency_key=idempotency_key(email_type, business_key),
        recipient=recipient,
        data=data,
        event_id=envelope.id,
        correlation_id=envelope.correlation_id,
    )


def _describe(
    event: EventData, envelope: Envelope
) -> tuple[EmailType, str, str, dict[str, Any]]:
    """Type, business key, recipient and template data of an event's email."""
    if isinstance(event, EmailOtpRequested):
        expires_at = event.expires_at.astimezone(UTC)
        minutes = round((expires_at - envelope.occurred_at).total_seconds() / 60)
        return (
            EmailType.OTP,
            str(event.request_id),
            event.email,
            {
                "code": event.code,
                "expires_at": expires_at.strftime("%H:%M UTC"),
                "expires_at_iso": expires_at.isoformat(),
                "minutes": max(minutes, 1),
            },
        )
    if isinstance(event, UserRegistered):
        return EmailType.WELCOME, str(event.user_id), event.email, {}
    if isinstance(event, PaymentCreated):
        return (
            EmailType.PAYMENT_CREATED,
            str(event.order_id),
            event.email,
            {
                "order_id": str(event.order_id),
                "pay_amount": _amount(event.pay_amount),
                "pay_currency": event.pay_currency.upper(),
                "pay_address": event.pay_address,
                "price_amount": _amount(event.price_amount),
                "price_currency": event.price_currency.upper(),
            },
        )
    if isinstance(event, PaymentCompleted):
        return (
            EmailType.PAYMENT_COMPLETED,
            str(event.order_id),
            event.email,
            {
                "order_id": str(event.order_id),
                "paid_amount": _amount(event.paid_amount),
                "pay_currency": event.pay_currency.upper(),
                "price_amount": _amount(event.price_amount),
                "price_currency": event.price_currency.upper(),
            },
        )
    if isinstance(event, PaymentUnderpaid):
        return (
            EmailType.UNDERPAID,
            str(event.order_id),
            event.email,
            {
                "order_id": str(event.order_id),
                "asset": event.asset.upper(),
                "expected_amount": _amount(event.expected_amount),
                "paid_amount": _amount(event.paid_amount),
                "missing_amount": _amount(event.missing_amount),
                "pay_address": event.pay_address,
            },
        )
    raise PoisonMessageError(f"{envelope.type} does not ask for an email")


class EmailRequests:
    """The consumers' handler: record each owed email once, then wake the sender."""

    def __init__(self, metrics: EmailMetrics, wake_sender: Wake) -> None:
        self._metrics = metrics
        self._wake_sender = wake_sender

    async def record(self, connection: Connection, envelope: Envelope) -> AfterCommit:
        request = email_request(envelope)
        recorded = await store.record_email(connection, request)
        outcome = "new" if recorded else "duplicate"
        logger.info(
            "email_requested",
            type=request.email_type.value,
            idempotency_key=request.idempotency_key,
            outcome=outcome,
        )
        email_type = request.email_type.value

        def after_commit() -> None:
            self._metrics.requested.labels(type=email_type, outcome=outcome).inc()
            if recorded:
                self._wake_sender()

        return after_commit


def _amount(value: Decimal) -> str:
    """As people write it: 0.00021053, never 2.1053E-4."""
    return format(value, "f")
