"""The RabbitMQ connection: resilient, with confirmed publishes to the exchange."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from pamqp.commands import Basic

from contracts.envelope import EXCHANGE

logger = structlog.get_logger(__name__)


# Errors after which a publish may succeed if tried again later.
RETRYABLE_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


EVENT_LOG_MAX_LENGTH = 10_000
# How long closing waits for the server: a robust channel or connection would
# otherwise wait out an outage before it closes, and block a shutdown with it.
CLOSE_TIMEOUT_SECONDS = 5.0
EVENT_LOG_TTL_MS = 7 * 24 * 3600 * 1000


class PublishError(Exception):
    """The broker did not confirm a message: returned, refused or timed out."""


class BrokerUnavailableError(PublishError):
    """No connection to the broker right now."""


class Broker:
    """One robust connection per process, connected in the background.

    The service starts and serves even while RabbitMQ is down; publishes fail
    fast until the connection is back, and the outbox keeps what they carried.
    """

    def __init__(
        self,
        url: str,
        reconnect_seconds: float = 2.0,
        *,
        event_log: str | None = None,
        event_log_keys: tuple[str, ...] = (),
    ) -> None:
        self._url = url
        self._reconnect_seconds = reconnect_seconds
        self._event_log = event_log
        self._event_log_keys = event_log_keys
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connection(self) -> AbstractRobustConnection | None:
        return self._connection

    def is_connected(self) -> bool:
        connection = self._connection
        return (
            self._ready.is_set()
            and connection is not None
            and connection.connected.is_set()
        )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect_until_done(), name="broker")

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.is_connected()

    async def _connect_until_done(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                connection = await aio_pika.connect_robust(
                    self._url, reconnect_interval=self._reconnect_seconds
                )
                channel = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                exchange = await channel.declare_exchange(
                    EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
                )
                await self._declare_event_log(channel, exchange)
            except RETRYABLE_BROKER_ERRORS as error:
                if attempt == 1 or attempt % 10 == 0:
                    logger.warning(
                        "broker_connect_failed", attempt=attempt, error=str(error)
                    )
                await asyncio.sleep(self._reconnect_seconds)
                continue

            self._connection = connection
            self._channel = channel
            self._exchange = exchange
            self._ready.set()
            logger.info("broker_connected", attempts=attempt)
            return

    async def _declare_event_log(
        self, channel: AbstractRobustChannel, exchange: AbstractExchange
    ) -> None:
        """Give events that no service consumes a bounded queue to land in.

        Without one they would be unroutable forever and never leave the outbox;
        with one an operator can read the latest of them, oldest dropped first.
        """
        if self._event_log is None or not self._event_log_keys:
            return
        queue = await channel.declare_queue(
            self._event_log,
            durable=True,
            arguments={
                "x-max-length": EVENT_LOG_MAX_LENGTH,
                "x-overflow": "drop-head",
                "x-message-ttl": EVENT_LOG_TTL_MS,
            },
        )
        for key in self._event_log_keys:
            await queue.bind(exchange, routing_key=key)

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = None,
        timeout: float | None = 5.0,
    ) -> None:
        """Publish a persistent message and wait for the broker's confirm.

        ``timeout=None`` leaves the bound to the caller, who may bound many
        publishes at once more cheaply than one timer each.
        """
        exchange = self._exchange
        if exchange is None or not self.is_connected():
            raise BrokerUnavailableError("not connected to RabbitMQ")

        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            type=routing_key,
            headers=headers or {},
        )
        try:
            confirmation = await exchange.publish(
                message, routing_key, mandatory=True, timeout=timeout
            )
        except aiormq.exceptions.DeliveryError as error:
            raise PublishError(f"{routing_key}: returned as unroutable") from error
        except RETRYABLE_BROKER_ERRORS as error:
            message_text = f"{routing_key}: {type(error).__name__} {error}".strip()
            raise PublishError(message_text) from error

        if not isinstance(confirmation, Basic.Ack):
            kind = type(confirmation).__name__
            raise PublishError(f"{routing_key}: broker answered {kind}")

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    await self._connection.close()
            except TimeoutError:
                logger.warning(
                    "broker_close_abandoned", after_seconds=CLOSE_TIMEOUT_SECONDS
                )
        self._ready.clear()
