"""The closing summary of a run, computed from its result rows (never from live counters).

Figures say which rows they use: latency and TTFT percentiles are over ``ok`` rows only
(a failed request's latency measures the failure, not the service), counts and throughput
include every row. The full report (``batchrunner report``) extends this.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

SUMMARY_COLUMNS = [
    "status",
    "error_type",
    "sent_at",
    "scheduled_at",
    "completed_at",
    "latency_s",
    "ttft_s",
    "total_s",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
]
QUANTILES = (0.5, 0.9, 0.99)


def summarize(table: pa.Table) -> dict[str, Any]:
    """Counts, throughput, percentiles and token totals of a run's rows.

    :param table: rows with at least :data:`SUMMARY_COLUMNS`.
    :return: a JSON-serialisable dict (stable keys).
    """
    n = table.num_rows
    status = table.column("status")
    counts = {str(k): int(v) for k, v in _value_counts(status).items()}
    errors = {str(k): int(v) for k, v in _value_counts(table.column("error_type")).items() if k}
    ok_mask = pc.equal(status, "ok")
    ok = table.filter(ok_mask) if n else table
    out: dict[str, Any] = {"requests": n, "status": counts, "error_types": errors}
    start = _min_ts(table, ("scheduled_at", "sent_at"))
    end = _max_ts(table, ("completed_at",))
    wall = (end - start) if start is not None and end is not None else None
    out["wall_s"] = wall
    out_tokens = _sum(table.column("output_tokens"))
    out["requests_per_s"] = (n / wall) if wall else None
    out["output_tokens_per_s"] = (out_tokens / wall) if wall else None
    out["latency_s"] = _quantiles(ok.column("latency_s"))
    out["ttft_s"] = _quantiles(ok.column("ttft_s"))
    out["total_s"] = _quantiles(ok.column("total_s"))
    out["tokens"] = {
        "input": _sum(table.column("input_tokens")),
        "output": out_tokens,
        "cache_creation_input": _sum(table.column("cache_creation_input_tokens")),
        "cache_read_input": _sum(table.column("cache_read_input_tokens")),
    }
    return out


def _value_counts(column: pa.ChunkedArray) -> dict[Any, int]:
    if len(column) == 0:
        return {}
    result = pc.value_counts(column)
    return {
        v["values"].as_py(): v["counts"].as_py() for v in result if v["values"].as_py() is not None
    }


def _quantiles(column: pa.ChunkedArray) -> dict[str, float] | None:
    values = pc.drop_null(column)
    if len(values) == 0:
        return None
    qs = pc.quantile(values, q=list(QUANTILES), interpolation="linear").to_pylist()
    result = {f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, qs, strict=True)}
    result["max"] = float(pc.max(values).as_py())
    result["n"] = len(values)
    return result


def _sum(column: pa.ChunkedArray) -> int:
    value = pc.sum(column).as_py()
    return int(value or 0)


def _min_ts(table: pa.Table, columns: tuple[str, ...]) -> float | None:
    for name in columns:
        value = pc.min(table.column(name)).as_py()
        if value is not None:
            return value.timestamp()
    return None


def _max_ts(table: pa.Table, columns: tuple[str, ...]) -> float | None:
    for name in columns:
        value = pc.max(table.column(name)).as_py()
        if value is not None:
            return value.timestamp()
    return None


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the end of ``run``."""
    lines = []
    status = ", ".join(f"{k} {v:,}" for k, v in sorted(summary["status"].items())) or "none"
    lines.append(f"requests   {summary['requests']:,}  ({status})")
    if summary["error_types"]:
        top = sorted(summary["error_types"].items(), key=lambda kv: -kv[1])[:6]
        lines.append("errors     " + ", ".join(f"{k} {v:,}" for k, v in top))
    if summary["requests_per_s"] is not None:
        lines.append(
            f"throughput {summary['requests_per_s']:,.1f} req/s, "
            f"{summary['output_tokens_per_s']:,.0f} output tokens/s over {summary['wall_s']:,.1f} s"
        )
    for key, label in (("latency_s", "latency"), ("ttft_s", "TTFT"), ("total_s", "total")):
        q = summary.get(key)
        if q:
            lines.append(
                f"{label:<10} p50 {_ms(q['p50'])}  p90 {_ms(q['p90'])}  p99 {_ms(q['p99'])}"
                f"  max {_ms(q['max'])}  (ok rows: {q['n']:,})"
            )
    t = summary["tokens"]
    lines.append(
        f"tokens     input {t['input']:,}  output {t['output']:,}  "
        f"cache write {t['cache_creation_input']:,}  cache read {t['cache_read_input']:,}"
    )
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.2f} s"
