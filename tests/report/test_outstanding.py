"""Async jobs submitted but not collected yet have no rows, and will be paid for: ``report``
calls the cost a lower bound, as ``run --json`` does, in a run's tables and in comparisons."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from batchrunner.cli import main


def write_set(path, n: int):
    with path.open("wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"custom_id": f"r{i}", "params": {
                "model": "claude-haiku-4-5", "max_tokens": 8,
                "messages": [{"role": "user", "content": f"hi {i}"}]}}) + b"\n")
    return path


@pytest.fixture
def runs(make_emulator, tmp_path, monkeypatch):
    """``sync``: 6 requests, all rows. ``detached``: 3 collected async rows, then 3 jobs
    submitted with --detach and not collected."""
    monkeypatch.delenv("BATCHRUNNER_GATEWAY", raising=False)
    requests = write_set(tmp_path / "in.jsonl", 6)
    sync, detached = tmp_path / "sync", tmp_path / "detached"
    with make_emulator() as emu:
        for args in (["--out", str(sync)],
                     ["--mode", "async", "--max-requests", "3", "--out", str(detached)],
                     ["--mode", "async", "--detach", "--out", str(detached)]):
            result = CliRunner().invoke(main, ["run", str(requests), "--gateway", emu.base_url,
                                               "-q", *args])
            assert result.exit_code == 0, result.output
    assert orjson.loads((detached / "run.json").read_bytes())["async"]["outstanding_jobs"] == 3
    return sync, detached


def report(*args: str):
    result = CliRunner().invoke(main, ["report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_outstanding_jobs_make_the_cost_a_lower_bound(runs):
    _, detached = runs
    doc = orjson.loads(report(str(detached), "--json"))
    run = doc["runs"][0]
    assert run["rows"] == 3 and run["outstanding_jobs"] == 3
    cost = run["overall"]["cost"]
    # Before: complete true and a total, where run --json said null / false.
    assert cost["complete"] is False and cost["total_usd"] is None
    assert cost["outstanding_jobs"] == 3 and cost["unpriced_models"] == []
    assert cost["usd"]["total"] > 0  # the collected rows' part is still there
    [model] = run["cost_by_model"]
    assert model["cost"]["complete"] is False and model["cost"]["total_usd"] is None

    text = report(str(detached))
    lines = text.splitlines()
    total = next(line for line in lines if line.startswith("  total "))
    assert f">= ${cost['usd']['total']:.6f}" in total
    assert (f"  OUTSTANDING: 3 async jobs not collected yet: no rows, so their cost is in no "
            f"figure here and every total is a lower bound; batchrunner collect {detached}"
            ) in lines
    assert "UNPRICED" not in text  # nothing is unpriced: the reason is named, not another


def test_a_comparison_does_not_give_a_total_for_a_run_with_outstanding_jobs(runs):
    sync, detached = runs
    cmp = orjson.loads(report(str(sync), str(detached), "--json"))["comparison"]
    figures = {f["figure"]: f for f in cmp["overall"]}
    assert figures["cost_usd"]["values"][0] > 0
    # Before: the detached run's 3 rows compared as a 50 % saving.
    assert figures["cost_usd"]["values"][1] is None and figures["cost_usd"]["delta"] == [None]
    assert figures["cost_usd input"]["values"][1] is None
    assert cmp["outstanding_jobs"] == {"detached": 3} and cmp["unpriced"] == {}
    [model] = cmp["cost_by_model"]
    costs = next(f for f in model["figures"] if f["figure"] == "cost_usd")
    assert costs["values"][1] is None

    text = report(str(sync), str(detached))
    assert ("Figures (baseline sync; Δ = run - baseline); no cost total for detached (3 async "
            "jobs outstanding, not collected yet)") in text
