"""When requests may start: open-loop schedules, precise waits, and a request-rate ceiling.

Closed-loop concurrency needs no code here (the runner starts N workers). Open loop uses a
precomputed schedule so that lateness is measured against the plan (wrk2's lesson): a request
that starts late still carries its planned instant, and its ``total_s`` includes the lag.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator

from asyncio_throttle import Throttler

from batchrunner.timerfd import open_timerfd

#: Without a timerfd: sleep until this close to the target, then yield to the loop until it
#: passes. uvloop's timers have 1 ms resolution; spinning the last stretch keeps p99 send lag
#: well under it, at the cost of a busy core.
SPIN_WINDOW_S = 0.0015


def schedule_offsets(rate: float, arrival: str = "constant", seed: int = 0) -> Iterator[float]:
    """Seconds after the start at which the i-th request is due (an endless, lazy sequence).

    :param rate: mean requests per second.
    :param arrival: ``constant`` (evenly spaced) or ``poisson`` (exponential gaps, seeded).
    :param seed: RNG seed for ``poisson``; the same seed gives the same schedule.
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if arrival == "constant":
        interval = 1.0 / rate
        i = 0
        while True:
            yield i * interval
            i += 1
    elif arrival == "poisson":
        rng = random.Random(seed)
        t = 0.0
        while True:
            yield t
            t += rng.expovariate(rate)
    else:
        raise ValueError(f"unknown arrival process {arrival!r}")


class Pacer:
    """Calls back at ``perf_counter`` instants, as precisely as possible.

    On Linux a timerfd wakes the loop at the instant (no spinning, see :mod:`batchrunner.timerfd`);
    elsewhere a loop timer wakes it :data:`SPIN_WINDOW_S` early and it spins the rest. One
    pending instant at a time: arming again replaces it. :meth:`close` when done.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer = open_timerfd(self._loop)
        self._handle: asyncio.Handle | None = None

    @property
    def precise(self) -> bool:
        """Whether the timerfd is used."""
        return self._timer is not None

    def call_at(self, target: float, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once ``time.perf_counter()`` has reached ``target``."""
        if self._timer is not None:
            self._timer.call_at(target, callback)
            return
        self.cancel()

        def spin() -> None:
            if time.perf_counter() >= target:
                self._handle = None
                callback()
            else:
                self._handle = self._loop.call_soon(spin)

        remaining = target - time.perf_counter()
        if remaining > SPIN_WINDOW_S:
            self._handle = self._loop.call_later(remaining - SPIN_WINDOW_S, spin)
        else:
            self._handle = self._loop.call_soon(spin)  # never from inside call_at itself

    def cancel(self) -> None:
        """Forget the pending instant, if any."""
        if self._timer is not None:
            self._timer.cancel()
        elif self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        self.cancel()
        if self._timer is not None:
            self._timer.close()
            self._timer = None


class RateCeiling:
    """At most ``rate`` request starts per second, through asyncio-throttle.

    A sliding window of 1/10 s (at least one request) keeps bursts small while staying within
    the limit over any window, which is what gateway rate limits count.

    Waiters queue on a lock, so that only the first polls the throttler (every 1 ms) and they
    start in the order they came. Without it every waiter polled, up to 64,000 wake-ups a second
    with ``-c 64``: 64 workers held at 1,000/s burnt 0.66 CPU-s in 2.9 s, against 0.12 with the
    lock (at 18,000/s: 0.8-1.1 against 0.5-0.67), and started in no particular order. One
    poller (1 ms steps) reaches the rate a little later than 64 staggered ones did (for
    18,000/s, 17,931-18,010/s in four runs of five, against 17,985-18,056/s): it stays a
    ceiling. See docs/benchmarks.md.

    A stop (*stopping* true) ends every wait within a poll: the waiters return at once, and
    their callers see the stop before sending (a wait for ``--rpm 30`` had held a Ctrl-C for
    the whole ``--drain-timeout``).

    :param rate: requests per second (``--max-rate``; ``--rpm`` divides by 60).
    :param stopping: whether the run is stopping.
    """

    def __init__(self, rate: float, stopping: Callable[[], bool] = lambda: False) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        per_window = max(1, math.floor(rate / 10))
        self.rate = rate
        self._throttler = _StoppableThrottler(
            rate_limit=per_window, period=per_window / rate, retry_interval=0.001
        )
        self._stopping = stopping
        self._queue = asyncio.Lock()
        #: Requests waiting for the ceiling right now (a stop ends them unsent).
        self.waiting = 0

    async def acquire(self) -> None:
        self.waiting += 1
        try:
            if self._stopping():
                return
            async with self._queue:
                await self._throttler.acquire_unless(self._stopping)
        finally:
            self.waiting -= 1


class _StoppableThrottler(Throttler):
    """asyncio-throttle's throttler, whose wait for room also ends at a stop."""

    async def acquire_unless(self, stopping: Callable[[], bool]) -> None:
        """:meth:`Throttler.acquire`, returning without a start once *stopping()* is true."""
        while True:
            if stopping():
                return
            self.flush()
            if len(self._task_logs) < self.rate_limit:
                break
            await asyncio.sleep(self.retry_interval)
        self._task_logs.append(time.monotonic())


class LoopLagMeter:
    """How late the event loop runs a 20 ms timer: the client's own saturation, whatever the
    CPU says (an open loop that spins keeps a core busy by design; a loop that cannot run a
    timer on time is saturated). While the loop is late, every response it reads is read late
    too, and the row's ``latency_s``/``ttfb_s``/``ttft_s`` count that delay.

    Each lag is counted in a 0.5 ms bin (up to 10 s; longer ones in the last), none is kept,
    so memory stays the same for runs of days.
    """

    INTERVAL_S = 0.02
    BIN_S = 0.0005
    _BINS = 20_000

    def __init__(self) -> None:
        self.counts = [0] * (self._BINS + 1)
        self.n = 0
        self.max_s = 0.0

    def add(self, lag_s: float) -> None:
        self.counts[min(int(lag_s / self.BIN_S), self._BINS)] += 1
        self.n += 1
        self.max_s = max(self.max_s, lag_s)

    async def run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.INTERVAL_S)
            self.add(max(0.0, time.perf_counter() - start - self.INTERVAL_S))

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bin holding the ``q`` quantile (never below it); None when
        nothing was measured."""
        if not self.n:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min((i + 1) * self.BIN_S, self.max_s)
        return self.max_s

    def describe(self) -> dict[str, float | int | None]:
        """``{samples, p50_s, p99_s, max_s, over_10ms}`` (JSON-ready; ``over_10ms``: samples
        10 ms late or more, so that one blip in a short run is not read as a late loop)."""
        return {"samples": self.n, "p50_s": self.quantile(0.5), "p99_s": self.quantile(0.99),
                "max_s": self.max_s if self.n else None,
                "over_10ms": sum(self.counts[round(0.01 / self.BIN_S):])}
