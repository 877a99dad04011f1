"""Parked workers: reuse, spawning only when all are busy, the idle bound, close, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from contextvars import Context, ContextVar
from typing import Any

import pytest

from batchrunner import workers as workers_module
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

    def spawn(self, work: Coroutine[Any, Any, None], context: Context) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work, context=context)
        self.tasks.append(task)
        return task

    def start(self, item: Any) -> None:
        self.pool.start(item, float(item), lambda: self.done.append(item))

    async def run_together(self, items: range) -> None:
        """Start *items* while none can finish, then let them all finish."""
        self.gate.clear()
        for i in items:
            self.start(i)
        await settle()
        self.gate.set()
        await settle()


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
    await h.run_together(range(5))
    assert h.pool.spawned == 5
    assert sorted(h.done) == list(range(5)) and h.pool.parked == 5
    for i in range(5, 10):
        h.start(i)
    await settle()
    assert h.pool.spawned == 5  # all five reused
    assert sorted(h.done) == list(range(10))


async def test_workers_beyond_keep_idle_finish() -> None:
    h = Harness(keep_idle=2)
    await h.run_together(range(5))
    assert h.pool.parked == 2
    assert sum(t.done() for t in h.tasks) == 3


async def test_close_releases_parked_workers_and_refuses_new_requests() -> None:
    h = Harness()
    await h.run_together(range(3))
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


# Eager starts: a start from a loop callback (as the dispatcher's timer makes it) runs the
# request at once, up to its first wait, on behalf of a parked worker's task.


class Probe:
    """Requests that record what ran synchronously inside ``start`` and how they ended."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gate = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.done: list[Any] = []
        self.pool = ParkedWorkers(self.run, self.spawn)

    async def run(self, item: Any, scheduled: float) -> None:
        task = asyncio.current_task()
        self.log.append(f"{item} sent by {'worker' if task in self.tasks else task}")
        if item == "sync-error":
            raise ValueError("bad request")
        if item == "instant":
            return
        try:
            if item == "timeout":
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(5)
            await self.gate.wait()
        except TimeoutError:
            self.log.append(f"{item} timed out")
        except asyncio.CancelledError:
            self.log.append(f"{item} cancelled")
            raise
        self.log.append(f"{item} answered")

    def spawn(self, work: Coroutine[Any, Any, None], context: Context) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work, context=context)
        self.tasks.append(task)
        return task

    def start_from_callback(self, item: Any) -> None:
        """As the dispatcher does: from a loop callback, outside any task."""
        loop = asyncio.get_running_loop()
        loop.call_soon(self.start_now, item)

    def start_now(self, item: Any, late_s: float = 0.0) -> None:
        self.pool.start(item, time.perf_counter() - late_s, lambda: self.done.append(item))

    async def with_a_parked_worker(self) -> None:
        self.gate.set()
        self.start_from_callback("warm-up")
        await settle()
        self.gate.clear()
        assert self.pool.parked == 1


async def test_a_start_from_a_callback_sends_at_once_on_the_parked_workers_task() -> None:
    p = Probe()
    await p.with_a_parked_worker()
    loop = asyncio.get_running_loop()
    sent_inside_start: list[bool] = []

    def start_and_look() -> None:
        p.start_now("r1")
        sent_inside_start.append("r1 sent by worker" in p.log)

    loop.call_soon(start_and_look)
    await settle()
    assert sent_inside_start == [True] and p.pool.started_eagerly == 1
    p.gate.set()
    await settle()
    assert p.log[-1] == "r1 answered" and p.done == ["warm-up", "r1"]
    assert p.pool.spawned == 1 and p.pool.parked == 1


async def test_an_eager_request_can_use_timeouts_bound_to_its_worker() -> None:
    p = Probe()
    await p.with_a_parked_worker()
    p.start_from_callback("timeout")
    await asyncio.sleep(0.05)
    p.gate.set()
    await settle()
    assert p.pool.started_eagerly == 1
    assert p.log[-3:] == ["timeout sent by worker", "timeout timed out", "timeout answered"]


async def test_cancelling_the_worker_cancels_the_eager_request_in_flight() -> None:
    p = Probe()
    await p.with_a_parked_worker()
    p.start_from_callback("r1")
    await settle()
    p.tasks[0].cancel()
    await settle()
    assert p.log[-1] == "r1 cancelled" and p.done == ["warm-up", "r1"]
    assert p.tasks[0].cancelled()


async def test_a_worker_cancelled_before_it_continues_an_eager_request_still_ends_it() -> None:
    p = Probe()
    await p.with_a_parked_worker()
    loop = asyncio.get_running_loop()

    def start_then_cancel() -> None:
        p.start_now("r1")
        p.tasks[0].cancel()  # before the worker has run again

    loop.call_soon(start_then_cancel)
    await settle()
    # It was sent, so it must end as a cancelled request, not vanish.
    assert p.log[-2:] == ["r1 sent by worker", "r1 cancelled"]
    assert p.done == ["warm-up", "r1"]


async def test_an_eager_request_that_raises_at_once_ends_its_worker_with_the_error() -> None:
    p = Probe()
    await p.with_a_parked_worker()
    p.start_from_callback("sync-error")
    await settle()
    assert p.done == ["warm-up", "sync-error"]
    with pytest.raises(ValueError, match="bad request"):
        await p.tasks[0]


async def test_an_eager_request_that_finishes_at_once_frees_its_worker() -> None:
    p = Probe()
    await p.with_a_parked_worker()
    p.start_from_callback("instant")
    await settle()
    assert p.done == ["warm-up", "instant"] and p.pool.parked == 1


async def test_a_start_from_inside_a_task_is_not_eager() -> None:
    p = Probe()
    await p.with_a_parked_worker()
    p.start_now("r1")  # this test is a task
    assert "r1 sent by worker" not in p.log  # not sent yet
    await settle()
    assert p.log[-1] == "r1 sent by worker" and p.pool.started_eagerly == 0
    p.gate.set()
    await settle()
    assert p.done == ["warm-up", "r1"]


async def test_a_request_already_late_is_not_started_eagerly() -> None:
    p = Probe()
    await p.with_a_parked_worker()
    asyncio.get_running_loop().call_soon(p.start_now, "r1", 0.01)  # 10 ms behind
    await settle()
    p.gate.set()
    await settle()
    assert p.pool.started_eagerly == 0 and p.done == ["warm-up", "r1"]


async def eager_pool(run: Any) -> tuple[ParkedWorkers, list[asyncio.Task[None]], list[Any]]:
    """A pool around *run* with one worker parked (its first request, ``"warm"``, returns at
    once), the tasks it spawned, and the items reported done."""
    tasks: list[asyncio.Task[None]] = []
    done: list[Any] = []

    def spawn(work: Coroutine[Any, Any, None], context: Context) -> asyncio.Task[None]:
        tasks.append(asyncio.get_running_loop().create_task(work, context=context))
        return tasks[-1]

    pool = ParkedWorkers(run, spawn)
    pool.start("warm", time.perf_counter(), lambda: done.append("warm"))
    await settle()
    assert pool.parked == 1
    return pool, tasks, done


async def test_an_eager_request_whose_cancel_handling_awaits_still_ends_as_cancelled() -> None:
    log: list[str] = []

    async def run(item: Any, scheduled: float) -> None:
        if item == "warm":
            return
        log.append("sent")
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # e.g. closing the response
            log.append("cancelled row")
            raise

    pool, tasks, done = await eager_pool(run)

    def start_then_cancel() -> None:
        pool.start("r1", time.perf_counter(), lambda: done.append("r1"))
        tasks[0].cancel()  # before the worker continues it

    asyncio.get_running_loop().call_soon(start_then_cancel)
    await settle()
    assert pool.started_eagerly == 1
    assert log == ["sent", "cancelled row"] and done == ["warm", "r1"]
    assert tasks[0].cancelled()


async def test_a_timeout_from_the_eager_start_that_fires_first_lets_the_request_go_on() -> None:
    log: list[str] = []

    async def run(item: Any, scheduled: float) -> None:
        if item == "warm":
            return
        for attempt in range(2):
            try:
                async with asyncio.timeout(0):  # expires before the worker continues
                    await asyncio.sleep(5)
            except TimeoutError:
                log.append(f"attempt {attempt} timed out")
                await asyncio.sleep(0.001)
        log.append("row")

    pool, tasks, done = await eager_pool(run)
    asyncio.get_running_loop().call_soon(
        pool.start, "r1", time.perf_counter(), lambda: done.append("r1")
    )
    await asyncio.sleep(0.05)
    assert pool.started_eagerly == 1
    assert log == ["attempt 0 timed out", "attempt 1 timed out", "row"]
    assert done == ["warm", "r1"] and not tasks[0].done()  # the worker lives on


async def test_an_eager_request_may_cancel_its_own_task() -> None:
    log: list[str] = []

    async def run(item: Any, scheduled: float) -> None:
        if item == "warm":
            return
        try:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            log.append("cancelled row")
            raise

    pool, tasks, done = await eager_pool(run)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            pool.start("r1", time.perf_counter(), lambda: done.append("r1"))
        except BaseException as exc:
            errors.append(exc)

    asyncio.get_running_loop().call_soon(start)
    await settle()
    assert errors == [] and log == ["cancelled row"] and done == ["warm", "r1"]


async def test_after_a_late_start_the_next_starts_are_not_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "EAGER_BACKOFF", 3)
    p = Probe()
    await p.with_a_parked_worker()
    p.gate.set()
    loop = asyncio.get_running_loop()
    loop.call_soon(p.start_now, "late", 0.01)  # 10 ms behind: plain, and so are the next 3
    await settle()
    for i in range(5):
        loop.call_soon(p.start_now, f"r{i}")
        await settle()
    assert p.pool.started_eagerly == 2  # r3 and r4
    assert p.done == ["warm-up", "late", "r0", "r1", "r2", "r3", "r4"]


REQUEST_VAR: ContextVar[str] = ContextVar("request_var", default="unset")


async def test_an_eager_start_runs_in_its_worker_tasks_context() -> None:
    """What the eager part sets (e.g. a tracing span an instrumented client attaches) is seen
    where the worker continues the request, and never leaks into the dispatcher's context."""
    seen: list[str] = []
    gate = asyncio.Event()

    async def run(item: Any, scheduled: float) -> None:
        if item == "warm":
            return
        REQUEST_VAR.set(item)  # runs inside start(): the eager part
        await gate.wait()
        seen.append(REQUEST_VAR.get())

    pool, tasks, done = await eager_pool(run)
    caller: list[str] = []

    def start() -> None:
        pool.start("r1", time.perf_counter(), lambda: done.append("r1"))
        caller.append(REQUEST_VAR.get())

    asyncio.get_running_loop().call_soon(start)
    await settle()
    assert pool.started_eagerly == 1 and caller == ["unset"]
    gate.set()
    await settle()
    assert seen == ["r1"] and done == ["warm", "r1"] and REQUEST_VAR.get() == "unset"
