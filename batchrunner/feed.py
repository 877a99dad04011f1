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
    """Hands out request records, reading the source on a thread in batches."""

    def __init__(self, iterator: Iterator[RequestRecord], limit: int | None) -> None:
        self._it = iterator
        self._buf: deque[RequestRecord] = deque()
        self._left = limit
        self._done = False
        self._lock = asyncio.Lock()

    def _take(self) -> list[RequestRecord]:
        want = FEED_BATCH if self._left is None else min(FEED_BATCH, self._left)
        batch = []
        for record in self._it:
            batch.append(record)
            if len(batch) >= want:
                break
        return batch

    async def next(self) -> RequestRecord | None:
        if self._buf:
            return self._buf.popleft()
        async with self._lock:
            while not self._buf:
                if self._done or self._left == 0:
                    return None
                batch = await asyncio.to_thread(self._take)
                if not batch:
                    self._done = True
                    return None
                if self._left is not None:
                    self._left -= len(batch)
                self._buf.extend(batch)
            return self._buf.popleft()
