from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import threading
import time

import pytest

from batchrunner import pacing
from batchrunner.background import BACKGROUND_NICE, background_executor
from batchrunner.pacing import Pacer, RateCeiling, schedule_offsets
from batchrunner.runner import COMPACT_DEFER_BUSY, COMPACT_MAX_BACKLOG, defer_compaction


def test_constant_schedule_is_evenly_spaced():
    offsets = list(itertools.islice(schedule_offsets(4.0), 5))
    assert offsets == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_poisson_schedule_is_seeded_and_has_the_right_mean():
    a = list(itertools.islice(schedule_offsets(100.0, "poisson", seed=7), 20001))
    b = list(itertools.islice(schedule_offsets(100.0, "poisson", seed=7), 20001))
    c = list(itertools.islice(schedule_offsets(100.0, "poisson", seed=8), 20001))
    assert a == b and a != c
    gaps = [y - x for x, y in itertools.pairwise(a)]
    assert statistics.mean(gaps) == pytest.approx(0.01, rel=0.05)
    # exponential gaps: standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(0.01, rel=0.1)


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError):
        next(schedule_offsets(0))
    with pytest.raises(ValueError):
        next(schedule_offsets(1, "gamma"))


async def _called_at(pacer: Pacer, target: float) -> float:
    """Arm ``pacer`` for ``target`` and return when its callback ran."""
    fired = asyncio.get_running_loop().create_future()
    pacer.call_at(target, lambda: fired.set_result(time.perf_counter()))
    return await asyncio.wait_for(fired, timeout=5)


@pytest.mark.parametrize("precise", [True, False])
async def test_pacer_never_calls_back_early(monkeypatch: pytest.MonkeyPatch, precise: bool):
    if not precise:
        monkeypatch.setattr(pacing, "open_timerfd", lambda loop: None)
    pacer = Pacer()
    try:
        if not precise:
            assert not pacer.precise  # the sleep-and-spin fallback
        elif sys.platform.startswith("linux"):
            assert pacer.precise  # Linux: the timerfd is used
        base = time.perf_counter()
        targets = [base + d for d in (0.0, 0.0002, 0.0005, 0.003, 0.02)]
        targets += [targets[-1] + i * 0.0001 for i in range(1, 50)]  # a 10k/s schedule
        for target in targets:
            assert await _called_at(pacer, target) >= target
        past = time.perf_counter() - 1.0
        assert await _called_at(pacer, past) >= past  # the past: called back at once
    finally:
        pacer.close()


@pytest.mark.parametrize("precise", [True, False])
async def test_pacer_rearm_and_cancel(monkeypatch: pytest.MonkeyPatch, precise: bool):
    if not precise:
        monkeypatch.setattr(pacing, "open_timerfd", lambda loop: None)
    pacer = Pacer()
    calls: list[str] = []
    try:
        pacer.call_at(time.perf_counter() + 0.02, lambda: calls.append("cancelled"))
        pacer.cancel()
        pacer.call_at(time.perf_counter() + 0.02, lambda: calls.append("replaced"))
        target = time.perf_counter() + 0.002
        assert await _called_at(pacer, target) >= target  # arming again replaces the last
        await asyncio.sleep(0.05)
        assert calls == []
    finally:
        pacer.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_background_worker_runs_at_the_lowest_priority():
    executor = background_executor()
    try:
        tid, nice = executor.submit(
            lambda: (threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0))
        ).result(timeout=10)
    finally:
        executor.shutdown()
    assert tid != threading.get_native_id()
    assert nice == BACKGROUND_NICE
    assert os.getpriority(os.PRIO_PROCESS, 0) != BACKGROUND_NICE  # the caller is untouched


async def test_rate_ceiling_limits_starts_per_window():
    ceiling = RateCeiling(50.0)  # windows of 0.1 s holding 5 starts
    starts = []
    deadline = time.monotonic() + 5
    for _ in range(15):
        await ceiling.acquire()
        starts.append(time.monotonic())
        assert time.monotonic() < deadline
    # any 0.1 s window holds at most 5 starts
    for i in range(len(starts) - 5):
        assert starts[i + 5] - starts[i] >= 0.1 - 1e-3


async def test_rate_ceiling_waiters_queue_instead_of_each_polling():
    # 32 workers held back for ~0.4 s: only the first in line polls the window (every 1 ms);
    # before, each of the 32 did, ~13,000 polls instead of ~400. They start in arrival order.
    ceiling = RateCeiling(50.0)
    polls = 0
    flush = ceiling._throttler.flush

    def counted_flush() -> None:
        nonlocal polls
        polls += 1
        flush()

    ceiling._throttler.flush = counted_flush  # type: ignore[method-assign]
    for _ in range(5):  # the first window's worth starts at once
        await ceiling.acquire()
    order: list[int] = []

    async def worker(i: int) -> None:
        await ceiling.acquire()
        order.append(i)

    tasks = [asyncio.create_task(worker(i)) for i in range(32)]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert order == list(range(32))
    # ~0.1 s per 5 starts: 0.6-0.7 s of polling at most once per ms, plus one per acquire.
    assert polls < 2_000


def test_compaction_waits_while_sending_is_busy_but_not_forever():
    busy, quiet = COMPACT_DEFER_BUSY + 0.3, COMPACT_DEFER_BUSY - 0.3
    assert defer_compaction(busy, backlog=1, stopping=False)
    assert not defer_compaction(quiet, backlog=1, stopping=False)
    assert not defer_compaction(busy, backlog=COMPACT_MAX_BACKLOG, stopping=False)
    assert not defer_compaction(busy, backlog=1, stopping=True)
