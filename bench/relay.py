"""Outbox relay throughput: stage rows, run ``OutboxRelay`` in-process, time it.

Each run gets a fresh schema, stages ``rows`` envelopes of the event
webhook-ingest publishes with ``add_to_outbox`` (before the relay starts, so
it only publishes), then starts the relay and times it until the outbox is
empty. A durable queue bound to the routing key makes every message routable;
its depth must then equal ``rows``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.bodies import ipn_body
from bench.infra import BenchError, queue_depth
from contracts.envelope import Envelope, wrap
from contracts.webhooks import NowPaymentsIpnReceived
from shared.broker import Broker
from shared.db import create_pool, discover_migrations, migrate
from shared.metrics import ServiceMetrics
from shared.outbox import OutboxRelay, add_to_outbox

MIGRATIONS = Path(__file__).resolve().parent.parent / (
    "services/webhook_ingest/migrations"
)
ROUTING_KEY = NowPaymentsIpnReceived.event_type
POLL_SECONDS = 0.02
TIMEOUT_SECONDS = 90.0


@dataclass(frozen=True)
class RelayResult:
    batch_size: int
    rows: int
    seconds: float
    queued: int
    left: int
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_message(self) -> float:
        """This process's CPU time (relay, broker and pool) per message."""
        return 1e6 * self.cpu_seconds / self.rows if self.rows else 0.0


def envelopes(count: int) -> list[Envelope]:
    """Envelopes as webhook-ingest builds them for accepted IPNs."""
    now = datetime.now(UTC)
    body = json.loads(ipn_body(0))
    result = []
    for index in range(count):
        data = NowPaymentsIpnReceived(
            delivery_id=uuid.uuid4(),
            received_at=now,
            payment_id=str(index),
            payment_status="finished",
            body={**body, "payment_id": index},
        )
        result.append(wrap(data, "bench", str(uuid.uuid4()), now))
    return result


async def _outbox_size(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT count(*) FROM outbox"))


async def relay_throughput(
    dsn: str, amqp_url: str, queue: str, batch_size: int, rows: int
) -> RelayResult:
    schema = f"bench_relay_{batch_size}"
    await migrate(dsn, schema, discover_migrations(MIGRATIONS))
    await queue_depth(amqp_url, queue, purge=True)
    pool = await create_pool(dsn, schema)
    broker = Broker(amqp_url)
    relay: OutboxRelay | None = None
    watcher = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        async with pool.acquire() as connection, connection.transaction():
            await add_to_outbox(connection, envelopes(rows))
        await broker.start()
        if not await broker.wait_connected(timeout=10.0):
            raise BenchError("the relay's broker did not connect to RabbitMQ")
        relay = OutboxRelay(
            pool,
            dsn,
            schema,
            broker,
            ServiceMetrics("bench-relay"),
            batch_size=batch_size,
        )
        started = time.perf_counter()
        cpu_started = time.process_time()
        await relay.start()
        left = rows
        while left and time.perf_counter() - started < TIMEOUT_SECONDS:
            await asyncio.sleep(POLL_SECONDS)
            left = await _outbox_size(watcher)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    finally:
        if relay is not None:
            await relay.stop()
        await broker.close()
        await watcher.close()
        await pool.close()
    queued = await queue_depth(amqp_url, queue, purge=True)
    return RelayResult(batch_size, rows, seconds, queued, left, cpu_seconds)
