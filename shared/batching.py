"""Group commit: many concurrent callers share one database round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class GroupCommit(Generic[ItemT, ResultT]):
    """Batch items submitted while earlier batches are being written.

    No caller waits on a timer: the first item flushes at once, and whatever
    arrives while that flush is in flight goes out together in the next one.
    Under load batches grow by themselves; when idle each item goes alone.
    The flush function returns one result per item, in order, or raises. When
    a batch of several fails, each item is flushed again alone, so one item the
    database refuses fails only its own caller.
    """

    def __init__(
        self,
        flush: Callable[[list[ItemT]], Awaitable[list[ResultT]]],
        *,
        max_batch: int = 500,
        max_concurrent_flushes: int = 2,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._slots = max_concurrent_flushes
        self._on_batch = on_batch
        self._pending: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def submit(self, item: ItemT) -> ResultT:
        if self._closed:
            raise RuntimeError("the group commit is closed")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._flushers) < self._slots:
            task = asyncio.create_task(self._drain())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        # The batch is written even if this caller goes away meanwhile.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            if self._on_batch is not None:
                self._on_batch(len(batch))
            await self._flush_batch(batch)

    async def _flush_batch(
        self, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]
    ) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as error:
            if len(batch) > 1:
                for single in batch:
                    await self._flush_batch([single])
            elif not batch[0][1].done():
                batch[0][1].set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Refuse new items and wait until every submitted one is written."""
        self._closed = True
        while self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)
