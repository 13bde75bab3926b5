"""A test's own view of the event exchange: an exclusive queue bound to keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from contracts.envelope import EXCHANGE


class EventTap:
    """Collects every message published to the given routing keys from now on."""

    def __init__(self, amqp_url: str, routing_keys: list[str]) -> None:
        self._url = amqp_url
        self._keys = routing_keys
        self.messages: list[AbstractIncomingMessage] = []
        self._arrived = asyncio.Condition()
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> EventTap:
        self._connection = await aio_pika.connect(self._url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in self._keys:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        async with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until ``count`` messages have arrived; return their envelopes."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.messages) >= count)
        return self.envelopes()

    async def wait_until(
        self,
        condition: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 15.0,
    ) -> list[dict[str, Any]]:
        """Wait until the envelopes so far satisfy ``condition``; return them."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: condition(self.envelopes()))
        return self.envelopes()

    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(message.body) for message in self.messages]

    async def __aexit__(self, *_: object) -> None:
        if self._connection is not None:
            await self._connection.close()
