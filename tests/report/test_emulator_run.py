"""Reports of real run directories written by ``batchrunner.run`` on the built-in emulator,
checked against the raw Parquet rows read independently with pandas."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from batchrunner.report import build_report, load_run
from batchrunner.summary import SUMMARY_COLUMNS, format_summary, summarize

# $/MTok (input, 5m write, 1h write, read, output) of the demo set's models (pricing.md §1.4)
RATES = {"claude-sonnet-4-5": (3, 3.75, 6, 0.3, 15), "claude-haiku-4-5": (1, 1.25, 2, 0.1, 5),
         "claude-opus-4-1": (15, 18.75, 30, 1.5, 75)}


def independent_cost(df: pd.DataFrame) -> float:
    model = df["model"].fillna(df["model_requested"]).str.split("/").str[-1]
    rates = np.array([RATES[m] for m in model])
    tok = df[["input_tokens", "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens",
              "cache_read_input_tokens", "output_tokens"]].fillna(0).to_numpy(float)
    total_in = tok[:, :4].sum(axis=1)
    assert (total_in <= 200_000).all()  # below every long-context tier: flat rates apply
    return float((tok * rates).sum() / 1e6)


def test_report_of_an_emulator_run_matches_the_rows(emulator_runs):
    run_dir = emulator_runs["sync"]
    df = pd.read_parquet(run_dir / "data")
    rep = build_report([load_run(run_dir, ["model", "metadata.task"])],
                       by=["model", "metadata.task"])
    run = rep["runs"][0]
    o = run["overall"]
    assert run["mode"] == "sync" and run["status"] == "finished"
    assert o["requests"] == len(df) == 60
    assert o["status"]["ok"] == int((df["status"] == "ok").sum())
    ok = df[df["status"] == "ok"]
    for metric in ("latency_s", "total_s", "ttfb_s", "queue_wait_s"):
        d = o["latency"]["metrics"][metric]
        assert d["p50"] == pytest.approx(ok[metric].quantile(0.5))
        assert d["p99"] == pytest.approx(ok[metric].quantile(0.99))
    assert "ttft_s" not in run["metrics"]  # sync rows have no TTFT
    assert o["tokens"]["cache_read"] == df["cache_read_input_tokens"].sum()
    assert o["tokens"]["cache_write"] == df["cache_creation_input_tokens"].sum()
    assert o["cost"]["complete"]
    assert o["cost"]["total_usd"] == pytest.approx(independent_cost(df), rel=1e-9)
    # the demo routes some requests as anthropic/claude-sonnet-4-5: priced as claude-sonnet-4-5
    assert {m["model"] for m in run["cost_by_model"]} == set(RATES)
    tasks = df["metadata"].map(lambda t: orjson.loads(t)["task"])
    assert sum(g["requests"] for g in run["groups"]) == 60
    for g in run["groups"]:
        sel = (df["model"] == g["key"]["model"]) & (tasks == g["key"]["metadata.task"])
        assert g["requests"] == int(sel.sum())


def test_run_summary_goes_through_the_report_code(emulator_runs):
    run_dir = emulator_runs["stream"]
    info = orjson.loads((run_dir / "run.json").read_bytes())
    df = pd.read_parquet(run_dir / "data")
    summary = info["summary"]
    assert summary["cost"]["total_usd"] == pytest.approx(independent_cost(df), rel=1e-9)
    assert summary["ttft_s"]["n"] == int((df["status"] == "ok").sum())
    table = load_run(run_dir).table.select(SUMMARY_COLUMNS)
    assert summarize(table)["cost"] == summary["cost"]
    text = format_summary(summary)
    assert "TTFT" in text and "cost       $" in text and "genai-prices" in text


def test_sync_vs_stream_comparison(emulator_runs):
    rep = build_report([load_run(emulator_runs["sync"]), load_run(emulator_runs["stream"])])
    cmp = rep["comparison"]
    assert cmp["runs"] == ["sync", "stream"]
    figs = {f["figure"]: f for f in cmp["overall"]}
    assert figs["ttft_s p50"]["values"][0] is None and figs["ttft_s p50"]["values"][1] > 0
    cost = figs["cost_usd"]
    assert cost["delta"][0] == pytest.approx(cost["values"][1] - cost["values"][0])
    models = {e["model"] for e in cmp["cost_by_model"]}
    assert models == set(RATES)
