"""A signed IPN travels from HTTP to the broker; its counters move in /metrics."""

from __future__ import annotations

import aiohttp

from tests.conftest import NOWPAYMENTS_SECRET, StartIngest
from tests.support.events import EventTap
from tests.support.ipn import ipn_body, signed_headers
from tests.support.metrics import Samples, scrape_until, value
from tests.support.webhooks import deliveries


async def test_a_signed_ipn_is_accepted_and_published_once(
    start_ingest: StartIngest, amqp_url: str, metrics_token: str
) -> None:
    """The provider gets 200 accepted and one envelope reaches bitloot.events."""
    service = await start_ingest()
    body = ipn_body(payment_id=42, status="partially_paid", actually_paid=1e-7)

    async with EventTap(amqp_url, ["webhook.nowpayments.received"]) as tap:
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                f"{service.url}/webhooks/nowpayments/ipn",
                data=body,
                headers={
                    **signed_headers(NOWPAYMENTS_SECRET, body),
                    "X-Request-ID": "req-42",
                },
            )
            assert response.status == 200
            assert await response.json() == {"status": "accepted"}
        envelopes = await tap.wait_for(1)

    envelope = envelopes[0]
    assert envelope["type"] == "webhook.nowpayments.received"
    assert envelope["producer"] == "webhook-ingest"
    assert envelope["correlation_id"] == "req-42"
    assert envelope["data"]["payment_id"] == "42"
    assert envelope["data"]["payment_status"] == "partially_paid"
    assert envelope["data"]["body"]["actually_paid"] == 1e-7
    assert tap.messages[0].delivery_mode == 2

    def published(samples: Samples) -> float:
        return value(
            samples,
            "bitloot_events_published_total",
            type="webhook.nowpayments.received",
            outcome="ok",
        )

    samples = await scrape_until(service.url, metrics_token, lambda s: published(s) > 0)
    assert published(samples) == 1
    assert deliveries(samples, "accepted") == 1
