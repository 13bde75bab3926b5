"""The transactional outbox: events commit with the change they record, then leave.

A business transaction calls :func:`add_to_outbox` on its own connection, so the
event exists exactly when the change does. :class:`OutboxRelay` publishes the
rows after commit, woken by ``NOTIFY`` and by a poll, and deletes a row only
once the broker has confirmed it. Delivery is at least once: a crash between the
confirm and the delete publishes the row again, and consumers dedupe by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import structlog
from pydantic_core import PydanticSerializationError

from contracts.envelope import Envelope
from shared.broker import Broker, PublishError
from shared.db import Connection
from shared.metrics import ServiceMetrics

logger = structlog.get_logger(__name__)

MAX_RETRY_DELAY_SECONDS = 60.0


def serialise(envelope: Envelope) -> bytes:
    """The exact bytes the relay will publish for an envelope."""
    try:
        return envelope.model_dump_json().encode()
    except PydanticSerializationError:
        # Lone surrogates (valid in a provider's JSON, not in UTF-8) cannot be
        # written raw; escaped as \udXXX they are valid JSON, as in JavaScript.
        document = envelope.model_dump(mode="json")
        return json.dumps(document, separators=(",", ":")).encode()


async def add_to_outbox(connection: Connection, envelopes: Iterable[Envelope]) -> None:
    """Stage events in the caller's transaction; they publish once it commits."""
    rows = [(e.id, e.type, serialise(e)) for e in envelopes]
    if not rows:
        return
    await connection.execute(
        """
        INSERT INTO outbox (id, routing_key, body)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[])
        """,
        [row[0] for row in rows],
        [row[1] for row in rows],
        [row[2] for row in rows],
    )


def retry_delay(attempts: int) -> float:
    """Seconds to wait before the next try after ``attempts`` failed ones."""
    return float(min(MAX_RETRY_DELAY_SECONDS, 2 ** max(0, attempts - 1)))


class OutboxRelay:
    """Publishes committed outbox rows, many in flight at once, with confirms."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        schema: str,
        broker: Broker,
        metrics: ServiceMetrics,
        *,
        poll_seconds: float = 1.0,
        batch_size: int = 200,
        publish_timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._channel = f"bitloot_outbox_{schema}"
        self._schema = schema
        self._broker = broker
        self._metrics = metrics
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._publish_timeout = publish_timeout
        self._wake = asyncio.Event()
        self._stopping = False
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Finish the batch in flight, then stop; unpublished rows stay."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._close_listener()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            await self._ensure_listener()
            self._wake.clear()
            try:
                await self.drain()
            except Exception as error:
                # Whatever failed, the relay must live to try again: a dead relay
                # would leave every later event in the outbox without a word.
                self._metrics.database_connected.set(0)
                logger.warning(
                    "outbox_relay_failed", error=f"{type(error).__name__}: {error}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)

    async def drain(self) -> int:
        """Publish every due row; return how many the broker confirmed."""
        confirmed = 0
        while not self._stopping and self._broker.is_connected():
            done, claimed = await self._publish_batch()
            confirmed += done
            if claimed < self._batch_size or done == 0:
                break
        await self._measure_backlog()
        return confirmed

    async def _publish_batch(self) -> tuple[int, int]:
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                """
                SELECT id, routing_key, body, attempts
                FROM outbox
                WHERE next_attempt_at <= clock_timestamp()
                ORDER BY next_attempt_at, seq
                LIMIT $1
                FOR UPDATE SKIP LOCKED
                """,
                self._batch_size,
            )
            if not rows:
                return 0, 0

            outcomes = await self._publish_all(rows)
            published = [r["id"] for r, o in zip(rows, outcomes, strict=True) if not o]
            failed = [(r, o) for r, o in zip(rows, outcomes, strict=True) if o]

            if published:
                await connection.execute(
                    "DELETE FROM outbox WHERE id = ANY($1::uuid[])", published
                )
            if failed:
                await self._postpone(connection, failed)

        counts = Counter(
            (row["routing_key"], "retry" if outcome else "ok")
            for row, outcome in zip(rows, outcomes, strict=True)
        )
        for (routing_key, result), count in counts.items():
            self._metrics.events_published.labels(type=routing_key, outcome=result).inc(
                count
            )
        if failed:
            logger.warning(
                "outbox_publish_failed",
                failed=len(failed),
                published=len(published),
                error=str(failed[0][1]),
            )
        return len(published), len(rows)

    async def _publish_all(
        self, rows: list[asyncpg.Record]
    ) -> list[BaseException | None]:
        """Publish rows together; the error of each that was not confirmed in time."""
        tasks = [asyncio.ensure_future(self._publish_row(row)) for row in rows]
        _, late = await asyncio.wait(tasks, timeout=self._publish_timeout)
        for task in late:
            task.cancel()
        unconfirmed = PublishError(f"no confirm within {self._publish_timeout}s")
        return [unconfirmed if task in late else task.result() for task in tasks]

    async def _publish_row(self, row: asyncpg.Record) -> BaseException | None:
        try:
            await self._broker.publish(
                row["routing_key"],
                row["body"],
                message_id=str(row["id"]),
                timeout=None,
            )
        except PublishError as error:
            return error
        return None

    async def _postpone(
        self,
        connection: Connection,
        failed: Sequence[tuple[asyncpg.Record, BaseException | Any]],
    ) -> None:
        await connection.execute(
            """
            UPDATE outbox AS o
            SET attempts = o.attempts + 1,
                next_attempt_at = clock_timestamp() + f.delay * interval '1 second',
                last_error = f.error
            FROM unnest($1::uuid[], $2::float8[], $3::text[]) AS f(id, delay, error)
            WHERE o.id = f.id
            """,
            [row["id"] for row, _ in failed],
            [retry_delay(row["attempts"] + 1) for row, _ in failed],
            [str(error)[:500] for _, error in failed],
        )

    async def _measure_backlog(self) -> None:
        async with self._pool.acquire() as connection:
            row = await connection.fetchrow(
                """
                SELECT count(*) AS backlog,
                       coalesce(extract(epoch FROM now() - min(created_at)), 0)
                           AS oldest
                FROM outbox
                """
            )
        assert row is not None
        self._metrics.outbox_backlog.set(row["backlog"])
        self._metrics.outbox_oldest_age.set(float(row["oldest"]))
        self._metrics.database_connected.set(1)

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            listener = await asyncpg.connect(self._dsn, timeout=5)
            await listener.add_listener(self._channel, self._on_notify)
        except Exception as error:
            logger.warning(
                "outbox_listen_failed", error=f"{type(error).__name__}: {error}"
            )
            return
        self._listener = listener

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _close_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        self._listener = None
