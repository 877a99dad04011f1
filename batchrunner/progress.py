"""Live counters of a run and the one-line progress display on stderr.

Counters are updated on the event loop for every finished request (a few integer additions and
one ring-buffer store), and the display is redrawn a few times a second by its own task, so
drawing never slows the request path. The display is silent with ``--quiet`` or when stderr is
not a terminal.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter, deque
from typing import Any, TextIO

from batchrunner.report_text import fmt_usd

RECENT_LATENCIES = 2048
REFRESH_S = 0.5
#: With requests in flight and none finished for this long, the line says so instead of an
#: ETA (which, from the run's average rate, would read 0:00 while stalled requests wait out a
#: 600 s read timeout).
STALL_S = 5.0


class LiveStats:
    """What the run has done so far (this session), for progress and stop decisions."""

    def __init__(self, total: int | None, already_done: int = 0,
                 session_limit: int | None = None) -> None:
        self.total = total
        self.already_done = already_done
        #: ``--max-requests``: the most requests this session sends (its ETA ends there).
        self.session_limit = session_limit
        self.started = time.perf_counter()
        self.done = 0
        #: Requests this session sent (or submitted): what --max-requests counts.
        self.sent = 0
        self.in_flight = 0
        self.by_status: Counter[str] = Counter()
        self.errors_by_type: Counter[str] = Counter()
        self.output_tokens = 0
        self.rejected = 0
        self.jobs: Any = None  # async mode: a JobCounters (submitted, outstanding, polls)
        #: ``--max-cost``: the run's spend so far and its limit, in dollars.
        self.spent_usd: float | None = None
        self.cost_limit_usd: float | None = None
        #: The session's :class:`~batchrunner.ratelimit.RateLimits`, if 429s are waited out.
        self.rate_limits: Any = None
        self._latencies: deque[float] = deque(maxlen=RECENT_LATENCIES)
        #: When :meth:`line` last saw ``done`` change (to REFRESH_S): a stall is seen from the
        #: display, at no cost per request.
        self.last_done = self.started
        self._done_seen = 0

    def record(self, row: dict[str, Any]) -> None:
        self.done += 1
        status = row.get("status")
        self.by_status[status] += 1
        if status != "ok":
            self.errors_by_type[row.get("error_type") or status] += 1
        latency = row.get("latency_s")
        if latency is not None:
            self._latencies.append(latency)
        tokens = row.get("output_tokens")
        if tokens:
            self.output_tokens += tokens

    @property
    def failed(self) -> int:
        return self.done - self.by_status.get("ok", 0) - self.by_status.get("cancelled", 0)

    def latency_p50(self) -> float | None:
        return statistics.median(self._latencies) if self._latencies else None

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.done / elapsed
        finished = self.already_done + self.done
        parts = [f"{finished:,}" + (f"/{self.total:,}" if self.total is not None else "")]
        if self.total:
            parts[0] += f" ({100.0 * finished / self.total:.1f}%)"
        limit = self.session_limit
        if limit is not None:
            parts[0] += f", this session {self.sent:,}/{limit:,} sent"
        parts.append(f"{rate:,.1f} req/s")
        jobs = self.jobs
        if jobs is not None:
            expired = self.by_status.get("expired", 0)
            parts.append(
                f"submitted {jobs.submitted:,} | pending {jobs.outstanding:,} | "
                f"completed {self.by_status.get('ok', 0):,} | "
                f"failed {self.failed - expired:,} | expired {expired:,}"
            )
        else:
            parts.append(f"errors {self.failed:,}")
        parts.append(f"in flight {self.in_flight:,}")
        limits = self.rate_limits
        limited = limits is not None and limits.active
        if limited:  # why it slowed down, and how many of those in flight only wait
            waiting = limits.waiting
            parts.append(f"429s {limits.limited:,}"
                         + (f", {waiting:,} waiting for the rate limit" if waiting else ""))
        p50 = self.latency_p50()
        if p50 is not None:
            parts.append(f"p50 {p50 * 1000:,.0f} ms")
        if self.spent_usd is not None and self.cost_limit_usd is not None:
            parts.append(f"{fmt_usd(self.spent_usd)} of {fmt_usd(self.cost_limit_usd)}")
        now = time.perf_counter()
        if self.done != self._done_seen:
            self._done_seen, self.last_done = self.done, now
        quiet_s = now - self.last_done
        if self.in_flight and quiet_s >= STALL_S:
            parts.append(f"none finished for {_fmt_duration(quiet_s)}"
                         + (" (rate-limited)" if limited and limits.waiting else ""))
        elif (self.total or limit is not None) and rate > 0:
            left = max(0, self.total - finished - self.rejected) if self.total else None
            if limit is not None:
                # Those not sent yet and those in flight (jobs an async resume found in
                # jobs.jsonl finish too, but --max-requests does not count them).
                session_left = limit - self.sent + self.in_flight
                left = min(left, session_left) if left is not None else session_left
            parts.append(f"ETA {_fmt_duration(max(0, left) / rate)}")
        return " | ".join(parts)


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressDisplay:
    """Redraws :meth:`LiveStats.line` on one terminal line until stopped."""

    def __init__(
        self, stats: LiveStats, stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        self.stats = stats
        self.stream = stream or sys.stderr
        self.enabled = enabled and _isatty(self.stream)
        self._width = 0

    async def run(self) -> None:
        try:
            while self.enabled:
                self.draw()
                await asyncio.sleep(REFRESH_S)
        finally:
            self.clear()

    def draw(self) -> None:
        text = self.stats.line()
        pad = max(0, self._width - len(text))
        self._write("\r" + text + " " * pad)
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            self._write("\r" + " " * self._width + "\r")

    def _write(self, text: str) -> None:
        # A terminal that went away (closed, the ssh session dropped: EIO) ends the display,
        # not the run: the display's error used to abort it and cancel the requests in flight.
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError:
            self.enabled = False
            self._width = 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
