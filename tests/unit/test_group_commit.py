"""Concurrent submissions share flushes; failures reach every caller of a batch."""

from __future__ import annotations

import asyncio

import pytest

from shared.batching import GroupCommit


class RecordingFlush:
    """A hand-written flush that remembers its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database went away")
        return [item * 10 for item in items]


async def test_a_lone_item_is_flushed_at_once_without_waiting_for_company() -> None:
    """An idle service answers one request with one round trip, no timer."""
    flush = RecordingFlush()
    group = GroupCommit(flush)

    assert await asyncio.wait_for(group.submit(1), timeout=1) == 10
    assert flush.batches == [[1]]


async def test_items_arriving_during_a_flush_go_together_in_the_next_one() -> None:
    """Batches grow by themselves while the database is busy."""
    flush = RecordingFlush()
    flush.gate.clear()
    group = GroupCommit(flush, max_concurrent_flushes=1)

    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(group.submit(n)) for n in range(2, 12)]
    await asyncio.sleep(0)
    flush.gate.set()

    assert await first == 10
    assert [await task for task in rest] == [n * 10 for n in range(2, 12)]
    assert flush.batches == [[1], list(range(2, 12))]


async def test_a_failed_flush_fails_each_caller_of_that_batch_only() -> None:
    """Nobody is told their item is stored when it is not."""
    flush = RecordingFlush()
    flush.fail_next = True
    group = GroupCommit(flush)

    with pytest.raises(ConnectionError):
        await group.submit(1)
    assert await group.submit(2) == 20


async def test_closing_waits_for_submitted_items_and_refuses_new_ones() -> None:
    """A graceful shutdown writes what was accepted before it began."""
    flush = RecordingFlush()
    flush.gate.clear()
    group = GroupCommit(flush)
    pending = asyncio.create_task(group.submit(5))
    await asyncio.sleep(0)

    closing = asyncio.create_task(group.close())
    await asyncio.sleep(0)
    assert not closing.done()
    flush.gate.set()
    await closing

    assert pending.result() == 50
    with pytest.raises(RuntimeError, match="closed"):
        await group.submit(6)


async def test_batches_never_exceed_the_maximum() -> None:
    """One statement's arrays stay bounded under any burst."""
    flush = RecordingFlush()
    flush.gate.clear()
    group = GroupCommit(flush, max_batch=4, max_concurrent_flushes=1)
    tasks = [asyncio.create_task(group.submit(n)) for n in range(10)]
    await asyncio.sleep(0)
    flush.gate.set()
    await asyncio.gather(*tasks)

    assert max(len(batch) for batch in flush.batches) <= 4
    assert sorted(n for batch in flush.batches for n in batch) == list(range(10))


async def test_an_item_the_flush_refuses_fails_alone_and_its_batch_mates_succeed() -> (
    None
):
    """One bad delivery in a shared commit does not turn the others into errors."""

    async def flush(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("13 cannot be stored")
        return items

    group = GroupCommit(flush, max_concurrent_flushes=1)
    results = await asyncio.gather(
        *(group.submit(n) for n in (11, 12, 13, 14)), return_exceptions=True
    )

    assert results[:2] == [11, 12]
    assert isinstance(results[2], ValueError)
    assert results[3] == 14
