from __future__ import annotations

import itertools
import statistics
import time

import pytest

from batchrunner.pacing import RateCeiling, schedule_offsets, sleep_until


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


async def test_sleep_until_never_returns_early():
    for delay in (0.0, 0.0005, 0.003, 0.02):
        target = time.perf_counter() + delay
        await sleep_until(target)
        assert time.perf_counter() >= target


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
