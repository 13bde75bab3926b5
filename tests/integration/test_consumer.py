"""Consumers handle each event once, retry with growing delays, park poison."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import pytest

from contracts.envelope import Envelope
from shared.consumer import ATTEMPTS_HEADER, ERROR_HEADER, EventConsumer
from shared.db import Connection
from shared.outbox import serialise
from tests.integration.test_outbox_relay import ipn_event
from tests.support.runtime import BareRuntime, bare_runtime

ROUTED = "webhook.nowpayments.received"
HANDLED_TABLE = "CREATE TABLE handled (event_id uuid, payment_id text)"


class FlakyHandler:
    """Records each event in the business table; fails the first N calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.call_times: list[float] = []

    async def __call__(self, connection: Connection, envelope: Envelope) -> None:
        self.calls += 1
        self.call_times.append(asyncio.get_running_loop().time())
        await connection.execute(
            "INSERT INTO handled VALUES ($1, $2)",
            envelope.id,
            envelope.data["payment_id"],
        )
        if self.calls <= self.failures:
            raise RuntimeError(f"failure {self.calls} of {self.failures}")


@pytest.fixture
async def runtime(
    database_url: str, amqp_url: str, tmp_path: Path
) -> AsyncIterator[BareRuntime]:
    async with bare_runtime(database_url, amqp_url, tmp_path, HANDLED_TABLE) as rt:
        yield rt


async def consume(
    runtime: BareRuntime, handler: FlakyHandler, delays: tuple[float, ...] = (0.2, 0.6)
) -> EventConsumer:
    consumer = EventConsumer(
        runtime.broker,
        runtime.pool,
        runtime.metrics,
        queue=f"test.{uuid.uuid4().hex[:8]}",
        routing_keys=[ROUTED],
        handler=handler,
        retry_delays=delays,
    )
    await consumer.start()
    assert await consumer.wait_consuming(timeout=10)
    return consumer


async def publish(runtime: BareRuntime, envelope: Envelope) -> None:
    await runtime.broker.publish(
        envelope.type, serialise(envelope), message_id=str(envelope.id)
    )


def consumed(
    runtime: BareRuntime, queue: str, outcome: str, kind: str = ROUTED
) -> float:
    counter = runtime.metrics.events_consumed.labels(
        queue=queue, type=kind, outcome=outcome
    )
    return float(counter._value.get())


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        # A counter has no event to await, so this polls it.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def queue_depth(runtime: BareRuntime, name: str) -> int:
    connection = runtime.broker.connection
    assert connection is not None
    async with connection.channel() as channel:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def handled_rows(runtime: BareRuntime) -> int:
    return int(await runtime.pool.fetchval("SELECT count(*) FROM handled"))


async def test_an_event_delivered_three_times_is_handled_once(
    runtime: BareRuntime,
) -> None:
    """The inbox turns redeliveries of one event id into acknowledged no-ops."""
    handler = FlakyHandler()
    consumer = await consume(runtime, handler)
    event = ipn_event(7)

    for _ in range(3):
        await publish(runtime, event)
    await wait_until(lambda: consumed(runtime, consumer.queue_name, "duplicate") == 2)
    await consumer.stop()

    assert handler.calls == 1
    assert consumed(runtime, consumer.queue_name, "ok") == 1
    assert await handled_rows(runtime) == 1
    assert await queue_depth(runtime, consumer.queue_name) == 0


async def test_a_failing_handler_is_retried_with_growing_delays_then_succeeds(
    runtime: BareRuntime,
) -> None:
    """Each failure rolls back its work and waits longer before the next try."""
    handler = FlakyHandler(failures=2)
    consumer = await consume(runtime, handler, delays=(0.2, 0.6))

    await publish(runtime, ipn_event(8))
    await wait_until(lambda: consumed(runtime, consumer.queue_name, "ok") == 1)
    await consumer.stop()

    assert handler.calls == 3
    assert consumed(runtime, consumer.queue_name, "retry") == 2
    first_wait = handler.call_times[1] - handler.call_times[0]
    second_wait = handler.call_times[2] - handler.call_times[1]
    assert 0.15 < first_wait < second_wait
    assert second_wait >= 0.5
    assert await handled_rows(runtime) == 1


async def test_an_event_that_keeps_failing_lands_in_the_dead_letter_queue(
    runtime: BareRuntime,
) -> None:
    """After the last retry the message is parked with its error, not lost."""
    handler = FlakyHandler(failures=100)
    consumer = await consume(runtime, handler, delays=(0.1, 0.2))

    await publish(runtime, ipn_event(9))
    await wait_until(lambda: consumed(runtime, consumer.queue_name, "dead_letter") == 1)
    await consumer.stop()

    assert handler.calls == 3
    assert await handled_rows(runtime) == 0
    parked = await take_one(runtime, consumer.dead_letter_queue)
    assert parked.headers[ATTEMPTS_HEADER] == 2
    assert "failure 3 of 100" in str(parked.headers[ERROR_HEADER])


async def test_a_message_that_cannot_be_parsed_is_parked_at_once(
    runtime: BareRuntime,
) -> None:
    """Poison is counted and dead-lettered without a single retry."""
    handler = FlakyHandler()
    consumer = await consume(runtime, handler)

    await runtime.broker.publish(ROUTED, b"{not json", message_id="poison-1")
    await wait_until(lambda: consumed(runtime, consumer.queue_name, "dead_letter") == 1)
    await consumer.stop()

    assert handler.calls == 0
    assert consumed(runtime, consumer.queue_name, "retry") == 0
    parked = await take_one(runtime, consumer.dead_letter_queue)
    assert parked.body == b"{not json"
    assert "unreadable envelope" in str(parked.headers[ERROR_HEADER])


async def take_one(
    runtime: BareRuntime, queue_name: str
) -> aio_pika.abc.AbstractIncomingMessage:
    connection = runtime.broker.connection
    assert connection is not None
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, passive=True)
    message = await queue.get(no_ack=True, fail=True)
    assert message is not None
    await channel.close()
    return message
