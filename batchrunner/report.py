"""Summaries of a run directory's result rows: counts, errors, throughput, latency, tokens, cost.

:func:`load_run` reads the rows of a run directory (``data/*.parquet`` plus any journal rows a
crash left behind, read-only), :func:`build_report` turns one or more runs into a JSON-ready dict
(keys documented in ``docs/report.md``), :func:`compare` puts several side by side, and
:func:`summarize_table` gives the short summary that ``run`` prints at its end. Text and HTML
renderings live in :mod:`batchrunner.report_text` and :mod:`batchrunner.report_html`.

Which rows each figure uses is part of the contract: counts, error types, throughput, tokens and
cost use every row; latency distributions use ``ok`` rows only (a failed request's latency
measures the failure, not the service) and say how many rows they used and excluded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrunner import report_stats as stats
from batchrunner.pricing import CATEGORIES, PriceBook, UsageArrays, cost_arrays, normalize_model
from batchrunner.pricing import split_cache_writes
from batchrunner.schema import RESULT_SCHEMA

__all__ = [
    "GROUP_COLUMNS",
    "METRICS",
    "REPORT_VERSION",
    "SUMMARY_COLUMNS",
    "ReportError",
    "RunRows",
    "build_report",
    "compare",
    "load_run",
    "parse_group_keys",
    "summarize_table",
]

#: Version of the JSON layout; bumped on any incompatible change of keys.
REPORT_VERSION = 1

#: Timing columns summarised as distributions, in report order.
METRICS: tuple[str, ...] = (
    "queue_wait_s", "ttfb_s", "ttft_s", "latency_s", "total_s",
    "itl_mean_s", "itl_p50_s", "itl_p99_s", "itl_max_s", "tpot_s",
)
#: Plain columns ``--by`` accepts (besides ``metadata.KEY``); ``model`` is the answering model
#: (else the requested one), provider prefix stripped, as priced.
GROUP_COLUMNS: tuple[str, ...] = (
    "model", "model_requested", "mode", "status", "stage", "error_type", "http_status",
    "bifrost_provider", "bifrost_resolved_model",
)
_TOKEN_COLUMNS = (
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
    "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens",
)
_BASE_COLUMNS = (
    "input_index", "model", "model_requested", "status", "error_type", "error_message",
    "http_status", "scheduled_at", "sent_at", "completed_at", *METRICS, *_TOKEN_COLUMNS,
)
#: Columns :func:`summarize_table` needs (the runner reads just these at the end of a run).
SUMMARY_COLUMNS: list[str] = list(_BASE_COLUMNS)
_STATUSES = ("ok", "error", "timeout", "expired", "cancelled")
_FAILED = ("error", "timeout", "expired")
_NONE = "(none)"
_OTHER = "(other)"
_EXAMPLE_CHARS = 300


class ReportError(Exception):
    """The report cannot be made as asked (not a run directory, bad ``--by``); for the user."""


@dataclass(slots=True)
class RunRows:
    """The rows of one run and what its directory says about it.

    :param table: result rows (a subset of the columns of ``RESULT_SCHEMA``).
    :param info: ``run.json`` (empty if absent).
    :param run_dir: where they came from (None for a table handed over directly).
    :param journal_rows: rows read from journal segments (a live or crashed run).
    """

    table: pa.Table
    info: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    journal_rows: int = 0

    @property
    def name(self) -> str:
        return str(self.info.get("name") or (self.run_dir.name if self.run_dir else "rows"))


# ----------------------------------------------------------------------------------------------
# reading


def _read_columns(by: Sequence[str]) -> list[str]:
    extra = {"metadata"} if any(k.startswith("metadata.") for k in by) else set()
    extra |= {k for k in by if k in RESULT_SCHEMA.names}
    return [*_BASE_COLUMNS, *sorted(extra - set(_BASE_COLUMNS))]


def load_run(run_dir: Path, by: Sequence[str] = ()) -> RunRows:
    """Read the rows of a run directory (only the columns the report needs).

    Parquet parts in ``data/`` are read as they are; journal segments without a part of the
    same number (rows of a run still going, or of one that crashed) are read too, read-only.
    Columns missing from older files are null.

    :param run_dir: a directory written by ``batchrunner run``.
    :param by: the group keys that will be used (so their columns are read).
    :raises ReportError: not a directory, or neither ``data/`` nor ``run.json`` in it.
    """
    from batchrunner.journal import read_complete, segment_table

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such directory")
    data_dir, journal_dir = run_dir / "data", run_dir / "journal"
    info_path = run_dir / "run.json"
    if not data_dir.is_dir() and not info_path.is_file():
        raise ReportError(f"{run_dir} is not a run directory (it has neither data/ nor run.json)")
    info: dict[str, Any] = {}
    if info_path.is_file():
        try:
            loaded = orjson.loads(info_path.read_bytes())
            info = loaded if isinstance(loaded, dict) else {}
        except orjson.JSONDecodeError as exc:
            raise ReportError(f"{info_path} is not valid JSON: {exc}") from exc
    columns = _read_columns(by)
    schema = pa.schema([RESULT_SCHEMA.field(c) for c in columns])
    tables: list[pa.Table] = []
    # Segments first, then parts: a segment compacted in between has its part by then.
    segments = sorted(journal_dir.glob("seg-*.jsonl")) if journal_dir.is_dir() else []
    parts = {p.name[5:-8]: p for p in sorted(data_dir.glob("part-*.parquet"))}
    journal_rows = 0
    for seg in segments:
        number = seg.name[4:-6]
        if number in parts:
            continue  # already compacted (a crash between rename and delete)
        try:
            buf, _ = read_complete(seg)
        except FileNotFoundError:
            part = data_dir / f"part-{number}.parquet"
            if part.is_file():
                parts[number] = part
            continue
        table = segment_table(buf, source=seg.name)
        journal_rows += table.num_rows
        tables.append(_conform(table, schema))
    for path in parts.values():
        try:
            with pq.ParquetFile(path) as pf:
                present = [c for c in columns if c in pf.schema_arrow.names]
                table = pf.read(columns=present)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ReportError(f"{path} cannot be read ({exc}); move it out of data/ and resume "
                              "the run to send its requests again") from exc
        tables.append(_conform(table, schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return RunRows(table=table, info=info, run_dir=run_dir, journal_rows=journal_rows)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            arrays.append(table.column(f.name).cast(f.type))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def parse_group_keys(by: Sequence[str]) -> list[str]:
    """Check ``--by`` values: a column of :data:`GROUP_COLUMNS` or ``metadata.KEY``.

    :raises ReportError: an unknown key.
    """
    keys = []
    for raw in by:
        key = raw.strip()
        if key.startswith("metadata.") and len(key) > len("metadata."):
            keys.append(key)
        elif key in GROUP_COLUMNS:
            keys.append(key)
        else:
            raise ReportError(f"--by {raw!r}: expected metadata.KEY or one of "
                              f"{', '.join(GROUP_COLUMNS)}")
    if len(set(keys)) != len(keys):
        raise ReportError("--by: a key is given twice")
    return keys


# ----------------------------------------------------------------------------------------------
# rows → frame


def _floats(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_timestamp(col.type):
        col = pc.divide(pc.cast(pc.cast(col, pa.int64()), pa.float64()), 1e6)
    return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def _labels(table: pa.Table, name: str) -> np.ndarray:
    """A column as an object array of strings, nulls as ``(none)`` (via its distinct values)."""
    col = pc.cast(table.column(name), pa.string()) if name in table.column_names else None
    if col is None:
        return np.full(table.num_rows, _NONE, dtype=object)
    enc = pc.dictionary_encode(col).combine_chunks()
    values = np.array([_NONE if v is None else v for v in enc.dictionary.to_pylist()] + [_NONE],
                      dtype=object)
    idx = pc.fill_null(enc.indices, len(values) - 1).to_numpy(zero_copy_only=False)
    return values[idx]


def _model_key(table: pa.Table) -> np.ndarray:
    """The priced model of each row: the model that answered, else the one asked for."""
    model = pc.coalesce(table.column("model"), table.column("model_requested"))
    enc = pc.dictionary_encode(model).combine_chunks()
    values = [normalize_model(v) for v in enc.dictionary.to_pylist()]
    values = np.array([v if v is not None else _NONE for v in values] + [_NONE], dtype=object)
    idx = pc.fill_null(enc.indices, len(values) - 1).to_numpy(zero_copy_only=False)
    return values[idx]


def _metadata_labels(table: pa.Table, key: str) -> np.ndarray:
    """Values of ``metadata.KEY`` (dotted paths reach nested objects), parsed once per distinct
    metadata text: a set with few distinct tags costs a few JSON parses, not one per row."""
    path = key.split(".")[1:]
    enc = pc.dictionary_encode(table.column("metadata")).combine_chunks()
    values: list[str] = []
    for text in enc.dictionary.to_pylist():
        value: Any
        try:
            value = orjson.loads(text) if text else None
        except orjson.JSONDecodeError:
            value = None
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            values.append(_NONE)
        elif isinstance(value, str):
            values.append(value)
        else:
            values.append(orjson.dumps(value).decode())
    arr = np.array([*values, _NONE], dtype=object)
    idx = pc.fill_null(enc.indices, len(arr) - 1).to_numpy(zero_copy_only=False)
    return arr[idx]


def _frame(table: pa.Table, by: Sequence[str], book: PriceBook,
           ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows as a DataFrame of plain numpy columns, with cost columns added.

    Instants become float epoch seconds, nulls NaN; tokens become floats with nulls as 0 (and a
    ``has_usage`` flag); ``model_key`` is the priced model name. Error messages are kept for
    failed rows only. Also returns the rate card used for each model (None if unpriced).
    """
    n = table.num_rows
    cols: dict[str, Any] = {}
    cols["status"] = _labels(table, "status")
    cols["error_type"] = _labels(table, "error_type")
    failed = np.flatnonzero(cols["status"] != "ok")
    messages = np.full(n, None, dtype=object)
    if failed.size:
        messages[failed] = table.column("error_message").take(failed).to_pylist()
    cols["error_message"] = messages
    cols["http_status"] = _floats(table, "http_status")
    cols["input_index"] = _floats(table, "input_index")
    for name in ("scheduled_at", "sent_at", "completed_at", *METRICS):
        cols[name] = _floats(table, name)
    tokens = {name: _floats(table, name) for name in _TOKEN_COLUMNS}
    cols["has_usage"] = np.zeros(n, dtype=bool)
    for arr in tokens.values():
        cols["has_usage"] |= ~np.isnan(arr)
    w5m, w1h = split_cache_writes(tokens["cache_creation_input_tokens"],
                                  tokens["cache_creation_5m_input_tokens"],
                                  tokens["cache_creation_1h_input_tokens"])
    usage = UsageArrays(
        input=np.nan_to_num(tokens["input_tokens"], nan=0.0),
        output=np.nan_to_num(tokens["output_tokens"], nan=0.0),
        cache_write_5m=w5m, cache_write_1h=w1h,
        cache_read=np.nan_to_num(tokens["cache_read_input_tokens"], nan=0.0),
    )
    for category in CATEGORIES:
        cols[f"tok_{category}"] = getattr(usage, category)
    cols["model_key"] = _model_key(table)
    # Rates are date-effective: price each (model, UTC day) once, then index.
    when = cols["sent_at"].copy()
    for fallback in ("scheduled_at", "completed_at"):
        when = np.where(np.isnan(when), cols[fallback], when)
    today = datetime.now(UTC).timestamp() // 86400
    day = np.where(np.isnan(when), today, when // 86400).astype(np.int64)
    model_codes, model_names = pd.factorize(cols["model_key"])
    day_values, day_codes = np.unique(day, return_inverse=True)
    combined = model_codes.astype(np.int64) * len(day_values) + day_codes
    uniq, codes = np.unique(combined, return_inverse=True)
    keys = [(str(model_names[u // len(day_values)]) if model_names[u // len(day_values)] != _NONE
             else None, date.fromtimestamp(int(day_values[u % len(day_values)]) * 86400, UTC))
            for u in uniq]
    costs, cards = cost_arrays(book, keys, codes.reshape(-1), usage)
    for category, arr in costs.items():
        cols[f"cost_{category}"] = arr
    for key in by:
        if key.startswith("metadata."):
            cols[f"g:{key}"] = _metadata_labels(table, key)
        elif key == "model":
            cols[f"g:{key}"] = cols["model_key"]
        else:
            cols[f"g:{key}"] = _labels(table, key)
    cards_by_model: dict[str, Any] = {}
    for (model, _day), card in zip(keys, cards, strict=True):
        cards_by_model.setdefault(model or _NONE, card)  # the first day's card is shown
    return pd.DataFrame(cols), cards_by_model


# ----------------------------------------------------------------------------------------------
# sections
