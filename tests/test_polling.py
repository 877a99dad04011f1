from __future__ import annotations

import random

import pytest

from batchrunner.polling import MIN_OBSERVATIONS, PollPlanner


def simulate(planner: PollPlanner, duration: float, ttl: float | None = None) -> tuple[int, float]:
    """Poll a job that completes at ``duration``: (polls made, detection delay)."""
    t = planner.next_delay(0.0, ttl)
    polls = 1
    while t < duration:
        t += planner.next_delay(t, ttl)
        polls += 1
    return polls, t - duration


def test_detection_delay_is_bounded_by_a_share_of_the_duration():
    planner = PollPlanner(rng=random.Random(1))
    for duration in (0.05, 0.3, 1.0, 7.5, 42.0, 200.0):
        _, delay = simulate(planner, duration)
        assert delay <= 0.1 * duration + 0.1 + 1e-9, duration


def test_learned_durations_cut_the_polls_per_job():
    rng = random.Random(2)
    planner = PollPlanner(rng=random.Random(3))
    durations = [rng.uniform(8.0, 12.0) for _ in range(400)]
    cold = [simulate(planner, d)[0] for d in durations[:5]]
    for d in durations[:MIN_OBSERVATIONS]:
        planner.observe(d)
    warm = sorted(simulate(planner, d)[0] for d in durations)
    assert min(cold) > 20  # without knowledge: many polls to keep the delay bound
    assert warm[len(warm) // 2] <= 4  # median polls per job once durations are known
    for d in durations:
        planner.observe(d)
        assert simulate(planner, d)[1] <= 0.1 * d + 0.1 + 1e-9


def test_gaps_stay_well_inside_the_ttl():
    planner = PollPlanner(max_gap_s=30.0, rng=random.Random(4))
    assert planner.next_delay(10_000.0) <= 30.0
    assert planner.next_delay(10_000.0, ttl_s=20) <= 5.0
    assert planner.next_delay(0.0, ttl_s=0.2) >= planner.min_gap_s * 0.85


def test_retry_backoff_grows_and_is_capped():
    planner = PollPlanner(rng=random.Random(5))
    delays = [planner.retry_delay(n) for n in range(1, 20)]
    assert delays[0] <= 0.2 and max(delays) <= planner.max_gap_s


def test_bad_parameters():
    with pytest.raises(ValueError):
        PollPlanner(relative_gap=0)
    with pytest.raises(ValueError):
        PollPlanner(min_gap_s=2, max_gap_s=1)
