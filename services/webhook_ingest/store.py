"""Durable storage of deliveries, with their events staged in the same commit."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg

from contracts.envelope import Envelope
from services.webhook_ingest.domain import Delivery, Outcome
from shared.batching import GroupCommit
from shared.outbox import serialise

# One statement stores a whole batch: rows whose provider event is already
# stored are skipped by the unique key, and only the stored rows stage events.
_RECORD_BATCH = """
WITH incoming AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::bytea[], $7::timestamptz[], $8::uuid[], $9::text[], $10::bytea[]
    ) AS i(id, provider, dedup_key, event_name, reference,
           raw_body, received_at, event_id, routing_key, envelope)
), stored AS (
    INSERT INTO deliveries (id, provider, dedup_key, event_name, reference,
                            raw_body, received_at, event_id)
    SELECT id, provider, dedup_key, event_name, reference,
           raw_body, received_at, event_id
    FROM incoming
    ON CONFLICT (provider, dedup_key) DO NOTHING
    RETURNING id
), staged AS (
    INSERT INTO outbox (id, routing_key, body)
    SELECT i.event_id, i.routing_key, i.envelope
    FROM incoming AS i JOIN stored AS s ON s.id = i.id
)
SELECT id FROM stored
"""


class DeliveryStore:
    """Records deliveries; concurrent requests share one commit."""

    def __init__(
        self, pool: asyncpg.Pool, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self._pool = pool
        self._group: GroupCommit[tuple[Delivery, Envelope, bytes], Outcome] = (
            GroupCommit(self._record_batch, on_batch=on_batch)
        )

    async def record_delivery(self, delivery: Delivery, event: Envelope) -> Outcome:
        """Store a delivery and stage its event; ``duplicate`` if already stored."""
        # Serialised here, so an event that cannot be fails its own request only.
        return await self._group.submit((delivery, event, serialise(event)))

    async def close(self) -> None:
        await self._group.close()

    async def _record_batch(
        self, batch: list[tuple[Delivery, Envelope, bytes]]
    ) -> list[Outcome]:
        columns: list[list[object]] = [[] for _ in range(10)]
        for delivery, event, event_body in batch:
            row = (
                delivery.id,
                delivery.provider.value,
                delivery.dedup_key,
                delivery.event_name,
                delivery.reference,
                delivery.raw_body,
                delivery.received_at,
                event.id,
                event.type,
                event_body,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)

        async with self._pool.acquire() as connection:
            rows = await connection.fetch(_RECORD_BATCH, *columns)

        stored: set[uuid.UUID] = {row["id"] for row in rows}
        return [
            Outcome.ACCEPTED if delivery.id in stored else Outcome.DUPLICATE
            for delivery, _, _ in batch
        ]
