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

from batchrunner import report_bench as bench_report
from batchrunner import report_stats as stats
from batchrunner.pricing import (
    CATEGORIES,
    FEES,
    PriceBook,
    UsageArrays,
    cost_arrays,
    normalize_model,
    split_cache_writes,
)
from batchrunner.run_info_check import BENCH_JSON, checked_run_info
from batchrunner.schedule_check import ScheduleCheck, open_loop_sessions
from batchrunner.schema import RESULT_SCHEMA, conform

__all__ = [
    "COST_COLUMNS",
    "GROUP_COLUMNS",
    "METRICS",
    "REPORT_VERSION",
    "SUMMARY_COLUMNS",
    "ReportError",
    "RunRows",
    "build_report",
    "compare",
    "load_run",
    "outstanding_cost",
    "parse_group_keys",
    "price_rows",
    "summarize_table",
]

#: Version of the JSON layout; bumped on any incompatible change of keys.
REPORT_VERSION = 2

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
#: Usage columns beyond tokens that change the price (null in parts written before them).
_USAGE_COLUMNS = ("web_search_requests", "web_fetch_requests", "service_tier", "speed",
                  "inference_geo", "retried_usage")
#: ``retried_usage`` entries are priced as rows of their own, from these columns.
_RETRIED_COLUMNS = ("model", *_TOKEN_COLUMNS, *_USAGE_COLUMNS[:-1])
_BASE_COLUMNS = (
    "input_index", "mode", "model", "model_requested", "status", "error_type", "error_message",
    "http_status", "scheduled_at", "sent_at", "submitted_at", "completed_at", *METRICS,
    *_TOKEN_COLUMNS, *_USAGE_COLUMNS, "content_deltas",
)
#: Columns :func:`price_rows` needs.
COST_COLUMNS: list[str] = ["model", "model_requested", "scheduled_at", "sent_at", "completed_at",
                           *_TOKEN_COLUMNS, *_USAGE_COLUMNS]
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
    :param bench: ``bench.json`` of a bench run (None if absent).
    :param warnings: what could not be read beside the rows (a corrupt ``run.json``), and what
        the report lacks because of it.
    """

    table: pa.Table
    info: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    journal_rows: int = 0
    bench: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.info.get("name") or (self.run_dir.name if self.run_dir else "rows"))


# ----------------------------------------------------------------------------------------------
# reading


def _read_columns(by: Sequence[str]) -> list[str]:
    extra = {"metadata"} if any(k.startswith("metadata.") for k in by) else set()
    # Always: a bench run is reported stage by stage whatever --by says.
    extra |= {"stage"} | {k for k in by if k in RESULT_SCHEMA.names}
    return [*_BASE_COLUMNS, *sorted(extra - set(_BASE_COLUMNS))]


def load_run(run_dir: Path, by: Sequence[str] = ()) -> RunRows:
    """Read the rows of a run directory (only the columns the report needs).

    Parquet parts in ``data/`` are read as they are; journal segments without a part of the
    same number (rows of a run still going, or of one that crashed) are read too, read-only.
    Columns missing from older files are null.

    :param run_dir: a directory written by ``batchrunner run``.
    :param by: the group keys that will be used (so their columns are read).
    A ``run.json`` or ``bench.json`` that cannot be read does not stop the report when rows
    can be: it is left out, and :attr:`RunRows.warnings` says so and what is missing.

    :raises ReportError: not a directory, or neither ``data/`` nor ``run.json`` in it.
    """
    from batchrunner.journal import SegmentBlocks, segment_table

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(_not_a_directory(run_dir))
    data_dir, journal_dir = run_dir / "data", run_dir / "journal"
    info_path = run_dir / "run.json"
    if not data_dir.is_dir() and not info_path.is_file():
        raise ReportError(f"{run_dir} is not a run directory (it has neither data/ nor run.json)")
    warnings: list[str] = []
    try:
        info = _read_json(info_path, objects_only=False)
        if info is not None:
            info, problems = checked_run_info(info, str(info_path))
            warnings += problems
        info = info or {}
    except ReportError as exc:
        if not data_dir.is_dir():
            raise  # nothing else to report from
        info = {}
        warnings.append(f"{exc}; reported from the rows alone, without what run.json holds: "
                        "the run's status, config (--rate, so no open-loop schedule check), "
                        "gateway and outstanding async jobs, and its sessions (rates are over "
                        "the rows' whole span, gaps between sessions included)")
    try:
        bench = _read_json(run_dir / "bench.json")
        if bench is not None:
            bench, problems = checked_run_info(bench, str(run_dir / "bench.json"), BENCH_JSON)
            warnings += problems
    except ReportError as exc:
        bench = None
        warnings.append(f"{exc}; stages without goodput, SLO results or verdicts")
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
            seg_tables = [segment_table(buf, source=seg.name) for buf in SegmentBlocks(seg)]
        except FileNotFoundError:
            part = data_dir / f"part-{number}.parquet"
            if part.is_file():
                parts[number] = part
            continue
        for table in seg_tables:
            journal_rows += table.num_rows
            tables.append(conform(table, schema))
    for path in parts.values():
        try:
            with pq.ParquetFile(path) as pf:
                present = [c for c in columns if c in pf.schema_arrow.names]
                table = pf.read(columns=present)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ReportError(f"{path} cannot be read ({exc}); move it out of data/ and resume "
                              "the run to send its requests again") from exc
        tables.append(conform(table, schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    warnings += _unrecorded_end(info, run_dir, table.num_rows)
    return RunRows(table=table, info=info, run_dir=run_dir, journal_rows=journal_rows,
                   bench=bench, warnings=warnings)


def _unrecorded_end(info: dict[str, Any], run_dir: Path, rows: int) -> list[str]:
    """What ``run.json`` cannot say of a session killed before it recorded its end: that the
    run is no longer going, or that rows were removed since its figures were written (a kill
    while ``--retry-failed`` took out the failed rows)."""
    from batchrunner.store import lock_holder  # as the journal reader above: kept lazy

    status = info.get("status")
    if status == "running" and lock_holder(run_dir) is None:
        return ["run.json says running, but no process holds the run directory: the run was "
                "killed or crashed; resume it (the same command) to finish it"]
    counted = (info.get("summary") or {}).get("requests") if isinstance(
        info.get("summary"), dict) else None
    if (status in ("finished", "incomplete") and info.get("kind") != "bench"
            and type(counted) is int and counted > rows):
        return [f"run.json's summary counts {counted:,} rows, the run directory holds {rows:,}: "
                "a later session was cut short before it recorded itself (killed while it "
                "removed rows to send again?); resume it (the same command) to send the rest"]
    return []


def _not_a_directory(path: Path) -> str:
    """The error for a RUN_DIR that is not a directory: missing, or a file (a part of a run's
    ``data/`` given by mistake: name its run directory)."""
    if not path.exists():
        return f"{path}: no such directory"
    what = "a file" if path.is_file() else "not a directory"
    message = f"{path} is {what}, not a directory: report takes run directories"
    # As typed when it shows data/ (results/x/data/part-1.parquet names results/x), else resolved.
    parent = path.parent if path.parent.name == "data" else path.resolve().parent
    if parent.name == "data" and ((parent.parent / "run.json").is_file()
                                  or path.name.startswith("part-")):
        message += f"; this file is in the run directory {parent.parent}"
    return message


def _read_json(path: Path, objects_only: bool = True) -> Any:
    """A JSON object file (``run.json``, ``bench.json``); None if absent or, with
    *objects_only*, not an object."""
    if not path.is_file():
        return None
    try:
        loaded = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise ReportError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    return loaded if isinstance(loaded, dict) or not objects_only else None


def parse_group_keys(by: Sequence[str]) -> list[str]:
    """Check ``--by`` values: a column of :data:`GROUP_COLUMNS` or ``metadata.KEY``.

    :raises ReportError: an unknown key.
    """
    keys = []
    for raw in by:
        key = raw.strip()
        if (key.startswith("metadata.") and len(key) > len("metadata.")) or key in GROUP_COLUMNS:
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
    # Not a safe cast: an integer beyond 2**53 (a damaged token count) loses its last digits
    # as a float rather than stopping the report.
    return np.asarray(pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False),
                      dtype=float)


def _equals(table: pa.Table, name: str, value: str) -> np.ndarray:
    """Whether each row's *name* is *value* (False for nulls and a missing column)."""
    if name not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    hit = pc.fill_null(pc.equal(table.column(name), value), False)
    return np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)


def _categorical(values: np.ndarray, idx: np.ndarray) -> pd.Categorical:
    """Row labels ``values[idx]`` as a Categorical (cheap to group, compare and slice);
    *values* may repeat (two names normalised alike)."""
    codes, uniques = pd.factorize(values)
    return pd.Categorical.from_codes(codes[idx], categories=pd.Index(uniques, dtype=object))


def _labels(table: pa.Table, name: str) -> pd.Categorical:
    """A column as labels, nulls as ``(none)`` (work is per distinct value)."""
    if name not in table.column_names:
        return _categorical(np.array([_NONE], dtype=object), np.zeros(table.num_rows, np.int64))
    enc = pc.dictionary_encode(pc.cast(table.column(name), pa.string())).combine_chunks()
    values = np.array([_NONE if v is None else v for v in enc.dictionary.to_pylist()] + [_NONE],
                      dtype=object)
    idx = pc.fill_null(enc.indices, len(values) - 1).to_numpy(zero_copy_only=False)
    return _categorical(values, idx)


def _model_key(table: pa.Table) -> pd.Categorical:
    """The priced model of each row: the model that answered, else the one asked for."""
    model = pc.coalesce(table.column("model"), table.column("model_requested"))
    enc = pc.dictionary_encode(model).combine_chunks()
    names = [normalize_model(v) for v in enc.dictionary.to_pylist()]
    values = np.array([v if v is not None else _NONE for v in names] + [_NONE], dtype=object)
    idx = pc.fill_null(enc.indices, len(values) - 1).to_numpy(zero_copy_only=False)
    return _categorical(values, idx)


def _metadata_labels(table: pa.Table, key: str) -> pd.Categorical:
    """Values of ``metadata.KEY`` (dotted paths reach nested objects), as labels.

    Work is per distinct metadata text. Those are parsed in one go by Arrow's JSON reader (C++);
    texts it cannot take (a value changing type between rows, a nested value as the key) go
    through orjson one by one instead, with the same result.
    """
    path = key.split(".")[1:]
    enc = pc.dictionary_encode(table.column("metadata")).combine_chunks()
    texts = enc.dictionary.to_pylist()
    values = _metadata_fast(texts, path)
    if values is None:
        values = np.array([_label(_lookup(_loads(t), path)) for t in texts], dtype=object)
    arr = np.append(values, np.array([_NONE], dtype=object))
    idx = pc.fill_null(enc.indices, len(arr) - 1).to_numpy(zero_copy_only=False)
    return _categorical(arr, idx)


def _loads(text: str | None) -> Any:
    try:
        return orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        return None


def _lookup(value: Any, path: Sequence[str]) -> Any:
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _label(value: Any) -> str:
    if value is None:
        return _NONE
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _metadata_fast(texts: list[str | None], path: Sequence[str]) -> np.ndarray | None:
    """:func:`_metadata_labels` through ``pyarrow.json``; None when it cannot be used."""
    import pyarrow.json as pj

    if not texts or any(t is not None and ("\n" in t or not t.startswith("{")) for t in texts):
        return None  # one object per line is what the reader takes
    buf = "\n".join(t or "{}" for t in texts).encode()
    try:
        parsed = pj.read_json(pa.py_buffer(buf), read_options=pj.ReadOptions(
            block_size=min(max(len(buf) + 1, 1 << 20), 1 << 30), use_threads=True))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if parsed.num_rows != len(texts):
        return None
    col: Any = parsed
    for part in path:
        names = col.column_names if isinstance(col, pa.Table) else [
            f.name for f in col.type] if pa.types.is_struct(col.type) else None
        if names is None or part not in names:
            return np.full(len(texts), _NONE, dtype=object)  # missing in every row
        col = col.column(part) if isinstance(col, pa.Table) else pc.struct_field(col, part)
    if pa.types.is_nested(col.type):
        return None  # objects or lists as labels: orjson renders them the same every time
    if pa.types.is_null(col.type):
        return np.full(len(texts), _NONE, dtype=object)
    col_enc = pc.dictionary_encode(col).combine_chunks()
    labels = [_label(v) for v in col_enc.dictionary.to_pylist()] + [_NONE]
    idx = pc.fill_null(col_enc.indices, len(labels) - 1).to_numpy(zero_copy_only=False)
    return np.array(labels, dtype=object)[idx]


def price_rows(table: pa.Table, book: PriceBook, cols: dict[str, Any],
               ) -> tuple[list[tuple[str | None, date]], np.ndarray, list[Any]]:
    """Price each row of *table* (at least :data:`COST_COLUMNS`) the way every report does.

    Adds to *cols*: ``has_usage``, the usage flags (``is_fast``, ``is_geo_us``, ``is_batch``,
    ``is_priority``), ``web_search_requests``, ``web_fetch_requests``, ``tok_<category>``,
    ``model_key`` and ``cost_<category>`` / ``cost_web_search`` / ``cost_total`` (NaN where a
    row cannot be priced); ``sent_at``, ``scheduled_at`` and ``completed_at`` (which date the
    rates) are read from *table* unless *cols* has them.

    The usage of a row's failed attempts that were retried (``retried_usage``) is in its costs,
    each attempt priced on its own (its model, tier, flags), and in ``cost_retried`` apart; its
    tokens are not in ``tok_<category>``, which are the final attempt's.

    :return: the distinct (priced model, UTC day) keys, each row's index in them, and each
        key's rate card (None when unpriced).
    """
    n = table.num_rows
    for name in ("scheduled_at", "sent_at", "completed_at"):
        if name not in cols:
            cols[name] = _floats(table, name)
    tokens = {name: _floats(table, name) for name in _TOKEN_COLUMNS}
    cols["has_usage"] = np.zeros(n, dtype=bool)
    for arr in tokens.values():
        cols["has_usage"] |= ~np.isnan(arr)
    w5m, w1h = split_cache_writes(tokens["cache_creation_input_tokens"],
                                  tokens["cache_creation_5m_input_tokens"],
                                  tokens["cache_creation_1h_input_tokens"])
    for name in ("web_search_requests", "web_fetch_requests"):
        cols[name] = np.nan_to_num(_floats(table, name), nan=0.0)
    cols["is_fast"] = _equals(table, "speed", "fast")
    cols["is_geo_us"] = _equals(table, "inference_geo", "us")
    cols["is_batch"] = _equals(table, "service_tier", "batch")
    cols["is_priority"] = _equals(table, "service_tier", "priority")
    usage = UsageArrays(
        input=np.nan_to_num(tokens["input_tokens"], nan=0.0),
        output=np.nan_to_num(tokens["output_tokens"], nan=0.0),
        cache_write_5m=w5m, cache_write_1h=w1h,
        cache_read=np.nan_to_num(tokens["cache_read_input_tokens"], nan=0.0),
        web_searches=cols["web_search_requests"], fast=cols["is_fast"],
        geo_us=cols["is_geo_us"], batch=cols["is_batch"],
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
    combined = model_codes.astype(np.int64) * len(day_values) + day_codes.reshape(-1)
    uniq, codes = np.unique(combined, return_inverse=True)
    keys: list[tuple[str | None, date]] = []
    for u in uniq:
        label = str(model_names[u // len(day_values)])
        day_start = int(day_values[u % len(day_values)]) * 86400
        keys.append((None if label == _NONE else label,
                     datetime.fromtimestamp(day_start, UTC).date()))
    codes = codes.reshape(-1)
    costs, cards = cost_arrays(book, keys, codes, usage)
    for category, arr in costs.items():
        cols[f"cost_{category}"] = arr
    cols["cost_retried"] = np.zeros(n)
    cols["retried_attempts"] = np.zeros(n, dtype=np.int64)
    cols["retried_unpriced"] = np.zeros(n, dtype=np.int64)
    cols["retried_unpriced_model"] = np.full(n, None, dtype=object)
    cols["retried_cut"] = np.zeros(n, dtype=np.int64)  # attempts that streamed beyond usage
    cols["retried_cut_tokens"] = np.zeros(n, dtype=np.int64)  # by at least this much output
    if "retried_usage" in table.column_names:
        _add_retried(table, book, cols)
    return keys, codes, cards


def _add_retried(table: pa.Table, book: PriceBook, cols: dict[str, Any]) -> None:
    """Add the cost of each row's ``retried_usage`` (JSON list of usages named as the row's
    columns) to its ``cost_*`` columns and ``cost_retried``, and count its entries in
    ``retried_attempts``. An entry that cannot be priced (its model has no price) adds
    nothing: it is counted in ``retried_unpriced`` and its model kept in
    ``retried_unpriced_model``, so that the row's own cost stays and the totals become lower
    bounds naming the right model."""
    column = table.column("retried_usage")
    kind = column.type
    if column.null_count == len(column) or not (pa.types.is_string(kind)
                                                or pa.types.is_large_string(kind)):
        return
    present = np.flatnonzero(pc.is_valid(column).to_numpy(zero_copy_only=False))
    owners: list[int] = []
    entries: list[dict[str, Any]] = []
    for i, text in zip(present.tolist(), column.take(present).to_pylist(), strict=True):
        try:
            items = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue  # damaged by hand: nothing to price, as for a null
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict):
                owners.append(i)
                entries.append(item)
    if not entries:
        return
    at = np.array(owners, dtype=np.int64)
    fields = [RESULT_SCHEMA.field(name) for name in _RETRIED_COLUMNS]
    arrays = [pa.array([_typed(e.get(f.name), f.type) for e in entries], type=f.type)
              for f in fields]
    model_requested = table.column("model_requested").take(pa.array(at))
    attempts = pa.Table.from_arrays([*arrays, model_requested],
                                    names=[*_RETRIED_COLUMNS, "model_requested"])
    sub: dict[str, Any] = {name: cols[name][at] for name in
                           ("scheduled_at", "sent_at", "completed_at")}
    price_rows(attempts, book, sub)
    cols["has_usage"][at] = True
    unpriced = np.isnan(sub["cost_total"])
    for category in (*CATEGORIES, *FEES, "total"):
        np.add.at(cols[f"cost_{category}"], at, np.nan_to_num(sub[f"cost_{category}"]))
    np.add.at(cols["cost_retried"], at, np.nan_to_num(sub["cost_total"]))
    np.add.at(cols["retried_attempts"], at, 1)
    beyond = np.array([max(0, _whole(e.get("content_deltas")) - _whole(e.get("output_tokens")))
                       for e in entries], dtype=np.int64)
    np.add.at(cols["retried_cut"], at, beyond > 0)
    np.add.at(cols["retried_cut_tokens"], at, beyond)
    if unpriced.any():
        np.add.at(cols["retried_unpriced"], at[unpriced], 1)
        names = np.asarray(sub["model_key"], dtype=object)
        cols["retried_unpriced_model"][at[unpriced]] = names[unpriced]


def _whole(value: Any) -> int:
    """A count from a ``retried_usage`` entry (0 for anything else)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _typed(value: Any, kind: pa.DataType) -> Any:
    """*value* if it fits a column of type *kind*, else None (a hand-edited entry)."""
    if pa.types.is_string(kind):
        return value if isinstance(value, str) else None
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    return value if ok else None


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
    for name in ("scheduled_at", "sent_at", "submitted_at", "completed_at", *METRICS,
                 "content_deltas"):
        cols[name] = _floats(table, name)
    keys, codes, cards = price_rows(table, book, cols)
    # Fast-mode rows of a priced model that has no fast-mode rates: unpriced for that reason.
    no_fast = np.array([c is not None and c.fast is None for c in cards], dtype=bool)
    cols["fast_unpriced"] = cols["is_fast"] & no_fast[codes] if len(cards) else cols["is_fast"]
    for key in by:
        if key.startswith("metadata."):
            cols[f"g:{key}"] = _metadata_labels(table, key)
        elif key == "model":
            cols[f"g:{key}"] = cols["model_key"]
        else:
            cols[f"g:{key}"] = _labels(table, key)
    cards_by_model: dict[str, Any] = {}
    for (priced, _day), card in zip(keys, cards, strict=True):
        cards_by_model.setdefault(priced or _NONE, card)  # the first day's card is shown
    # copy=False: the columns stay the arrays made above, one block each; consolidating them
    # into one 2-D block copied every float column (~230 MB more at the peak per million rows).
    return pd.DataFrame(cols, copy=False), cards_by_model


# ----------------------------------------------------------------------------------------------
# sections


@dataclass(slots=True)
class _Window:
    """The run's time span: first schedule (or send) to last completion, epoch seconds; and
    ``active``, the time it was sending (the span less the gaps between sessions)."""

    start: float | None
    end: float | None
    active: float | None = None

    @property
    def wall(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return max(self.end - self.start, 0.0)


def _window(frame: pd.DataFrame, session_starts: Sequence[float] = ()) -> _Window:
    windows = stats.SessionWindows(session_starts)
    add_to_windows(windows, frame)
    return _Window(windows.start, windows.end, windows.active)


def add_to_windows(windows: stats.SessionWindows, frame: pd.DataFrame) -> None:
    """Feed a frame's rows (from :func:`_frame`) to *windows*.

    A row begins at its schedule or send; an async job polled to its end by a later session
    (``collect``, a resume) knows only when its submit was accepted, which stands in: counted
    from the collecting session's start instead, a detached run's jobs seemed done in the
    moments that session took to poll them.

    Only rows that were sent count, as in the rates' numerator: requests cancelled while they
    waited for a gateway that never came back end when the run gave up on them, and a window
    stretched to then spread the rates over an outage in which nothing was sent.
    """
    sent_at, submitted_at = frame["sent_at"].to_numpy(), frame["submitted_at"].to_numpy()
    sent = ~(np.isnan(sent_at) & np.isnan(submitted_at))
    begin = np.fmin(np.fmin(frame["scheduled_at"].to_numpy(), sent_at), submitted_at)
    windows.add(begin[sent], frame["completed_at"].to_numpy(dtype=np.float64)[sent])


def replaced_cost_usd(info: dict[str, Any]) -> float | None:
    """What the rows a resume removed to send again (``--retry-failed``, cancelled rows) had
    cost at list prices. Those requests were billed, and their rows are gone.

    :param info: ``run.json`` (its sessions' ``redone_cost_usd``).
    :return: the sum, or None when nothing priced was replaced.
    """
    total = sum(s["redone_cost_usd"] for s in info.get("sessions") or []
                if isinstance(s, dict) and type(s.get("redone_cost_usd")) in (int, float))
    return float(total) if total > 0 else None


def session_starts(info: dict[str, Any]) -> list[float]:
    """When each session of a run began, from its ``run.json``."""
    return [s["started_at"] for s in info.get("sessions") or [] if s.get("started_at")]


def schedule_check(f: pd.DataFrame, sessions: Sequence[tuple[Any, ...]], *,
                   peak: bool = False) -> dict[str, Any] | None:
    """Whether an open-loop run kept its schedule (:mod:`batchrunner.schedule_check`), over
    every row of the frame; None for a run without a ``--rate`` session.

    :param sessions: :func:`~batchrunner.schedule_check.open_loop_sessions` of its ``run.json``.
    :param peak: add ``in_flight_peak``, the most requests in flight (``sent_at`` to
        ``completed_at``) among the rows of the ``--rate`` sessions (a closed-loop resume's
        ``-c`` is not what held the schedule back); None without such rows.
    """
    check = ScheduleCheck(sessions)
    if not check.open_loop:
        return None
    scheduled = f["scheduled_at"].to_numpy()
    check.add(scheduled, f["sent_at"].to_numpy())
    mine = check.open_rows(scheduled)
    out = check.result(stats.distribution(f["queue_wait_s"].to_numpy()[mine]))
    if peak and out is not None:
        sent = f["sent_at"].to_numpy()
        done = f["completed_at"].to_numpy(dtype=np.float64)
        mine &= ~np.isnan(sent) & ~np.isnan(done)
        out["in_flight_peak"] = (stats.in_flight(sent[mine], done[mine], np.array(
            [sent[mine].min(), done[mine].max()]))[2] if mine.any() else None)
    return out


def _num(value: float | None) -> float | None:
    """JSON-safe float: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(num: float, den: float | None) -> float | None:
    return _num(num / den) if den else None


def _section(f: pd.DataFrame, wall: float | None, metrics: Sequence[str]) -> dict[str, Any]:
    n = len(f)
    counts = f["status"].value_counts()
    status = {s: int(counts.get(s, 0)) for s in _STATUSES}
    status.update({str(k): int(v) for k, v in counts.items() if k not in status and v})
    failed = sum(status[s] for s in _FAILED)
    # A mask, not the ok rows' frame: that copied every column (~300 MB per million rows)
    # where only the timing columns are read.
    ok = (f["status"] == "ok").to_numpy()
    used = int(ok.sum())
    # Requests that left: a row cancelled while it waited for a gateway that could not be
    # reached was never sent, and counting it would pad the rate with what the stop gave up.
    sent = int((f["sent_at"].notna() | f["submitted_at"].notna()).sum())
    # Of the requests that ended: a cancelled one has no outcome yet (a resume sends it
    # again), and counting it made a run stopped early look healthier the less it had sent.
    ended = n - status["cancelled"]
    return {
        "requests": n,
        "sent": sent,
        "status": status,
        "ok_rate": _ratio(status["ok"], ended),
        "error_rate": _ratio(failed, ended),
        "errors": _errors(f, n),
        "throughput": {
            "wall_s": _num(wall),
            "requests_per_s": _ratio(sent, wall),
            "ok_requests_per_s": _ratio(status["ok"], wall),
            "output_tokens_per_s": _ratio(float(f["tok_output"].sum()), wall),
        },
        "latency": {
            "rows_used": used,
            "rows_excluded": n - used,
            "metrics": {m: stats.distribution(f[m].to_numpy()[ok], owned=True) for m in metrics},
        },
        "tokens": _tokens(f),
        "cost": _cost(f),
    }


def _errors(f: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    bad = f[f["status"] != "ok"]
    out: list[dict[str, Any]] = []
    for error_type, g in bad.groupby("error_type", sort=False, observed=True):
        http = g["http_status"].dropna().astype(int).value_counts()
        with_msg = g[g["error_message"].notna()]
        example = None
        if len(with_msg):  # the first in input order, so the example is reproducible
            first = with_msg["input_index"].fillna(np.inf).to_numpy().argmin()
            example = str(with_msg["error_message"].iloc[first])[:_EXAMPLE_CHARS]
        out.append({
            "error_type": str(error_type),
            "count": len(g),
            "share": _ratio(len(g), n),
            "statuses": {str(k): int(v) for k, v in g["status"].value_counts().items() if v},
            "http_statuses": {str(k): int(v) for k, v in http.items()},
            "example": example,
        })
    out.sort(key=lambda e: (-e["count"], e["error_type"]))
    return out


def failed_types(errors: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Failed rows (error, timeout, expired) by error type, from a section's ``errors``:
    cancelled rows were never answered nor failed, and are counted apart, as in the error
    rate."""
    out: dict[str, int] = {}
    for e in errors:
        count = sum(e["statuses"].get(s, 0) for s in _FAILED)
        if count and e["error_type"] != _NONE:
            out[e["error_type"]] = out.get(e["error_type"], 0) + count
    return out


def _tokens(f: pd.DataFrame) -> dict[str, Any]:
    sums = {c: int(f[f"tok_{c}"].sum()) for c in CATEGORIES}
    return {
        "rows_with_usage": int(f["has_usage"].sum()),
        "input": sums["input"],
        "output": sums["output"],
        "cache_write": sums["cache_write_5m"] + sums["cache_write_1h"],
        "cache_write_5m": sums["cache_write_5m"],
        "cache_write_1h": sums["cache_write_1h"],
        "cache_read": sums["cache_read"],
        "web_search_requests": int(f["web_search_requests"].sum()),
        "web_fetch_requests": int(f["web_fetch_requests"].sum()),
    }


def _cost(f: pd.DataFrame) -> dict[str, Any]:
    total = f["cost_total"].to_numpy()
    priced = ~np.isnan(total)
    usd = {c: float(f[f"cost_{c}"].to_numpy()[priced].sum()) for c in (*CATEGORIES, *FEES)}
    usd["total"] = float(total[priced].sum())
    unpriced = f[~priced]
    models = []
    if len(unpriced):
        tok = unpriced[[f"tok_{c}" for c in CATEGORIES]].sum(axis=1)
        for model, rows in unpriced.groupby("model_key", sort=True, observed=True).size().items():
            mine = (unpriced["model_key"] == model).to_numpy()
            # A model with prices has unpriced rows only for want of fast-mode rates.
            fast = bool(unpriced["fast_unpriced"].to_numpy()[mine].any())
            models.append({"model": str(model), "rows": int(rows),
                           "tokens": int(tok[mine].sum()),
                           "reason": "no fast-mode rates" if fast else "no prices"})
    attempts = f["retried_attempts"].to_numpy()
    retried_unpriced = f["retried_unpriced"].to_numpy()
    complete = not len(unpriced) and not retried_unpriced.any()
    rows_priced = int(priced.sum())
    priority = int(f["is_priority"].sum())
    unpriced_retries = sorted({str(m) for m in
                               f["retried_unpriced_model"].to_numpy()[retried_unpriced > 0]})
    # Streams that failed midway are priced from the usage they reported (message_start's
    # output, usually 1 token), though more content came: each delta is a token or more.
    extra = f["content_deltas"].to_numpy() - f["tok_output"].to_numpy()
    cut = (f["status"].to_numpy() != "ok") & (extra > 0)
    return {
        "currency": "USD",
        "complete": complete,
        "total_usd": usd["total"] if complete else None,
        "usd": usd,
        "rows_priced": rows_priced,
        "rows_unpriced": len(unpriced),
        # Unknown when rows are unpriced: the priced rows' mean would read as the answer (and
        # a comparison would take a delta of it).
        "per_request_usd": _ratio(usd["total"], rows_priced) if complete else None,
        "unpriced_models": models,
        # Async jobs submitted but not collected (no rows yet, paid for all the same): set by
        # outstanding_cost; any of them may belong to this section.
        "outstanding_jobs": 0,
        # Usage that failed attempts reported before they were sent again (or the run stopped):
        # in every figure above (the rows' costs), and its part of them here.
        "retried": {"attempts": int(attempts.sum()), "rows": int((attempts > 0).sum()),
                    "usd": float(f["cost_retried"].to_numpy()[priced].sum()),
                    # Of those attempts, the ones whose model has no price: in no figure.
                    "unpriced_attempts": int(retried_unpriced.sum()),
                    "unpriced_models": unpriced_retries},
        # Their output beyond what the usage says: at least this many tokens, unpriced.
        # (and the retried attempts that streamed beyond their usage, in retried_usage)
        "cut_streams": {"rows": int(cut.sum()),
                        "retried_attempts": int(f["retried_cut"].to_numpy().sum()),
                        "output_tokens_at_least": int(extra[cut].sum())
                        + int(f["retried_cut_tokens"].to_numpy().sum())},
        # Rows priced other than at standard rates (by what their usage says), and whether
        # the figures are estimates (Priority Tier has no public per-token price).
        "adjusted_rows": {
            "fast": int(f["is_fast"].sum()) - int(f["fast_unpriced"].sum()),
            "inference_geo_us": int(f["is_geo_us"].sum()),
            "batch": int(f["is_batch"].sum()),
            "priority_at_list_price": priority,
        },
        "estimate": priority > 0,
    }


def _cost_by_model(f: pd.DataFrame, cards: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for model, g in f.groupby("model_key", sort=True, observed=True):
        card = cards.get(str(model))
        entry: dict[str, Any] = {
            "model": str(model), "requests": len(g), "tokens": _tokens(g), "cost": _cost(g),
            "priced_as": card.priced_as if card else None,
            "rates": card.describe() if card else None,
        }
        out.append(entry)
    out.sort(key=lambda e: (-(e["cost"]["usd"]["total"] or 0), e["model"]))
    return out


def _group_ids(f: pd.DataFrame, by: Sequence[str], max_groups: int,
               ) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Group index of each row (biggest groups first) and each group's key; groups past
    *max_groups* are merged into one ``(other)`` group so no row drops out of the tables."""
    combined = np.zeros(len(f), dtype=np.int64)
    categories = []
    for k in by:
        col = f[f"g:{k}"].cat
        categories.append(col.categories)
        combined = combined * len(col.categories) + col.codes.to_numpy().astype(np.int64)
    present, codes = np.unique(combined, return_inverse=True)
    codes = codes.reshape(-1)
    uniques = []
    for value in present:
        labels = []
        for cats in reversed(categories):
            value, code = divmod(int(value), len(cats))
            labels.append(str(cats[code]))
        uniques.append(tuple(reversed(labels)))
    sizes = np.bincount(codes, minlength=len(uniques))
    order = sorted(range(len(uniques)), key=lambda i: (-sizes[i], uniques[i]))
    keys = [dict(zip(by, uniques[i], strict=True)) for i in order[:max_groups]]
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[order] = np.arange(len(uniques))
    ids = rank[codes]
    if len(uniques) > max_groups:
        ids = np.minimum(ids, max_groups)
        keys.append(dict.fromkeys(by, _OTHER))
    return ids, keys


def _timeline(f: pd.DataFrame, window: _Window, max_buckets: int) -> dict[str, Any] | None:
    if window.start is None or window.end is None:
        return None
    t0 = window.start
    done = f["completed_at"].to_numpy() - t0
    tl = stats.timeline(0.0, window.end - t0, done, max_buckets)
    buckets = len(tl.edges) - 1
    has = tl.bucket >= 0
    status = f["status"]

    def count(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        sel = has & mask
        w = None if weights is None else weights[sel]
        return np.bincount(tl.bucket[sel], weights=w, minlength=buckets)

    # A cancelled row did not complete: its completed_at is when a stop or an abort gave it
    # up, and all of them in one bucket read as a spike of throughput.
    answered = (status != "cancelled").to_numpy()
    completed = count(answered)
    failed_mask = status.isin(_FAILED).to_numpy()
    sent = f["sent_at"].to_numpy() - t0
    interval = ~np.isnan(sent) & ~np.isnan(done)
    mean, maxima, peak, busy = stats.in_flight(sent[interval], done[interval], tl.edges)
    errors: dict[str, list[int]] = {}
    etypes = f.loc[failed_mask, "error_type"].value_counts()
    etypes = etypes[etypes > 0]
    top = [str(t) for t in etypes.index[:6]]
    etype = f["error_type"]
    for t in top:
        errors[t] = [int(v) for v in count(failed_mask & (etype == t).to_numpy())]
    if len(etypes) > len(top):
        errors[_OTHER] = [int(v) for v in count(failed_mask & ~etype.isin(top).to_numpy())]
    per_s = completed / tl.width
    return {
        "rows_used": int((has & answered).sum()),
        "rows_without_completed_at": int((~has).sum()),
        "in_flight_rows_used": int(interval.sum()),
        "start_at": _iso(t0),
        "bucket_s": tl.width,
        "t_s": [float(x) for x in tl.edges[:-1]],
        "completed": [int(v) for v in completed],
        "ok": [int(v) for v in count((status == "ok").to_numpy())],
        "failed": [int(v) for v in count(failed_mask)],
        "requests_per_s": [float(v) for v in per_s],
        "output_tokens_per_s": [
            float(v) for v in count(answered, f["tok_output"].to_numpy()) / tl.width],
        "in_flight_mean": [float(v) for v in mean],
        "in_flight_max": [int(v) for v in maxima],
        "errors_by_type": errors,
        "peak_requests_per_s": _num(per_s.max()) if buckets else None,
        "in_flight_peak": peak,
        "active_s": busy,
    }


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _plot_data(f: pd.DataFrame, parts: Sequence[pd.DataFrame], metrics: Sequence[str],
               ) -> dict[str, Any]:
    """What only the HTML needs: CDF points per metric (overall and per group), TTFT histogram."""

    def ok_values(frame: pd.DataFrame, metric: str) -> np.ndarray:
        return frame[metric].to_numpy()[(frame["status"] == "ok").to_numpy()]

    cdf: dict[str, Any] = {}
    for m in metrics:
        entry: dict[str, Any] = {"all": stats.cdf_points(ok_values(f, m))}
        if parts:
            entry["groups"] = [stats.cdf_points(ok_values(part, m)) for part in parts]
        cdf[m] = entry
    return {"cdf": cdf, "ttft_histogram": stats.histogram(ok_values(f, "ttft_s"))}


def _split(f: pd.DataFrame, by: Sequence[str], max_groups: int,
           ) -> tuple[list[dict[str, str]], list[pd.DataFrame]]:
    """Group keys (biggest first) and the rows of each group."""
    group_ids, groups = _group_ids(f, by, max_groups)
    # One sort, then each group is a slice: no full-frame mask per group.
    order = np.argsort(group_ids, kind="stable")
    bounds = np.searchsorted(group_ids[order], np.arange(len(groups) + 1))
    ordered = f.take(order)
    return groups, [ordered.iloc[bounds[i]:bounds[i + 1]] for i in range(len(groups))]


def _any_stage(table: pa.Table) -> bool:
    return "stage" in table.column_names and table.column("stage").null_count < table.num_rows


def _staged(run: RunRows, f: pd.DataFrame, warm: pd.DataFrame, by: Sequence[str],
            metrics: Sequence[str], max_groups: int,
            ) -> tuple[list[dict[str, Any]], list[pd.DataFrame], dict[str, Any]]:
    """Groups of a bench run (stage outer, in run order; then the ``--by`` keys, biggest first,
    within each stage) and its ``stages`` entry. Each stage's figures are over its own window."""
    labels = f["g:stage"].astype(object).to_numpy() if len(f) else np.array([], dtype=object)
    begin = np.fmin(f["scheduled_at"].to_numpy(), f["sent_at"].to_numpy())
    stage_parts: dict[str, pd.DataFrame] = {}
    first_seen: dict[str, float] = {}
    for name in pd.unique(labels):
        mask = labels == name
        stage_parts[str(name)] = f[mask]
        first_seen[str(name)] = float(np.nanmin(begin[mask])) if np.isfinite(
            begin[mask]).any() else math.nan
    warmup_by_stage: dict[str, int] = {}
    if len(warm):
        counts = warm["g:stage"].astype(object).value_counts(sort=False)
        for name, count in counts.items():
            base = str(name).removesuffix(bench_report.WARMUP_SUFFIX)
            warmup_by_stage[base] = warmup_by_stage.get(base, 0) + int(count)
    results, saturation, source = bench_report.bench_results(run.info, run.bench)
    by_name = {str(r["stage"]): r for r in results}
    order = [s for s in bench_report.stage_order(list(stage_parts), first_seen, run.info, results)
             if s in stage_parts or s in by_name or s in warmup_by_stage]
    inner = [k for k in by if k != "stage"]
    groups: list[dict[str, Any]] = []
    parts: list[pd.DataFrame] = []
    entries = []
    for name in order:
        part = stage_parts.get(name, f.iloc[0:0])
        target = bench_report.stage_target(name, run.info, by_name.get(name))
        # As bench counts it: requests cancelled at the stage's end (the drain timed out)
        # never completed, and their cancel instant would stretch the stage's window.
        answered = part[(part["status"] != "cancelled").to_numpy()]
        # ... and, as bench does, to its last ok answer when there is one (a late timeout).
        ok_rows = part[(part["status"] == "ok").to_numpy()]
        start = _window(answered if len(answered) else part)
        wall = start.wall
        if len(ok_rows) and start.start is not None:
            ok_end = _window(ok_rows).end
            if ok_end is not None:
                wall = max(ok_end - start.start, 0.0)
        if target.get("rate") and len(part) and wall is not None:
            # As bench counts it: an open-loop stage spans at least its schedule (n / rate).
            wall = max(wall, len(part) / target["rate"])
        section = _section(part, wall, metrics) if len(part) else None
        if section is not None and inner:
            keys, subs = _split(part, inner, max_groups)
            for key, sub in zip(keys, subs, strict=True):
                groups.append({"key": {"stage": name, **key}, **_section(sub, wall, metrics)})
                parts.append(sub)
        elif section is not None:
            groups.append({"key": {"stage": name}, **section})
            parts.append(part)
        entries.append(bench_report.stage_entry(
            name, part, section, warmup_by_stage.get(name, 0), target, by_name.get(name)))
    block = bench_report.stages_block(
        by=by, order=order, entries=entries, warmup_by_stage=warmup_by_stage,
        warmup_cost=_cost(warm) if len(warm) else None, results=results,
        source=source, saturation=saturation, info=run.info, bench=run.bench)
    return groups, parts, block


def _run_report(run: RunRows, by: Sequence[str], book: PriceBook, max_groups: int,
                max_buckets: int, plot_data: bool) -> dict[str, Any]:
    staged = bench_report.has_stages(run.info, _any_stage(run.table))
    run_by = bench_report.stage_keys(by) if staged else list(by)
    f, cards = _frame(run.table, run_by, book)
    rows_read = len(f)
    warm = f.iloc[0:0]
    if staged and len(f):
        # Warm-up rows leave every figure here; they are counted apart in ``stages``.
        cats = f["g:stage"].cat
        is_warm = np.array([str(c).endswith(bench_report.WARMUP_SUFFIX)
                            for c in cats.categories], dtype=bool)
        mask = is_warm[cats.codes.to_numpy()]
        if mask.any():
            warm, f = f[mask], f[~mask].reset_index(drop=True)
    window = _window(f, session_starts(run.info))
    metrics = [m for m in METRICS if f[m].notna().any()]
    overall = _section(f, window.active, metrics)
    config = run.info.get("config") or {}
    modes = sorted({str(m) for m in _labels(run.table, "mode")} - {_NONE}) \
        if "mode" in run.table.column_names else []
    report: dict[str, Any] = {
        "name": run.name,
        "run_dir": str(run.run_dir) if run.run_dir else None,
        "run_id": run.info.get("run_id"),
        "mode": config.get("mode") or (modes[0] if len(modes) == 1 else ",".join(modes) or None),
        "status": run.info.get("status"),
        "gateway": run.info.get("gateway"),
        "rows": rows_read,
        "journal_rows": run.journal_rows,
        "replaced_cost_usd": replaced_cost_usd(run.info),
        # Async jobs submitted but not yet collected: they have no rows (nor cost) yet.
        "outstanding_jobs": (run.info.get("async") or {}).get("outstanding_jobs") or 0,
        "collect_before": (run.info.get("async") or {}).get("collect_before"),
        # Input rows the run refused (invalid, or a repeated custom_id) have no row: only
        # run.json counts them. Null when it does not say (unreadable, or a first session going).
        "rejected_input_rows": run.info.get("rejected"),
        "window": {"start_at": _iso(window.start), "end_at": _iso(window.end),
                   "wall_s": _num(window.wall), "active_s": _num(window.active)},
        "metrics": metrics,
        "overall": overall,
        "groups": [],
        "cost_by_model": _cost_by_model(f, cards),
        "timeline": _timeline(f, window, max_buckets),
        "schedule": None,
        "stages": None,
        "warnings": list(run.warnings),
    }
    if not staged:  # a bench judges each stage's schedule in its stage table
        report["schedule"] = schedule_check(f, open_loop_sessions(run.info), peak=True)
    parts: list[pd.DataFrame] = []
    if staged:
        report["groups"], parts, report["stages"] = _staged(run, f, warm, run_by, metrics,
                                                            max_groups)
    elif by:
        groups, parts = _split(f, by, max_groups)
        for key, part in zip(groups, parts, strict=True):
            report["groups"].append({"key": key, **_section(part, window.active, metrics)})
    if report["outstanding_jobs"]:
        for section in (report["overall"], *report["groups"], *report["cost_by_model"]):
            outstanding_cost(section["cost"], report["outstanding_jobs"])
    if plot_data:
        report["plot_data"] = _plot_data(f, parts, metrics)
    return report


def outstanding_cost(cost: dict[str, Any], jobs: int) -> None:
    """Async jobs not collected yet have no rows, but will be paid for: the cost of the rows is
    only a lower bound (as ``run --json`` says). Which model or group the jobs belong to is not
    in the rows, so every total of the run is one."""
    cost.update(complete=False, total_usd=None, outstanding_jobs=jobs)


def build_report(runs: Sequence[RunRows], *, by: Sequence[str] = (), book: PriceBook | None = None,
                 max_groups: int = 30, max_buckets: int = 120,
                 plot_data: bool = False) -> dict[str, Any]:
    """The whole report of one or more runs, as a JSON-ready dict (keys: ``docs/report.md``).

    :param runs: from :func:`load_run` (or built around any table of result rows).
    :param by: group keys (see :func:`parse_group_keys`): every table is repeated per group.
    :param book: prices (default: genai-prices' bundled data, no overrides).
    :param max_groups: groups beyond the biggest ones are merged into ``(other)``.
    :param max_buckets: at most this many time buckets in the timeline.
    :param plot_data: add what the HTML plots need (CDF points, histograms) under ``plot_data``.
    """
    book = book or PriceBook()
    by = parse_group_keys(by)
    reports = [_run_report(r, by, book, max_groups, max_buckets, plot_data) for r in runs]
    _unique_names(reports)
    out: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "generated_at": _iso(datetime.now(UTC).timestamp()),
        "prices": book.describe(),
        "group_by": list(by),
        "rows_used": {
            "counts, errors, tokens, cost": "all rows (error_rate: of rows not cancelled)",
            "throughput": "sent rows, over their sessions' sending time",
            "latency": "ok rows only (rows_used / rows_excluded given)",
            "throughput over time": "rows with completed_at, cancelled rows left out",
            "in flight": "rows with sent_at and completed_at",
        },
        "runs": reports,
    }
    if any(r["stages"] for r in reports):
        out["rows_used"]["bench runs"] = (
            "warm-up rows (stage ending #warmup) are left out of every figure and counted in "
            "stages.warmup_rows; tables are grouped by stage, each stage's throughput over its "
            "own window (first schedule to last completion of its measured rows)")
    if len(reports) > 1:
        out["comparison"] = compare(reports)
    return out


def _unique_names(reports: list[dict[str, Any]]) -> None:
    seen: dict[str, int] = {}
    for r in reports:
        base = r["name"]
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            r["name"] = f"{base}#{seen[base]}"


# ----------------------------------------------------------------------------------------------
# comparison


def _figures(section: dict[str, Any], metrics: Sequence[str], full: bool) -> dict[str, Any]:
    """The comparable figures of a section, flat: ``{name: value}``."""
    out: dict[str, Any] = {
        "requests": section["requests"],
        "ok": section["status"]["ok"],
        "error_rate": section["error_rate"],
        "requests_per_s": section["throughput"]["requests_per_s"],
        "output_tokens_per_s": section["throughput"]["output_tokens_per_s"],
    }
    for m in metrics:
        dist = section["latency"]["metrics"].get(m)
        for p in ("p50", "p90", "p99") if full else ("p50", "p99"):
            out[f"{m} {p}"] = dist[p] if dist else None
    if full:
        for key in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read",
                    "web_search_requests"):
            out[f"tokens {key}"] = section["tokens"][key]
    cost = section["cost"]
    # With unpriced rows, or async jobs not collected yet, there is no total: the priced part
    # alone would compare as a saving (a run half on an unknown model read as -50 %). Per
    # request stays: it is over priced rows.
    complete = cost["complete"]
    out["cost_usd"] = cost["total_usd"]
    if full:
        for c in (*CATEGORIES, *FEES):
            out[f"cost_usd {c}"] = cost["usd"][c] if complete else None
    out["cost_per_request_usd"] = cost["per_request_usd"]
    return out


def _rows(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(k for v in values for k in v))
    rows = []
    for name in names:
        vals = [v.get(name) for v in values]
        base = vals[0]
        deltas, pcts = [], []
        for v in vals[1:]:
            d = None if v is None or base is None else v - base
            if d is not None and abs(d) <= 1e-12 * max(abs(base), abs(v)):
                # Float noise from summing in another order is no difference: a plain zero
                # (0 * d kept the sign of d, and -0.0 printed as "-0.0%").
                d = 0.0 if isinstance(d, float) else 0
            deltas.append(d)
            pcts.append(_num(d / base * 100) if d is not None and base else None)
        rows.append({"figure": name, "values": vals, "delta": deltas, "delta_pct": pcts})
    return rows


def compare(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Side-by-side figures of several run reports, with deltas against the first.

    :param reports: the ``runs`` entries of :func:`build_report`.
    :return: ``{"baseline", "runs", "overall": [...], "groups": [...], "cost_by_model": [...],
        "unpriced": {run: [models]}, "outstanding_jobs": {run: n},
        "rejected_input_rows": {run: n}, "client_bound_stages": {run: [stage]}}``; each figure row is
        ``{"figure", "values", "delta", "delta_pct"}``, deltas for every run after the first
        (``delta_pct`` is null when the baseline is 0 or missing). A run with unpriced models
        (listed in ``unpriced``) or async jobs not collected yet (``outstanding_jobs``) has null
        cost totals (``cost_usd`` and its categories, also by model; ``cost_per_request_usd`` is
        over its priced rows).
    """
    metrics = list(dict.fromkeys(m for r in reports for m in r["metrics"]))
    overall = _rows([_figures(r["overall"], metrics, full=True) for r in reports])
    # Per group, only the end-to-end timings, to keep the table readable.
    group_metrics = [m for m in ("ttft_s", "latency_s", "total_s") if m in metrics]
    groups = []
    keyed = [{tuple(sorted(g["key"].items())): g for g in r["groups"]} for r in reports]
    for key in keyed[0]:
        if all(key in k for k in keyed[1:]):
            rows = _rows([_figures(k[key], group_metrics, full=False) for k in keyed])
            groups.append({"key": dict(key), "figures": rows})
    models = list(dict.fromkeys(m["model"] for r in reports for m in r["cost_by_model"]))
    by_model = []
    for model in models:
        values = []
        for r in reports:
            entry = next((m for m in r["cost_by_model"] if m["model"] == model), None)
            # A model without rows in a run costs $0 there, unless jobs not collected yet may
            # be of that model.
            absent = None if r.get("outstanding_jobs") else 0.0
            values.append({"requests": entry["requests"] if entry else 0,
                           "cost_usd": entry["cost"]["total_usd"] if entry else absent})
        by_model.append({"model": model, "figures": _rows(values)})
    unpriced = {r["name"]: [m["model"] for m in r["overall"]["cost"]["unpriced_models"]]
                for r in reports if r["overall"]["cost"]["unpriced_models"]}
    outstanding = {r["name"]: r["outstanding_jobs"] for r in reports if r.get("outstanding_jobs")}
    rejected = {r["name"]: r["rejected_input_rows"] for r in reports
                if r.get("rejected_input_rows")}
    # A client-bound bench stage measured the client: its difference is no gateway's.
    bound = {r["name"]: [e["stage"] for e in (r.get("stages") or {}).get("per_stage", [])
                         if e.get("client_bound")] for r in reports}
    return {"baseline": reports[0]["name"], "runs": [r["name"] for r in reports],
            "overall": overall, "groups": groups, "cost_by_model": by_model,
            "unpriced": unpriced, "outstanding_jobs": outstanding,
            "rejected_input_rows": rejected,
            "client_bound_stages": {name: stages for name, stages in bound.items() if stages}}


# ----------------------------------------------------------------------------------------------
# the short summary at the end of ``run``


def summarize_table(
    table: pa.Table, book: PriceBook | None = None, session_starts: Sequence[float] = (),
    schedule: Sequence[tuple[Any, ...]] = (),
) -> dict[str, Any]:
    """The closing summary of ``run`` (kept small: it also goes into ``run.json``).

    :param table: result rows with at least :data:`SUMMARY_COLUMNS`.
    :param book: prices (default: bundled genai-prices data).
    :param session_starts: when each session of the run began: the rates are over the time
        spent sending (``wall_s``), without the gaps between sessions; ``span_s`` is the whole.
    :param schedule: :func:`~batchrunner.schedule_check.open_loop_sessions` of the run: with a
        ``--rate`` session, ``schedule`` says whether the sends kept their schedule.
    :return: ``requests``, ``status``, ``error_types``, ``wall_s``, ``span_s``,
        ``requests_per_s``, ``output_tokens_per_s``, one distribution per timing metric the
        rows have (ok rows), ``tokens``, ``cost`` and ``schedule`` (None unless open loop).
    """
    book = book or PriceBook()
    f, _cards = _frame(table, (), book)
    window = _window(f, session_starts)
    metrics = [m for m in METRICS if f[m].notna().any()]
    section = _section(f, window.active, metrics)
    status = {k: v for k, v in section["status"].items() if v}
    errors = failed_types(section["errors"])
    out: dict[str, Any] = {
        "requests": section["requests"],
        "status": status,
        "error_types": errors,
        "wall_s": section["throughput"]["wall_s"],
        "span_s": _num(window.wall),
        "requests_per_s": section["throughput"]["requests_per_s"],
        "output_tokens_per_s": section["throughput"]["output_tokens_per_s"],
    }
    for m in METRICS:
        dist = section["latency"]["metrics"].get(m)
        out[m] = dist if dist and dist["n"] else None
    t = section["tokens"]
    out["tokens"] = {
        "input": t["input"], "output": t["output"],
        "cache_creation_input": t["cache_write"], "cache_read_input": t["cache_read"],
        "cache_creation_5m_input": t["cache_write_5m"],
        "cache_creation_1h_input": t["cache_write_1h"],
        "web_search_requests": t["web_search_requests"],
    }
    cost = section["cost"]
    prices = book.describe()
    out["cost"] = {
        "total_usd": cost["total_usd"], "priced_usd": cost["usd"]["total"],
        "complete": cost["complete"], "usd": cost["usd"], "retried": cost["retried"],
        "cut_streams": cost["cut_streams"],
        "unpriced_models": list(dict.fromkeys([*(m["model"] for m in cost["unpriced_models"]),
                                               *cost["retried"]["unpriced_models"]])),
        "unpriced_fast_models": [m["model"] for m in cost["unpriced_models"]
                                 if m["reason"] == "no fast-mode rates"],
        "prices": f"genai-prices {prices['version']}" if prices["version"] else None,
    }
    out["schedule"] = schedule_check(f, schedule)
    return out
