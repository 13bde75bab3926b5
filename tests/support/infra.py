"""Per-run databases and RabbitMQ virtual hosts on the machine's real servers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from urllib.parse import quote

import aio_pika
import asyncpg

ADMIN_DSN = os.environ.get(
    "BITLOOT_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_HOST = os.environ.get("BITLOOT_TEST_AMQP_HOST", "127.0.0.1:5672")


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def database_url(name: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


async def create_database(name: str) -> str:
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return database_url(name)


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def run_sync(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60
    )


def create_vhost(name: str) -> str:
    """A virtual host of this test run's own, so no other run sees its messages."""
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return amqp_url(name)


def delete_vhost(name: str) -> None:
    _rabbitmqctl("delete_vhost", name)


def amqp_url(vhost: str, host: str = AMQP_HOST) -> str:
    return f"amqp://guest:guest@{host}/{quote(vhost, safe='')}"


async def delete_queues(amqp_url: str, names: list[str]) -> None:
    """Delete durable queues so the next test starts without their messages."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
    finally:
        await connection.close()
