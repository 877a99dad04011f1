"""Fault decisions: which request gets which injected failure, and the per-key rate limit.

Unlike the behaviour model, faults are *not* a function of the request: they come from one
seeded sequence consumed in arrival order, so a retried request (same body) can succeed where its
first attempt failed, and a run is still reproducible for the same seed and arrival order. A rate
of 0 never draws and a rate of 1 always fires, which keeps tests deterministic.
"""

from __future__ import annotations

import random

from batchrunner.emulator.config import EmulatorConfig

# Names used in ground truth and counters.
DROP = "drop"
STALL = "stall"
HTTP_429 = "http_429"
HTTP_500 = "http_500"
HTTP_529 = "http_529"
MIDSTREAM = "midstream_error"
JOB_FAILURE = "job_failure"
KEY_RATE_LIMIT = "key_rate_limit"
MODEL_FAILURE = "model_failure"

#: HTTP status of each status fault.
STATUS_OF = {HTTP_429: 429, HTTP_500: 500, HTTP_529: 529}


class FaultPicker:
    """Draws faults from one seeded sequence.

    :param seed: the configured seed (mixed with a constant so it differs from the behaviour
        model's stream).
    """

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed ^ 0x5EED_FA17)

    def transport(self, cfg: EmulatorConfig) -> str | None:
        """Drop or stall before any response byte (every request kind)."""
        drop, stall = cfg.fault_drop, cfg.fault_stall
        if not (drop or stall):
            return None
        u = self._rng.random()
        if u < drop:
            return DROP
        if u < drop + stall:
            return STALL
        return None

    def status(self, cfg: EmulatorConfig) -> str | None:
        """An upstream error status instead of a response (sync and stream)."""
        r429, r500, r529 = cfg.fault_429, cfg.fault_500, cfg.fault_529
        if not (r429 or r500 or r529):
            return None
        u = self._rng.random()
        if u < r429:
            return HTTP_429
        if u < r429 + r500:
            return HTTP_500
        if u < r429 + r500 + r529:
            return HTTP_529
        return None

    def midstream(self, cfg: EmulatorConfig, n_tokens: int) -> int | None:
        """How many tokens a stream delivers before its ``error`` event, or ``None``."""
        rate = cfg.fault_midstream
        if not rate or self._rng.random() >= rate:
            return None
        return self._rng.randrange(max(1, n_tokens))

    def job(self, cfg: EmulatorConfig) -> bool:
        """Whether an async job ends ``failed``."""
        rate = cfg.fault_job
        return bool(rate) and self._rng.random() < rate


class RateLimiter:
    """Per-key token buckets: ``rps`` tokens per second, at most ``burst`` stored.

    Time is passed in (monotonic seconds), so tests can drive it without sleeping.
    """

    _MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def clear(self) -> None:
        self._buckets.clear()

    def check(self, key: str, now: float, rps: float, burst: int) -> float:
        """Take one token for ``key``.

        :param key: the virtual key, or ``""`` for requests without one.
        :param now: monotonic time in seconds.
        :param rps: refill rate; ``<= 0`` means unlimited.
        :param burst: bucket size; ``<= 0`` means ``max(1, rps)``.
        :return: 0 when allowed, else the seconds until a token is available.
        """
        if rps <= 0:
            return 0.0
        cap = float(burst) if burst > 0 else max(1.0, rps)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self._MAX_KEYS:
                self._buckets.clear()
            tokens = cap
        else:
            tokens = min(cap, b[0] + (now - b[1]) * rps)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rps
