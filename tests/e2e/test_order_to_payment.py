"""An order paid through signed IPNs: shopper → payment → webhook-ingest → payment."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import aiohttp

from services.payment.bootstrap import IPN_QUEUE
from shared.service import RunningService
from tests.conftest import NOWPAYMENTS_SECRET, StartIngest, StartPayment
from tests.support.events import EventTap
from tests.support.ipn import signed_headers
from tests.support.metrics import Samples, scrape, scrape_until, value
from tests.support.payments import consumed, place_order, underpaid, wait_for_order
from tests.support.webhooks import duplicates, fetch_rows


def ipn(order: dict[str, Any], status: str, actually_paid: str, updated: str) -> bytes:
    """An IPN as NOWPayments writes it, amounts as JSON numbers."""
    payment = order["payment"]
    return (
        "{"
        f'"payment_id":{payment["payment_id"]},"invoice_id":null,'
        f'"payment_status":"{status}","pay_address":"{payment["pay_address"]}",'
        f'"price_amount":{order["total"]["amount"]},"price_currency":"usd",'
        f'"pay_amount":{payment["pay_amount"]},"actually_paid":{actually_paid},'
        f'"pay_currency":"btc","order_id":"{order["order_id"]}",'
        '"order_description":"Steam Gift Card","purchase_id":"6084744717",'
        f'"created_at":"2026-12-03T10:00:00.000Z","updated_at":"{updated}"'
        "}"
    ).encode()


async def send(ingest: RunningService, body: bytes) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{ingest.url}/webhooks/nowpayments/ipn",
            data=body,
            headers=signed_headers(NOWPAYMENTS_SECRET, body),
        ) as response,
    ):
        assert response.status == 200, await response.text()
        answer: dict[str, str] = await response.json()
        return answer["status"]


async def test_an_underpaid_order_travels_from_ipn_to_metrics_once(
    start_ingest: StartIngest,
    start_payment: StartPayment,
    amqp_url: str,
    metrics_token: str,
    database_url: str,
) -> None:
    """Order, then partially_paid five times and again later: counted once."""
    ingest = await start_ingest()
    payment = await start_payment()
    status, order = await place_order(payment.url)
    assert status == 201
    paid = "0.0001"
    first = ipn(order, "partially_paid", paid, "2026-12-03T10:10:00.000Z")
    # NOWPayments repeats an IPN with a newer updated_at: a new delivery.
    later = ipn(order, "partially_paid", paid, "2026-12-03T10:20:00.000Z")

    async with EventTap(amqp_url, ["payment.underpaid"]) as tap:
        answers = [await send(ingest, first) for _ in range(5)]
        answers.append(await send(ingest, later))
        events = await tap.wait_for(1)

    assert answers == ["accepted", *["duplicate"] * 4, "accepted"]
    final = await wait_for_order(payment.url, order["order_id"], "partially_paid")
    assert final["status"] == "underpaid"
    assert final["payment"]["actually_paid"] == paid

    def both_handled(samples: Samples) -> bool:
        ipn_type = "webhook.nowpayments.received"
        return consumed(samples, IPN_QUEUE, ipn_type, "ok") == 2

    samples = await scrape_until(payment.url, metrics_token, both_handled)
    assert underpaid(samples, "btc") == 1
    assert value(samples, "bitloot_payment_ipns_total", outcome="unchanged") == 1
    assert duplicates(await scrape(ingest.url, metrics_token)) == 4
    assert len(events) == 1
    data = events[0]["data"]
    assert data["order_id"] == order["order_id"]
    assert Decimal(data["missing_amount"]) == Decimal(
        order["payment"]["pay_amount"]
    ) - Decimal(paid)

    # The history names the webhook delivery that moved the payment.
    stored = await fetch_rows(
        database_url,
        "SELECT id, raw_body FROM webhook_ingest.deliveries ORDER BY received_at",
    )
    moved = next(h for h in final["history"] if h["to"] == "partially_paid")
    assert moved["delivery_id"] == str(stored[0]["id"])
    assert json.loads(stored[0]["raw_body"])["payment_status"] == "partially_paid"


async def test_a_paid_order_completes_and_publishes_payment_completed(
    start_ingest: StartIngest,
    start_payment: StartPayment,
    amqp_url: str,
    metrics_token: str,
) -> None:
    """IPNs out of order (finished before confirming) still end paid."""
    ingest = await start_ingest()
    payment = await start_payment()
    _, order = await place_order(payment.url)
    amount = order["payment"]["pay_amount"]

    async with EventTap(amqp_url, ["payment.completed"]) as tap:
        finished = ipn(order, "finished", amount, "2026-12-03T10:30:00.000Z")
        confirming = ipn(order, "confirming", amount, "2026-12-03T10:10:00.000Z")
        assert await send(ingest, finished) == "accepted"
        await wait_for_order(payment.url, order["order_id"], "finished")
        assert await send(ingest, confirming) == "accepted"
        events = await tap.wait_for(1)

    samples = await scrape_until(
        payment.url,
        metrics_token,
        lambda s: value(s, "bitloot_payment_ipns_total", outcome="stale") == 1,
    )
    final = await wait_for_order(payment.url, order["order_id"], "finished")
    assert final["status"] == "paid"
    assert events[0]["data"]["paid_amount"] == amount
    assert value(samples, "bitloot_payments_total", status="finished", asset="btc") == 1
    assert underpaid(samples, "btc") == 0
