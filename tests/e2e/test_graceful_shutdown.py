"""Stopping an instance answers what is in flight and leaves discovery first."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg

from tests.conftest import NOWPAYMENTS_SECRET, StartIngest
from tests.support.ipn import ipn_body, signed_headers


async def test_a_request_in_flight_at_shutdown_is_committed_and_answered(
    start_ingest: StartIngest, database_url: str
) -> None:
    """SIGTERM during a commit still gives the provider its 200 and the row."""
    service = await start_ingest()
    assert service.sd_file is not None and service.sd_file.exists()
    blocker = await asyncpg.connect(database_url)
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("LOCK TABLE webhook_ingest.deliveries IN EXCLUSIVE MODE")

    body = ipn_body(payment_id=777)
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            session.post(
                f"{service.url}/webhooks/nowpayments/ipn",
                data=body,
                headers=signed_headers(NOWPAYMENTS_SECRET, body),
            )
        )
        await asyncio.sleep(0.3)
        assert not request.done()

        stopping = asyncio.create_task(service.stop())
        await asyncio.sleep(0.3)
        assert not service.sd_file.exists()
        assert not stopping.done()

        await transaction.rollback()
        response = await request
        assert response.status == 200
        assert await response.json() == {"status": "accepted"}
        await stopping

    stored = await blocker.fetchval(
        "SELECT count(*) FROM webhook_ingest.deliveries WHERE reference = '777'"
    )
    await blocker.close()
    assert stored == 1


async def test_a_stopped_instance_refuses_new_connections(
    start_ingest: StartIngest,
) -> None:
    """After stop nothing listens on its port any more."""
    service = await start_ingest()
    await service.stop()

    async with aiohttp.ClientSession() as session:
        try:
            await session.get(f"{service.url}/healthz")
        except aiohttp.ClientConnectionError:
            return
    raise AssertionError("the stopped instance still answered")
