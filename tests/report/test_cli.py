"""``batchrunner report`` as a user runs it: exit codes, messages, --json keys, --html, compare."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from batchrunner.cli import main

from .conftest import T0, row

#: The documented top-level keys of ``--json`` (docs/report.md): a change here is a contract change.
TOP_KEYS = {"report_version", "generated_at", "prices", "group_by", "rows_used", "runs"}
RUN_KEYS = {"name", "run_dir", "run_id", "mode", "status", "gateway", "rows", "journal_rows",
            "outstanding_jobs", "collect_before", "replaced_cost_usd", "rejected_input_rows",
            "window", "metrics", "overall", "groups", "cost_by_model", "timeline", "schedule",
            "stages", "warnings"}
SECTION_KEYS = {"requests", "sent", "status", "ok_rate", "error_rate", "errors", "throughput",
                "latency", "tokens", "cost"}


def invoke(*args: str):
    return CliRunner().invoke(main, ["report", *args], catch_exceptions=False)


@pytest.mark.parametrize("case", ["missing", "not_run_dir", "file", "bad_by", "bad_prices"])
def test_bad_usage_exits_2_with_a_message(tmp_path, make_run, case):
    run_dir = make_run([row()])
    args = {
        "missing": [str(tmp_path / "nope")],
        "not_run_dir": [str(tmp_path)],
        "file": [str(run_dir / "run.json")],
        "bad_by": [str(run_dir), "--by", "colour"],
        "bad_prices": [str(run_dir), "--prices", str(tmp_path / "missing.toml")],
    }[case]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_text_report_says_which_rows_each_figure_uses(make_run):
    rows = [row(input_index=0), row(input_index=1, status="error", error_type="api_error",
                                    error_message="Internal server error", http_status=500)]
    result = invoke(str(make_run(rows)))
    assert result.exit_code == 0
    out = result.output
    assert "Requests (all rows" in out
    assert "Latency (ok rows only: 1 used, 1 not ok excluded)" in out
    assert "api_error" in out and "Internal server error" in out
    assert "Cost USD by model (all rows; genai-prices" in out
    assert "claude-haiku-4-5" in out


def test_json_has_stable_keys(make_run):
    result = invoke(str(make_run([row()])), "--json", "--by", "model")
    doc = orjson.loads(result.output)
    assert set(doc) == TOP_KEYS and doc["report_version"] == 2
    run = doc["runs"][0]
    assert set(run) == RUN_KEYS
    assert set(run["overall"]) == SECTION_KEYS
    assert set(run["groups"][0]) == SECTION_KEYS | {"key"}
    assert set(run["overall"]["cost"]) == {"currency", "complete", "total_usd", "usd",
                                           "rows_priced", "rows_unpriced", "per_request_usd",
                                           "unpriced_models", "outstanding_jobs", "retried",
                                           "cut_streams", "adjusted_rows", "estimate"}
    assert set(run["overall"]["cost"]["usd"]) == {"input", "output", "cache_write_5m",
                                                  "cache_write_1h", "cache_read", "web_search",
                                                  "total"}
    assert set(run["overall"]["cost"]["adjusted_rows"]) == {
        "fast", "inference_geo_us", "batch", "priority_at_list_price"}
    assert {"web_search_requests", "web_fetch_requests"} <= set(run["overall"]["tokens"])
    assert set(run["timeline"]) >= {"bucket_s", "t_s", "completed", "ok", "failed",
                                    "requests_per_s", "output_tokens_per_s", "in_flight_mean",
                                    "in_flight_max", "errors_by_type"}
    assert "plot_data" not in run


def test_html_is_self_contained(make_run, tmp_path):
    html = tmp_path / "r.html"
    rows = [row(input_index=i, mode="stream", ttft_s=0.01 * i, latency_s=0.1 + 0.01 * i)
            for i in range(20)]
    result = invoke(str(make_run(rows)), "--html", str(html), "--by", "model")
    assert result.exit_code == 0
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 6
    for external in ("<script", "<link", "src=", "url(", "https://"):
        assert external not in page
    assert page.count("http://") == page.count('xmlns="http://www.w3.org/2000/svg"')
    assert "ttft_s: CDF" in page and "TTFT histogram" in page and "Cost by model" in page


def _bar_ends(page: str, title: str) -> dict[str, str]:
    """A bar chart's category -> the text after its bar."""
    import re

    chart = next(c for c in re.findall(r"<svg.*?</svg>", page, flags=re.S) if f">{title}<" in c)
    texts = re.findall(r'<text [^>]*text-anchor="end"[^>]*>([^<]*)<title>|'
                       r'<text x="[\d.]+" y="\d+" font-size="11" fill="#222">([^<]*)</text>', chart)
    names = [a for a, _ in texts if a]
    ends = [b for a, b in texts if not a and b]
    return dict(zip(names, ends, strict=True))


def test_html_cost_charts_never_show_an_unknown_cost_as_a_number(make_run, tmp_path):
    # Before: an unpriced model was a "$0" bar, and a model whose only row was an unpriced
    # fast-mode row was left out of the chart.
    html = tmp_path / "r.html"
    rows = [row(input_index=0, model="claude-foo-9", input_tokens=1000, output_tokens=500),
            row(input_index=1, model="claude-haiku-4-5", input_tokens=1000, output_tokens=1000),
            row(input_index=2, model="claude-opus-4-7", input_tokens=100, output_tokens=100,
                speed="fast")]
    result = invoke(str(make_run(rows)), "--html", str(html), "--by", "model")
    assert result.exit_code == 0, result.output
    page = html.read_text()
    by_model = _bar_ends(page, "Cost by model (USD)")
    assert by_model == {"claude-foo-9": "UNPRICED", "claude-haiku-4-5": "$0.006000",
                        "claude-opus-4-7": "&gt;= $0 (1 row unpriced)"}
    by_group = _bar_ends(page, "Cost by group (USD)")
    assert by_group["model=claude-foo-9"] == "&gt;= $0"
    assert by_group["model=claude-opus-4-7"] == "&gt;= $0"
    assert by_group["model=claude-haiku-4-5"] == "$0.006000"


def test_several_runs_are_compared(make_run, tmp_path):
    a = make_run([row(input_index=i) for i in range(5)], name="sync-run")
    b = make_run([row(input_index=i, latency_s=0.2, mode="async") for i in range(5)],
                 name="async-run")
    result = invoke(str(a), str(b))
    assert "== Comparison of 2 runs" in result.output
    assert "Figures (baseline sync-run; Δ = run - baseline)" in result.output
    assert "Δ async-run" in result.output
    doc = orjson.loads(invoke(str(a), str(b), "--json").output)
    figs = {f["figure"]: f for f in doc["comparison"]["overall"]}
    assert figs["latency_s p50"]["delta"] == [pytest.approx(0.1)]
    html = tmp_path / "cmp.html"
    assert invoke(str(a), str(b), "--html", str(html)).exit_code == 0
    assert "CDF by run" in html.read_text()


def test_prices_file_on_the_command_line(make_run, tmp_path):
    prices = tmp_path / "p.toml"
    prices.write_text('[models."claude-haiku-4-5"]\ninput = 0\noutput = 0\n')
    doc = orjson.loads(invoke(str(make_run([row()])), "--prices", str(prices), "--json").output)
    assert doc["runs"][0]["overall"]["cost"]["total_usd"] == 0
    assert doc["prices"]["overrides"]["path"] == str(prices)


def test_journal_rows_of_a_crashed_run_are_included(make_run):
    run_dir = make_run([row(input_index=0)])
    journal = run_dir / "journal"
    journal.mkdir()
    line = {**row(input_index=1, custom_id="1")}
    # a torn last line (a crash mid-write) is ignored
    (journal / "seg-000002.jsonl").write_bytes(orjson.dumps(line) + b"\n" + b'{"run_id": "r", "cu')
    # a segment whose part exists was already compacted: not counted twice
    (journal / "seg-000001.jsonl").write_bytes(orjson.dumps(row(input_index=0)) + b"\n")
    doc = orjson.loads(invoke(str(run_dir), "--json").output)
    run = doc["runs"][0]
    assert run["rows"] == 2 and run["journal_rows"] == 1
    text = invoke(str(run_dir)).output
    assert "note       1 row read from journal/ (the run is going, or crashed: resume it)" in text


def test_a_parquet_part_given_as_run_dir_is_named_a_file_with_its_run_dir(make_run, tmp_path):
    run_dir = make_run([row()])
    part = run_dir / "data" / "part-000001.parquet"
    result = invoke(str(part))
    assert result.exit_code == 2
    assert result.output == (f"Error: {part} is a file, not a directory: report takes run "
                             f"directories; this file is in the run directory {run_dir}\n")
    loose = tmp_path / "loose.parquet"
    loose.write_bytes(part.read_bytes())
    assert invoke(str(loose)).output == (f"Error: {loose} is a file, not a directory: report "
                                         "takes run directories\n")


@pytest.mark.parametrize(("edit", "warning"), [
    ({"sessions": "abc"}, "sessions is a string ('abc'), expected a list; left out"),
    ({"sessions": [1, None]}, "sessions[0] is a number (1), not an object; left out"),
    ({"sessions": [{"started_at": "yesterday", "config": "zz"}]},
     "sessions[0].started_at is a string ('yesterday'), expected a number; left out"),
    ({"sessions": [{"started_at": 1.0, "config": {"rate": "fast"}}]},
     "sessions[0].config.rate is a string ('fast'), expected a number; left out"),
    ({"config": "zz"}, "config is a string ('zz'), expected an object; left out"),
    ({"async": {"outstanding_jobs": "3"}},
     "async.outstanding_jobs is a string ('3'), expected a count; left out"),
    ({"name": ["a"]}, "name is a list, expected a string; left out"),
    ({"kind": "bench", "bench": {"stages": [{"name": "c=1", "rate": "400"}]}},
     "bench.stages[0].rate is a string ('400'), expected a number; left out"),
    ({"stages": [{"stage": "s", "requests": "1200", "target": {"rate": "x"}}]},
     "stages[0].requests is a string ('1200'), expected a count; left out"),
    ({"sessions": [{"started_at": 1.0, "redone_cost_usd": "0.5"}]},
     "sessions[0].redone_cost_usd is a string ('0.5'), expected a number; left out"),
])
def test_a_run_json_field_of_the_wrong_type_is_left_out_with_a_warning(make_run, edit, warning):
    # Before: "Internal error: AttributeError: 'str' object has no attribute 'get'", exit 1.
    run_dir = make_run([row(input_index=i) for i in range(3)], info=edit)
    result = invoke(str(run_dir))
    assert result.exit_code == 0, result.output
    assert f"warning    {run_dir / 'run.json'}: {warning}" in result.output
    assert "requests  ok  error" in result.output
    doc = orjson.loads(invoke(str(run_dir), "--json").output)["runs"][0]
    assert doc["rows"] == 3 and any(warning in w for w in doc["warnings"])


def test_a_bench_json_field_of_the_wrong_type_is_left_out_with_a_warning(make_run):
    run_dir = make_run([row(input_index=0, stage="c=1")], info={"kind": "bench"})
    (run_dir / "bench.json").write_text(
        '{"stages": [{"stage": "c=1", "requests": "12", "verdict": 3, "slos": [1]}], '
        '"saturation": {"highest_passing_rate": "400"}, "status": ["aborted"]}')
    result = invoke(str(run_dir))
    assert result.exit_code == 0, result.output
    for warning in ("stages[0].requests is a string ('12'), expected a count",
                    "stages[0].verdict is a number (3), expected a string",
                    "stages[0].slos[0] is a number (1), not an object",
                    "saturation.highest_passing_rate is a string ('400'), expected a number",
                    "status is a list, expected a string"):
        assert f"warning    {run_dir / 'bench.json'}: {warning}; left out" in result.output


def test_a_run_json_that_is_not_an_object_is_named(make_run):
    # Before: left out without a word.
    run_dir = make_run([row(input_index=0)])
    (run_dir / "run.json").write_text("[1, 2]")
    result = invoke(str(run_dir))
    assert result.exit_code == 0, result.output
    assert (f"warning    {run_dir / 'run.json'} holds a list, not the run's description: "
            "reported from the rows alone") in result.output


def test_a_corrupt_run_json_still_gives_the_rows_report_with_a_warning(make_run):
    # Two sessions an hour apart; without run.json the rates can only be over the rows' span.
    rows = [row(input_index=0), row(custom_id="1", input_index=1, scheduled_at=T0 + 3600,
                                    sent_at=T0 + 3600, completed_at=T0 + 3600.1)]
    run_dir = make_run(rows, info={"sessions": [{"started_at": T0 - 1},
                                                {"started_at": T0 + 3599}]})
    intact = orjson.loads(invoke(str(run_dir), "--json").output)["runs"][0]
    (run_dir / "run.json").write_text('{"run_id": "r", "name": ')  # cut short by a full disk
    result = invoke(str(run_dir))
    assert result.exit_code == 0, result.output
    assert (f"warning    {run_dir / 'run.json'} is not valid JSON: ") in result.output
    assert ("; reported from the rows alone, without what run.json holds: the run's status, "
            "config (--rate, so no open-loop schedule check), gateway and outstanding async "
            "jobs, and its sessions (rates are over the rows' whole span, gaps between sessions "
            "included)") in result.output
    assert "requests  ok  error" in result.output  # the tables are there
    doc = orjson.loads(invoke(str(run_dir), "--json").output)["runs"][0]
    assert doc["rows"] == 2 and doc["status"] is None and doc["mode"] == "sync"
    assert len(doc["warnings"]) == 1 and intact["warnings"] == []
    assert intact["window"]["active_s"] == pytest.approx(0.2)
    assert doc["window"]["active_s"] == pytest.approx(3600.1)
    # Without data/ there is nothing to report from: still a usage error.
    (run_dir / "data" / "part-000001.parquet").unlink()
    for part in (run_dir / "data").iterdir():
        part.unlink()
    (run_dir / "data").rmdir()
    result = invoke(str(run_dir))
    assert result.exit_code == 2 and "is not valid JSON" in result.output


def test_a_token_count_beyond_float_precision_does_not_stop_the_report(make_run):
    # Before: "Internal error: ArrowInvalid: Integer value 9007199254740993 not in range".
    result = invoke(str(make_run([row(input_tokens=2**53 + 1)])))
    assert result.exit_code == 0, result.output
    assert "9,007,199,254,740,992" in result.output


def test_a_run_killed_before_it_recorded_its_end_is_said_so(make_run):
    # A killed run read "running" for ever; one killed while --retry-failed removed rows read
    # "finished" with 1,526 requests without a row, and no warning.
    import fcntl

    rows = [row(input_index=i, custom_id=str(i)) for i in range(3)]
    dead = make_run(rows, info={"status": "running"})
    assert "run.json says running, but no process holds the run directory" in invoke(
        str(dead)).output
    live = make_run(rows, info={"status": "running"})
    with (live / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert "no process holds" not in invoke(str(live)).output
    cut = make_run(rows, info={"status": "finished", "summary": {"requests": 5}})
    doc = orjson.loads(invoke(str(cut), "--json").output)["runs"][0]
    assert any("run.json's summary counts 5 rows, the run directory holds 3" in w
               for w in doc["warnings"])
    whole = make_run(rows, info={"status": "finished", "summary": {"requests": 3}})
    assert orjson.loads(invoke(str(whole), "--json").output)["runs"][0]["warnings"] == []


def test_a_report_without_rows_does_not_call_every_row_ok(make_run):
    # Before: "Errors: none (every row is ok)" for a detached async run not collected yet.
    empty = make_run([], info={"async": {"outstanding_jobs": 3}, "config": {"mode": "async"}})
    lines = invoke(str(empty)).output.splitlines()
    assert "Errors: none (no rows)" in lines
    assert not any("every row is ok" in line for line in lines)
    assert "Errors: none (every row is ok)" in invoke(str(make_run([row()]))).output.splitlines()
