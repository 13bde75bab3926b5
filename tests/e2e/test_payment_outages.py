"""Orders and IPNs survive the database or the broker going away."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import StartPayment
from tests.support import infra
from tests.support.events import EventTap
from tests.support.payments import ipn_event, place_order, publish, wait_for_order
from tests.support.tcp_proxy import TcpProxy
from tests.support.webhooks import fetch_rows


async def test_an_order_during_a_database_outage_gets_503_and_works_once_back(
    postgres_proxy: TcpProxy, start_payment: StartPayment, database_url: str
) -> None:
    """The shopper is told to retry; nothing half-made is left; then it works."""
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{postgres_proxy.port}")
    payment = await start_payment(database_url=proxied)

    postgres_proxy.go_down()
    status, answer = await place_order(payment.url)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{payment.url}/readyz") as ready,
    ):
        readiness = await ready.json()
    postgres_proxy.come_up()

    assert (status, answer["error"]) == (503, "storage_unavailable")
    assert ready.status == 503
    assert "database" in str(readiness)
    assert (await fetch_rows(database_url, "SELECT id FROM payment.orders")) == []
    status, order = await place_order(payment.url)
    assert status == 201, order


async def test_orders_and_ipns_wait_out_a_broker_outage(
    amqp_proxy: TcpProxy, start_payment: StartPayment, amqp_url: str, vhost: str
) -> None:
    """Orders are taken while RabbitMQ is away; events flow both ways once back."""
    payment = await start_payment(
        amqp_url=infra.amqp_url(vhost, f"127.0.0.1:{amqp_proxy.port}")
    )

    async with EventTap(amqp_url, ["payment.created", "payment.underpaid"]) as tap:
        amqp_proxy.go_down()
        status, order = await place_order(payment.url)
        assert status == 201
        # webhook-ingest, on its own connection, publishes an IPN meanwhile.
        paid = float(order["payment"]["pay_amount"]) / 2
        await publish(amqp_url, ipn_event(order, "partially_paid", paid))
        amqp_proxy.come_up()

        final = await wait_for_order(
            payment.url, order["order_id"], "partially_paid", timeout=20
        )
        envelopes = await tap.wait_for(2, timeout=20)

    assert final["status"] == "underpaid"
    assert sorted(e["type"] for e in envelopes) == [
        "payment.created",
        "payment.underpaid",
    ]


async def test_a_service_stops_promptly_while_the_broker_is_away(
    amqp_proxy: TcpProxy, start_payment: StartPayment, vhost: str
) -> None:
    """SIGTERM during an outage must not wait forever for RabbitMQ to return."""
    payment = await start_payment(
        amqp_url=infra.amqp_url(vhost, f"127.0.0.1:{amqp_proxy.port}")
    )
    amqp_proxy.go_down()

    async with asyncio.timeout(20):
        await payment.stop()

    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{payment.url}/healthz")
