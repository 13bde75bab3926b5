"""The emails table on the real database: a claim fences every outcome write."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.email import store
from services.email.domain import FailureReason
from tests.support.emails import email_pool, record_welcome

ROW = (
    "SELECT status, attempts, provider, provider_message_id, failure_reason, "
    "last_error, lease_until, next_attempt_at, data FROM emails"
)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await email_pool(database_url)
    try:
        yield pool
    finally:
        await pool.close()


async def claim_one(pool: asyncpg.Pool, lease_seconds: float) -> store.ClaimedEmail:
    [claimed] = await store.claim_due(pool, 1, lease_seconds)
    return claimed


async def test_a_sender_whose_lease_ran_out_cannot_overwrite_the_next_claim(
    pool: asyncpg.Pool,
) -> None:
    """After a re-claim, the first claim's sent, retry and failed writes are refused."""
    await record_welcome(pool)
    # A lease that is already over: as if this sender stalled past it.
    stale = await claim_one(pool, lease_seconds=-1)
    async with pool.acquire() as connection, connection.transaction():
        [abandoned] = await store.lock_abandoned(connection, 10)
        assert await store.mark_retry(connection, abandoned, "smtp", 0.0, "resumed")
    current = await claim_one(pool, lease_seconds=60)
    assert (current.id, current.attempts) == (stale.id, stale.attempts + 1)
    before = await pool.fetchrow(ROW)

    async with pool.acquire() as connection:
        refused = [
            await store.mark_sent(connection, stale, "smtp", "<stale@bitloot>"),
            await store.mark_retry(connection, stale, "smtp", 5.0, "stale retry"),
            await store.mark_failed(
                connection, stale, "smtp", FailureReason.TIMEOUT, "stale failure"
            ),
        ]

    assert refused == [False, False, False]
    assert await pool.fetchrow(ROW) == before
    async with pool.acquire() as connection:
        assert await store.mark_sent(connection, current, "smtp", "<current@bitloot>")
    row = await pool.fetchrow(ROW)
    assert row is not None
    assert (row["status"], row["attempts"], row["provider_message_id"]) == (
        "sent",
        2,
        "<current@bitloot>",
    )
