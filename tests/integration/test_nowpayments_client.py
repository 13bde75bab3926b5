"""The NOWPayments client against a local fake speaking NOWPayments' shapes."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from services.payment.nowpayments import NowPaymentsProvider
from services.payment.providers import (
    NOWPAYMENTS,
    PaymentRequest,
    ProviderError,
    ProviderRefusedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from tests.support.fake_nowpayments import API_KEY, Behaviour, FakeNowPayments

IPN_CALLBACK_URL = "https://bitloot.example/webhooks/nowpayments/ipn"
TIMEOUT = 0.2
BACKOFF = 0.01
RETRIES = 2
SHOPPER_EMAIL = "shopper@example.com"

MakeProvider = Callable[..., tuple[NowPaymentsProvider, list[str]]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeNowPayments]:
    async with FakeNowPayments(hang_seconds=1.0) as server:
        yield server


@pytest.fixture
async def make_provider(
    fake: FakeNowPayments,
) -> AsyncIterator[MakeProvider]:
    made: list[NowPaymentsProvider] = []

    def make(
        *,
        api_key: str = API_KEY,
        base_url: str | None = None,
        retries: int = RETRIES,
        timeout: float = TIMEOUT,
    ) -> tuple[NowPaymentsProvider, list[str]]:
        outcomes: list[str] = []
        provider = NowPaymentsProvider(
            api_key=api_key,
            base_url=fake.base_url if base_url is None else base_url,
            ipn_callback_url=IPN_CALLBACK_URL,
            timeout=timeout,
            retries=retries,
            backoff=BACKOFF,
            on_attempt=outcomes.append,
        )
        made.append(provider)
        return provider, outcomes

    yield make
    for provider in made:
        await provider.close()


@pytest.fixture
def provider(make_provider: MakeProvider) -> Iterator[NowPaymentsProvider]:
    made, _ = make_provider()
    yield made


def payment_request(price: str = "19.99", pay_currency: str = "btc") -> PaymentRequest:
    return PaymentRequest(
        order_id=uuid.uuid4(),
        price_amount=Decimal(price),
        price_currency="usd",
        pay_currency=pay_currency,
        description="BitLoot order: 1 x Game Key",
    )


async def test_a_payment_is_opened_with_the_exact_amounts_and_request_fields(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """A 201 answer becomes an OpenedPayment, and the request carried key and body."""
    provider, outcomes = make_provider()
    request = payment_request("19.99")
    before = datetime.now(UTC)

    payment = await provider.open_payment(request)

    assert payment.provider == NOWPAYMENTS
    assert payment.payment_id.isdigit()
    assert payment.pay_address == "3EZ2uTdVDAMFXTfc6uLDDKR6o8qKBZXVkj"
    assert payment.pay_amount == Decimal("0.00021043")
    assert str(payment.pay_amount) == "0.00021043"
    assert payment.pay_amount == fake.pay_amount_for(Decimal("19.99"), "btc")
    assert payment.pay_currency == "btc"
    assert payment.expires_at is not None
    assert payment.expires_at.tzinfo is not None
    expected_expiry = before + timedelta(minutes=20)
    assert abs(payment.expires_at - expected_expiry) < timedelta(seconds=5)
    assert outcomes == ["ok"]

    [seen] = fake.requests
    assert seen.method == "POST"
    assert seen.path == "/v1/payment"
    assert seen.headers["x-api-key"] == API_KEY
    assert seen.headers["content-type"] == "application/json"
    assert re.search(r'"price_amount":\s*19\.99[,}]', seen.body)
    assert seen.json == {
        "price_amount": Decimal("19.99"),
        "price_currency": "usd",
        "pay_currency": "btc",
        "order_id": str(request.order_id),
        "order_description": "BitLoot order: 1 x Game Key",
        "ipn_callback_url": IPN_CALLBACK_URL,
    }


@pytest.mark.parametrize("price", ["10.10", "0.50", "1234567.89", "5"])
async def test_price_amount_is_sent_as_the_decimals_own_digits(
    fake: FakeNowPayments, provider: NowPaymentsProvider, price: str
) -> None:
    """The body's price_amount is a JSON number spelled exactly like the Decimal."""
    await provider.open_payment(payment_request(price))

    [seen] = fake.requests
    match = re.search(r'"price_amount":\s*([^,}]+)[,}]', seen.body)
    assert match is not None
    assert match.group(1) == price
    assert isinstance(json.loads(seen.body)["price_amount"], int | float)


async def test_a_500_then_success_is_retried_and_succeeds(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """One 500 is retried and the second attempt opens the payment."""
    provider, outcomes = make_provider()
    fake.script("status_500")

    payment = await provider.open_payment(payment_request())

    assert payment.pay_amount == Decimal("0.00021043")
    assert len(fake.requests) == 2
    assert outcomes == ["unavailable", "ok"]


async def test_a_500_every_time_is_unavailable_after_all_attempts(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """A 500 on every attempt ends in ProviderUnavailableError after 1 + retries."""
    provider, outcomes = make_provider(retries=2)
    fake.script("status_500", "status_500", "status_500", "ok")

    with pytest.raises(ProviderUnavailableError) as caught:
        await provider.open_payment(payment_request())

    assert len(fake.requests) == 3
    assert outcomes == ["unavailable"] * 3
    assert "/v1/payment" in str(caught.value)
    assert "HTTP 500" in str(caught.value)


async def test_a_hanging_provider_times_out_after_all_attempts(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """A provider that never answers in time ends in ProviderTimeoutError."""
    provider, outcomes = make_provider(retries=1, timeout=0.2)
    fake.script("hang", "hang")

    with pytest.raises(ProviderTimeoutError) as caught:
        await provider.open_payment(payment_request())

    assert len(fake.requests) == 2
    assert outcomes == ["timeout", "timeout"]
    assert "/v1/payment" in str(caught.value)


async def test_a_hang_then_success_is_retried_and_succeeds(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """A timed-out attempt is retried and the next one opens the payment."""
    provider, outcomes = make_provider(retries=1, timeout=0.2)
    fake.script("hang")

    await provider.open_payment(payment_request())

    assert outcomes == ["timeout", "ok"]


async def test_a_429_with_retry_after_is_retried(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """A 429 with Retry-After: 0 is retried and the next attempt succeeds."""
    provider, outcomes = make_provider()
    fake.script("status_429")

    await provider.open_payment(payment_request())

    assert len(fake.requests) == 2
    assert outcomes == ["unavailable", "ok"]


async def test_an_amount_below_minimal_is_refused_without_retry(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """A 400 AMOUNT_MINIMAL_ERROR is a ProviderRefusedError after a single request."""
    provider, outcomes = make_provider()
    fake.script("refuse_minimal")

    with pytest.raises(ProviderRefusedError) as caught:
        await provider.open_payment(payment_request("0.01"))

    assert caught.value.status == 400
    assert caught.value.code == "AMOUNT_MINIMAL_ERROR"
    assert caught.value.message == "Crypto amount 0.0000001 is less than minimal"
    assert not caught.value.refused_credentials
    assert len(fake.requests) == 1
    assert outcomes == ["refused"]


async def test_a_wrong_api_key_is_refused_as_bad_credentials(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """A 403 INVALID_API_KEY is a refusal whose refused_credentials is True."""
    provider, outcomes = make_provider(api_key="not-the-right-key")

    with pytest.raises(ProviderRefusedError) as caught:
        await provider.open_payment(payment_request())

    assert caught.value.status == 403
    assert caught.value.code == "INVALID_API_KEY"
    assert caught.value.refused_credentials
    assert len(fake.requests) == 1
    assert outcomes == ["refused"]


async def test_a_non_json_4xx_is_refused_with_the_http_status_as_code(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """A 404 with a text body is refused with code HTTP_404 and an excerpt."""
    provider, outcomes = make_provider(base_url=fake.base_url + "/nowhere/")

    with pytest.raises(ProviderRefusedError) as caught:
        await provider.open_payment(payment_request())

    assert caught.value.status == 404
    assert caught.value.code == "HTTP_404"
    assert "Not Found" in caught.value.message
    assert outcomes == ["refused"]


async def test_a_garbage_created_answer_is_unavailable_without_retry(
    fake: FakeNowPayments, make_provider: MakeProvider
) -> None:
    """A 201 whose body is not JSON is ProviderUnavailableError after one request."""
    provider, outcomes = make_provider()
    fake.script("garbage")

    with pytest.raises(ProviderUnavailableError) as caught:
        await provider.open_payment(payment_request())

    assert "not JSON" in str(caught.value)
    assert len(fake.requests) == 1
    assert outcomes == ["unavailable"]


async def test_a_numeric_payment_id_becomes_text(
    fake: FakeNowPayments, provider: NowPaymentsProvider
) -> None:
    """A payment_id sent as a JSON number is kept as its digits in text."""
    fake.script("numeric_id")

    payment = await provider.open_payment(payment_request())

    [answer] = fake.responses
    assert isinstance(json.loads(answer.body)["payment_id"], int)
    assert isinstance(payment.payment_id, str)
    assert payment.payment_id == str(json.loads(answer.body)["payment_id"])


async def test_an_unreachable_provider_is_unavailable_after_all_attempts(
    make_provider: MakeProvider,
) -> None:
    """A refused connection is retried, then ends in ProviderUnavailableError."""
    closed = FakeNowPayments()
    base_url = await closed.start()
    await closed.stop()
    provider, outcomes = make_provider(base_url=base_url, retries=1)

    with pytest.raises(ProviderUnavailableError) as caught:
        await provider.open_payment(payment_request())

    assert outcomes == ["unavailable", "unavailable"]
    assert "connection failed" in str(caught.value)


@pytest.mark.parametrize(
    "behaviour", ["status_500", "hang", "refuse_minimal", "garbage", "status_429"]
)
async def test_the_api_key_never_appears_in_an_exception_message(
    fake: FakeNowPayments, make_provider: MakeProvider, behaviour: Behaviour
) -> None:
    """No failure, final or logged, carries the API key or the shopper's email."""
    provider, _ = make_provider(retries=0)
    fake.script(behaviour)
    request = payment_request()
    request = PaymentRequest(
        order_id=request.order_id,
        price_amount=request.price_amount,
        price_currency=request.price_currency,
        pay_currency=request.pay_currency,
        description=f"BitLoot order for {SHOPPER_EMAIL}",
    )

    with capture_logs() as logs, pytest.raises(ProviderError) as caught:
        await provider.open_payment(request)

    assert API_KEY not in str(caught.value)
    assert API_KEY not in repr(caught.value.args)
    assert [log["event"] for log in logs] == ["nowpayments_attempt_failed"]
    assert API_KEY not in repr(logs)
    assert SHOPPER_EMAIL not in repr(logs)


async def test_a_wrong_api_key_does_not_appear_in_the_refusal(
    make_provider: MakeProvider,
) -> None:
    """The refusal for a bad key names neither the key sent nor the expected one."""
    provider, _ = make_provider(api_key="wrong-secret-key-123")

    with pytest.raises(ProviderRefusedError) as caught:
        await provider.open_payment(payment_request())

    assert "wrong-secret-key-123" not in str(caught.value)
    assert API_KEY not in str(caught.value)
