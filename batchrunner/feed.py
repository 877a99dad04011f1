"""Request records for the event loop, read from their source on a worker thread in batches.

Reading and validating a record costs microseconds of Python; doing it in batches of
:data:`FEED_BATCH` on a thread keeps the loop free, and one thread hop per batch keeps the
hand-off cheap.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator

from batchrunner.schema import RequestRecord

FEED_BATCH = 512


class RecordFeed:
    """Hands out request records, reading the source on a thread in batches, ahead of need.

    A refill starts when the buffer falls below half a batch, so a reader never waits for a
    batch to be read (an open-loop schedule would see that wait as send lag).
    """

    def __init__(self, iterator: Iterator[RequestRecord], limit: int | None) -> None:
        self._it = iterator
        self._buf: deque[RequestRecord] = deque()
        self._left = limit
        self._done = False
        self._refill: asyncio.Task[None] | None = None

    def _take(self, want: int) -> list[RequestRecord]:
        batch = []
        for record in self._it:
            batch.append(record)
            if len(batch) >= want:
                break
        return batch

    async def _read(self) -> None:
        want = FEED_BATCH if self._left is None else min(FEED_BATCH, self._left)
        batch = await asyncio.to_thread(self._take, want) if want > 0 else []
        if len(batch) < want or not batch:
            self._done = True
        if self._left is not None:
            self._left -= len(batch)
        self._buf.extend(batch)

    def _start_refill(self) -> asyncio.Task[None]:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.create_task(self._read())
        return self._refill

    async def next(self) -> RequestRecord | None:
        """The next record, or ``None`` when the source (or the limit) is exhausted."""
        while not self._buf:
            if self._done:
                return None
            await self._start_refill()  # re-raises a reading error (e.g. --strict)
        record = self._buf.popleft()
        if not self._done and len(self._buf) < FEED_BATCH // 2:
            self._start_refill()
        return record

    async def aclose(self) -> None:
        """Wait for a read in progress (the source iterator must not outlive it)."""
        if self._refill is not None and not self._refill.done():
            await asyncio.gather(self._refill, return_exceptions=True)
