"""The closing summary of a run, computed from its result rows (never from live counters).

A thin front for :mod:`batchrunner.report`, so ``run`` and ``batchrunner report`` compute every
figure with the same code. Figures say which rows they use: timing percentiles are over ``ok``
rows only (a failed request's latency measures the failure, not the service); counts,
throughput, tokens and cost include every row. Cost uses the bundled genai-prices data; a model
it cannot price is listed, never counted as $0.

:func:`summarize_batches` gives the same dict from the rows one part at a time (the end of a
million-row run must not build a DataFrame of every row): each part goes through the report's
own per-rows code, and only sums and counts are kept; the exact percentiles take one more pass
over the timing columns (:mod:`batchrunner.quantiles`), so memory does not grow with the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchrunner import report_stats as stats
from batchrunner.pricing import CATEGORIES, FEES, PriceBook
from batchrunner.quantiles import TwoPassPercentiles
from batchrunner.report import (
    _NONE,
    _STATUSES,
    METRICS,
    SUMMARY_COLUMNS,
    _floats,
    _frame,
    _num,
    _ratio,
    _section,
    add_to_windows,
    failed_types,
    summarize_table,
)
from batchrunner.report_stats import SessionWindows
from batchrunner.report_text import format_short
from batchrunner.schedule_check import ScheduleCheck

__all__ = ["SUMMARY_COLUMNS", "format_summary", "summarize", "summarize_batches"]

# Rows framed at a time: a store part (50,000 rows) as one pandas frame with its temporaries
# costs tens of MB; 16,384-row slices keep the peak of 1M rows ~60 MB lower at the same speed.
_SLICE_ROWS = 16_384

# The send lag's entry among the percentiles' passes: queue_wait_s of every sent row of an
# open-loop session, whatever its status (the metrics' entries are over ok rows).
_SEND_LAG = "send lag"

# Values the percentiles' second pass may hold at once, over all the metrics read together
# (8 MB): the values of one clustered metric can fill the bins it needs (see quantiles.py).
_KEEP_BUDGET = 1 << 20


def summarize(table: pa.Table, session_starts: Sequence[float] = (),
              schedule: Sequence[tuple[Any, ...]] = ()) -> dict[str, Any]:
    """Counts, throughput, percentiles, token totals and cost of a run's rows.

    :param table: rows with at least :data:`SUMMARY_COLUMNS`.
    :param session_starts: when each session of the run began (``run.json``'s sessions):
        ``wall_s`` then sums the sessions' windows, so that the rates leave out the time
        between a stop and its resume; ``span_s`` is first row to last either way.
    :param schedule: each session's start, ``--rate`` and in-flight cap
        (:func:`~batchrunner.schedule_check.open_loop_sessions` of ``run.json``).
    :return: a JSON-serialisable dict (stable keys): ``requests``, ``status``, ``error_types``
        (failed rows: error, timeout, expired; cancelled rows only in ``status``), ``wall_s``,
        ``span_s``, ``requests_per_s``, ``output_tokens_per_s``, one entry per timing column
        (``latency_s``, ``ttft_s``, ``total_s``, ...: ``n``, ``mean``, ``p50``, ``p90``,
        ``p95``, ``p99``, ``max`` over ok rows, or None), ``tokens``, ``cost`` and
        ``schedule`` (whether an open loop kept its schedule; None for a closed loop).
    """
    return summarize_table(table, session_starts=session_starts, schedule=schedule)


def summarize_batches(
    batches: Iterable[pa.Table],
    book: PriceBook | None = None,
    *,
    reread: Callable[[list[str]], Iterable[pa.Table]] | None = None,
    session_starts: Sequence[float] = (),
    schedule: Sequence[tuple[Any, ...]] = (),
) -> dict[str, Any]:
    """:func:`summarize` of the rows of all *batches*, holding one batch at a time.

    Kept between batches: counts, sums, the window's ends and, for the percentiles without
    *reread*, the non-null timing values of ok rows (float64, 8 bytes per row and metric).
    Cost is priced batch by batch; rates are per (model, UTC day), so the sums are the same.

    :param batches: tables with at least :data:`SUMMARY_COLUMNS` (e.g.
        ``RunStore.iter_batches(SUMMARY_COLUMNS)``); consumed once.
    :param book: prices (default: bundled genai-prices data).
    :param reread: gives the same rows again, only the named columns (e.g.
        ``store.iter_batches``). With it, no timing values are kept: the percentiles come from
        one more pass over the timing columns (:class:`~batchrunner.quantiles.TwoPassPercentiles`),
        and memory no longer grows with the rows.
    :param session_starts: as for :func:`summarize`.
    :param schedule: as for :func:`summarize`.
    :return: the dict :func:`summarize` returns for the same rows (floats up to rounding).
    """
    book = book or PriceBook()
    n = sent = 0
    status: dict[str, int] = {}
    errors: dict[str, int] = {}
    tokens = dict.fromkeys((*CATEGORIES, "web_search_requests"), 0)
    usd = dict.fromkeys((*CATEGORIES, *FEES, "total"), 0.0)
    complete = True
    retried: dict[str, Any] = {"attempts": 0, "rows": 0, "usd": 0.0, "unpriced_attempts": 0,
                               "unpriced_models": []}
    cut = {"rows": 0, "retried_attempts": 0, "output_tokens_at_least": 0}
    unpriced: set[str] = set()
    fast_only: dict[str, bool] = {}  # a priced model whose fast-mode rows have no rates
    seen_models: dict[str, int] = {}  # first appearance, the order summarize() lists them in
    windows = SessionWindows(session_starts)
    ok_values: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    two_pass = {m: TwoPassPercentiles() for m in (*METRICS, _SEND_LAG)}
    check = ScheduleCheck(schedule)
    lag_values: list[np.ndarray] = []
    for batch in _slices(batches, _SLICE_ROWS):
        f, _cards = _frame(batch, (), book)
        # The report's own per-rows figures (no distributions: those need every value).
        section = _section(f, None, ())
        n += section["requests"]
        sent += section["sent"]
        for key, count in section["status"].items():
            status[key] = status.get(key, 0) + count
        for error_type, count in failed_types(section["errors"]).items():
            errors[error_type] = errors.get(error_type, 0) + count
        t = section["tokens"]
        for c in tokens:
            tokens[c] += t[c]
        cost = section["cost"]
        for key, value in cost["usd"].items():
            usd[key] += value
        complete = complete and cost["complete"]
        for key, value in cost["retried"].items():
            if key == "unpriced_models":
                retried[key] = sorted({*retried[key], *value})
                unpriced.update(value)
                for model in value:
                    fast_only.setdefault(model, False)
                    seen_models.setdefault(model, len(seen_models))
            else:
                retried[key] += value
        for key, count in cost["cut_streams"].items():
            cut[key] += count
        for m in cost["unpriced_models"]:
            unpriced.add(m["model"])
            fast_only[m["model"]] = (fast_only.get(m["model"], True)
                                     and m["reason"] == "no fast-mode rates")
        for model in f["model_key"].cat.categories:
            seen_models.setdefault(str(model), len(seen_models))
        add_to_windows(windows, f)
        if check.open_loop:
            lag = _send_lags(check, f["scheduled_at"].to_numpy(), f["queue_wait_s"].to_numpy())
            check.add(f["scheduled_at"].to_numpy(), f["sent_at"].to_numpy())
            if reread is not None:
                two_pass[_SEND_LAG].count(lag)
            elif lag.size:
                lag_values.append(lag)
        ok = (f["status"] == "ok").to_numpy()
        for m in METRICS:  # not _SEND_LAG: its values are all sent rows' (above)
            values = f[m].to_numpy()[ok]
            values = values[~np.isnan(values)]
            if reread is not None:
                two_pass[m].count(values)
            elif values.size:
                ok_values[m].append(values)  # a copy: the batch's frame is not kept
        del f, section
    wall = windows.active
    # Same order as summarize(): known statuses first, then the others by count.
    ordered = [s for s in _STATUSES if status.get(s)]
    ordered += sorted((s for s in status if s not in _STATUSES and status[s]),
                      key=lambda s: -status[s])
    out: dict[str, Any] = {
        "requests": n,
        "status": {s: status[s] for s in ordered},
        "error_types": dict(sorted(errors.items(), key=lambda e: (-e[1], e[0]))),
        "wall_s": _num(wall),
        "span_s": _num(windows.span),
        "requests_per_s": _ratio(sent, wall),  # never-sent rows left out, as in report
        "output_tokens_per_s": _ratio(float(tokens["output"]), wall),
    }
    if reread is not None:
        dists: dict[str, dict[str, Any]] = {}
        for group in _reread_groups({m: q.plan() for m, q in two_pass.items() if q.n}):
            for table in reread(_reread_columns(group)):
                ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
                for m in group:
                    if m == _SEND_LAG:
                        two_pass[m].keep(_send_lags(check, _floats(table, "scheduled_at"),
                                                    _floats(table, "queue_wait_s")))
                        continue
                    values = _floats(pa.table({m: pc.drop_null(pc.filter(table.column(m), ok))}), m)
                    two_pass[m].keep(values[~np.isnan(values)])  # as in the first pass
            for m in group:
                dists[m] = two_pass[m].result()
                two_pass[m] = TwoPassPercentiles()  # its kept values go now
        for m in METRICS:
            out[m] = dists.get(m)
        lag_dist = dists.get(_SEND_LAG)
    else:
        for m in METRICS:
            parts = ok_values.pop(m)
            out[m] = stats.distribution(np.concatenate(parts), owned=True) if parts else None
            del parts
        lag_dist = (stats.distribution(np.concatenate(lag_values), owned=True)
                    if lag_values else None)
        del lag_values
    out["tokens"] = {
        "input": tokens["input"], "output": tokens["output"],
        "cache_creation_input": tokens["cache_write_5m"] + tokens["cache_write_1h"],
        "cache_read_input": tokens["cache_read"],
        "cache_creation_5m_input": tokens["cache_write_5m"],
        "cache_creation_1h_input": tokens["cache_write_1h"],
        "web_search_requests": tokens["web_search_requests"],
    }
    prices = book.describe()
    out["cost"] = {
        "total_usd": usd["total"] if complete else None, "priced_usd": usd["total"],
        "complete": complete, "usd": usd, "retried": retried, "cut_streams": cut,
        # Rows without a model sort last, as their label does in one table.
        "unpriced_models": sorted(unpriced, key=lambda m: (m == _NONE, seen_models[m])),
        "unpriced_fast_models": sorted((m for m in unpriced if fast_only[m]),
                                       key=lambda m: seen_models[m]),
        "prices": f"genai-prices {prices['version']}" if prices["version"] else None,
    }
    out["schedule"] = check.result(lag_dist)
    return out


def _send_lags(check: ScheduleCheck, scheduled_at: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """The send lags (``queue_wait_s``) the schedule is judged by: open-loop rows', any status."""
    lag = lag[check.open_rows(scheduled_at)]
    return lag[~np.isnan(lag)]


def _reread_columns(group: Sequence[str]) -> list[str]:
    names = ["status"] + [m for m in group if m != _SEND_LAG]
    if _SEND_LAG in group:
        names += [c for c in ("scheduled_at", "queue_wait_s") if c not in names]
    return names


def _reread_groups(kept: dict[str, int]) -> list[list[str]]:
    """Metrics read back together: as many as fit :data:`_KEEP_BUDGET` kept values (usually
    all, in one pass); a metric whose values cluster into few bins gets a pass of its own, so
    that memory stays at most what one metric's values used to cost."""
    groups: list[list[str]] = []
    total = 0
    for m, n in kept.items():
        if groups and total + n <= _KEEP_BUDGET:
            groups[-1].append(m)
            total += n
        else:
            groups.append([m])
            total = n
    return groups


def _slices(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The non-empty row ranges of *tables*, at most *rows* each (zero-copy slices)."""
    for table in tables:
        for offset in range(0, table.num_rows, rows):
            yield table.slice(offset, rows)


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the end of ``run``."""
    return format_short(summary)
