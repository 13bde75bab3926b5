"""Asking the otp service for codes, exchanging them, and moving its clock."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from contracts.envelope import Envelope
from tests.support.events import EventTap
from tests.support.metrics import Samples, value
from tests.support.payments import publish

CODE_KEYS = ["otp.issued", "email.otp.requested"]
SENTINEL = "test.sentinel"


class ManualClock:
    """A clock that starts at the real time and moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def post(
    url: str, path: str, body: Any, raw: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST JSON (or ``raw`` bytes); the status, the JSON answer and the headers."""
    async with aiohttp.ClientSession() as session:
        if raw is not None:
            sent = session.post(
                f"{url}{path}", data=raw, headers={"Content-Type": "application/json"}
            )
        else:
            sent = session.post(f"{url}{path}", json=body)
        async with sent as response:
            return response.status, await response.json(), dict(response.headers)


async def request_code(
    url: str, email: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await post(url, "/v1/otp/request", {"email": email})


async def verify_code(url: str, email: str, code: str) -> tuple[int, dict[str, Any]]:
    status, answer, _ = await post(
        url, "/v1/otp/verify", {"email": email, "code": code}
    )
    return status, answer


def codes_sent(envelopes: list[dict[str, Any]], email: str) -> list[str]:
    """The codes ``email.otp.requested`` carried to an address, oldest first."""
    return [
        e["data"]["code"]
        for e in envelopes
        if e["type"] == "email.otp.requested" and e["data"]["email"] == email
    ]


async def next_code(tap: EventTap, email: str, count: int = 1) -> str:
    """Wait for the ``count``-th code sent to an address; return it."""
    envelopes = await tap.wait_until(lambda es: len(codes_sent(es, email)) >= count)
    return codes_sent(envelopes, email)[count - 1]


def wrong(code: str, step: int = 1) -> str:
    """Another six-digit code than ``code``."""
    return f"{(int(code) + step) % 1_000_000:06d}"


async def settled(
    tap: EventTap, amqp_url: str, database_url: str, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Every event the otp service has committed, once the tap holds them all.

    The outbox empties only on the broker's confirms; a sentinel published after
    that reaches the tap's queue behind every one of them.
    """
    connection = await asyncpg.connect(database_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                if not await connection.fetchval("SELECT count(*) FROM otp.outbox"):
                    break
                await asyncio.sleep(0.05)
    finally:
        await connection.close()
    sentinel = Envelope(
        id=uuid.uuid4(),
        type=SENTINEL,
        version=1,
        occurred_at=datetime.now(UTC),
        producer="tests",
        correlation_id="test-sentinel",
        data={},
    )
    await publish(amqp_url, sentinel)
    envelopes = await tap.wait_until(
        lambda es: any(e["id"] == str(sentinel.id) for e in es), timeout
    )
    return [e for e in envelopes if e["type"] != SENTINEL]


def rate_limited(samples: Samples) -> float:
    return value(samples, "bitloot_otp_rate_limit_exceeded_total", operation="issue")


def verification_failed(samples: Samples, reason: str) -> float:
    return value(samples, "bitloot_otp_verification_failed_total", reason=reason)
