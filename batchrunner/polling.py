"""When to poll an async job next: prompt detection with few polls (pure logic, no I/O).

A poll can only notice completion after it happens, so the delay between a job's completion
and our noticing it is at most the gap between two polls. Keeping every gap under a fixed
share of the time already waited (``relative_gap``, default 10 %) bounds that delay to a
tenth of the job's duration, plus ``min_gap_s``, whatever the duration. Polling from the
start that way wastes polls on jobs that cannot be done yet, so the first poll waits until an
early quantile of the durations seen so far in this run (jobs of one set take similar times).
Until the first durations are known, only a few *probe* jobs poll at that pace; the others
poll slowly and are rescheduled the moment an estimate exists, so a burst of thousands of
fresh jobs never turns into a poll storm. Gaps never exceed a quarter of the result TTL, so a
completed result is always read long before it can expire.
"""

from __future__ import annotations

import bisect
import random
from collections import deque

DEFAULT_MIN_GAP_S = 0.1
DEFAULT_MAX_GAP_S = 30.0
DEFAULT_RELATIVE_GAP = 0.1
DEFAULT_FIRST_POLL_S = 0.1
#: The first poll aims at this quantile of observed durations: a fifth of jobs are done by
#: then, and the rest are caught within a few geometric steps.
FIRST_POLL_QUANTILE = 0.2
MIN_OBSERVATIONS = 3
OBSERVATION_WINDOW = 512
#: Jobs polled at the fast pace while durations are still unknown.
PROBES = 8
#: While learning, other jobs wait this long (or half their age) between polls.
LEARNING_GAP_S = 1.0


class PollPlanner:
    """Plans poll delays from the durations observed so far.

    :param relative_gap: a gap is at most this share of the time waited so far.
    :param min_gap_s: smallest gap between two polls of one job.
    :param max_gap_s: largest gap (also capped at a quarter of the job's TTL).
    :param first_poll_s: first poll delay until enough durations are known.
    :param rng: randomness for jitter (seeded in tests).
    """

    def __init__(
        self,
        *,
        relative_gap: float = DEFAULT_RELATIVE_GAP,
        min_gap_s: float = DEFAULT_MIN_GAP_S,
        max_gap_s: float = DEFAULT_MAX_GAP_S,
        first_poll_s: float = DEFAULT_FIRST_POLL_S,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < relative_gap <= 1 or min_gap_s <= 0 or max_gap_s < min_gap_s:
            raise ValueError("need 0 < relative_gap <= 1 and 0 < min_gap_s <= max_gap_s")
        self.relative_gap = relative_gap
        self.min_gap_s = min_gap_s
        self.max_gap_s = max_gap_s
        self.first_poll_s = first_poll_s
        self._rng = rng or random.Random()
        self._recent: deque[float] = deque(maxlen=OBSERVATION_WINDOW)
        self._sorted: list[float] = []

    def observe(self, duration_s: float) -> None:
        """A job was seen finished ``duration_s`` after its submit was accepted."""
        if duration_s < 0:
            return
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._recent.append(duration_s)
        bisect.insort(self._sorted, duration_s)

    def early_estimate(self) -> float | None:
        """The :data:`FIRST_POLL_QUANTILE` of observed durations, once enough are known."""
        if len(self._sorted) < MIN_OBSERVATIONS:
            return None
        return self._sorted[int(FIRST_POLL_QUANTILE * (len(self._sorted) - 1))]

    @property
    def learning(self) -> bool:
        """No duration estimate yet."""
        return len(self._sorted) < MIN_OBSERVATIONS

    def next_delay(self, elapsed_s: float, ttl_s: float | None = None, probe: bool = True) -> float:
        """Seconds until the next poll of a job submitted ``elapsed_s`` ago and still pending.

        :param probe: while learning, whether this job is one of the few polled at full pace.
        """
        if self.learning and not probe:
            gap = max(LEARNING_GAP_S, 0.5 * elapsed_s)
            if ttl_s:
                gap = min(gap, max(self.min_gap_s, ttl_s / 4))
            return min(gap, self.max_gap_s) * self._rng.uniform(0.85, 1.0)
        gap = max(self.min_gap_s, self.relative_gap * elapsed_s)
        if elapsed_s <= 0:
            gap = max(gap, self.first_poll_s)
        cap = self.max_gap_s
        if ttl_s:
            cap = min(cap, max(self.min_gap_s, ttl_s / 4))
        estimate = self.early_estimate()
        if estimate is not None and elapsed_s + gap < estimate:
            # Nothing to learn before the early quantile: go straight there (no jitter, which
            # would only spend a poll just before it; submit times already spread jobs).
            return min(estimate - elapsed_s, cap)
        # Jitter only shortens, so the detection bound holds; it spreads jobs submitted together.
        return min(gap, cap) * self._rng.uniform(0.85, 1.0)

    def retry_delay(self, failures: int) -> float:
        """Back-off after a poll that failed in transit (not a job failure)."""
        return min(self.max_gap_s, self.min_gap_s * (2 ** min(failures, 10))) * self._rng.uniform(
            0.5, 1.0
        )
