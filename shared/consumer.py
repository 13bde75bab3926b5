"""Consuming events: durable queues, an inbox against redeliveries, retries, a DLQ.

Each consumer owns ``<service>.<purpose>`` bound to its routing keys, plus one
delay queue per retry step (``<queue>.retry.<n>``, whose expired messages flow
back into the queue) and ``<queue>.dlq`` for messages that cannot be handled.
A message is acknowledged only after the handler's transaction has committed,
and the inbox row written in that transaction turns a redelivery into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
import asyncpg
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from contracts.envelope import EXCHANGE, Envelope, describe_invalid
from shared.broker import CLOSE_TIMEOUT_SECONDS, RETRYABLE_BROKER_ERRORS, Broker
from shared.db import Connection
from shared.metrics import ServiceMetrics

logger = structlog.get_logger(__name__)

# What to do once the handler's transaction has committed, such as counting the
# business fact it recorded: never before, and never for a rolled-back attempt.
AfterCommit = Callable[[], None]
EventHandler = Callable[[Connection, Envelope], Awaitable[AfterCommit | None]]
ATTEMPTS_HEADER = "x-bitloot-attempts"
ERROR_HEADER = "x-bitloot-error"
UNKNOWN_TYPE = "unknown"
DEFAULT_RETRY_DELAYS = (1.0, 5.0, 30.0)


class PoisonMessageError(Exception):
    """A message no retry can help: it goes straight to the dead-letter queue."""


class EventConsumer:
    """Feeds one durable queue's events to a handler, each once."""

    def __init__(
        self,
        broker: Broker,
        pool: asyncpg.Pool,
        metrics: ServiceMetrics,
        *,
        queue: str,
        routing_keys: Sequence[str],
        handler: EventHandler,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        prefetch: int = 32,
    ) -> None:
        self.queue_name = queue
        self._broker = broker
        self._pool = pool
        self._metrics = metrics
        self._routing_keys = tuple(routing_keys)
        self._handler = handler
        self._retry_delays = tuple(retry_delays)
        self._prefetch = prefetch
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._consuming = asyncio.Event()
        metrics.prime_consumed(queue, self._routing_keys)

    def retry_queue(self, step: int) -> str:
        return f"{self.queue_name}.retry.{step}"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue_name}.dlq"

    async def start(self) -> None:
        """Begin consuming as soon as the broker is connected."""
        self._task = asyncio.create_task(self._start_when_connected())

    async def wait_consuming(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._consuming.wait(), timeout)
        return self._consuming.is_set()

    async def _start_when_connected(self) -> None:
        while True:
            await self._broker.wait_connected(timeout=3600)
            connection = self._broker.connection
            if connection is None:
                continue
            try:
                channel = await connection.channel(publisher_confirms=True)
                await channel.set_qos(prefetch_count=self._prefetch)
                queue = await self._declare(channel)
                self._consumer_tag = await queue.consume(self._on_message)
            except RETRYABLE_BROKER_ERRORS as error:
                logger.warning(
                    "consumer_start_failed", queue=self.queue_name, error=str(error)
                )
                await asyncio.sleep(1)
                continue
            self._channel, self._queue = channel, queue
            self._consuming.set()
            logger.info("consumer_started", queue=self.queue_name)
            return

    async def _declare(self, channel: AbstractChannel) -> AbstractQueue:
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(self.queue_name, durable=True)
        for key in self._routing_keys:
            await queue.bind(exchange, routing_key=key)
        for step, delay in enumerate(self._retry_delays):
            await channel.declare_queue(
                self.retry_queue(step),
                durable=True,
                arguments={
                    "x-message-ttl": int(delay * 1000),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.queue_name,
                },
            )
        await channel.declare_queue(self.dead_letter_queue, durable=True)
        return queue

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._handle(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        # A retried message comes back routed by queue name, so the type label
        # is read from the envelope, or the message's type property failing that.
        event_type = self._type_label(message.type or message.routing_key or "")
        try:
            envelope = Envelope.model_validate_json(message.body)
        except ValidationError as error:
            reason = f"unreadable envelope: {describe_invalid(error)}"
            await self._dead_letter(message, event_type, reason)
            return
        event_type = self._type_label(envelope.type)

        with structlog.contextvars.bound_contextvars(
            correlation_id=envelope.correlation_id,
            event_id=str(envelope.id),
            event_type=envelope.type,
            queue=self.queue_name,
        ):
            try:
                handled = await self.handle_once(envelope)
            except PoisonMessageError as error:
                await self._dead_letter(message, event_type, str(error))
                return
            except Exception as error:
                logger.warning("event_handler_failed", error=str(error), exc_info=True)
                await self._retry_or_dead_letter(message, event_type, error)
                return

            await message.ack()
            outcome = "ok" if handled else "duplicate"
            self._count(event_type, outcome)
            self._metrics.event_handling.labels(
                queue=self.queue_name, type=event_type
            ).observe(time.perf_counter() - started)
            logger.debug("event_handled", outcome=outcome)

    async def handle_once(self, envelope: Envelope) -> bool:
        """Run the handler in a transaction with the inbox row; False if seen.

        The message is acknowledged only after this returns, so a crash in
        between redelivers an envelope whose inbox row makes it a no-op.
        """
        async with self._pool.acquire() as connection, connection.transaction():
            first = await connection.fetchval(
                """
                INSERT INTO inbox (consumer, event_id, event_type)
                VALUES ($1, $2, $3)
                ON CONFLICT DO NOTHING
                RETURNING true
                """,
                self.queue_name,
                envelope.id,
                envelope.type,
            )
            if not first:
                return False
            after_commit = await self._handler(connection, envelope)
        if after_commit is not None:
            after_commit()
        return True

    async def _retry_or_dead_letter(
        self, message: AbstractIncomingMessage, event_type: str, error: Exception
    ) -> None:
        attempts = _attempts(message) + 1
        if attempts > len(self._retry_delays):
            reason = f"gave up after {attempts} attempts: {error}"
            await self._dead_letter(message, event_type, reason)
            return
        target = self.retry_queue(attempts - 1)
        if await self._forward(message, target, {ATTEMPTS_HEADER: attempts}):
            self._count(event_type, "retry")

    async def _dead_letter(
        self, message: AbstractIncomingMessage, event_type: str, reason: str
    ) -> None:
        headers = {ATTEMPTS_HEADER: _attempts(message), ERROR_HEADER: reason[:1000]}
        if await self._forward(message, self.dead_letter_queue, headers):
            self._count(event_type, "dead_letter")
            logger.error(
                "event_dead_lettered",
                queue=self.queue_name,
                message_id=message.message_id,
                reason=reason[:300],
            )

    async def _forward(
        self, message: AbstractIncomingMessage, queue: str, headers: dict[str, Any]
    ) -> bool:
        """Copy a message to another queue, then ack it; requeue if the copy fails."""
        channel = self._channel
        try:
            assert channel is not None
            copy = aio_pika.Message(
                message.body,
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                type=message.type,
                headers={**(message.headers or {}), **headers},
            )
            await channel.default_exchange.publish(copy, routing_key=queue, timeout=10)
            await message.ack()
        except RETRYABLE_BROKER_ERRORS as error:
            logger.warning("event_forward_failed", target=queue, error=str(error))
            with contextlib.suppress(*RETRYABLE_BROKER_ERRORS):
                await message.nack(requeue=True)
            return False
        return True

    def _type_label(self, routing_key: str) -> str:
        return routing_key if routing_key in self._routing_keys else UNKNOWN_TYPE

    def _count(self, event_type: str, outcome: str) -> None:
        self._metrics.events_consumed.labels(
            queue=self.queue_name, type=event_type, outcome=outcome
        ).inc()

    async def stop(self) -> None:
        """Stop taking messages and let those being handled finish.

        Each step that needs RabbitMQ is bounded: during an outage the robust
        channel would wait for the server forever, and a service asked to stop
        must stop. What is left unacknowledged is redelivered to the next
        consumer, and the inbox makes that redelivery harmless.
        """
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # With the server away there is nothing to tell it: the channel dies
        # with the connection and the server requeues what was unacknowledged.
        connected = self._broker.is_connected()
        if connected and self._queue is not None and self._consumer_tag is not None:
            await self._bounded("cancel", self._queue.cancel(self._consumer_tag))
        if self._in_flight:
            await self._bounded(
                "finish_in_flight",
                asyncio.gather(*self._in_flight, return_exceptions=True),
            )
        if connected and self._channel is not None:
            await self._bounded("close_channel", self._channel.close())

    async def _bounded(self, step: str, work: Awaitable[Any]) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await work
        except TimeoutError:
            logger.warning(
                "consumer_stop_step_abandoned",
                queue=self.queue_name,
                step=step,
                after_seconds=CLOSE_TIMEOUT_SECONDS,
            )
        except RETRYABLE_BROKER_ERRORS:
            pass


def _attempts(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPTS_HEADER, 0)
    return value if isinstance(value, int) else 0
