"""The open-loop dispatcher: starts at scheduled instants, bursts, the outstanding cap, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from batchrunner.dispatch import BURST, ScheduleDispatcher
from batchrunner.pacing import Pacer


class Recorder:
    """``take``/``start`` for a list of instants; requests wait for ``release`` if gated."""

    def __init__(self, instants: list[float], gated: bool = False) -> None:
        self.items = iter(enumerate(instants))
        self.started: list[tuple[int, float, float]] = []  # (item, scheduled, started at)
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.error: BaseException | None = None
        self.tasks: set[asyncio.Task[bool]] = set()

    def take(self) -> tuple[Any, float] | None:
        if self.error is not None:
            raise self.error
        return next(self.items, None)

    def start(self, item: int, scheduled: float, done: Callable[[], None]) -> None:
        self.started.append((item, scheduled, time.perf_counter()))
        task = asyncio.get_running_loop().create_task(self.gate.wait())
        self.tasks.add(task)
        task.add_done_callback(lambda t: (self.tasks.discard(t), done()))


async def run(recorder: Recorder, cap: int = 10_000) -> ScheduleDispatcher:
    pacer = Pacer()
    dispatcher = ScheduleDispatcher(pacer, recorder.take, recorder.start, cap)
    dispatcher.begin()
    try:
        await asyncio.wait_for(asyncio.shield(dispatcher.finished), timeout=10)
    finally:
        pacer.close()
    return dispatcher


async def expect_failure(take: Any, start: Any, error: type[BaseException], match: str) -> None:
    """Run a dispatcher whose ``finished`` must fail with *error*."""
    pacer = Pacer()
    dispatcher = ScheduleDispatcher(pacer, take, start, cap=10)
    try:
        dispatcher.begin()
        with pytest.raises(error, match=match):
            await asyncio.wait_for(dispatcher.finished, timeout=5)
    finally:
        pacer.close()


async def test_each_start_is_at_or_after_its_instant_in_order() -> None:
    base = time.perf_counter() + 0.005
    instants = [base + i * 0.0007 for i in range(60)]  # ~1,400/s
    recorder = Recorder(instants)
    await run(recorder)
    assert [item for item, _, _ in recorder.started] == list(range(60))
    assert all(at >= scheduled for _, scheduled, at in recorder.started)


async def test_overdue_items_start_in_bursts_with_the_loop_turning_between() -> None:
    past = time.perf_counter() - 1.0
    recorder = Recorder([past] * (BURST * 3 + 5))
    turns = 0

    def tick() -> None:
        nonlocal turns
        turns += 1
        if len(recorder.started) < BURST * 3 + 5:
            asyncio.get_running_loop().call_soon(tick)

    asyncio.get_running_loop().call_soon(tick)
    dispatcher = await run(recorder)
    assert dispatcher.started == BURST * 3 + 5
    assert turns >= 3  # other callbacks ran between the bursts


async def test_outstanding_cap_holds_back_starts_until_a_completion() -> None:
    past = time.perf_counter() - 1.0
    recorder = Recorder([past] * 5, gated=True)
    pacer = Pacer()
    dispatcher = ScheduleDispatcher(pacer, recorder.take, recorder.start, cap=2)
    try:
        dispatcher.begin()
        await asyncio.sleep(0.05)
        assert dispatcher.started == 2 and dispatcher.outstanding == 2
        recorder.gate.set()  # everything completes; the rest start
        await asyncio.wait_for(asyncio.shield(dispatcher.finished), timeout=5)
        assert dispatcher.started == 5
    finally:
        pacer.close()


async def test_error_from_take_resolves_finished() -> None:
    recorder = Recorder([time.perf_counter() + 10])
    recorder.error = ValueError("bad row")
    await expect_failure(recorder.take, recorder.start, ValueError, "bad row")


async def test_stop_starts_nothing_more() -> None:
    recorder = Recorder([time.perf_counter() + 0.2 + i for i in range(3)])
    pacer = Pacer()
    dispatcher = ScheduleDispatcher(pacer, recorder.take, recorder.start, cap=10)
    try:
        dispatcher.begin()
        await asyncio.sleep(0.01)
        dispatcher.stop()
        assert dispatcher.finished.done()
        await asyncio.sleep(0.3)  # the first instant passes: nothing starts
        assert recorder.started == []
    finally:
        pacer.close()


async def test_an_item_read_ahead_does_not_start_once_stopping() -> None:
    recorder = Recorder([time.perf_counter() + 0.05, time.perf_counter() + 0.06])
    stopping = False
    pacer = Pacer()
    dispatcher = ScheduleDispatcher(
        pacer, recorder.take, recorder.start, cap=10, stopping=lambda: stopping
    )
    try:
        dispatcher.begin()
        await asyncio.sleep(0.01)  # the first item is read and waits for its instant
        stopping = True
        await asyncio.wait_for(asyncio.shield(dispatcher.finished), timeout=5)
        await asyncio.sleep(0.1)
        assert recorder.started == []
    finally:
        pacer.close()


async def test_close_instants_share_a_wakeup_and_none_starts_early() -> None:
    base = time.perf_counter() + 0.01
    instants = [base + i * 0.00005 for i in range(400)]  # 20,000/s
    recorder = Recorder(instants)
    dispatcher = await run(recorder)
    assert [item for item, _, _ in recorder.started] == list(range(400))
    assert all(at >= scheduled for _, scheduled, at in recorder.started)
    # A 0.25 ms window holds five instants: a wake-up per instant would be 400 turns.
    assert dispatcher.turns <= 400 // 3


async def test_distant_instants_are_each_woken_for() -> None:
    base = time.perf_counter() + 0.005
    instants = [base + i * 0.003 for i in range(10)]  # further apart than the window
    recorder = Recorder(instants)
    dispatcher = await run(recorder)
    assert all(at >= scheduled for _, scheduled, at in recorder.started)
    assert dispatcher.turns >= 10


async def test_items_read_before_an_error_still_start_then_it_surfaces() -> None:
    base = time.perf_counter() + 0.01
    recorder = Recorder([base, base + 0.00005, base + 0.0001])
    taken = 0
    original = recorder.take

    def take() -> tuple[Any, float] | None:
        nonlocal taken
        taken += 1
        if taken == 4:  # read while looking ahead through the first window
            raise ValueError("bad row")
        return original()

    await expect_failure(take, recorder.start, ValueError, "bad row")
    assert [item for item, _, _ in recorder.started] == [0, 1, 2]


async def test_an_error_from_start_resolves_finished() -> None:
    recorder = Recorder([time.perf_counter() - 1.0])

    def start(item: int, scheduled: float, done: Callable[[], None]) -> None:
        raise RuntimeError("task group is closing")

    await expect_failure(recorder.take, start, RuntimeError, "closing")
