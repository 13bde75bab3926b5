"""Webhooks survive the broker or the database going away; nothing lost or doubled."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import NOWPAYMENTS_SECRET, StartIngest
from tests.support import infra
from tests.support.events import EventTap
from tests.support.ipn import ipn_body, signed_headers
from tests.support.metrics import scrape, value
from tests.support.tcp_proxy import TcpProxy

ROUTED = "webhook.nowpayments.received"


async def post_ipns(url: str, payment_ids: range) -> list[tuple[int, dict[str, str]]]:
    async with aiohttp.ClientSession() as session:

        async def post(payment_id: int) -> tuple[int, dict[str, str]]:
            body = ipn_body(payment_id=payment_id)
            async with session.post(
                f"{url}/webhooks/nowpayments/ipn",
                data=body,
                headers=signed_headers(NOWPAYMENTS_SECRET, body),
            ) as response:
                return response.status, await response.json()

        return list(await asyncio.gather(*(post(n) for n in payment_ids)))


async def test_webhooks_are_accepted_while_the_broker_is_down_and_published_once_back(
    start_ingest: StartIngest, amqp_url: str, vhost: str, amqp_proxy: TcpProxy
) -> None:
    """The outbox holds the events until RabbitMQ returns, then each goes once."""
    amqp_proxy.go_down()
    service = await start_ingest(
        amqp_url=infra.amqp_url(vhost, f"127.0.0.1:{amqp_proxy.port}")
    )

    async with EventTap(amqp_url, [ROUTED]) as tap:
        answers = await post_ipns(service.url, range(100, 120))
        assert answers == [(200, {"status": "accepted"})] * 20
        backlog = await service.runtime.require_pool().fetchval(
            "SELECT count(*) FROM outbox"
        )
        assert backlog == 20
        await asyncio.sleep(0.5)
        assert tap.messages == []

        amqp_proxy.come_up()
        envelopes = await tap.wait_for(20, timeout=20)
        await asyncio.sleep(0.5)

    ids = sorted(int(e["data"]["payment_id"]) for e in tap.envelopes())
    assert ids == list(range(100, 120))
    assert len(envelopes) == 20
    assert (
        await service.runtime.require_pool().fetchval("SELECT count(*) FROM outbox")
        == 0
    )


async def test_a_broker_lost_mid_run_reconnects_and_delivers_what_waited(
    start_ingest: StartIngest,
    amqp_url: str,
    vhost: str,
    amqp_proxy: TcpProxy,
    metrics_token: str,
) -> None:
    """Cutting an open connection is survived without a restart."""
    service = await start_ingest(
        amqp_url=infra.amqp_url(vhost, f"127.0.0.1:{amqp_proxy.port}")
    )
    broker = service.runtime.broker
    assert broker is not None and await broker.wait_connected(timeout=10)

    async with EventTap(amqp_url, [ROUTED]) as tap:
        await post_ipns(service.url, range(200, 205))
        await tap.wait_for(5)

        amqp_proxy.go_down()
        answers = await post_ipns(service.url, range(205, 215))
        assert all(status == 200 for status, _ in answers)
        samples = await scrape(service.url, metrics_token)
        assert value(samples, "bitloot_broker_connected") == 0

        amqp_proxy.come_up()
        await tap.wait_for(15, timeout=30)
        await asyncio.sleep(0.5)

    ids = sorted(int(e["data"]["payment_id"]) for e in tap.envelopes())
    assert ids == list(range(200, 215))


async def test_a_webhook_is_refused_with_503_while_the_database_is_down(
    start_ingest: StartIngest,
    database_url: str,
    amqp_url: str,
    postgres_proxy: TcpProxy,
) -> None:
    """No 200 without a commit; once back, the retried delivery is published."""
    proxied = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{postgres_proxy.port}")
    service = await start_ingest(database_url=proxied)

    postgres_proxy.go_down()
    await asyncio.sleep(0.5)  # let the relay meet the outage on its next poll
    [(status, answer)] = await post_ipns(service.url, range(300, 301))
    assert status == 503
    assert answer["error"] == "storage_unavailable"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{service.url}/readyz") as ready,
    ):
        assert ready.status == 503
        assert "database" in (await ready.json())["failing"]

    postgres_proxy.come_up()
    async with EventTap(amqp_url, [ROUTED]) as tap:
        async with asyncio.timeout(20):
            while True:
                [(status, answer)] = await post_ipns(service.url, range(300, 301))
                if status == 200:
                    break
                await asyncio.sleep(0.2)
        assert answer == {"status": "accepted"}
        envelopes = await tap.wait_for(1, timeout=15)
    assert envelopes[0]["data"]["payment_id"] == "300"
