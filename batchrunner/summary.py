"""The closing summary of a run, computed from its result rows (never from live counters).

A thin front for :mod:`batchrunner.report`, so ``run`` and ``batchrunner report`` compute every
figure with the same code. Figures say which rows they use: timing percentiles are over ``ok``
rows only (a failed request's latency measures the failure, not the service); counts,
throughput, tokens and cost include every row. Cost uses the bundled genai-prices data; a model
it cannot price is listed, never counted as $0.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from batchrunner.report import SUMMARY_COLUMNS, summarize_table
from batchrunner.report_text import format_short

__all__ = ["SUMMARY_COLUMNS", "format_summary", "summarize"]


def summarize(table: pa.Table) -> dict[str, Any]:
    """Counts, throughput, percentiles, token totals and cost of a run's rows.

    :param table: rows with at least :data:`SUMMARY_COLUMNS`.
    :return: a JSON-serialisable dict (stable keys): ``requests``, ``status``, ``error_types``,
        ``wall_s``, ``requests_per_s``, ``output_tokens_per_s``, one entry per timing column
        (``latency_s``, ``ttft_s``, ``total_s``, ...: ``n``, ``mean``, ``p50``, ``p90``,
        ``p95``, ``p99``, ``max`` over ok rows, or None), ``tokens`` and ``cost``.
    """
    return summarize_table(table)


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the end of ``run``."""
    return format_short(summary)
