"""Which email each event asks for, and what the templates make of it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from contracts.envelope import wrap
from contracts.otp import EmailOtpRequested, UserRegistered
from contracts.payments import (
    PaymentCompleted,
    PaymentCreated,
    PaymentFailed,
    PaymentUnderpaid,
)
from services.email.domain import EmailType, retry_delay
from services.email.handlers import email_request
from services.email.rendering import TemplateDataError, render
from shared.consumer import PoisonMessageError

ORDER_ID = uuid.UUID("6f0c1a52-3c4d-4b8e-9a57-0d3c2b1a9f10")
ADDRESS = "bc1qyq0sumc7dzp3add0u2r5x9fkmsf8k2y7gnyk45"


def created() -> PaymentCreated:
    return PaymentCreated(
        order_id=ORDER_ID,
        payment_id="5077125051",
        provider="simulator",
        email="shopper@example.com",
        pay_address=ADDRESS,
        pay_amount=Decimal("0.00021053"),
        pay_currency="btc",
        price_amount=Decimal("20.00"),
        price_currency="usd",
    )


def test_an_otp_request_asks_for_one_code_email_per_request() -> None:
    """The key names the request, never the address; the code reaches the text."""
    now = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)
    event = EmailOtpRequested(
        request_id=uuid.UUID(int=7),
        email="person@example.com",
        code="042917",
        expires_at=now + timedelta(minutes=5),
    )
    request = email_request(wrap(event, "otp", "c-1", occurred_at=now))

    assert request.email_type is EmailType.OTP
    assert request.idempotency_key == f"otp:{uuid.UUID(int=7)}"
    assert request.recipient == "person@example.com"
    rendered = render(request.email_type, request.data)
    assert "042917" in rendered.text and "042917" in rendered.html
    assert "042917" not in rendered.subject
    assert "21:05 UTC" in rendered.text and "5 minutes" in rendered.text


def test_a_payment_created_email_says_exactly_what_to_send_and_where() -> None:
    """Amount, asset and address as the shopper must type them."""
    request = email_request(wrap(created(), "payment", "c-2"))

    assert request.idempotency_key == f"payment_created:{ORDER_ID}"
    rendered = render(request.email_type, request.data)
    assert "0.00021053 BTC" in rendered.text
    assert ADDRESS in rendered.text and ADDRESS in rendered.html
    assert "20.00 USD" in rendered.text


def test_an_underpaid_email_says_what_is_missing() -> None:
    event = PaymentUnderpaid(
        order_id=ORDER_ID,
        payment_id="5077125051",
        provider="simulator",
        email="shopper@example.com",
        asset="btc",
        pay_address=ADDRESS,
        expected_amount=Decimal("0.00021053"),
        paid_amount=Decimal("0.0001"),
        missing_amount=Decimal("0.00011053"),
    )
    request = email_request(wrap(event, "payment", "c-3"))

    assert request.idempotency_key == f"underpaid:{ORDER_ID}"
    text = render(request.email_type, request.data).text
    assert "We received 0.0001 BTC of the 0.00021053 BTC due" in text
    assert "Missing: 0.00011053 BTC" in text


def test_completed_and_welcome_emails_are_keyed_by_their_fact() -> None:
    completed = PaymentCompleted(
        order_id=ORDER_ID,
        payment_id="5077125051",
        provider="simulator",
        email="shopper@example.com",
        pay_currency="btc",
        pay_amount=Decimal("0.00021053"),
        paid_amount=Decimal("0.00021053"),
        price_amount=Decimal("20.00"),
        price_currency="usd",
    )
    user = uuid.UUID(int=42)
    welcome = UserRegistered(user_id=user, email="new@example.com")

    paid = email_request(wrap(completed, "payment", "c-4"))
    hello = email_request(wrap(welcome, "otp", "c-5"))

    assert paid.idempotency_key == f"payment_completed:{ORDER_ID}"
    assert "We received 0.00021053 BTC" in render(paid.email_type, paid.data).text
    assert hello.idempotency_key == f"welcome:{user}"
    assert "Welcome to BitLoot" in render(hello.email_type, hello.data).text


def test_html_escapes_what_the_data_carries() -> None:
    """A value can never inject markup into an email."""
    data = email_request(wrap(created(), "payment", "c-6")).data
    data["pay_address"] = "<script>alert(1)</script>"

    rendered = render(EmailType.PAYMENT_CREATED, data)

    assert "<script>" not in rendered.html
    assert "&lt;script&gt;" in rendered.html


def test_missing_template_data_is_an_error_not_a_gap() -> None:
    with pytest.raises(TemplateDataError, match="is undefined"):
        render(EmailType.PAYMENT_CREATED, {"order_id": "x"})


def test_an_event_that_asks_for_no_email_is_poison() -> None:
    """Bound to the queue by mistake, it is parked in the .dlq, not retried."""
    failed = PaymentFailed(
        order_id=ORDER_ID, payment_id="1", provider="simulator", status="failed"
    )
    with pytest.raises(PoisonMessageError, match="does not ask for an email"):
        email_request(wrap(failed, "payment", "c-7"))


def test_an_event_whose_data_breaks_its_contract_is_poison() -> None:
    envelope = wrap(created(), "payment", "c-8")
    broken = envelope.model_copy(update={"data": {"order_id": "not-a-uuid"}})
    with pytest.raises(PoisonMessageError, match=r"unusable payment\.created"):
        email_request(broken)


def test_retry_delays_double_up_to_the_cap() -> None:
    assert [retry_delay(n, 2.0, 10.0) for n in (1, 2, 3, 4, 5)] == [
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
