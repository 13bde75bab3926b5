"""A bare service runtime for testing the shared parts without a service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.broker import Broker
from shared.db import create_pool, discover_migrations, migrate
from shared.metrics import ServiceMetrics

SCHEMA = "shared_test"


@dataclass
class BareRuntime:
    pool: asyncpg.Pool
    broker: Broker
    metrics: ServiceMetrics
    dsn: str


@asynccontextmanager
async def bare_runtime(
    database_url: str, amqp_url: str, empty_dir: Path, extra_sql: str = ""
) -> AsyncIterator[BareRuntime]:
    """The shared tables (outbox, inbox) in their own schema, and a broker."""
    await migrate(database_url, SCHEMA, discover_migrations(empty_dir))
    pool = await create_pool(database_url, SCHEMA, 1, 5)
    if extra_sql:
        await pool.execute(extra_sql)
    broker = Broker(amqp_url, reconnect_seconds=0.3)
    await broker.start()
    assert await broker.wait_connected(timeout=10)
    try:
        yield BareRuntime(pool, broker, ServiceMetrics("test"), database_url)
    finally:
        await broker.close()
        await pool.close()
