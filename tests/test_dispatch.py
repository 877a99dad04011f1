"""The open-loop dispatcher: starts at scheduled instants, bursts, the outstanding cap, errors."""

from __future__ import annotations

import asyncio
import time
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

    def take(self) -> tuple[Any, float] | None:
        if self.error is not None:
            raise self.error
        return next(self.items, None)

    def start(self, item: int, scheduled: float) -> asyncio.Task[None]:
        self.started.append((item, scheduled, time.perf_counter()))
        return asyncio.get_running_loop().create_task(self.gate.wait())  # type: ignore[return-value]


async def run(recorder: Recorder, cap: int = 10_000) -> ScheduleDispatcher:
    pacer = Pacer()
    dispatcher = ScheduleDispatcher(pacer, recorder.take, recorder.start, cap)
    dispatcher.begin()
    try:
        await asyncio.wait_for(asyncio.shield(dispatcher.finished), timeout=10)
    finally:
        pacer.close()
    return dispatcher


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
    pacer = Pacer()
    dispatcher = ScheduleDispatcher(pacer, recorder.take, recorder.start, cap=10)
    try:
        dispatcher.begin()
        with pytest.raises(ValueError, match="bad row"):
            await asyncio.wait_for(dispatcher.finished, timeout=5)
    finally:
        pacer.close()


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
