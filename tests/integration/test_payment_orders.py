"""Placing and reading orders over HTTP, against real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from shared.service import RunningService
from tests.conftest import StartPayment
from tests.support.events import EventTap
from tests.support.fake_nowpayments import API_KEY, FakeNowPayments
from tests.support.metrics import scrape, value
from tests.support.payments import ORDER, get_order, place_order
from tests.support.webhooks import fetch_rows


async def count_rows(database_url: str) -> dict[str, int]:
    rows = await fetch_rows(
        database_url,
        "SELECT (SELECT count(*) FROM payment.orders) AS orders, "
        "(SELECT count(*) FROM payment.payments) AS payments, "
        "(SELECT count(*) FROM payment.outbox) AS outbox",
    )
    return dict(rows[0])


async def test_an_order_answers_with_where_and_how_much_to_pay(
    start_payment: StartPayment, amqp_url: str, database_url: str, metrics_token: str
) -> None:
    """201 with the address and exact amount, the rows stored, payment.created sent."""
    payment = await start_payment()

    async with EventTap(amqp_url, ["payment.created"]) as tap:
        status, order = await place_order(payment.url)
        events = await tap.wait_for(1)

    assert status == 201
    assert order["status"] == "awaiting_payment"
    assert order["total"] == {"amount": "20.00", "currency": "usd"}
    assert order["payment"]["status"] == "waiting"
    assert order["payment"]["provider"] == "simulator"
    assert order["payment"]["pay_currency"] == "btc"
    # 20 USD at the simulator's 95,000 USD/BTC, rounded up to 8 decimals.
    assert order["payment"]["pay_amount"] == "0.00021053"
    assert order["payment"]["pay_address"].startswith("bc1q")
    assert [h["to"] for h in order["history"]] == ["awaiting_payment", "waiting"]
    data = events[0]["data"]
    assert data["order_id"] == order["order_id"]
    assert data["email"] == "shopper@example.com"
    assert data["pay_amount"] == "0.00021053"
    assert data["price_amount"] == "20.00"
    assert data["pay_address"] == order["payment"]["pay_address"]
    rows = await fetch_rows(
        database_url, "SELECT email, status, total_amount FROM payment.orders"
    )
    assert [(r["email"], r["status"], str(r["total_amount"])) for r in rows] == [
        ("shopper@example.com", "awaiting_payment", "20.00")
    ]
    samples = await scrape(payment.url, metrics_token)
    assert value(samples, "bitloot_payments_total", status="waiting", asset="btc") == 1
    assert (
        value(
            samples,
            "bitloot_payment_provider_requests_total",
            provider="simulator",
            outcome="ok",
        )
        == 1
    )


async def test_an_order_is_read_back_and_unknown_ids_are_not_found(
    start_payment: StartPayment,
) -> None:
    """GET shows what POST answered; an unknown or malformed id is a 404."""
    payment = await start_payment()
    _, placed = await place_order(payment.url)

    status, order = await get_order(payment.url, placed["order_id"])
    missing_status, missing = await get_order(
        payment.url, "7a1c3e52-0000-4000-8000-000000000000"
    )
    garbage_status, garbage = await get_order(payment.url, "not-an-order")

    assert status == 200
    assert order == placed
    assert (missing_status, missing["error"]) == (404, "order_not_found")
    assert (garbage_status, garbage["error"]) == (404, "order_not_found")


async def test_the_catalogue_lists_the_demo_products(
    start_payment: StartPayment,
) -> None:
    """The seeded products are on sale with decimal prices."""
    payment = await start_payment()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{payment.url}/v1/products") as response,
    ):
        body = await response.json()

    assert response.status == 200
    prices = {p["id"]: (p["price"], p["currency"]) for p in body["products"]}
    assert prices["steam-gift-card-20"] == ("20.00", "usd")
    assert len(prices) == 4


def _order(**changes: Any) -> dict[str, Any]:
    return {**ORDER, **changes}


@pytest.mark.parametrize(
    ("body", "code", "mentions"),
    [
        (
            _order(items=[{"product_id": "no-such-thing", "quantity": 1}]),
            "unknown_product",
            "no-such-thing",
        ),
        (_order(pay_currency="xyz"), "unsupported_currency", "xyz"),
        (_order(email="not-an-address"), "invalid_order", "email"),
        (_order(items=[]), "invalid_order", "items"),
        (
            _order(items=[{"product_id": "steam-gift-card-20", "quantity": 0}]),
            "invalid_order",
            "quantity",
        ),
        (
            _order(items=[{"product_id": "steam-gift-card-20", "quantity": "2"}]),
            "invalid_order",
            "quantity",
        ),
        (
            {"email": "shopper@example.com", "pay_currency": "btc"},
            "invalid_order",
            "items",
        ),
        (_order(coupon="FREE"), "invalid_order", "coupon"),
    ],
)
async def test_an_order_the_shop_cannot_take_is_refused_with_422(
    start_payment: StartPayment,
    database_url: str,
    body: dict[str, Any],
    code: str,
    mentions: str,
) -> None:
    """A 422 names what is wrong, and nothing is stored or published."""
    payment = await start_payment()

    status, answer = await place_order(payment.url, body)

    assert (status, answer["error"]) == (422, code)
    assert mentions in answer["detail"]
    assert await count_rows(database_url) == {"orders": 0, "payments": 0, "outbox": 0}


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"email": "' + b"a" * 20_000 + b'"}', 413, "body_too_large"),
    ],
)
async def test_a_body_that_is_not_an_order_is_refused(
    start_payment: StartPayment, database_url: str, raw: bytes, status: int, code: str
) -> None:
    """Malformed and oversized bodies get 400 and 413 as JSON errors."""
    payment = await start_payment()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{payment.url}/v1/orders",
            data=raw,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        answer = await response.json()

    assert (response.status, answer["error"]) == (status, code)
    assert (await count_rows(database_url))["orders"] == 0


async def test_the_same_product_twice_is_one_line_with_both_quantities(
    start_payment: StartPayment,
) -> None:
    """Lines naming one product merge, and the total counts every unit."""
    payment = await start_payment()
    line = {"product_id": "elden-ring", "quantity": 1}

    status, order = await place_order(payment.url, _order(items=[line, line]))

    assert status == 201
    assert [(i["product_id"], i["quantity"]) for i in order["items"]] == [
        ("elden-ring", 2)
    ]
    assert order["total"]["amount"] == "79.98"


async def test_a_retried_request_with_its_idempotency_key_places_one_order(
    start_payment: StartPayment, database_url: str
) -> None:
    """The second POST with the same key answers 200 with the first order."""
    payment = await start_payment()
    headers = {"Idempotency-Key": "checkout-7f3a"}

    first_status, first = await place_order(payment.url, headers=headers)
    second_status, second = await place_order(payment.url, headers=headers)
    bad_status, bad = await place_order(payment.url, headers={"Idempotency-Key": " "})

    assert (first_status, second_status) == (201, 200)
    assert second["order_id"] == first["order_id"]
    assert (bad_status, bad["error"]) == (400, "invalid_idempotency_key")
    assert (await count_rows(database_url))["orders"] == 1


@pytest.fixture
async def nowpayments(
    start_payment: StartPayment,
) -> AsyncIterator[tuple[FakeNowPayments, RunningService]]:
    """The payment service opening payments at a local NOWPayments."""
    async with FakeNowPayments(hang_seconds=2.0) as fake:
        service = await start_payment(
            payment_provider="nowpayments",
            nowpayments_api_key=API_KEY,
            nowpayments_api_url=fake.base_url,
            nowpayments_timeout_seconds=0.3,
            nowpayments_retries=1,
        )
        yield fake, service


async def test_an_order_opens_its_payment_at_nowpayments(
    nowpayments: tuple[FakeNowPayments, RunningService], metrics_token: str
) -> None:
    """The provider's address and amount reach the shopper; the key was sent."""
    fake, service = nowpayments

    status, order = await place_order(service.url)

    assert status == 201
    assert order["payment"]["provider"] == "nowpayments"
    sent = fake.payment_requests[-1]
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.json["order_id"] == order["order_id"]
    assert sent.json["pay_currency"] == "btc"
    assert '"price_amount": 20.00' in sent.body or '"price_amount":20.00' in sent.body
    answered = json.loads(fake.responses[-1].body)
    assert order["payment"]["pay_address"] == answered["pay_address"]
    assert order["payment"]["payment_id"] == str(answered["payment_id"])
    samples = await scrape(service.url, metrics_token)
    assert (
        value(
            samples,
            "bitloot_payment_provider_requests_total",
            provider="nowpayments",
            outcome="ok",
        )
        == 1
    )


@pytest.mark.parametrize(
    ("behaviours", "status", "code", "outcome"),
    [
        (("hang", "hang"), 504, "provider_timeout", "timeout"),
        (("status_500", "status_500"), 502, "provider_unavailable", "unavailable"),
        (("garbage",), 502, "provider_unavailable", "unavailable"),
        (("refuse_minimal",), 422, "payment_refused", "refused"),
    ],
)
async def test_a_provider_failure_is_a_clean_error_and_no_order(
    nowpayments: tuple[FakeNowPayments, RunningService],
    database_url: str,
    metrics_token: str,
    behaviours: tuple[Any, ...],
    status: int,
    code: str,
    outcome: str,
) -> None:
    """Timeouts, 5xx, nonsense and refusals leave no order, payment or event."""
    fake, service = nowpayments
    fake.script(*behaviours)

    answer_status, answer = await place_order(service.url)

    assert (answer_status, answer["error"]) == (status, code)
    assert "Traceback" not in answer["detail"]
    assert await count_rows(database_url) == {"orders": 0, "payments": 0, "outbox": 0}
    samples = await scrape(service.url, metrics_token)
    assert (
        value(
            samples,
            "bitloot_payment_provider_requests_total",
            provider="nowpayments",
            outcome=outcome,
        )
        == 1
    )


async def test_a_wrong_api_key_is_the_operators_problem_not_the_shoppers(
    start_payment: StartPayment, database_url: str
) -> None:
    """NOWPayments refusing our key answers 502 without echoing the key."""
    async with FakeNowPayments() as fake:
        service = await start_payment(
            payment_provider="nowpayments",
            nowpayments_api_key="wrong-key",
            nowpayments_api_url=fake.base_url,
        )
        status, answer = await place_order(service.url)

    assert (status, answer["error"]) == (502, "provider_unavailable")
    assert "wrong-key" not in json.dumps(answer)
    assert (await count_rows(database_url))["orders"] == 0
