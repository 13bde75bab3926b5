"""webhook-ingest under concurrent and repeated deliveries: stored and sent once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.webhook_ingest.signature import nowpayments_signature
from tests.conftest import NOWPAYMENTS_SECRET, StartIngest
from tests.support.events import EventTap
from tests.support.ipn import ipn_body, signed_headers
from tests.support.metrics import scrape, scrape_until
from tests.support.webhooks import (
    deliveries,
    duplicates,
    post,
    stored_deliveries,
)

IPN = "/webhooks/nowpayments/ipn"
IPN_EVENT = "webhook.nowpayments.received"
COPIES = 50
QUIET_SECONDS = 1.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def statuses(answers: list[tuple[int, dict[str, Any]]]) -> Counter[tuple[int, str]]:
    return Counter((status, str(answer.get("status"))) for status, answer in answers)


async def assert_exactly_one_event(tap: EventTap) -> dict[str, Any]:
    """Wait for the first event, then make sure no second one follows."""
    envelopes = await tap.wait_for(1)
    await asyncio.sleep(QUIET_SECONDS)
    assert len(tap.messages) == 1, tap.envelopes()
    return envelopes[0]


async def test_fifty_concurrent_copies_of_one_ipn_are_stored_and_published_once(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    amqp_url: str,
    metrics_token: str,
) -> None:
    """50 simultaneous copies give 1 accepted, 49 duplicate, 1 row and 1 event."""
    service = await start_ingest()
    body = ipn_body(payment_id=5050, status="finished")
    headers = signed_headers(NOWPAYMENTS_SECRET, body)

    async with EventTap(amqp_url, [IPN_EVENT]) as tap:
        answers = await asyncio.gather(
            *(post(session, service.url + IPN, body, headers) for _ in range(COPIES))
        )
        assert statuses(answers) == {
            (200, "accepted"): 1,
            (200, "duplicate"): COPIES - 1,
        }
        envelope = await assert_exactly_one_event(tap)

    rows = await stored_deliveries(database_url)
    assert len(rows) == 1
    assert (rows[0]["provider"], rows[0]["reference"]) == ("nowpayments", "5050")
    assert bytes(rows[0]["raw_body"]) == body
    assert envelope["id"] == str(rows[0]["event_id"])
    assert envelope["data"]["payment_id"] == "5050"
    samples = await scrape(service.url, metrics_token)
    assert duplicates(samples) == COPIES - 1
    assert deliveries(samples, "accepted") == 1


async def test_one_ipn_sent_to_two_instances_at_once_is_accepted_once(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    amqp_url: str,
    metrics_token: str,
) -> None:
    """Two instances on one database, 25 copies each: one accepted in total."""
    first = await start_ingest()
    second = await start_ingest()
    body = ipn_body(payment_id=2525, status="confirmed")
    headers = signed_headers(NOWPAYMENTS_SECRET, body)
    per_instance = COPIES // 2

    async with EventTap(amqp_url, [IPN_EVENT]) as tap:
        answers = await asyncio.gather(
            *(
                post(session, service.url + IPN, body, headers)
                for _ in range(per_instance)
                for service in (first, second)
            )
        )
        assert statuses(answers) == {
            (200, "accepted"): 1,
            (200, "duplicate"): COPIES - 1,
        }
        envelope = await assert_exactly_one_event(tap)

    rows = await stored_deliveries(database_url)
    assert len(rows) == 1
    assert envelope["id"] == str(rows[0]["event_id"])
    counted = [duplicates(await scrape(s.url, metrics_token)) for s in (first, second)]
    assert sum(counted) == COPIES - 1
    assert all(count >= per_instance - 1 for count in counted)


def ipn_variants() -> list[bytes]:
    """One IPN written five ways that JSON.parse reads as the same object."""
    base: dict[str, Any] = json.loads(
        ipn_body(payment_id=1010, status="partially_paid", actually_paid=1e-7)
    )
    reordered = dict(reversed(list(base.items())))
    return [
        json.dumps(base, separators=(",", ":")).encode(),
        json.dumps(base, indent=4).encode(),
        b" \n\t" + json.dumps(reordered, separators=(" , ", " :\t")).encode() + b"\r\n",
        json.dumps(base, separators=(",", ":"))
        .replace('"price_amount":170', '"price_amount":170.0')
        .replace('"actually_paid":1e-07', '"actually_paid":0.0000001')
        .encode(),
        json.dumps(base)
        .replace('"Steam gift card"', '"\\u0053team gift card"')
        .encode(),
    ]


async def test_whitespace_order_and_number_variants_of_one_ipn_are_duplicates(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
    metrics_token: str,
) -> None:
    """Variants share one signature and count as duplicates of the first."""
    service = await start_ingest()
    variants = ipn_variants()
    assert len(set(variants)) == len(variants)
    signatures = {nowpayments_signature(NOWPAYMENTS_SECRET, v) for v in variants}
    assert len(signatures) == 1

    answers = [
        await post(
            session,
            service.url + IPN,
            variant,
            signed_headers(NOWPAYMENTS_SECRET, variant),
        )
        for variant in variants
    ]
    changed = ipn_body(payment_id=1010, status="finished", actually_paid=1e-7)
    changed_answer = await post(
        session,
        service.url + IPN,
        changed,
        signed_headers(NOWPAYMENTS_SECRET, changed),
    )

    assert answers == [(200, {"status": "accepted"})] + [
        (200, {"status": "duplicate"})
    ] * (len(variants) - 1)
    assert changed_answer == (200, {"status": "accepted"})
    rows = await stored_deliveries(database_url)
    assert [bytes(row["raw_body"]) for row in rows] == [variants[0], changed]
    samples = await scrape_until(
        service.url, metrics_token, lambda s: duplicates(s) >= len(variants) - 1
    )
    assert duplicates(samples) == len(variants) - 1


async def _lock_waiters(connection: asyncpg.Connection) -> int:
    count = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return int(count)


async def _until_lock_waiters(
    connection: asyncpg.Connection, count: int, timeout: float = 5.0
) -> bool:
    """Wait until ``count`` sessions wait on a lock; False if none came in time."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while await _lock_waiters(connection) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            return True
    return False


async def test_one_unstorable_delivery_does_not_fail_the_others_in_its_batch(
    start_ingest: StartIngest,
    session: aiohttp.ClientSession,
    database_url: str,
) -> None:
    """Valid IPNs batched with a poisoned one are still accepted."""
    service = await start_ingest()
    url = service.url + IPN

    def signed(payment_id: int, **extra: Any) -> tuple[bytes, dict[str, str]]:
        body = ipn_body(payment_id=payment_id, **extra)
        return body, signed_headers(NOWPAYMENTS_SECRET, body)

    # Hold the table so the flush slots block; later deliveries then queue up
    # and are written together in one batch once the lock is released.
    blocker = await asyncpg.connect(database_url)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE webhook_ingest.deliveries IN EXCLUSIVE MODE")
        held = [asyncio.create_task(post(session, url, *signed(1)))]
        assert await _until_lock_waiters(blocker, 1)
        held.append(asyncio.create_task(post(session, url, *signed(2))))
        # The second slot usually blocks too; if it has not yet, the deliveries
        # below still queue behind the first, which is all this test needs.
        await _until_lock_waiters(blocker, 2, timeout=1.0)
        poisoned = asyncio.create_task(
            post(session, url, *signed(3, order_description="x\ud800y"))
        )
        batched = [
            asyncio.create_task(post(session, url, *signed(payment_id)))
            for payment_id in range(4, 12)
        ]
        await asyncio.sleep(0.5)
        await transaction.rollback()
    finally:
        await blocker.close()

    assert [await task for task in held] == [(200, {"status": "accepted"})] * 2
    await poisoned
    assert [await task for task in batched] == [(200, {"status": "accepted"})] * 8
