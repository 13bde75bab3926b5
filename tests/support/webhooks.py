"""Posting webhooks and reading what webhook-ingest stored and counted."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg

from tests.support.metrics import Samples, value


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST a body; return the status and the JSON answer."""
    async with session.post(url, data=body, headers=headers or {}) as response:
        return response.status, await response.json()


async def fetch_rows(database_url: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


async def stored_deliveries(database_url: str) -> list[asyncpg.Record]:
    return await fetch_rows(
        database_url,
        "SELECT provider, event_name, reference, raw_body, event_id "
        "FROM webhook_ingest.deliveries ORDER BY received_at",
    )


def invalid_hmac(samples: Samples, provider: str, reason: str) -> float:
    return value(
        samples, "bitloot_invalid_hmac_count_total", provider=provider, reason=reason
    )


def duplicates(samples: Samples, provider: str = "nowpayments") -> float:
    return value(samples, "bitloot_duplicate_webhook_count_total", provider=provider)


def deliveries(samples: Samples, outcome: str, provider: str = "nowpayments") -> float:
    return value(
        samples, "bitloot_webhook_deliveries_total", provider=provider, outcome=outcome
    )
