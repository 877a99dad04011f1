"""`--max-cost`: a run stops starting requests once its rows have cost the limit (real emulator
over loopback; costs from the bundled genai-prices data, as the summary prices them)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from batchrunner.config import ConfigError, RunConfig
from batchrunner.emulator.config import Dist
from batchrunner.report import COST_COLUMNS, build_report, load_run, price_rows
from batchrunner.report_text import fmt_usd, format_report, format_short
from batchrunner.retry import RetryPolicy
from batchrunner.runner import EXIT_OK, run_sync
from batchrunner.schema import RESULT_SCHEMA, Mode
from batchrunner.spend import SpendMeter

from .conftest import read_rows, run_cli, write_requests


def run(requests: Path, gateway: str, out: Path, stderr: io.StringIO | None = None, **kw):
    config = RunConfig(requests=requests, gateway=gateway, out=out, **kw)
    return run_sync(config, quiet=stderr is None, stderr=stderr, progress=False)


def row_costs(run_dir: Path) -> pd.Series:
    """Each row's cost, priced as the report prices it, in completion order."""
    table = pa.Table.from_pandas(read_rows(run_dir)[COST_COLUMNS], preserve_index=False)
    cols: dict = {}
    price_rows(table, SpendMeter(1.0).book, cols)
    frame = read_rows(run_dir).assign(cost=cols["cost_total"])
    return frame.sort_values("completed_at")["cost"].reset_index(drop=True)


@pytest.mark.parametrize("mode", [Mode.SYNC, Mode.STREAM])
def test_the_run_stops_starting_requests_once_its_rows_cost_the_limit(
    make_emulator, tmp_path, mode
):
    requests = write_requests(tmp_path / "set.jsonl", 60, max_tokens=200)
    with make_emulator(ttft=Dist("fixed", 0.02)) as emu:
        full = run(requests, emu.base_url, tmp_path / "full", concurrency=1, mode=mode)
        whole = full.summary["cost"]["total_usd"]
        limit = whole / 3
        capped = run(requests, emu.base_url, tmp_path / "capped", concurrency=1, mode=mode,
                     max_cost_usd=limit)
    assert capped.exit_code == EXIT_OK and capped.status == "incomplete", capped.message
    assert capped.message.startswith(f"--max-cost {limit:,.10g} reached"), capped.message
    costs = row_costs(tmp_path / "capped")
    spent = costs.cumsum()
    # It did not stop before the limit, and it stopped soon after: the row that reached it,
    # then at most the rows of one pricing interval (0.1 s at ~20 ms a row) and the one in
    # flight, with room for a slow machine.
    assert spent.iloc[-1] >= limit
    reached_at = int((spent >= limit).to_numpy().argmax())
    assert len(costs) - (reached_at + 1) <= 15, (len(costs), reached_at)
    assert len(costs) < 60
    spend = orjson.loads((tmp_path / "capped" / "run.json").read_bytes())["sessions"][-1]["spend"]
    assert spend["limit_usd"] == limit
    assert math.isclose(spend["spent_usd"], capped.summary["cost"]["total_usd"], rel_tol=1e-9)
    assert spend["unpriced_rows"] == 0 and spend["unpriced_models"] == []


def test_a_resume_counts_the_earlier_sessions_spend(make_emulator, tmp_path):
    requests = write_requests(tmp_path / "set.jsonl", 40, max_tokens=200)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.01)) as emu:
        first = run(requests, emu.base_url, out, concurrency=2, max_requests=10)
        spent = first.summary["cost"]["total_usd"]
        emu.reset()
        # The 10 rows already cost more than this: nothing more is sent.
        again = run(requests, emu.base_url, out, concurrency=2, max_cost_usd=spent * 0.9)
        assert emu.stats()["by_outcome"] == {}
        higher = run(requests, emu.base_url, out, concurrency=2, max_cost_usd=1000.0)
    assert again.status == "incomplete" and again.sent_this_session == 0
    assert again.message.startswith(f"--max-cost {spent * 0.9:,.10g} already reached"), (
        again.message)
    assert higher.status == "finished" and higher.sent_this_session == 30
    rows = read_rows(out)
    assert sorted(rows["custom_id"]) == sorted(f"req-{i}" for i in range(40))
    sessions = orjson.loads((out / "run.json").read_bytes())["sessions"]
    assert "spend" not in sessions[0]
    assert math.isclose(sessions[1]["spend"]["spent_usd"], spent, rel_tol=1e-9)
    assert math.isclose(sessions[2]["spend"]["spent_usd"], higher.summary["cost"]["total_usd"],
                        rel_tol=1e-9)


def test_rows_of_a_model_without_a_price_are_counted_apart_and_named_once(
    make_emulator, tmp_path
):
    requests = write_requests(tmp_path / "set.jsonl", 12, model="acme-model-1")
    stderr = io.StringIO()
    # Long enough for the watcher to price batches: said once, not again at the end.
    with make_emulator(ttft=Dist("fixed", 0.05)) as emu:
        result = run(requests, emu.base_url, tmp_path / "out", stderr=stderr, concurrency=2,
                     max_cost_usd=0.5)
    assert result.status == "finished", result.message
    warnings = [line for line in stderr.getvalue().splitlines() if "--max-cost" in line]
    assert warnings == [
        "Warning: --max-cost cannot count acme-model-1's rows: genai-prices has no price for "
        "that model (or for its fast mode; they are counted apart, in run.json's spend)"
    ]
    spend = orjson.loads((tmp_path / "out" / "run.json").read_bytes())["sessions"][-1]["spend"]
    assert spend["unpriced_rows"] == 12 and spend["unpriced_models"] == ["acme-model-1"]
    assert spend["spent_usd"] == 0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_cost_usd": 0}, "--max-cost must be > 0 dollars"),
        ({"max_cost_usd": -1.5}, "--max-cost must be > 0 dollars"),
        ({"max_cost_usd": float("nan")}, "--max-cost must be a number, got nan"),
        ({"max_cost_usd": "5"}, "--max-cost must be a number, got '5'"),
        ({"max_cost_usd": 5.0, "mode": Mode.ASYNC},
         "--max-cost works with --mode sync and stream"),
    ],
)
def test_bad_limits_are_refused_before_anything_is_created(tmp_path, kw, message):
    config = RunConfig(requests=write_requests(tmp_path / "set.jsonl", 2), out=tmp_path / "o",
                       **kw)
    with pytest.raises(ConfigError) as err:
        config.validate()
    assert str(err.value).startswith(message), str(err.value)
    assert not (tmp_path / "o").exists()


def test_the_cli_takes_max_cost_and_says_how_to_go_on(tmp_path):
    requests = write_requests(tmp_path / "set.jsonl", 30, max_tokens=200)
    done = run_cli("run", str(requests), "--out", str(tmp_path / "o"), "-c", "1",
                   "--max-cost", "0.002")
    assert done.returncode == EXIT_OK, done.stderr
    assert "incomplete: --max-cost 0.002 reached: the run's rows had cost $0.00" in done.stderr
    assert "To go on, resume with a higher --max-cost" in done.stderr
    assert "Resume with: " in done.stderr
    assert "(with a higher --max-cost: the run's rows already cost what this one allows)" in (
        done.stderr)
    assert 0 < len(read_rows(tmp_path / "o")) < 30
    bad = run_cli("run", str(requests), "--max-cost", "0")
    assert bad.returncode == 2 and "--max-cost" in bad.stderr


def test_rows_sent_again_still_count_what_they_cost(make_emulator, tmp_path):
    # --retry-failed removes the failed rows before the meter reads the run: a stream that
    # failed midway had been paid for its input, and a resume with the same limit sent again.
    requests = write_requests(tmp_path / "set.jsonl", 10, max_tokens=200)
    out = tmp_path / "out"
    with make_emulator(fault_midstream=1.0) as emu:
        first = run(requests, emu.base_url, out, mode=Mode.STREAM, concurrency=2,
                    retry=RetryPolicy(max_retries=0))
    paid = first.summary["cost"]["total_usd"]
    assert first.summary["status"] == {"error": 10} and paid > 0
    with make_emulator() as emu:
        again = run(requests, emu.base_url, out, mode=Mode.STREAM, concurrency=2,
                    retry_failed=True, max_cost_usd=paid * 0.9)
        assert emu.stats()["by_outcome"] == {}
    assert again.message.startswith(f"--max-cost {paid * 0.9:,.10g} already reached"), (
        again.message)
    session = orjson.loads((out / "run.json").read_bytes())["sessions"][-1]
    assert session["redone"] == {"error": 10}
    assert math.isclose(session["redone_cost_usd"], paid, rel_tol=1e-9)
    assert math.isclose(session["spend"]["spent_usd"], paid, rel_tol=1e-9)


def test_an_open_loop_stops_at_the_limit_too(make_emulator, tmp_path):
    requests = write_requests(tmp_path / "set.jsonl", 200, max_tokens=200)
    with make_emulator(ttft=Dist("fixed", 0.01)) as emu:
        full = run(requests, emu.base_url, tmp_path / "full", concurrency=4, max_requests=40)
        limit = full.summary["cost"]["total_usd"]  # what 40 requests cost
        capped = run(requests, emu.base_url, tmp_path / "capped", rate=100.0,
                     max_cost_usd=limit)
    assert capped.status == "incomplete" and capped.message.startswith("--max-cost"), (
        capped.message)
    # 100/s: the limit is reached near the 40th row; one pricing interval (~10 sends) and the
    # requests in flight come on top, with room for a slow machine.
    assert 35 <= capped.summary["requests"] <= 80, capped.summary["requests"]


def test_what_the_limit_cannot_stop_or_count_is_said(make_emulator, tmp_path):
    # A resume whose earlier rows used an unpriced model said nothing of it; a run over its
    # limit before the first look ended "finished" without a word.
    requests = write_requests(tmp_path / "set.jsonl", 6, model="acme-model-1")
    with make_emulator() as emu:
        run(requests, emu.base_url, tmp_path / "out", max_requests=3)
        stderr = io.StringIO()
        run(requests, emu.base_url, tmp_path / "out", stderr=stderr, max_cost_usd=5.0)
        assert "Warning: --max-cost cannot count acme-model-1's rows" in stderr.getvalue()
        tiny = io.StringIO()
        done = run(write_requests(tmp_path / "two.jsonl", 2), emu.base_url, tmp_path / "two",
                   stderr=tiny, max_cost_usd=1e-9)
    assert done.status == "finished"
    assert "over --max-cost 1e-09: they finished before it could stop the run" in (
        tiny.getvalue()), tiny.getvalue()


def test_a_limit_reached_once_every_request_was_sent_is_said(make_emulator, tmp_path):
    # Every request in flight when the limit was reached: nothing was held back, and the run
    # ended "finished", 3.3x over its limit, without a word.
    requests = write_requests(tmp_path / "set.jsonl", 20)
    with make_emulator(ttft=Dist("uniform", 0.01, 0.8)) as emu:
        stderr = io.StringIO()
        done = run(requests, emu.base_url, tmp_path / "out", stderr=stderr, concurrency=20,
                   max_cost_usd=1e-9)
    assert done.status == "finished" and len(read_rows(tmp_path / "out")) == 20
    said = stderr.getvalue()
    assert "over --max-cost 1e-09: every request had been sent when it was reached" in said, said
    info = orjson.loads((tmp_path / "out" / "run.json").read_bytes())
    assert info["sessions"][-1]["message"] == done.message and "over --max-cost" in done.message


def test_the_cost_of_rows_a_resume_replaced_is_shown(make_emulator, tmp_path):
    # Streams that failed midway were billed; --retry-failed removed their rows, and the
    # summary and report showed the cost of the new rows only (run.json knew the rest).
    requests = write_requests(tmp_path / "set.jsonl", 6, max_tokens=50)
    out = tmp_path / "out"
    with make_emulator(fault_midstream=1.0) as emu:
        first = run(requests, emu.base_url, out, mode=Mode.STREAM,
                    retry=RetryPolicy(max_retries=0))
    paid = first.summary["cost"]["total_usd"]
    assert first.summary["status"] == {"error": 6} and paid > 0
    stderr = io.StringIO()
    with make_emulator() as emu:
        again = run(requests, emu.base_url, out, stderr, mode=Mode.STREAM, retry_failed=True)
    assert again.summary["status"] == {"ok": 6}
    assert math.isclose(again.summary["cost"]["replaced_usd"], paid, rel_tol=1e-9)
    note = f"had cost {fmt_usd(paid)} at list prices (run.json): billed, but in no total here"
    rep = build_report([load_run(out)])
    assert math.isclose(rep["runs"][0]["replaced_cost_usd"], paid, rel_tol=1e-9)
    assert note in format_report(rep)
    assert f"replaced   {fmt_usd(paid)} more, billed for rows a resume" in (
        format_short(again.summary))


def _priced_apart(rows: pd.DataFrame) -> float:
    """The rows' cost with every retried attempt priced as a row of its own (no
    ``retried_usage`` column): what the run's figures must add up to."""
    final = rows[COST_COLUMNS].drop(columns="retried_usage")
    extra = []
    for r in rows.itertuples():
        for entry in orjson.loads(r.retried_usage) if isinstance(r.retried_usage, str) else ():
            extra.append({**dict.fromkeys(final.columns), **entry,
                          "model_requested": r.model_requested, "sent_at": r.sent_at,
                          "scheduled_at": r.scheduled_at, "completed_at": r.completed_at})
    both = pd.concat([final, pd.DataFrame(extra, columns=final.columns)], ignore_index=True)
    schema = pa.schema([pa.field(c, pa.timestamp("us", tz="UTC")) if c.endswith("_at")
                        else RESULT_SCHEMA.field(c) for c in final.columns])
    cols: dict = {}
    price_rows(pa.Table.from_pandas(both, schema=schema, preserve_index=False),
               SpendMeter(1.0).book, cols)
    return float(cols["cost_total"].sum())


def test_usage_of_retried_stream_attempts_is_kept_and_priced(make_emulator, tmp_path):
    # A stream cut after message_start had its input processed and reported; when it was sent
    # again, that usage was overwritten by the retry's, and the run's cost (and --max-cost)
    # missed it: $3.15 reported for $6.75 of reported usage in the audit's case.
    requests = write_requests(tmp_path / "set.jsonl", 40, max_tokens=50)
    out = tmp_path / "out"
    with make_emulator(fault_midstream=0.5, seed=7) as emu:
        result = run(requests, emu.base_url, out, mode=Mode.STREAM, concurrency=4,
                     retry=RetryPolicy(max_retries=6, backoff_base_s=0.01, backoff_max_s=0.02))
        truth = emu.ground_truth()
    rows = read_rows(out)
    # Almost always all ok; a request cut 7 times in a row ends an error row of its own usage.
    failed = int((rows["status"] == "error").sum())
    assert result.summary["status"].get("ok", 0) + failed == 40
    cut = [t for t in truth if t["fault"] == "midstream_error"]
    assert len(cut) >= 5  # a fair number of attempts were cut (seeded)
    kept = {r.request_id: orjson.loads(r.retried_usage) for r in rows.itertuples()
            if isinstance(r.retried_usage, str)}
    assert sum(len(v) for v in kept.values()) + failed == len(cut)
    for t in cut:  # each cut attempt's usage, as the gateway reported it, is in its row
        if t["request_id"] not in kept:
            continue  # a single attempt, cut: the error row's own usage
        assert {"model": t["model"], "input_tokens": t["input_tokens"],
                "cache_read_input_tokens": t["cache_read_input_tokens"]}.items() <= next(
            e for e in kept[t["request_id"]] if e["input_tokens"] == t["input_tokens"]).items()
    for r in rows.itertuples():
        assert r.attempts == 1 + len(kept.get(r.request_id, []))
    paid = _priced_apart(rows)
    cost = result.summary["cost"]
    assert math.isclose(cost["total_usd"], paid, rel_tol=1e-9)
    assert cost["retried"]["attempts"] == len(cut) - failed
    assert cost["retried"]["rows"] == len(kept)
    only_final = row_costs_without_retries(rows)
    assert math.isclose(cost["retried"]["usd"], paid - only_final, rel_tol=1e-9)
    assert cost["retried"]["usd"] > 0
    # What the cut attempts streamed beyond their usage is counted too (review: it was not).
    entries = [e for v in kept.values() for e in v]
    streamed = [e["content_deltas"] - e["output_tokens"] for e in entries
                if e.get("content_deltas", 0) > e["output_tokens"]]
    assert cost["cut_streams"]["retried_attempts"] == len(streamed) >= 1
    beyond = rows["content_deltas"] - rows["output_tokens"]
    assert cost["cut_streams"]["output_tokens_at_least"] == sum(streamed) + int(
        beyond[(rows["status"] != "ok") & (beyond > 0)].sum())
    # The meter --max-cost uses prices the rows the same way.
    meter = SpendMeter(1.0)
    meter.add_table(pa.Table.from_pandas(rows[COST_COLUMNS], preserve_index=False))
    assert math.isclose(meter.spent_usd, paid, rel_tol=1e-9)
    rep = build_report([load_run(out)])
    assert math.isclose(rep["runs"][0]["overall"]["cost"]["total_usd"], paid, rel_tol=1e-9)
    n = len(cut) - failed
    note = (f"RETRIED: {fmt_usd(cost['retried']['usd'])} of these costs is usage that "
            f"{n} failed attempts of {len(kept)} rows reported")
    assert note in format_report(rep)
    assert f"retried    {fmt_usd(cost['retried']['usd'])} of it for {n} failed attempts" \
        in format_short(result.summary)


def row_costs_without_retries(rows: pd.DataFrame) -> float:
    table = pa.Table.from_pandas(rows[COST_COLUMNS].drop(columns="retried_usage"),
                                 preserve_index=False)
    cols: dict = {}
    price_rows(table, SpendMeter(1.0).book, cols)
    return float(cols["cost_total"].sum())


def test_a_retry_the_stop_skipped_keeps_its_attempts_usage(make_emulator, tmp_path):
    # Every attempt is cut after message_start; the run stops (--duration) while requests
    # wait for their retry: they end cancelled, and the usage of their attempts was lost.
    requests = write_requests(tmp_path / "set.jsonl", 4, max_tokens=50)
    out = tmp_path / "out"
    with make_emulator(fault_midstream=1.0) as emu:
        result = run(requests, emu.base_url, out, mode=Mode.STREAM, concurrency=4,
                     duration_s=0.5,
                     retry=RetryPolicy(max_retries=50, backoff_base_s=0.2, backoff_max_s=0.2))
        truth = emu.ground_truth()
    rows = read_rows(out)
    stopped = rows[rows["error_message"].str.startswith("not retried", na=False)]
    assert len(stopped) >= 1 and set(stopped["status"]) == {"cancelled"}
    for r in stopped.itertuples():
        entries = orjson.loads(r.retried_usage)
        assert len(entries) == r.attempts  # every attempt was cut, and kept
        assert pd.isna(r.input_tokens)  # the row has no final attempt of its own
    billed = sum(1 for t in truth if t["fault"] == "midstream_error")
    assert result.summary["cost"]["retried"]["attempts"] + int(
        (rows["status"] == "error").sum()) == billed
    assert math.isclose(result.summary["cost"]["priced_usd"], _priced_apart(rows),
                        rel_tol=1e-9)
