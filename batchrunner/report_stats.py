"""Numeric building blocks of the report: percentiles, time buckets, requests in flight, CDFs.

Pure numpy on float arrays (NaN = missing), no knowledge of rows or runs, so each function can be
checked against a brute-force computation. Instants are float seconds (epoch or relative);
percentiles use linear interpolation between closest ranks (numpy's default, the same as
pandas' ``quantile`` and DuckDB's ``quantile_cont``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PERCENTILES",
    "SessionWindows",
    "Timeline",
    "bucket_width",
    "cdf_points",
    "distribution",
    "histogram",
    "in_flight",
    "timeline",
]

#: Percentiles of every distribution in the report.
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)

# Bucket widths a person reads easily, in seconds.
_NICE_WIDTHS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60,
                120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def distribution(values: np.ndarray, *, owned: bool = False) -> dict[str, float | int | None]:
    """``n``, ``mean``, ``p50``/``p90``/``p95``/``p99`` and ``max`` of the non-NaN values.

    :param values: float array; NaN entries are ignored (and not counted in ``n``).
    :param owned: the caller gives the array away: it may be reordered instead of copied (a
        million-row run's summary then needs one copy of each metric, not three).
    :return: a dict with every key; figures are None when no value is left.
    """
    nan = np.isnan(values)
    finite = values[~nan] if nan.any() else values
    del nan
    out: dict[str, float | int | None] = {"n": int(finite.size)}
    if finite.size == 0:
        out.update({"mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None})
        return out
    out["mean"] = float(finite.mean())
    qs = np.percentile(finite, PERCENTILES, overwrite_input=owned or finite is not values)
    out.update({f"p{p}": float(q) for p, q in zip(PERCENTILES, qs, strict=True)})
    out["max"] = float(finite.max())
    return out


def cdf_points(values: np.ndarray, points: int = 200) -> list[list[float]]:
    """``[value, fraction]`` pairs describing the empirical CDF, at most *points* + tail ones.

    Evenly spaced fractions plus 0.995/0.999/0.9999, so the tail that matters in latency plots
    is drawn from real quantiles instead of a straight line.
    """
    finite = np.sort(values[~np.isnan(values)])
    if finite.size == 0:
        return []
    fractions = np.unique(np.concatenate([np.linspace(0, 1, points + 1), [0.995, 0.999, 0.9999]]))
    qs = np.quantile(finite, fractions)
    return [[float(q), float(f)] for q, f in zip(qs, fractions, strict=True)]


def histogram(values: np.ndarray, bins: int = 40) -> dict[str, object] | None:
    """Counts over *bins* equal bins from 0 (or the minimum, if negative) to the 99.5th
    percentile; larger values are counted in ``overflow`` so one outlier cannot flatten the plot.
    """
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return None
    low = min(0.0, float(finite.min()))
    high = float(np.percentile(finite, 99.5))
    if high <= low:
        high = low + max(abs(low), 1e-3)
    counts, edges = np.histogram(finite, bins=bins, range=(low, high))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
            "overflow": int((finite > high).sum())}


def bucket_width(span_s: float, max_buckets: int = 120) -> float:
    """The smallest readable width (0.1 s, 1 s, 5 s, 1 min, ...) giving at most *max_buckets*
    buckets: with the default, runs up to two minutes get per-second (or finer) buckets, so a
    fast run still shows a shape, and longer ones get wider buckets.
    """
    if not math.isfinite(span_s) or span_s <= 0:
        return 1.0
    for width in _NICE_WIDTHS:
        if span_s / width <= max_buckets:
            return float(width)
    return float(_NICE_WIDTHS[-1] * math.ceil(span_s / (_NICE_WIDTHS[-1] * max_buckets)))


def in_flight(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Requests in flight over time, from ``[start, end]`` intervals.

    :param starts: interval starts (no NaN).
    :param ends: interval ends, same length (an end before its start counts as a zero interval).
    :param edges: bucket edges, ascending (``len(edges) - 1`` buckets).
    :return: per bucket the time-weighted mean and the maximum number in flight; the maximum
        over the whole run; and the time with at least one request in flight (seconds).
    """
    ends = np.maximum(ends, starts)
    s = np.sort(starts)
    e = np.sort(ends)
    cs = np.concatenate([[0.0], np.cumsum(s)])
    ce = np.concatenate([[0.0], np.cumsum(e)])

    def area(b: np.ndarray) -> np.ndarray:
        # Integral of N(t) from -inf to b: sum over intervals of their part left of b.
        ns = np.searchsorted(s, b, side="left")
        ne = np.searchsorted(e, b, side="left")
        return (b * ns - cs[ns]) - (b * ne - ce[ne])

    widths = np.diff(edges)
    areas = area(edges)
    mean = np.divide(np.diff(areas), widths, out=np.zeros_like(widths), where=widths > 0)

    # Event sweep for maxima: at equal times ends go first, so back-to-back requests do not
    # count as overlapping.
    times = np.concatenate([e, s])
    deltas = np.concatenate([-np.ones(e.size), np.ones(s.size)])
    order = np.lexsort((deltas, times))
    times, running = times[order], np.cumsum(deltas[order])
    peak = int(running.max()) if running.size else 0
    maxima = np.zeros(len(edges) - 1)
    if times.size:
        first = np.searchsorted(times, edges[:-1], side="left")
        last = np.searchsorted(times, edges[1:], side="left")
        at_start = np.where(first > 0, running[np.maximum(first - 1, 0)], 0.0)
        maxima = at_start.copy()
        for k in np.flatnonzero(last > first):
            maxima[k] = max(maxima[k], running[first[k]:last[k]].max())
    # Busy time: where N(t) > 0, from the sweep (sum of gaps between consecutive events).
    busy = float(np.sum(np.diff(times)[running[:-1] > 0])) if times.size > 1 else 0.0
    return mean, maxima, peak, busy


@dataclass(slots=True)
class Timeline:
    """Time buckets of a run: bucket ``k`` covers ``[start + k*width, start + (k+1)*width)``."""

    start: float
    width: float
    edges: np.ndarray
    bucket: np.ndarray  # per row: its bucket index, -1 if it has no completion time


def timeline(start: float, end: float, completed: np.ndarray, max_buckets: int = 120) -> Timeline:
    """Buckets covering ``[start, end]`` and the bucket of each row's completion.

    :param start: the run's first instant (its first schedule or send).
    :param end: the run's last completion.
    :param completed: per row, completion instant (NaN = none: bucket -1).
    """
    span = max(end - start, 0.0)
    width = bucket_width(span, max_buckets)
    count = max(1, math.ceil(span / width) if span > 0 else 1)
    if start + count * width <= end:  # the last completion must fall inside, not on the edge
        count += 1
    edges = start + width * np.arange(count + 1)
    idx = np.full(completed.shape, -1, dtype=np.int64)
    ok = ~np.isnan(completed)
    idx[ok] = np.clip(((completed[ok] - start) // width).astype(np.int64), 0, count - 1)
    return Timeline(start=start, width=width, edges=edges, bucket=idx)


class SessionWindows:
    """How long a run was sending, its sessions' windows summed: from each session's first
    schedule (or send) to its last completion. A run resumed a day after a crash is not
    credited with the idle day in between; a run of one session gets its plain window.

    Rows are given to a session by when they began (else when they completed). A session whose
    rows have no beginning counts from its own start. Feed any number of batches with
    :meth:`add`.
    """

    def __init__(self, session_starts: Iterable[float] = ()) -> None:
        starts = sorted(float(s) for s in session_starts if s is not None)
        self._splits = np.asarray(starts[1:], dtype=np.float64)  # the first bounds nothing
        self._starts = np.asarray(starts or [np.nan], dtype=np.float64)
        self._lo = np.full(len(self._starts), np.inf)
        self._hi = np.full(len(self._starts), -np.inf)

    def add(self, begin: np.ndarray, done: np.ndarray) -> None:
        """:param begin: each row's first instant (NaN if none); :param done: its completion.

        A row that began in one session and was seen done in a later one (an async job
        submitted, then polled after a crash or by ``collect``) counts as activity of the first
        at its beginning and of the later one at its completion: stretching the first session
        to the completion would count the hours between them as sending time.
        """
        at = np.where(np.isfinite(begin), begin, done)
        group = np.searchsorted(self._splits, at, side="right")
        ended = np.where(
            np.isfinite(done), np.searchsorted(self._splits, done, side="right"), group
        )
        later = ended > group
        for g in np.unique(group[np.isfinite(at)]):
            mine = group == g
            self._lo[g] = np.fmin.reduce(begin[mine], initial=self._lo[g])
            self._hi[g] = np.fmax.reduce(done[mine & ~later], initial=self._hi[g])
            self._hi[g] = np.fmax.reduce(begin[mine & later], initial=self._hi[g])
        for g in np.unique(ended[later]):
            self._hi[g] = np.fmax.reduce(done[later & (ended == g)], initial=self._hi[g])

    @property
    def start(self) -> float | None:
        value = float(self._lo.min())
        return value if math.isfinite(value) else None

    @property
    def end(self) -> float | None:
        value = float(self._hi.max())
        return value if math.isfinite(value) else None

    @property
    def span(self) -> float | None:
        """First beginning to last completion, gaps included."""
        start, end = self.start, self.end
        return None if start is None or end is None else max(end - start, 0.0)

    @property
    def active(self) -> float | None:
        """Sending time in seconds, summed over the sessions that have rows (time where two
        windows overlap counts once)."""
        lo = np.where(np.isfinite(self._lo), self._lo, self._starts)
        both = np.isfinite(lo) & np.isfinite(self._hi)
        if not both.any():
            return None
        total, reach = 0.0, -math.inf
        for begin, end in sorted(zip(lo[both].tolist(), self._hi[both].tolist(), strict=True)):
            begin = max(begin, reach)
            if end > begin:
                total += end - begin
                reach = end
        return total
