"""Placing orders and feeding the payment service the events webhook-ingest sends."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiohttp

from contracts.envelope import EXCHANGE, Envelope, wrap
from contracts.webhooks import KinguinWebhookReceived, NowPaymentsIpnReceived
from shared.outbox import serialise
from tests.support.metrics import Samples, value

ORDER = {
    "email": "shopper@example.com",
    "items": [{"product_id": "steam-gift-card-20", "quantity": 1}],
    "pay_currency": "btc",
}


async def place_order(
    url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST /v1/orders; the status and the JSON answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/orders", json=ORDER if body is None else body, headers=headers
        ) as response,
    ):
        return response.status, await response.json()


async def get_order(url: str, order_id: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/orders/{order_id}") as response,
    ):
        return response.status, await response.json()


async def wait_for_order(
    url: str, order_id: str, payment_status: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll the order until its payment reaches a status; the order's JSON."""
    async with asyncio.timeout(timeout):
        while True:
            _, order = await get_order(url, order_id)
            if order["payment"]["status"] == payment_status:
                return order
            await asyncio.sleep(0.05)


def ipn_event(
    order: dict[str, Any],
    status: str,
    actually_paid: float | None = None,
    **extra: Any,
) -> Envelope:
    """The event webhook-ingest publishes for one IPN about an order's payment."""
    payment = order["payment"]
    body = {
        "payment_id": int(payment["payment_id"]),
        "invoice_id": None,
        "payment_status": status,
        "pay_address": payment["pay_address"],
        "price_amount": float(order["total"]["amount"]),
        "price_currency": "usd",
        "pay_amount": float(payment["pay_amount"]),
        "actually_paid": actually_paid if actually_paid is not None else 0,
        "pay_currency": payment["pay_currency"],
        "order_id": order["order_id"],
        "order_description": "test order",
        "purchase_id": "6084744717",
        **extra,
    }
    data = NowPaymentsIpnReceived(
        delivery_id=uuid.uuid4(),
        received_at=datetime.now(UTC),
        payment_id=str(body["payment_id"]),
        payment_status=status,
        body=body,
    )
    return wrap(data, "webhook-ingest", f"test-{status}")


def kinguin_event(body: dict[str, Any], event_name: str = "order.status") -> Envelope:
    data = KinguinWebhookReceived(
        delivery_id=uuid.uuid4(),
        received_at=datetime.now(UTC),
        event_name=event_name,
        body=body,
    )
    return wrap(data, "webhook-ingest", "test-kinguin")


async def publish(amqp_url: str, *envelopes: Envelope) -> None:
    """Publish events to the exchange as webhook-ingest's relay would."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        for envelope in envelopes:
            await exchange.publish(
                aio_pika.Message(
                    serialise(envelope),
                    message_id=str(envelope.id),
                    type=envelope.type,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=envelope.type,
                mandatory=True,
            )
    finally:
        await connection.close()


def underpaid(samples: Samples, asset: str = "btc") -> float:
    return value(samples, "bitloot_underpaid_orders_total", asset=asset)


def ipns(samples: Samples, outcome: str) -> float:
    return value(samples, "bitloot_payment_ipns_total", outcome=outcome)


def consumed(samples: Samples, queue: str, event_type: str, outcome: str) -> float:
    return value(
        samples,
        "bitloot_events_consumed_total",
        queue=queue,
        type=event_type,
        outcome=outcome,
    )
