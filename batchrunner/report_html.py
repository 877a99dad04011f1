"""The self-contained HTML report: the text report's tables plus inline SVG plots.

One file, no external resources (no scripts, fonts, images or style sheets to fetch), so it
can be mailed, attached to a CI run or opened offline. Plots per run: latency CDFs (per group
when grouped), the TTFT histogram, throughput, requests in flight and errors over time, cost by
model and by group; with several runs, overlaid CDFs and cost side by side come first. A bench
run starts with its saturation curve (latency percentiles against achieved throughput, one point
per stage) and its stage table, client-bound stages drawn hollow and their rows coloured.
"""

from __future__ import annotations

from html import escape
from typing import Any

from batchrunner import report_svg as svg
from batchrunner.pricing import CATEGORIES, FEES
from batchrunner.report_text import (
    Table,
    comparison_tables,
    cost_total_text,
    fmt_duration,
    fmt_usd,
    plural,
    run_header,
    run_tables,
)

__all__ = ["render_html", "saturation_chart"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1340px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:32px 0 6px;border-bottom:2px solid #ddd}
h3{font-size:14px;margin:18px 0 6px;color:#333}
p.meta{color:#555;font-size:13px;margin:2px 0}
p.warn{color:#8a1c12;font-weight:600}
table{border-collapse:collapse;font-size:12px;margin:4px 0 8px}
th,td{padding:3px 8px;border-bottom:1px solid #eee;white-space:nowrap}
th{background:#f6f6f6;text-align:right} td{text-align:right;font-variant-numeric:tabular-nums}
th.l,td.l{text-align:left} td.ex{white-space:normal;max-width:480px}
.charts{display:flex;flex-wrap:wrap;gap:12px} svg.chart{border:1px solid #e3e3e3;border-radius:4px}
p.note{font-size:12px;color:#555;margin:0 0 8px}
tr.flag td{background:#fde8e6;color:#8a1c12;font-weight:600}
"""

_CATEGORY_LABELS = {"input": "input", "output": "output", "cache_write_5m": "cache write 5m",
                    "cache_write_1h": "cache write 1h", "cache_read": "cache read",
                    "web_search": "web search"}


def _cost_parts(usds: list[dict[str, float]]) -> tuple[str, ...]:
    """The parts of a total stacked in a cost chart: the token categories, and the fees that
    some bar has (a web search series of zeros would only clutter the key)."""
    return (*CATEGORIES, *(f for f in FEES if any(u.get(f) for u in usds)))
_CDF_METRICS_COMPARE = ("ttft_s", "latency_s", "total_s")
_MAX_LINES = 8


def _table_html(table: Table) -> str:
    out = [f"<h3>{escape(table.title)}</h3>"]
    if table.headers and table.rows:
        last = len(table.headers) - 1

        def cls(i: int) -> str:
            if i == last and table.last_left:
                return ' class="l ex"'
            return ' class="l"' if i < table.left else ""

        out.append("<table><thead><tr>" + "".join(
            f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(table.headers)) + "</tr></thead>")
        out.append("<tbody>")
        flagged = set(table.flagged)
        for k, row in enumerate(table.rows):
            tr = '<tr class="flag">' if k in flagged else "<tr>"
            out.append(tr + "".join(f"<td{cls(i)}>{escape(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
        out.append("</tbody></table>")
    out += [f'<p class="note">{escape(n)}</p>' for n in table.notes]
    return "\n".join(out)


def _group_label(key: dict[str, str]) -> str:
    # A bench stage's name already says what it is (c=8, rate=50).
    return ", ".join(v if k == "stage" else f"{k}={v}" for k, v in key.items())


def _cdf_series(points: list[list[float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def _pct(v: float) -> str:
    return f"{v * 100:.0f}%"


def saturation_chart(run: dict[str, Any]) -> str:
    """The saturation curve of a bench run: x = achieved throughput (ok requests/s over each
    stage's window), y = latency p50/p90/p99 and TTFT p99 (stream runs), one point per stage;
    concurrency and rate stages are two lines, each joined in stage order."""
    st = run["stages"]
    entries = st["per_stage"]
    cols = [("latency_s", "p50"), ("latency_s", "p90"), ("latency_s", "p99")]
    if any(e["ttft_s"] for e in entries):
        cols.append(("ttft_s", "p99"))
    labels = [f"{'latency' if c == 'latency_s' else 'TTFT'} {q}" for c, q in cols]
    points = []
    for e in entries:
        t = e["target"]
        rate = t.get("rate") is not None
        hover = f"target {_target_text(t)}; verdict: {e['verdict'] or '-'}"
        points.append(svg.CurvePoint(
            label=e["stage"], x=e["ok_requests_per_s"] if e["ok_requests_per_s"] is not None
            else float("nan"), ys=tuple((e[c] or {}).get(q) for c, q in cols),
            line="rate" if rate else "concurrency", square=rate, hollow=e["client_bound"],
            hover=hover))
    hlines = []
    for slo in st["slos"]:
        if slo["column"] in ("latency_s", "ttft_s") and slo["limit"] is not None:
            q = f"p{slo['quantile'] * 100:g}"
            idx = next((i for i, cq in enumerate(cols) if cq == (slo["column"], q)), None)
            hlines.append((f"SLO {slo['slo']}", slo["limit"], idx))
    vlines = []
    sat = st["saturation"] or {}
    best = sat.get("highest_passing_rate")
    if best is not None:
        hit = next((e for e in entries if e["target"].get("rate") is not None
                    and abs(e["target"]["rate"] - best) <= 1e-9 * max(best, 1.0)
                    and e["ok_requests_per_s"] is not None), None)
        if hit:
            vlines.append((f"saturation: highest passing rate {best:g}/s",
                           hit["ok_requests_per_s"]))
    key = []
    if any(not p.square for p in points):
        key.append(("circle", "concurrency stage"))
    if any(p.square for p in points):
        key.append(("square", "rate stage"))
    if any(p.hollow for p in points):
        key.append(("hollow", "hollow: client-bound stage (the client was the limit)"))
    return svg.curve_chart(
        points, labels, title="Saturation curve: latency vs achieved throughput, per stage",
        x_label="achieved throughput (ok requests/s over each stage's window)",
        y_label="latency (ok rows)", x_fmt=lambda v: f"{v:g}/s", y_fmt=_short_duration,
        hlines=hlines, vlines=vlines, key=key, height=360)


def _short_duration(v: float) -> str:
    # Tick labels: short enough not to run into the axis title.
    return f"{v * 1e3:.4g} ms" if abs(v) < 1 else f"{v:.4g} s"


def _target_text(t: dict[str, Any]) -> str:
    if t.get("rate") is not None:
        return f"rate {t['rate']:g}/s"
    return f"concurrency {t.get('concurrency')}"


def _run_charts(run: dict[str, Any]) -> list[str]:
    charts: list[str] = []
    plot = run.get("plot_data") or {}
    cdf = plot.get("cdf", {})
    for metric in run["metrics"]:
        entry = cdf.get(metric)
        if not entry:
            continue
        series = [("all ok rows", *_cdf_series(entry["all"]))]
        for group, points in zip(run["groups"], entry.get("groups", []), strict=False):
            if len(series) > _MAX_LINES:
                break
            if points:
                series.append((_group_label(group["key"]), *_cdf_series(points)))
        charts.append(svg.line_chart(series, title=f"{metric}: CDF (ok rows)", x_label=metric,
                                     y_label="fraction of requests", x_fmt=fmt_duration,
                                     y_fmt=_pct, y_max=1.0))
    hist = plot.get("ttft_histogram")
    if hist:
        title = "TTFT histogram (ok rows)"
        if hist["overflow"]:
            title += f"; {hist['overflow']:,} above {fmt_duration(hist['edges'][-1])} not shown"
        charts.append(svg.column_chart(hist["edges"], [("requests", hist["counts"])], title=title,
                                       x_label="ttft_s", y_label="requests",
                                       x_fmt=fmt_duration))
    tl = run.get("timeline")
    if tl and tl["t_s"]:
        ts = [*tl["t_s"], tl["t_s"][-1] + tl["bucket_s"]]
        width = fmt_duration(tl["bucket_s"])
        charts.append(svg.line_chart(
            [("completed req/s", ts, [*tl["requests_per_s"], tl["requests_per_s"][-1]])],
            title=f"Requests completed per second (all rows, {width} buckets of completed_at)",
            x_label="seconds since the run started", y_label="requests/s", step=True,
            log_x=False))
        charts.append(svg.line_chart(
            [("output tokens/s", ts, [*tl["output_tokens_per_s"], tl["output_tokens_per_s"][-1]])],
            title=f"Output tokens per second ({width} buckets)",
            x_label="seconds since the run started", y_label="output tokens/s", step=True,
            log_x=False))
        charts.append(svg.line_chart(
            [("mean in flight", ts, [*tl["in_flight_mean"], tl["in_flight_mean"][-1]]),
             ("max in flight", ts, [*tl["in_flight_max"], tl["in_flight_max"][-1]])],
            title=f"Requests in flight (sent_at to completed_at, {width} buckets)",
            x_label="seconds since the run started", y_label="requests", step=True, log_x=False))
        stacks = [(t, [float(v) for v in vals]) for t, vals in tl["errors_by_type"].items()]
        charts.append(svg.column_chart(
            ts, stacks or [("failed", [0.0] * len(tl["t_s"]))],
            title="Failed requests over time (by error_type, bucket of completed_at)",
            x_label="seconds since the run started", y_label="failed requests",
            y_fmt=lambda v: f"{v:g}"))
    models = run["cost_by_model"]
    if models:
        parts = _cost_parts([m["cost"]["usd"] for m in models])
        charts.append(svg.bar_chart(
            [m["model"] for m in models],
            [(_CATEGORY_LABELS[c], [m["cost"]["usd"][c] for m in models]) for c in parts],
            title="Cost by model (USD)", value_fmt=fmt_usd,
            totals_text=[_model_cost_text(m) for m in models]))
    if run["groups"]:
        groups = run["groups"]
        parts = _cost_parts([g["cost"]["usd"] for g in groups])
        charts.append(svg.bar_chart(
            [_group_label(g["key"]) for g in groups],
            [(_CATEGORY_LABELS[c], [g["cost"]["usd"][c] for g in groups]) for c in parts],
            title="Cost by group (USD)", value_fmt=fmt_usd,
            totals_text=[cost_total_text(g["cost"]) for g in groups]))
    return charts


def _model_cost_text(model: dict[str, Any]) -> str:
    """A model's bar label, as the text report's cost table says it: a model nobody prices is
    UNPRICED, never a $0 bar; one with some rows unpriced is a lower bound that names them."""
    cost = model["cost"]
    if model["priced_as"] is None and cost["rows_unpriced"]:
        return "UNPRICED"
    text = cost_total_text(cost)
    if cost["rows_unpriced"]:
        text += f" ({plural(cost['rows_unpriced'], 'row')} unpriced)"
    return text


def _comparison_charts(report: dict[str, Any]) -> list[str]:
    runs = report["runs"]
    charts = []
    metrics = [m for m in _CDF_METRICS_COMPARE if any(m in r["metrics"] for r in runs)]
    for metric in metrics:
        series = []
        for r in runs:  # a run without this metric keeps its slot, so colours match runs
            points = (r.get("plot_data") or {}).get("cdf", {}).get(metric, {}).get("all") or []
            label = r["name"] if points else f"{r['name']} (no {metric})"
            series.append((label, *_cdf_series(points)))
        charts.append(svg.line_chart(series, title=f"{metric}: CDF by run (ok rows)",
                                     x_label=metric, y_label="fraction of requests",
                                     x_fmt=fmt_duration, y_fmt=_pct, y_max=1.0))
    cats = []
    parts = _cost_parts([m["cost"]["usd"] for r in runs for m in r["cost_by_model"]])
    stacks: dict[str, list[float]] = {c: [] for c in parts}
    models = list(dict.fromkeys(m["model"] for r in runs for m in r["cost_by_model"]))
    texts = []
    for model in models:  # each model's runs next to each other
        for r in runs:
            m = next((m for m in r["cost_by_model"] if m["model"] == model), None)
            if m:
                cats.append(f"{model} · {r['name']}")
                texts.append(_model_cost_text(m))
                for c in parts:
                    stacks[c].append(m["cost"]["usd"][c])
    charts.append(svg.bar_chart(cats, [(_CATEGORY_LABELS[c], stacks[c]) for c in parts],
                                title="Cost by model and run (USD)", value_fmt=fmt_usd,
                                totals_text=texts))
    return charts


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML document (string).

    :param report: from :func:`batchrunner.report.build_report` with ``plot_data=True`` (without
        it the page has tables and the time series only).
    """
    prices = report["prices"]
    names = ", ".join(r["name"] for r in report["runs"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>batchrunner report: {escape(names)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>batchrunner report</h1>",
        f'<p class="meta">{escape(names)} · generated {escape(report["generated_at"] or "")} · '
        f"prices: genai-prices {escape(str(prices.get('version')))} ({escape(prices['data'])} "
        f"data){escape(_overrides(prices))} · {escape(prices['notes'])}</p>",
    ]
    if report["group_by"]:
        parts.append(f'<p class="meta">grouped by {escape(", ".join(report["group_by"]))}</p>')
    rules = "; ".join(f"{k}: {v}" for k, v in report["rows_used"].items())
    parts.append(f'<p class="meta">rows used: {escape(rules)}</p>')
    if "comparison" in report:
        parts.append("<h2>Comparison</h2>")
        parts.append('<div class="charts">' + "\n".join(_comparison_charts(report)) + "</div>")
        parts += [_table_html(t) for t in comparison_tables(report["comparison"])]
    for run in report["runs"]:
        header = run_header(run)
        parts.append(f"<h2>{escape(header[0].removeprefix('== '))}</h2>")
        parts += [f'<p class="{_header_class(line)}">{escape(line)}</p>' for line in header[1:]]
        tables = run_tables(run, prices, report["group_by"])
        if run.get("stages"):
            # A bench's answer first: the curve and the stage table, then the usual plots.
            parts.append('<div class="charts">' + saturation_chart(run) + "</div>")
            parts.append(_table_html(tables.pop(0)))
        parts.append('<div class="charts">' + "\n".join(_run_charts(run)) + "</div>")
        parts += [_table_html(t) for t in tables]
    parts.append("</body></html>")
    return "\n".join(parts)


def _header_class(line: str) -> str:
    """A run header line's class: warnings, a schedule not kept and rejected input rows stand
    out."""
    return "meta warn" if line.startswith(("warning ", "schedule ", "rejected ")) else "meta"


def _overrides(prices: dict[str, Any]) -> str:
    ov = prices.get("overrides")
    if not ov:
        return ""
    return f", overrides {ov['path']} ({', '.join(ov['models'])})"
