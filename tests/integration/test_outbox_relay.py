"""The relay publishes committed outbox rows with confirms and keeps failures."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

from contracts.envelope import Envelope, wrap
from contracts.webhooks import NowPaymentsIpnReceived
from shared.outbox import OutboxRelay, add_to_outbox
from tests.support.events import EventTap
from tests.support.runtime import SCHEMA, BareRuntime, bare_runtime

ROUTED = "webhook.nowpayments.received"


def ipn_event(payment_id: int) -> Envelope:
    data = NowPaymentsIpnReceived(
        delivery_id=uuid.uuid4(),
        received_at=datetime.now(UTC),
        payment_id=str(payment_id),
        payment_status="waiting",
        body={"payment_id": payment_id, "payment_status": "waiting"},
    )
    return wrap(data, "test", f"corr-{payment_id}")


def unroutable_event() -> Envelope:
    return ipn_event(0).model_copy(update={"type": "nobody.listens.here"})


def relay_for(runtime: BareRuntime, batch_size: int = 50) -> OutboxRelay:
    return OutboxRelay(
        runtime.pool,
        runtime.dsn,
        SCHEMA,
        runtime.broker,
        runtime.metrics,
        poll_seconds=30,
        batch_size=batch_size,
        publish_timeout=5,
    )


async def outbox_rows(runtime: BareRuntime) -> list[dict[str, object]]:
    rows = await runtime.pool.fetch(
        "SELECT routing_key, attempts, last_error FROM outbox ORDER BY seq"
    )
    return [dict(row) for row in rows]


async def test_a_committed_event_is_published_on_notify_and_leaves_the_outbox(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    """NOTIFY wakes the relay at once; the poll interval here is 30 s."""
    async with (
        bare_runtime(database_url, amqp_url, tmp_path) as runtime,
        EventTap(amqp_url, [ROUTED]) as tap,
    ):
        relay = relay_for(runtime)
        await relay.start()
        await asyncio.sleep(0.2)  # let the relay's first, empty pass finish
        event = ipn_event(1)
        async with runtime.pool.acquire() as connection, connection.transaction():
            await add_to_outbox(connection, [event])

        envelopes = await tap.wait_for(1, timeout=5)
        await relay.stop()

        assert envelopes[0]["id"] == str(event.id)
        assert tap.messages[0].message_id == str(event.id)
        assert await outbox_rows(runtime) == []


async def test_a_rolled_back_transaction_publishes_nothing(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    """The event exists only if the change it records committed."""
    async with (
        bare_runtime(database_url, amqp_url, tmp_path) as runtime,
        EventTap(amqp_url, [ROUTED]) as tap,
    ):
        try:
            async with runtime.pool.acquire() as connection, connection.transaction():
                await add_to_outbox(connection, [ipn_event(2)])
                raise RuntimeError("the business change failed")
        except RuntimeError:
            pass
        relay = relay_for(runtime)
        assert await relay.drain() == 0
        await asyncio.sleep(0.3)
        assert tap.messages == []


async def test_an_unroutable_event_stays_in_the_outbox_to_be_retried(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    """A publish the broker returns is a failure: the row stays, with its error."""
    async with bare_runtime(database_url, amqp_url, tmp_path) as runtime:
        async with runtime.pool.acquire() as connection:
            await add_to_outbox(connection, [unroutable_event()])
        relay = relay_for(runtime)

        assert await relay.drain() == 0

        rows = await outbox_rows(runtime)
        assert len(rows) == 1
        assert rows[0]["attempts"] == 1
        assert "unroutable" in str(rows[0]["last_error"])
        assert runtime.metrics.outbox_backlog._value.get() == 1
        failures = runtime.metrics.events_published.labels(
            type="nobody.listens.here", outcome="retry"
        )
        assert failures._value.get() == 1


async def test_many_events_publish_in_batches_each_exactly_once(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    """Concurrent confirms within a batch; every event arrives, none twice."""
    events = [ipn_event(n) for n in range(500)]
    async with (
        bare_runtime(database_url, amqp_url, tmp_path) as runtime,
        EventTap(amqp_url, [ROUTED]) as tap,
    ):
        async with runtime.pool.acquire() as connection:
            await add_to_outbox(connection, events)

        assert await relay_for(runtime, batch_size=64).drain() == 500

        envelopes = await tap.wait_for(500)
        await asyncio.sleep(0.3)
        assert sorted(e["id"] for e in tap.envelopes()) == sorted(
            str(e.id) for e in events
        )
        assert len(envelopes) == 500
        assert await outbox_rows(runtime) == []


async def test_two_relays_on_one_outbox_never_publish_a_row_twice(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    """Rows are claimed with SKIP LOCKED, so instances share the work."""
    events = [ipn_event(n) for n in range(300)]
    async with (
        bare_runtime(database_url, amqp_url, tmp_path) as runtime,
        EventTap(amqp_url, [ROUTED]) as tap,
    ):
        async with runtime.pool.acquire() as connection:
            await add_to_outbox(connection, events)

        counts = await asyncio.gather(
            relay_for(runtime, 20).drain(), relay_for(runtime, 20).drain()
        )

        await tap.wait_for(300)
        await asyncio.sleep(0.3)
        assert sum(counts) == 300
        assert len(tap.messages) == 300
