"""``summarize_batches`` gives what ``summarize`` gives, from the rows one batch at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from batchrunner.schema import RESULT_SCHEMA
from batchrunner.summary import SUMMARY_COLUMNS, summarize, summarize_batches

_MODELS = np.array(["claude-sonnet-4-5", "anthropic/claude-haiku-4-5", "no-such-model-x",
                    "claude-opus-4-1", "private/Model-B", None], dtype=object)
_STATUSES = np.array(["ok", "ok", "ok", "ok", "error", "timeout", "expired", "cancelled",
                      "mystery"], dtype=object)
_ERRORS = np.array(["overloaded_error", "timeout", "api_error", None], dtype=object)


def _with_nulls(rng: np.random.Generator, values: np.ndarray, share: float) -> list[Any]:
    mask = rng.random(values.size) < share
    return [None if m else v for v, m in zip(values.tolist(), mask.tolist(), strict=True)]


def _table(n: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    status = _STATUSES[rng.integers(0, _STATUSES.size, n)]
    error_type = np.where(status == "ok", None, _ERRORS[rng.integers(0, _ERRORS.size, n)])
    # Two UTC days, so rows of one model are priced per (model, day).
    t0 = 1_760_000_000.0 + rng.uniform(0, 2 * 86400, n)
    sent = t0 + rng.uniform(0, 0.5, n)
    done = sent + rng.exponential(2.0, n)
    us = lambda a: (a * 1e6).astype(np.int64)  # noqa: E731
    ts = pa.timestamp("us", tz="UTC")
    cols: dict[str, Any] = {
        "input_index": pa.array(np.arange(n)),
        "mode": pa.array(rng.choice(["sync", "stream"], n)),
        "model": pa.array(_with_nulls(rng, _MODELS[rng.integers(0, _MODELS.size, n)], 0.05)),
        "model_requested": pa.array(_with_nulls(rng, _MODELS[rng.integers(0, 5, n)], 0.3)),
        "status": pa.array(status.tolist()),
        "error_type": pa.array(error_type.tolist(), pa.string()),
        "error_message": pa.array([None if e is None else f"msg {i}"
                                   for i, e in enumerate(error_type.tolist())], pa.string()),
        "http_status": pa.array(_with_nulls(rng, rng.choice([200, 429, 500, 529], n), 0.3),
                                pa.int32()),
        "scheduled_at": pa.array(_with_nulls(rng, us(t0), 0.02), ts),
        "sent_at": pa.array(_with_nulls(rng, us(sent), 0.02), ts),
        "submitted_at": pa.nulls(n, ts),  # async only
        "completed_at": pa.array(_with_nulls(rng, us(done), 0.02), ts),
    }
    for m in ("queue_wait_s", "ttfb_s", "ttft_s", "latency_s", "total_s", "itl_mean_s",
              "itl_p50_s", "itl_p99_s", "itl_max_s"):
        cols[m] = pa.array(_with_nulls(rng, rng.exponential(1.0, n), 0.2), pa.float64())
    cols["tpot_s"] = pa.nulls(n, pa.float64())  # a metric no row has
    cols["content_deltas"] = pa.array(_with_nulls(rng, rng.integers(0, 40, n), 0.5), pa.int32())
    for name, scale in (("input_tokens", 2000), ("output_tokens", 500),
                        ("cache_creation_input_tokens", 3000),
                        ("cache_read_input_tokens", 8000),
                        ("cache_creation_5m_input_tokens", 1000),
                        ("cache_creation_1h_input_tokens", 1000)):
        cols[name] = pa.array(_with_nulls(rng, rng.integers(0, scale, n), 0.25), pa.int64())
    for name in ("web_search_requests", "web_fetch_requests"):
        cols[name] = pa.array(_with_nulls(rng, rng.integers(0, 4, n), 0.6), pa.int64())
    for name, values in (("service_tier", ["standard", "priority", "batch"]),
                         # fast: none of these models has fast-mode rates (it would unprice)
                         ("speed", ["standard"]), ("inference_geo", ["global", "us"])):
        cols[name] = pa.array(_with_nulls(rng, rng.choice(values, n), 0.3), pa.string())
    # Some rows had failed attempts whose usage was kept (a stream cut after message_start).
    retried = [None] * n
    for i in np.flatnonzero(rng.random(n) < 0.05).tolist():
        model = str(rng.choice(["claude-sonnet-4-5", "claude-haiku-4-5"]))
        retried[i] = orjson.dumps([{"model": model,
                                    "input_tokens": int(rng.integers(1, 3000)),
                                    "output_tokens": 1}] * int(rng.integers(1, 3))).decode()
    cols["retried_usage"] = pa.array(retried, pa.string())
    schema = pa.schema([RESULT_SCHEMA.field(c) for c in SUMMARY_COLUMNS])
    return pa.table({c: cols[c] for c in SUMMARY_COLUMNS}, schema=schema)


def _assert_same(got: Any, want: Any, where: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert list(got) == list(want), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


def _tables(table: pa.Table, rows: int) -> list[pa.Table]:
    return [pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=rows)]


def test_batches_give_the_whole_table_summary() -> None:
    table = _table(30_000)
    want = summarize(table)
    # The synthetic rows reach every kind of figure.
    assert len(want["cost"]["unpriced_models"]) == 3 and not want["cost"]["complete"]
    assert want["status"]["mystery"] and want["error_types"]
    assert want["tpot_s"] is None and want["latency_s"]["n"]
    assert want["tokens"]["cache_creation_1h_input"] and want["wall_s"]
    _assert_same(summarize_batches(_tables(table, 4096)), want)
    _assert_same(summarize_batches(iter(_tables(table, 30_000))), want)
    # One more pass over the timing columns for the percentiles (what a run does, so that no
    # metric's values are held whole).
    passes: list[list[str]] = []

    def reread(columns: list[str]) -> list[pa.Table]:
        passes.append(columns)
        return _tables(table.select(columns), 5000)

    _assert_same(summarize_batches(_tables(table, 4096), reread=reread), want)
    assert len(passes) == 1 and passes[0][0] == "status" and "latency_s" in passes[0]
    assert "tpot_s" not in passes[0]  # a metric without values is not read again


def test_priced_only_rows_are_complete() -> None:
    table = _table(5_000, seed=3)
    model = np.array(table.column("model").to_pylist(), dtype=object)
    priced = np.flatnonzero(model == "claude-sonnet-4-5")
    table = table.take(priced)
    want = summarize(table)
    assert want["cost"]["complete"] and want["cost"]["total_usd"]
    _assert_same(summarize_batches(_tables(table, 700)), want)


def test_empty_input() -> None:
    empty = _table(0)
    _assert_same(summarize_batches([]), summarize(empty))
    _assert_same(summarize_batches([empty, empty]), summarize(empty))


def test_rows_that_change_between_passes_give_figures_not_an_error() -> None:
    # Another process may resume the run between the summary's passes (the store is closed by
    # then): the figures stay numbers (or None), counts come from the first pass.
    table = _table(6_000, seed=5)
    more = pa.concat_tables([table, _table(2_000, seed=6)])
    for second in (more, table.slice(0, 3_000), table.slice(0, 0)):

        def reread(columns: list[str], second: pa.Table = second) -> list[pa.Table]:
            return _tables(second.select(columns), 1000)

        got = summarize_batches(_tables(table, 4096), reread=reread)
        want = summarize(table)
        assert got["requests"] == want["requests"]
        for m in ("latency_s", "ttft_s", "total_s"):
            assert got[m]["n"] == want[m]["n"]
            assert all(v is None or np.isfinite(v) for v in got[m].values()), m


def test_metrics_whose_kept_values_exceed_the_budget_are_read_back_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("batchrunner.summary._KEEP_BUDGET", 10)  # every metric on its own
    table = _table(20_000, seed=9)
    passes: list[list[str]] = []

    def reread(columns: list[str]) -> list[pa.Table]:
        passes.append(columns)
        return _tables(table.select(columns), 3000)

    got = summarize_batches(_tables(table, 4096), reread=reread)
    _assert_same(got, summarize(table))
    assert len(passes) > 5 and all(len(cols) == 2 for cols in passes)
