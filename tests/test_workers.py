"""Parked workers: reuse, spawning only when all are busy, the idle bound, close, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from batchrunner.workers import ParkedWorkers


class Harness:
    """A pool whose requests wait for ``gate``; records what ran and what was reported done."""

    def __init__(self, keep_idle: int = 1024, fail_on: Any = None) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.ran: list[tuple[Any, float]] = []
        self.done: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.cancelled: list[Any] = []
        self.fail_on = fail_on
        self.pool = ParkedWorkers(self.run, self.spawn, keep_idle=keep_idle)

    async def run(self, item: Any, scheduled: float) -> None:
        self.ran.append((item, scheduled))
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(item)
            raise
        if item == self.fail_on:
            raise ValueError(f"request {item} failed")

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.append(task)
        return task

    def start(self, item: Any) -> None:
        self.pool.start(item, float(item), lambda: self.done.append(item))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_request_at_a_time_reuses_one_worker() -> None:
    h = Harness()
    for i in range(20):
        h.start(i)
        await settle()
    assert h.ran == [(i, float(i)) for i in range(20)]
    assert h.done == list(range(20))
    assert h.pool.spawned == 1 and h.pool.parked == 1


async def test_a_worker_is_spawned_only_when_all_are_busy() -> None:
    h = Harness()
    h.gate.clear()
    for i in range(5):
        h.start(i)
    await settle()
    assert h.pool.spawned == 5 and h.done == []
    h.gate.set()
    await settle()
    assert sorted(h.done) == list(range(5)) and h.pool.parked == 5
    for i in range(5, 10):
        h.start(i)
    await settle()
    assert h.pool.spawned == 5  # all five reused
    assert sorted(h.done) == list(range(10))


async def test_workers_beyond_keep_idle_finish() -> None:
    h = Harness(keep_idle=2)
    h.gate.clear()
    for i in range(5):
        h.start(i)
    await settle()
    h.gate.set()
    await settle()
    assert h.pool.parked == 2
    assert sum(t.done() for t in h.tasks) == 3


async def test_close_releases_parked_workers_and_refuses_new_requests() -> None:
    h = Harness()
    h.gate.clear()
    for i in range(3):
        h.start(i)
    await settle()
    h.gate.set()
    await settle()
    h.gate.clear()
    h.start(3)  # busy when the pool closes: it finishes its request, then ends
    await settle()
    h.pool.close()
    await settle()
    assert sum(t.done() for t in h.tasks) == 2
    h.gate.set()
    await asyncio.wait_for(asyncio.gather(*h.tasks), timeout=5)
    assert sorted(h.done) == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="closed"):
        h.start(4)


async def test_a_failing_request_is_still_done_and_ends_its_worker_with_the_error() -> None:
    h = Harness(fail_on=1)
    h.start(0)
    await settle()
    h.start(1)
    await settle()
    assert h.done == [0, 1]
    (task,) = h.tasks
    with pytest.raises(ValueError, match="request 1 failed"):
        await task
    h.start(2)  # the failed worker is not parked any more: a new one is spawned
    await settle()
    assert h.done == [0, 1, 2] and h.pool.spawned == 2


async def test_cancelling_a_busy_worker_cancels_its_request_and_reports_it_done() -> None:
    h = Harness()
    h.gate.clear()
    h.start(0)
    await settle()
    h.tasks[0].cancel()
    await settle()
    assert h.cancelled == [0] and h.done == [0]


async def test_a_cancelled_parked_worker_is_skipped() -> None:
    h = Harness()
    h.start(0)
    await settle()
    assert h.pool.parked == 1
    h.tasks[0].cancel()
    await settle()
    h.start(1)
    await settle()
    assert h.done == [0, 1] and h.pool.spawned == 2


async def test_a_request_handed_to_a_worker_cancelled_before_it_runs_is_still_done() -> None:
    h = Harness()
    h.start(0)
    await settle()
    h.start(1)  # handed to the parked worker; it has not run yet
    h.tasks[0].cancel()
    await settle()
    assert [item for item, _ in h.ran] == [0]  # never sent
    assert h.done == [0, 1]  # but its slot is given back
