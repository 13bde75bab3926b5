"""Events that ask for emails, and reading what the email service did with them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from contracts.envelope import Envelope, wrap
from contracts.otp import EmailOtpRequested, UserRegistered
from contracts.payments import PaymentCompleted, PaymentCreated, PaymentUnderpaid
from services.email import store
from services.email.bootstrap import SPEC as EMAIL
from services.email.domain import EmailType, idempotency_key
from shared.db import create_pool, discover_migrations, migrate
from tests.support.metrics import Samples, value
from tests.support.smtp_server import ReceivedMail

PAY_ADDRESS = "bc1qyq0sumc7dzp3add0u2r5x9fkmsf8k2y7gnyk45"


def otp_requested(
    email: str = "person@example.com",
    code: str = "042917",
    expires_in: timedelta = timedelta(minutes=5),
) -> Envelope:
    event = EmailOtpRequested(
        request_id=uuid.uuid4(),
        email=email,
        code=code,
        expires_at=datetime.now(UTC) + expires_in,
    )
    return wrap(event, "otp", f"test-otp-{event.request_id}")


def registered(email: str = "new@example.com") -> Envelope:
    return wrap(UserRegistered(user_id=uuid.uuid4(), email=email), "otp", "test-user")


def payment_created(
    order_id: uuid.UUID | None = None, email: str = "shopper@example.com"
) -> Envelope:
    event = PaymentCreated(
        order_id=order_id or uuid.uuid4(),
        payment_id="5077125051",
        provider="simulator",
        email=email,
        pay_address=PAY_ADDRESS,
        pay_amount=Decimal("0.00021053"),
        pay_currency="btc",
        price_amount=Decimal("20.00"),
        price_currency="usd",
    )
    return wrap(event, "payment", "test-created")


def payment_completed(order_id: uuid.UUID | None = None) -> Envelope:
    event = PaymentCompleted(
        order_id=order_id or uuid.uuid4(),
        payment_id="5077125051",
        provider="simulator",
        email="shopper@example.com",
        pay_currency="btc",
        pay_amount=Decimal("0.00021053"),
        paid_amount=Decimal("0.00021053"),
        price_amount=Decimal("20.00"),
        price_currency="usd",
    )
    return wrap(event, "payment", "test-completed")


def payment_underpaid(order_id: uuid.UUID | None = None) -> Envelope:
    event = PaymentUnderpaid(
        order_id=order_id or uuid.uuid4(),
        payment_id="5077125051",
        provider="simulator",
        email="shopper@example.com",
        asset="btc",
        pay_address=PAY_ADDRESS,
        expected_amount=Decimal("0.00021053"),
        paid_amount=Decimal("0.0001"),
        missing_amount=Decimal("0.00011053"),
    )
    return wrap(event, "payment", "test-underpaid")


def text_of(mail: ReceivedMail) -> str:
    part = mail.message.get_body(preferencelist=("plain",))
    assert part is not None, "no text part"
    return str(part.get_content())


def html_of(mail: ReceivedMail) -> str:
    part = mail.message.get_body(preferencelist=("html",))
    assert part is not None, "no HTML part"
    return str(part.get_content())


def sent(samples: Samples, email_type: str) -> float:
    return value(samples, "bitloot_email_send_success_total", type=email_type)


def failed(samples: Samples, email_type: str, reason: str) -> float:
    return value(
        samples, "bitloot_email_send_failed_total", type=email_type, reason=reason
    )


def retried(samples: Samples, email_type: str, reason: str) -> float:
    return value(
        samples, "bitloot_email_send_retries_total", type=email_type, reason=reason
    )


def requested(samples: Samples, email_type: str, outcome: str) -> float:
    return value(
        samples, "bitloot_emails_requested_total", type=email_type, outcome=outcome
    )


async def email_pool(database_url: str) -> asyncpg.Pool:
    """A pool on the email service's schema, migrated as the service would."""
    await migrate(database_url, EMAIL.schema, discover_migrations(EMAIL.migrations_dir))
    return await create_pool(database_url, EMAIL.schema, min_size=1, max_size=4)


async def record_welcome(pool: asyncpg.Pool, email: str = "new@example.com") -> None:
    """Record an owed welcome email, as the consumer of user.registered would."""
    user_id = str(uuid.uuid4())
    request = store.EmailRequest(
        email_type=EmailType.WELCOME,
        idempotency_key=idempotency_key(EmailType.WELCOME, user_id),
        recipient=email,
        data={},
        event_id=uuid.uuid4(),
        correlation_id=f"test-welcome-{user_id}",
    )
    async with pool.acquire() as connection:
        assert await store.record_email(connection, request)
