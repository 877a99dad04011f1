"""Exact percentiles of values read twice, without holding them all.

The closing summary of a run gives exact p50/p90/p95/p99 of each timing metric over every ok
row. Holding every value costs 8 bytes per row and metric (80 MB for ten metrics of 10M rows),
and sorting one metric at a time needs one pass over the data per metric. Here the first pass
counts values into 65,536 bins that follow float64 order (the top 16 bits of an
order-preserving integer key: sign, exponent and 4 mantissa bits, so a bin spans 1/16 of an
octave). That tells which bin holds each rank a percentile needs; the second pass keeps only the
values of those bins, sorts them and reads the ranks off. Memory: 512 KB of counts per metric
plus the values sharing a bin with a wanted rank (tightly clustered values can put them all in
one: see :meth:`TwoPassPercentiles.plan`). The ranks and the interpolation between them are
computed with numpy's own float steps (``np.percentile``, method ``linear``), so the
percentiles equal those of :func:`batchrunner.report_stats.distribution` over all values, bit
for bit; the mean is a sum of per-batch sums (equal up to rounding).
"""

from __future__ import annotations

import math

import numpy as np

from batchrunner.report_stats import PERCENTILES

_BIN_SHIFT = 48
_BINS = 1 << (64 - _BIN_SHIFT)
_SIGN = np.uint64(1 << 63)


def _bins(values: np.ndarray) -> np.ndarray:
    """The bin of each (non-NaN) float64 value; bins increase with the values."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    # Negative floats sort in reverse of their bits: flip all of them; positive ones: the sign.
    keys = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    return (keys >> np.uint64(_BIN_SHIFT)).astype(np.intp)


def _ranks(n: int) -> list[tuple[int, int, float]]:
    """Per percentile: the two ranks np.percentile interpolates between, and the fraction,
    computed with numpy's own float steps (``(n - 1) * (p / 100)``) so that they are the same."""
    out = []
    for q in np.true_divide(PERCENTILES, 100):
        h = (n - 1) * q
        low = int(np.floor(h))
        out.append((low, min(low + 1, n - 1), float(h - low)))
    return out


def _lerp(a: float, b: float, t: float) -> float:
    # numpy's linear interpolation (numpy.lib._function_base_impl._lerp), step for step.
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


class TwoPassPercentiles:
    """One metric's ``n``, ``mean``, percentiles and ``max`` from two passes over its values.

    Call :meth:`count` with every value (first pass), then :meth:`keep` with the same values
    again (second pass), then :meth:`result`. :meth:`plan` says beforehand how many values the
    second pass will hold.
    """

    def __init__(self) -> None:
        self.n = 0
        self._sum = 0.0
        self._max = -math.inf
        self._counts: np.ndarray | None = None
        self._wanted: dict[int, tuple[int, int]] = {}  # rank -> (its bin, values before the bin)
        self._sizes: dict[int, int] = {}  # wanted bin -> its values counted by the first pass
        self._kept: dict[int, np.ndarray] = {}  # bin -> its values, filled by the second pass
        self._filled: dict[int, int] = {}
        self._extra: dict[int, list[np.ndarray]] = {}  # more values than counted (rows changed)

    def count(self, values: np.ndarray) -> None:
        """First pass: *values* without NaN."""
        if not values.size:
            return
        if self._counts is None:
            self._counts = np.zeros(_BINS, dtype=np.int64)
        self._counts += np.bincount(_bins(values), minlength=_BINS)
        self.n += int(values.size)
        self._sum += float(values.sum())
        self._max = max(self._max, float(values.max()))

    def plan(self) -> int:
        """After the first pass: how many values the second pass will keep."""
        if self._counts is not None:
            before = np.concatenate([[0], np.cumsum(self._counts)])
            for low, high, _ in _ranks(self.n):
                for rank in (low, high):
                    b = int(np.searchsorted(before, rank, side="right")) - 1
                    self._wanted[rank] = (b, int(before[b]))
            self._sizes = {b: int(self._counts[b]) for b, _ in self._wanted.values()}
            self._counts = None  # not needed any more
        return sum(self._sizes.values())

    def _buffers(self) -> None:
        self.plan()
        if not self._kept:  # allocated only when the second pass begins
            for b, size in self._sizes.items():
                self._kept[b] = np.empty(size, dtype=np.float64)
                self._filled[b] = 0
                self._extra[b] = []

    def keep(self, values: np.ndarray) -> None:
        """Second pass: the same values again (any batching)."""
        if not self.n or not values.size:
            return
        self._buffers()
        bins = _bins(values)
        mask = np.isin(bins, np.fromiter(self._kept, dtype=np.intp))
        if not mask.any():
            return
        for b in np.unique(bins[mask]).tolist():
            part = values[bins == b]
            buf, at = self._kept[b], self._filled[b]
            room = min(part.size, buf.size - at)
            buf[at : at + room] = part[:room]
            self._filled[b] = at + room
            if room < part.size:
                self._extra[b].append(part[room:])

    def result(self) -> dict[str, float | int | None]:
        """The figures :func:`~batchrunner.report_stats.distribution` gives (same keys)."""
        out: dict[str, float | int | None] = {"n": self.n}
        if not self.n:
            out.update({"mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None})
            return out
        self._buffers()
        ordered: dict[int, np.ndarray] = {}
        for b, buf in self._kept.items():
            values = buf[: self._filled[b]]
            if self._extra[b]:
                values = np.concatenate([values, *self._extra[b]])
            values.sort()  # in place: no second copy
            ordered[b] = values

        def at(rank: int) -> float | None:
            b, before = self._wanted[rank]
            values = ordered[b]
            if not values.size:
                return None
            # If the rows changed between the passes (another process resumed the closed run),
            # the nearest value kept rather than a failure.
            return float(values[min(max(rank - before, 0), values.size - 1)])

        out["mean"] = self._sum / self.n
        for p, (low, high, frac) in zip(PERCENTILES, _ranks(self.n), strict=True):
            a, b = at(low), at(high)
            out[f"p{p}"] = None if a is None or b is None else _lerp(a, b, frac)
        out["max"] = self._max
        return out
