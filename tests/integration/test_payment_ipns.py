"""The payment state machine fed by webhook events on the real broker and database.

Events are published to the exchange here as webhook-ingest's relay publishes
them; the end-to-end tests send signed IPNs through webhook-ingest itself.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import aio_pika
import pytest

from services.payment.bootstrap import IPN_QUEUE, KINGUIN_QUEUE
from shared.service import RunningService
from tests.conftest import StartPayment
from tests.support.events import EventTap
from tests.support.metrics import Samples, scrape_until, value
from tests.support.payments import (
    consumed,
    get_order,
    ipn_event,
    ipns,
    kinguin_event,
    place_order,
    publish,
    underpaid,
    wait_for_order,
)
from tests.support.webhooks import fetch_rows

PAYMENT_EVENTS = [
    "payment.completed",
    "payment.underpaid",
    "payment.failed",
    "payment.expired",
]
IPN = "webhook.nowpayments.received"


async def new_order(payment: RunningService) -> dict[str, Any]:
    status, order = await place_order(payment.url)
    assert status == 201, order
    return order


def pay_amount(order: dict[str, Any]) -> float:
    return float(order["payment"]["pay_amount"])


async def handled(
    payment: RunningService, token: str, count: int, queue: str = IPN_QUEUE
) -> Samples:
    """Wait until the queue's consumer has finished ``count`` events."""
    event_type = IPN if queue == IPN_QUEUE else "webhook.kinguin.received"

    def done(samples: Samples) -> bool:
        return (
            sum(
                consumed(samples, queue, event_type, outcome)
                for outcome in ("ok", "duplicate", "dead_letter")
            )
            >= count
        )

    return await scrape_until(payment.url, token, done)


@pytest.mark.parametrize(
    ("statuses", "paid_ratio", "payment_status", "order_status", "events"),
    [
        (
            ["confirming", "confirmed", "sending", "finished"],
            1.0,
            "finished",
            "paid",
            ["payment.completed"],
        ),
        (
            ["confirming", "partially_paid"],
            0.5,
            "partially_paid",
            "underpaid",
            ["payment.underpaid"],
        ),
        (["confirming", "failed"], 0, "failed", "failed", ["payment.failed"]),
        (["expired"], 0, "expired", "expired", ["payment.expired"]),
        (
            ["confirming", "finished", "refunded"],
            1.0,
            "refunded",
            "refunded",
            ["payment.completed"],
        ),
    ],
)
async def test_each_nowpayments_status_path_ends_where_the_provider_says(
    start_payment: StartPayment,
    amqp_url: str,
    metrics_token: str,
    statuses: list[str],
    paid_ratio: float,
    payment_status: str,
    order_status: str,
    events: list[str],
) -> None:
    """A payment's IPNs move payment and order to their last status, with one event."""
    payment = await start_payment()
    order = await new_order(payment)
    paid = round(pay_amount(order) * paid_ratio, 8)

    async with EventTap(amqp_url, PAYMENT_EVENTS) as tap:
        for status in statuses:
            await publish(amqp_url, ipn_event(order, status, paid))
            await wait_for_order(payment.url, order["order_id"], status)
        await asyncio.sleep(0.3)  # let any wrong extra event arrive

    final = await wait_for_order(payment.url, order["order_id"], payment_status)
    assert final["status"] == order_status
    assert [h["to"] for h in final["history"] if h["subject"] == "payment"] == [
        "waiting",
        *statuses,
    ]
    assert all(
        h["delivery_id"] for h in final["history"] if h["to"] != "waiting" and h["from"]
    )
    assert [e["type"] for e in tap.envelopes()] == events
    samples = await handled(payment, metrics_token, len(statuses))
    assert ipns(samples, "applied") == len(statuses)


async def test_a_finished_payment_stays_finished_when_confirming_arrives_late(
    start_payment: StartPayment, amqp_url: str, metrics_token: str
) -> None:
    """An IPN that would move a payment backwards is ignored and counted stale."""
    payment = await start_payment()
    order = await new_order(payment)

    await publish(amqp_url, ipn_event(order, "finished", pay_amount(order)))
    await wait_for_order(payment.url, order["order_id"], "finished")
    await publish(amqp_url, ipn_event(order, "confirming", pay_amount(order)))
    samples = await handled(payment, metrics_token, 2)

    _, final = await get_order(payment.url, order["order_id"])
    assert (final["payment"]["status"], final["status"]) == ("finished", "paid")
    assert ipns(samples, "stale") == 1
    assert [h["to"] for h in final["history"] if h["subject"] == "payment"] == [
        "waiting",
        "finished",
    ]


async def test_an_underpaid_order_is_counted_once_when_its_ipn_comes_five_times(
    start_payment: StartPayment, amqp_url: str, metrics_token: str
) -> None:
    """Five deliveries of partially_paid: one counter step, one payment.underpaid."""
    payment = await start_payment()
    order = await new_order(payment)
    paid = round(pay_amount(order) / 2, 8)

    async with EventTap(amqp_url, PAYMENT_EVENTS) as tap:
        await publish(
            amqp_url, *[ipn_event(order, "partially_paid", paid) for _ in range(5)]
        )
        samples = await handled(payment, metrics_token, 5)
        await asyncio.sleep(0.3)

    assert underpaid(samples, "btc") == 1
    assert (ipns(samples, "applied"), ipns(samples, "unchanged")) == (1, 4)
    assert [e["type"] for e in tap.envelopes()] == ["payment.underpaid"]
    data = tap.envelopes()[0]["data"]
    assert data["asset"] == "btc"
    assert Decimal(data["paid_amount"]) == Decimal(str(paid))
    assert Decimal(data["missing_amount"]) == Decimal(
        order["payment"]["pay_amount"]
    ) - Decimal(str(paid))
    _, final = await get_order(payment.url, order["order_id"])
    assert final["status"] == "underpaid"


async def test_amounts_read_back_from_the_database_are_written_as_sent(
    start_payment: StartPayment, amqp_url: str, metrics_token: str
) -> None:
    """0.0001 stays "0.0001" in events and history, not the column's 18 places."""
    payment = await start_payment()
    order = await new_order(payment)

    async with EventTap(amqp_url, ["payment.underpaid"]) as tap:
        # The amount is stored at confirming; partially_paid reads it back.
        await publish(amqp_url, ipn_event(order, "confirming", 0.0001))
        await handled(payment, metrics_token, 1)
        await publish(amqp_url, ipn_event(order, "partially_paid", 0.0001))
        await handled(payment, metrics_token, 2)
        events = await tap.wait_for(1)

    data = events[0]["data"]
    assert (data["paid_amount"], data["expected_amount"]) == (
        "0.0001",
        order["payment"]["pay_amount"],
    )
    _, final = await get_order(payment.url, order["order_id"])
    details = [h["detail"] for h in final["history"] if h["delivery_id"]]
    assert [d.get("actually_paid", d.get("paid")) for d in details] == [
        "0.0001",
        "0",
        "0.0001",
        "0.0001",
    ]


async def test_an_event_redelivered_after_commit_but_before_ack_changes_nothing(
    start_payment: StartPayment, amqp_url: str, metrics_token: str, database_url: str
) -> None:
    """The inbox row committed with the change makes the redelivery a duplicate."""
    payment = await start_payment()
    order = await new_order(payment)
    event = ipn_event(order, "partially_paid", round(pay_amount(order) / 3, 8))
    consumer = next(c for c in payment.runtime.consumers if c.queue_name == IPN_QUEUE)

    history_query = "SELECT count(*) AS n FROM payment.order_history"

    async with EventTap(amqp_url, ["payment.underpaid"]) as tap:
        # The handler commits, then the process "dies" before acknowledging...
        assert await consumer.handle_once(event)
        history = (await fetch_rows(database_url, history_query))[0]["n"]
        # ...so the broker delivers the same message again.
        await publish(amqp_url, event)
        samples = await handled(payment, metrics_token, 1)
        await tap.wait_for(1)
        await asyncio.sleep(0.3)  # time for a wrong second event to show up

    assert consumed(samples, IPN_QUEUE, IPN, "duplicate") == 1
    assert consumed(samples, IPN_QUEUE, IPN, "ok") == 0
    assert (await fetch_rows(database_url, history_query))[0]["n"] == history
    assert len(tap.envelopes()) == 1
    _, final = await get_order(payment.url, order["order_id"])
    assert final["status"] == "underpaid"


async def test_a_repeated_deposit_completes_an_underpaid_order(
    start_payment: StartPayment, amqp_url: str, metrics_token: str
) -> None:
    """A child payment naming its parent adds its money; the order becomes paid."""
    payment = await start_payment()
    order = await new_order(payment)
    asked = Decimal(order["payment"]["pay_amount"])
    first = (asked / 2).quantize(Decimal("0.00000001"))
    rest = asked - first

    async with EventTap(amqp_url, PAYMENT_EVENTS) as tap:
        await publish(amqp_url, ipn_event(order, "partially_paid", float(first)))
        await wait_for_order(payment.url, order["order_id"], "partially_paid")
        deposit = ipn_event(
            order,
            "finished",
            float(rest),
            payment_id=5550001111,
            parent_payment_id=int(order["payment"]["payment_id"]),
        )
        await publish(amqp_url, deposit)
        await tap.wait_for(2)

    samples = await handled(payment, metrics_token, 2)
    _, final = await get_order(payment.url, order["order_id"])
    assert final["status"] == "paid"
    assert Decimal(final["payment"]["deposits_paid"]) == rest
    assert [e["type"] for e in tap.envelopes()] == [
        "payment.underpaid",
        "payment.completed",
    ]
    assert Decimal(tap.envelopes()[1]["data"]["paid_amount"]) == asked
    assert underpaid(samples) == 1
    assert ipns(samples, "deposit") == 1


async def test_a_shortfall_within_the_tolerance_counts_as_paid(
    start_payment: StartPayment, amqp_url: str, metrics_token: str
) -> None:
    """partially_paid missing less than the tolerance completes the order."""
    payment = await start_payment(payment_tolerance_ratio=Decimal("0.01"))
    order = await new_order(payment)

    await publish(
        amqp_url, ipn_event(order, "partially_paid", pay_amount(order) * 0.995)
    )
    final = await wait_for_order(payment.url, order["order_id"], "partially_paid")

    samples = await handled(payment, metrics_token, 1)
    assert final["status"] == "paid"
    assert underpaid(samples) == 0


async def test_an_ipn_for_a_payment_this_service_never_opened_is_counted(
    start_payment: StartPayment, amqp_url: str, metrics_token: str
) -> None:
    """Unknown payments change nothing, are acknowledged and counted."""
    payment = await start_payment()
    order = await new_order(payment)
    stranger = ipn_event(order, "finished", 1.0, payment_id=1234567890)

    await publish(amqp_url, stranger)
    samples = await handled(payment, metrics_token, 1)

    assert ipns(samples, "unknown_payment") == 1
    assert consumed(samples, IPN_QUEUE, IPN, "ok") == 1
    _, unchanged = await get_order(payment.url, order["order_id"])
    assert unchanged["payment"]["status"] == "waiting"


async def test_an_ipn_that_cannot_be_read_is_parked_in_the_dead_letter_queue(
    start_payment: StartPayment, amqp_url: str, metrics_token: str
) -> None:
    """An unknown payment_status is not retried: it goes to the .dlq at once."""
    payment = await start_payment()
    order = await new_order(payment)

    await publish(amqp_url, ipn_event(order, "teleported"))
    samples = await handled(payment, metrics_token, 1)

    assert consumed(samples, IPN_QUEUE, IPN, "dead_letter") == 1
    assert consumed(samples, IPN_QUEUE, IPN, "retry") == 0


def order_status(order_id: str, status: str, updated_at: str) -> dict[str, Any]:
    return {
        "orderId": "PHS84FJAG5U",
        "orderExternalId": order_id,
        "status": status,
        "updatedAt": updated_at,
    }


async def test_kinguin_order_status_updates_fulfilment_and_never_goes_back(
    start_payment: StartPayment, amqp_url: str, metrics_token: str
) -> None:
    """A newer updatedAt wins; an older one arriving later is ignored as stale."""
    payment = await start_payment()
    order = await new_order(payment)
    order_id = order["order_id"]

    await publish(
        amqp_url,
        kinguin_event(order_status(order_id, "completed", "2026-12-03T10:05:00+00:00")),
    )
    await handled(payment, metrics_token, 1, KINGUIN_QUEUE)
    await publish(
        amqp_url,
        kinguin_event(order_status(order_id, "processing", "2026-12-03T10:00:00Z")),
        kinguin_event(
            {"productId": "5c9b5f6b2539a4e8f172916a", "updatedAt": "x"},
            "product.update",
        ),
        kinguin_event(
            order_status(
                "00000000-0000-4000-8000-000000000000",
                "completed",
                "2026-12-03T10:00:00Z",
            )
        ),
    )
    samples = await handled(payment, metrics_token, 4, KINGUIN_QUEUE)

    _, final = await get_order(payment.url, order_id)
    assert final["fulfilment"] == {
        "status": "completed",
        "updated_at": "2026-12-03T10:05:00+00:00",
    }
    fulfilment = [h for h in final["history"] if h["subject"] == "fulfilment"]
    assert [(h["from"], h["to"]) for h in fulfilment] == [(None, "completed")]

    def updates(outcome: str) -> float:
        return value(samples, "bitloot_kinguin_order_updates_total", outcome=outcome)

    assert [updates(o) for o in ("applied", "stale", "ignored", "unknown_order")] == [
        1,
        1,
        1,
        1,
    ]


async def test_events_no_service_consumes_land_in_the_event_log_not_the_outbox(
    start_payment: StartPayment, amqp_url: str, database_url: str
) -> None:
    """payment.expired has no consumer, yet leaves the outbox for payment.event-log."""
    payment = await start_payment()
    order = await new_order(payment)

    await publish(amqp_url, ipn_event(order, "expired"))
    await wait_for_order(payment.url, order["order_id"], "expired")

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue("payment.event-log", ensure=True)
        async with asyncio.timeout(10), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                break
    finally:
        await connection.close()
    assert message.routing_key == "payment.expired"
    assert json.loads(message.body)["data"]["order_id"] == order["order_id"]
    # The relay deletes the row just after the broker's confirm.
    query = (
        "SELECT count(*) AS n FROM payment.outbox WHERE routing_key = 'payment.expired'"
    )
    async with asyncio.timeout(5):
        while True:
            if (await fetch_rows(database_url, query))[0]["n"] == 0:
                break
            await asyncio.sleep(0.05)
