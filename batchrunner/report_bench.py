"""Bench runs in the report: stages in run order, warm-up rows set apart, and one summary entry
per stage (target, throughput, send rate and lag, latency and TTFT percentiles, errors, goodput,
SLOs and the verdict on who limited the stage).

A run directory written by ``batchrunner bench`` has a ``stage`` column (``c=32``,
``rate=100``; warm-up rows end in ``#warmup``) and a ``bench.json`` with per-stage goodput, SLO
results and verdicts. The report recomputes from the rows every figure the rows can give, so a
bench that stopped before writing ``bench.json`` is still reported; it takes from ``bench.json``
only what the rows cannot tell: goodput and SLO results (they need the SLOs as the bench applied
them), the client's CPU and the verdict. Works on the frames of :mod:`batchrunner.report`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from batchrunner.report_text import plural

__all__ = [
    "WARMUP_SUFFIX",
    "bench_results",
    "has_stages",
    "parse_slo",
    "stage_entry",
    "stage_keys",
    "stage_order",
    "stage_target",
    "stages_block",
]

#: ``stage`` suffix of warm-up rows (the runner's ``WARMUP_SUFFIX``; not imported from there so
#: that the report does not pull in the HTTP client).
WARMUP_SUFFIX = "#warmup"
_NONE = "(none)"
_STAGE_NAME = re.compile(r"^(?:(?P<c>c)=(?P<conc>\d+)|rate=(?P<rate>[0-9.eE+-]+))(?: #\d+)?$")
# str(Slo) of batchrunner.bench: "ttft_p99<=0.2s" or "error_rate<=0.01".
_SLO_TEXT = re.compile(r"^(?P<metric>[a-z_]+?)_p(?P<q>\d+(?:\.\d+)?)<=(?P<limit>[0-9.eE+-]+)s$")


def has_stages(info: dict[str, Any], any_stage: bool) -> bool:
    """Whether a run is reported stage by stage: ``run.json`` says ``kind: bench``, or some row
    has a ``stage`` (*any_stage*)."""
    return info.get("kind") == "bench" or any_stage


def stage_keys(by: Sequence[str]) -> list[str]:
    """The grouping of a staged run: ``stage`` first (outer), then the user's ``--by`` keys."""
    return ["stage", *(k for k in by if k != "stage")]


def bench_results(info: dict[str, Any], bench: dict[str, Any] | None,
                  ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str | None]:
    """Per-stage results, saturation result and where they came from.

    ``bench.json`` first; ``run.json`` carries the same after a bench finished; a bench that is
    still going (or crashed) has neither, and then only the rows speak.
    """
    for source, doc in (("bench.json", bench), ("run.json", info)):
        if doc and isinstance(doc.get("stages"), list) and doc["stages"]:
            stages = [s for s in doc["stages"] if isinstance(s, dict) and "stage" in s]
            if stages:
                return stages, doc.get("saturation"), source
    return [], (bench or {}).get("saturation") or info.get("saturation"), None


def _planned(info: dict[str, Any]) -> list[dict[str, Any]]:
    planned = (info.get("bench") or {}).get("stages")
    return [s for s in planned if isinstance(s, dict) and "name" in s] if planned else []


def stage_order(present: Sequence[str], first_seen: dict[str, float], info: dict[str, Any],
                results: Sequence[dict[str, Any]]) -> list[str]:
    """Stages in run order: as ``bench.json`` lists them (the order they ran), then as planned in
    ``run.json``, then any other stage of the rows by its first instant; ``(none)`` last.

    :param present: stage names of the measured rows (warm-up suffix removed).
    :param first_seen: per stage, its first schedule (or send) instant, NaN if none.
    """
    order = [str(r["stage"]) for r in results]
    order += [str(p["name"]) for p in _planned(info)]
    # Stages the bench did not list (rows of a stage still running): by their first instant.
    def when(name: str) -> float:
        t = first_seen.get(name, math.nan)
        return t if math.isfinite(t) else math.inf

    rest = sorted((s for s in present if s != _NONE), key=lambda s: (when(s), s))
    order = list(dict.fromkeys([*order, *rest]))
    if _NONE in present:
        order.append(_NONE)
    return order


def stage_target(name: str, info: dict[str, Any],
                 result: dict[str, Any] | None) -> dict[str, Any]:
    """``{"concurrency": N | None, "rate": R | None}`` of a stage: from its bench result, its
    plan, else its name (``c=8``, ``rate=50``)."""
    if result and isinstance(result.get("target"), dict):
        t = result["target"]
        return {"concurrency": t.get("concurrency"), "rate": t.get("rate")}
    for p in _planned(info):
        if p["name"] == name:
            return {"concurrency": p.get("concurrency"), "rate": p.get("rate")}
    m = _STAGE_NAME.match(name)
    if m and m["c"]:
        return {"concurrency": int(m["conc"]), "rate": None}
    if m:
        try:
            return {"concurrency": None, "rate": float(m["rate"])}
        except ValueError:
            pass
    return {"concurrency": None, "rate": None}


def parse_slo(text: str) -> dict[str, Any]:
    """``"ttft_p99<=0.2s"`` → ``{"slo", "metric": "ttft", "column": "ttft_s", "quantile": 0.99,
    "limit": 0.2}``; column and quantile are None for ``error_rate`` or an unknown text."""
    from batchrunner.bench import SLO_METRICS  # lazily: only bench runs need it

    out: dict[str, Any] = {"slo": text, "metric": None, "column": None, "quantile": None,
                           "limit": None}
    m = _SLO_TEXT.match(text)
    if m:
        out.update(metric=m["metric"], column=SLO_METRICS.get(m["metric"]),
                   quantile=float(m["q"]) / 100.0, limit=_float(m["limit"]))
    elif text.startswith("error_rate<="):
        out.update(metric="error_rate", limit=_float(text.split("<=", 1)[1]))
    return out


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _pcts(values: np.ndarray) -> dict[str, float] | None:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return None
    qs = np.percentile(finite, (50, 90, 99))
    return {"p50": float(qs[0]), "p90": float(qs[1]), "p99": float(qs[2])}


def stage_entry(name: str, part: pd.DataFrame, section: dict[str, Any] | None,
                warmup_rows: int, target: dict[str, Any],
                result: dict[str, Any] | None) -> dict[str, Any]:
    """The summary of one stage, from its measured rows (*part*, *section*) and its bench result.

    Throughput is over the stage's own window (first schedule to last completion of its
    measured rows, and for a rate at least its schedule, requests / rate), as ``bench``
    computes it; latency and TTFT use ok rows; send lag
    (``queue_wait_s``) and the achieved send rate use every measured row, because failed
    requests were sent too. The scheduled send rate is that of the same sent rows'
    ``scheduled_at`` (the schedule the client drew, Poisson or constant), and the send overrun is
    how much longer their sends took than it, as ``bench`` computes them for its verdict.
    """
    n = len(part)
    sent_at = part["sent_at"].to_numpy(dtype=float) if n else np.array([])
    scheduled_at = part["scheduled_at"].to_numpy(dtype=float) if n else np.array([])
    was_sent = ~np.isnan(sent_at)
    sent = np.sort(sent_at[was_sent])
    span = float(sent[-1] - sent[0]) if sent.size > 1 else 0.0
    schedule = scheduled_at[was_sent]
    schedule = schedule[~np.isnan(schedule)]
    schedule_span = float(schedule.max() - schedule.min()) if schedule.size else 0.0
    lag = part["queue_wait_s"].to_numpy() if n else np.array([])
    lag = lag[~np.isnan(lag)]
    ok = (part["status"] == "ok").to_numpy() if n else np.zeros(0, bool)
    thr = section["throughput"] if section else {}
    result = result or {}
    verdict = result.get("verdict")
    entry: dict[str, Any] = {
        "stage": name,
        "target": target,
        "requests": n,
        "warmup_requests": warmup_rows,
        "ok": int(ok.sum()),
        # As bench counts it: a stage's cancelled rows were never answered (or never sent).
        "error_rate": float((~ok).sum() / n) if n else None,
        "window_s": thr.get("wall_s"),
        "ok_requests_per_s": thr.get("ok_requests_per_s"),
        "output_tokens_per_s": thr.get("output_tokens_per_s"),
        "achieved_send_rate": (sent.size - 1) / span if span > 0 else None,
        "scheduled_send_rate": (sent.size - 1) / schedule_span
        if sent.size > 1 and schedule_span > 0 else None,
        "send_overrun_s": span - schedule_span if sent.size > 1 else None,
        "send_lag_s": {"p50": float(np.percentile(lag, 50)), "p99": float(np.percentile(lag, 99)),
                       "max": float(lag.max())} if lag.size else None,
        "latency_s": _pcts(part["latency_s"].to_numpy()[ok]) if n else None,
        "ttft_s": _pcts(part["ttft_s"].to_numpy()[ok]) if n else None,
        "goodput_rps": result.get("goodput_rps"),
        "slo_met": result.get("slo_met"),
        "slos": result.get("slos") or [],
        "client_cpu": result.get("client_cpu"),
        "verdict": verdict,
        "client_bound": bool(verdict and str(verdict).startswith("client-bound")),
    }
    return entry


def stages_block(*, by: Sequence[str], order: Sequence[str], entries: list[dict[str, Any]],
                 warmup_by_stage: dict[str, int], warmup_cost: dict[str, Any] | None,
                 results: Sequence[dict[str, Any]], source: str | None,
                 saturation: dict[str, Any] | None, info: dict[str, Any],
                 bench: dict[str, Any] | None) -> dict[str, Any]:
    """The ``stages`` entry of a run report (keys: ``docs/report.md``, "Bench runs").

    :param bench: ``bench.json`` (None when there is none yet).
    """
    texts = (info.get("bench") or {}).get("slos")
    if not texts and results:
        texts = [s.get("slo") for s in results[0].get("slos") or [] if s.get("slo")]
    notes = []
    by_name = {str(r["stage"]): r for r in results}
    for e in entries:
        r = by_name.get(e["stage"])
        if r is None:
            continue
        # The rows and bench.json describe the same requests; say so when they do not agree.
        if r.get("requests") is not None and r["requests"] != e["requests"]:
            notes.append(f"stage {e['stage']}: {plural(e['requests'], 'measured row')}, but "
                         f"{source} counted {r['requests']:,}")
    return {
        "group_by": list(by),
        "order": list(order),
        "source": source,
        # A bench that ended before any stage did writes bench.json with no stage in it.
        "bench_status": bench.get("status") if isinstance(bench, dict) else None,
        "warmup_rows": sum(warmup_by_stage.values()),
        "warmup_by_stage": warmup_by_stage,
        # The priced part; with unpriced warm-up rows a lower bound (complete: false).
        "warmup_cost_usd": warmup_cost["usd"]["total"] if warmup_cost else 0.0,
        "warmup_cost_complete": warmup_cost["complete"] if warmup_cost else True,
        "slos": [parse_slo(str(t)) for t in texts or []],
        "saturation": saturation,
        "per_stage": entries,
        "notes": notes,
    }
