"""``batchrunner report`` on bench run directories: tables grouped by stage in run order, warm-up
rows left out and counted, the per-stage summary (against an independent pandas computation and
against ``bench.json``), client-bound stages flagged in text, JSON and HTML, and the saturation
curve (one point per stage, parsed from the SVG)."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchrunner.bench import Slo, StageSpec
from batchrunner.bench_run import BenchConfig, run_bench
from batchrunner.cli import main
from batchrunner.config import RunConfig
from batchrunner.emulator.config import Dist
from batchrunner.report import build_report, load_run
from batchrunner.report_html import render_html
from batchrunner.report_svg import PALETTE
from batchrunner.report_text import fmt_usd, format_report
from batchrunner.retry import RetryPolicy
from batchrunner.runner import run_sync_coro

from .conftest import T0, row
from .test_html_browser import CHROMIUM, decode_png

SVG = "{http://www.w3.org/2000/svg}"
CLIENT_BOUND = "client-bound (sent 80.0/s of the 100.0/s scheduled): add --workers or machines"


def invoke(*args: str):
    return CliRunner().invoke(main, ["report", *args], catch_exceptions=False)


def curve(page: str) -> ET.Element:
    """The saturation-curve ``<svg>`` of an HTML report, parsed (exactly one per bench run)."""
    svgs = re.findall(r'<svg [^>]*class="chart curve".*?</svg>', page, flags=re.S)
    assert len(svgs) == 1, f"{len(svgs)} saturation curves"
    return ET.fromstring(svgs[0])


def markers(svg: ET.Element) -> list[ET.Element]:
    return [e for e in svg.iter() if e.get("class") == "pt"]


def expected_stages(rows: pd.DataFrame) -> dict[str, dict]:
    """Per-stage figures computed here with pandas from the raw rows (not with report code)."""
    out = {}
    measured = rows[~rows["stage"].str.endswith("#warmup")]
    for stage, g in measured.groupby("stage"):
        ok = g[g["status"] == "ok"]
        start = pd.concat([g["scheduled_at"], g["sent_at"]]).min()
        window = (g["completed_at"].max() - start).total_seconds()
        if stage.startswith("rate="):  # an open-loop stage spans at least its schedule
            window = max(window, len(g) / float(stage.split("=")[1]))
        sent = g["sent_at"].dropna().sort_values()
        span = (sent.iloc[-1] - sent.iloc[0]).total_seconds()
        # the schedule those sent rows drew
        schedule = g.loc[g["sent_at"].notna(), "scheduled_at"].dropna()
        schedule_span = (schedule.max() - schedule.min()).total_seconds()
        failed = g["status"].isin(["error", "timeout", "expired"]).sum()
        out[stage] = {
            "requests": len(g),
            "warmup_requests": int((rows["stage"] == f"{stage}#warmup").sum()),
            "ok": len(ok),
            "error_rate": failed / len(g),
            "ok_requests_per_s": len(ok) / window,
            "achieved_send_rate": (len(sent) - 1) / span if span > 0 else None,
            "scheduled_send_rate": (len(sent) - 1) / schedule_span if schedule_span > 0 else None,
            "send_overrun_s": span - schedule_span,
            "send_lag_p99": g["queue_wait_s"].quantile(0.99),
            "latency_s": {p: ok["latency_s"].quantile(int(p[1:]) / 100) for p in ("p50", "p99")},
            "ttft_s": {p: ok["ttft_s"].quantile(int(p[1:]) / 100) for p in ("p50", "p99")}
            if ok["ttft_s"].notna().any() else None,
        }
    return out


def check_against(entry: dict, want: dict) -> None:
    for key in ("requests", "warmup_requests", "ok"):
        assert entry[key] == want[key], (entry["stage"], key)
    assert entry["error_rate"] == pytest.approx(want["error_rate"], rel=1e-12)
    # Rates divide by spans of epoch instants held as float seconds (0.24 µs apart at 2026):
    # exact to about 1e-6 of a sub-second window.
    for key in ("ok_requests_per_s", "achieved_send_rate", "scheduled_send_rate"):
        assert entry[key] == pytest.approx(want[key], rel=1e-5), (entry["stage"], key)
    assert entry["send_overrun_s"] == pytest.approx(want["send_overrun_s"], abs=1e-6)
    assert entry["send_lag_s"]["p99"] == pytest.approx(want["send_lag_p99"], rel=1e-9)
    for metric in ("latency_s", "ttft_s"):
        if want[metric] is None:
            assert entry[metric] is None
            continue
        for p, value in want[metric].items():
            assert entry[metric][p] == pytest.approx(value, rel=1e-9), (entry["stage"], metric)


# ----------------------------------------------------------------------------------------------
# a real bench, in-process, on the emulator


@pytest.fixture
def real_bench(make_emulator, tmp_path) -> Path:
    """Three short stream stages (c=2, c=10, rate=50; "c=10" sorts before "c=2") with warm-up,
    5 % injected 500s and a TTFT SLO."""
    out = tmp_path / "bench"
    with make_emulator(ttft=Dist("fixed", 0.004), token_delay=Dist("fixed", 0.0002),
                       fault_500=0.05, seed=7) as emu:
        run = RunConfig(requests=Path(), gateway=emu.base_url, mode="stream", out=out,
                        keep_response_json=False, retry=RetryPolicy(max_retries=0))
        stages = [StageSpec("c=2", concurrency=2, duration_s=0.5, warmup_s=0.2),
                  StageSpec("c=10", concurrency=10, duration_s=0.5, warmup_s=0.2),
                  StageSpec("rate=50", rate=50.0, duration_s=0.6, warmup_s=0.2)]
        result = run_sync_coro(run_bench(BenchConfig(run=run, stages=stages,
                                                     slos=[Slo.parse("ttft_p99=0.5")]),
                                         quiet=True))
    assert result.status == "finished", result.message
    return out


def test_real_bench_run_is_reported_stage_by_stage(real_bench, tmp_path):
    rows = pq.read_table(real_bench / "data").to_pandas()
    bench = orjson.loads((real_bench / "bench.json").read_bytes())
    warm = rows["stage"].str.endswith("#warmup")
    assert warm.sum() > 0 and (rows["status"] != "ok").sum() > 0

    rep = build_report([load_run(real_bench)], plot_data=True)
    run = rep["runs"][0]
    st = run["stages"]
    names = ["c=2", "c=10", "rate=50"]
    assert st["order"] == names == [s["stage"] for s in bench["stages"]]
    assert [g["key"] for g in run["groups"]] == [{"stage": n} for n in names]
    assert st["group_by"] == ["stage"] and st["source"] == "bench.json"
    # warm-up rows: in no figure, counted apart
    assert st["warmup_rows"] == warm.sum() and run["rows"] == len(rows)
    assert run["overall"]["requests"] == (~warm).sum()
    assert sum(m["requests"] for m in run["cost_by_model"]) == (~warm).sum()
    assert sum(run["timeline"]["completed"]) == (~warm).sum()

    want = expected_stages(rows)
    by_bench = {s["stage"]: s for s in bench["stages"]}
    for entry, group in zip(st["per_stage"], run["groups"], strict=True):
        check_against(entry, want[entry["stage"]])
        b = by_bench[entry["stage"]]
        # The same requests as the bench counted them live (instants here went through
        # Parquet's microseconds, hence the tolerance).
        assert entry["requests"] == b["requests"] and entry["ok"] == b["ok"]
        assert entry["warmup_requests"] == b["warmup_requests"]
        assert entry["ok_requests_per_s"] == pytest.approx(b["throughput_rps"], rel=1e-3)
        # the schedule and sends the verdict judged, as the report reads them from the rows
        for key in ("achieved_send_rate", "scheduled_send_rate"):
            assert entry[key] == pytest.approx(b[key], rel=1e-3), (entry["stage"], key)
        assert entry["send_overrun_s"] == pytest.approx(b["send_overrun_s"], abs=1e-5)
        assert entry["latency_s"]["p99"] == pytest.approx(b["latency_s"]["p99"], rel=1e-6)
        assert entry["verdict"] == b["verdict"] and entry["goodput_rps"] == b["goodput_rps"]
        assert entry["slo_met"] is True
        # each stage's group section is over the stage's own window
        assert group["throughput"]["ok_requests_per_s"] == pytest.approx(
            entry["ok_requests_per_s"])
    assert st["per_stage"][2]["target"] == {"concurrency": None, "rate": 50.0}
    assert st["slos"][0]["column"] == "ttft_s" and st["slos"][0]["limit"] == 0.5

    text = format_report(rep)
    assert f"warm-up rows excluded: {warm.sum():,}" in text
    table = text.split("Stages (", 1)[1].split("\n\n", 1)[0]
    assert [re.split(r"\s+", line.strip().lstrip("! "))[0]
            for line in table.splitlines()[2:5]] == names

    svg = curve(render_html(rep))
    points = markers(svg)
    series = Counter(p.get("data-series") for p in points)
    assert set(series) == {"latency p50", "latency p90", "latency p99", "TTFT p99"}
    for name in series:  # one point per stage and series
        assert sorted(p.get("data-point") for p in points if p.get("data-series") == name) \
            == sorted(names)
    # the TTFT SLO: a dashed line, or named in the key when far above every stage
    assert any((e.text or "").startswith("SLO ttft_p99<=0.5s") for e in svg.iter())
    # concurrency stages form one line, in stage order: c=2 then c=10 (rising throughput)
    lines = {e.find(f"{SVG}title").text: e.get("points").split()
             for e in svg.iter(f"{SVG}polyline")}
    assert set(lines) == set(series) and all(len(p) == 2 for p in lines.values())
    p99 = {p.get("data-point"): p for p in points if p.get("data-series") == "latency p99"}
    assert lines["latency p99"] == [f"{p99[n].get('cx')},{p99[n].get('cy')}"
                                    for n in ("c=2", "c=10")]


# ----------------------------------------------------------------------------------------------
# a synthetic bench with known rows


def synthetic_rows() -> list[dict]:
    """Stages rate=100 (first), c=4, rate=20 (last); each with warm-up rows that would change
    every figure if they were counted (10 s latencies, errors)."""
    rows, i = [], 0
    plan = [("rate=100", 0.0, 40, 0.01), ("c=4", 10.0, 30, 0.02), ("rate=20", 20.0, 20, 0.05)]
    for stage, start, n, gap in plan:
        for k in range(4):  # warm-up: slow and failing
            t = T0 + start + k * 0.01
            rows.append(row(custom_id=str(i), input_index=i, stage=f"{stage}#warmup",
                            status="error" if k % 2 else "ok", error_type="api_error",
                            scheduled_at=t, sent_at=t, completed_at=t + 10, latency_s=10.0,
                            total_s=10.0, ttft_s=9.0, queue_wait_s=5.0, mode="stream"))
            i += 1
        for k in range(n):
            sched = T0 + start + 0.5 + k * gap
            lag = 0.001 * (k % 7)
            lat = 0.05 + 0.002 * k + (0.1 if stage == "rate=20" else 0.0)
            failed = k % 9 == 4
            rows.append(row(
                custom_id=str(i), input_index=i, stage=stage, mode="stream",
                model="claude-haiku-4-5" if k % 2 else "claude-sonnet-4-5",
                status="error" if failed else "ok", error_type="api_error" if failed else None,
                scheduled_at=sched, sent_at=sched + lag, completed_at=sched + lag + lat,
                queue_wait_s=lag, latency_s=lat, total_s=lat + lag, ttft_s=lat / 3))
            i += 1
    return rows


def synthetic_bench_json(rows: list[dict]) -> dict:
    stages = []
    for name, target, verdict in (
            ("rate=100", {"concurrency": None, "rate": 100.0}, CLIENT_BOUND),
            ("c=4", {"concurrency": 4, "rate": None}, "ok"),
            ("rate=20", {"concurrency": None, "rate": 20.0}, "SLO missed")):
        n = sum(1 for r in rows if r["stage"] == name)
        stages.append({"stage": name, "target": target, "requests": n, "goodput_rps": 1.5,
                       "slo_met": verdict != "SLO missed", "client_cpu": 0.2,
                       "verdict": verdict})
    return {"stages": stages, "status": "finished",
            "saturation": {"highest_passing_rate": 20.0, "lowest_failing_rate": 100.0,
                           "failure": CLIENT_BOUND, "client_bound": True, "note": None}}


@pytest.fixture
def synthetic(make_run) -> tuple[Path, list[dict]]:
    rows = synthetic_rows()
    bench = synthetic_bench_json(rows)
    run_dir = make_run(rows, name="synthetic-bench", parts=2, info={
        "kind": "bench", "config": {"mode": "stream"},
        "bench": {"slos": ["latency_p99<=0.2s", "ttft_p99<=9s"]}})
    (run_dir / "bench.json").write_bytes(orjson.dumps(bench))
    return run_dir, rows


def test_synthetic_bench_figures_order_and_warmup(synthetic):
    run_dir, rows = synthetic
    frame = pq.read_table(run_dir / "data").to_pandas()
    run = build_report([load_run(run_dir)])["runs"][0]
    st = run["stages"]
    # bench.json order (= run order), neither alphabetical nor by size
    assert st["order"] == ["rate=100", "c=4", "rate=20"]
    assert [g["key"]["stage"] for g in run["groups"]] == st["order"]
    assert st["warmup_rows"] == 12 and st["warmup_by_stage"] == {"rate=100": 4, "c=4": 4,
                                                                  "rate=20": 4}
    assert st["warmup_cost_usd"] > 0
    want = expected_stages(frame)
    for entry in st["per_stage"]:
        check_against(entry, want[entry["stage"]])
    # not a single warm-up row in any figure: no 10 s latency, no 5 s lag, all their errors gone
    o = run["overall"]
    assert o["latency"]["metrics"]["latency_s"]["max"] < 1
    assert o["latency"]["metrics"]["queue_wait_s"]["max"] < 0.01
    assert o["requests"] == 90 and o["status"]["error"] == sum(
        1 for r in rows if r["status"] == "error" and not r["stage"].endswith("#warmup"))
    bound = {e["stage"]: e["client_bound"] for e in st["per_stage"]}
    assert bound == {"rate=100": True, "c=4": False, "rate=20": False}
    assert [e["verdict"] for e in st["per_stage"]] == [CLIENT_BOUND, "ok", "SLO missed"]


def test_stage_is_the_outer_grouping_with_by(synthetic):
    run_dir, _rows = synthetic
    rep = build_report([load_run(run_dir, ["model"])], by=["model"])
    run = rep["runs"][0]
    keys = [g["key"] for g in run["groups"]]
    assert run["stages"]["group_by"] == ["stage", "model"] and rep["group_by"] == ["model"]
    assert [k["stage"] for k in keys] == ["rate=100"] * 2 + ["c=4"] * 2 + ["rate=20"] * 2
    assert all(set(k) == {"stage", "model"} for k in keys)
    # within a stage the groups add up to it, over the stage's own window
    for stage in run["stages"]["per_stage"]:
        parts = [g for g in run["groups"] if g["key"]["stage"] == stage["stage"]]
        assert sum(p["requests"] for p in parts) == stage["requests"]
        assert sum(p["throughput"]["ok_requests_per_s"] for p in parts) == pytest.approx(
            stage["ok_requests_per_s"])
    text = format_report(rep)
    assert "stage       model" in text or re.search(r"\n  stage\s+model\s", text)
    # --by stage is accepted and changes nothing
    again = build_report([load_run(run_dir)], by=["stage"])["runs"][0]
    assert [g["key"] for g in again["groups"]] == [{"stage": s} for s in
                                                    ["rate=100", "c=4", "rate=20"]]


def test_without_bench_json_the_rows_give_the_order(make_run):
    rows = synthetic_rows()
    # a bench that has not written bench.json yet, nor kind in run.json: the stage column decides
    rep = build_report([load_run(make_run(rows, info={"config": {"mode": "stream"}}))])
    run = rep["runs"][0]
    st = run["stages"]
    assert st["source"] is None and st["order"] == ["rate=100", "c=4", "rate=20"]
    assert all(e["verdict"] is None and not e["client_bound"] for e in st["per_stage"])
    assert st["per_stage"][1]["target"] == {"concurrency": 4, "rate": None}
    assert "no bench.json yet" in format_report(rep)


def test_a_bench_that_ended_before_any_stage_did_says_so(make_run):
    # bench.json written with no stage (aborted during the first one) read "no bench.json yet".
    run_dir = make_run(synthetic_rows(), info={"config": {"mode": "stream"}})
    (run_dir / "bench.json").write_bytes(
        orjson.dumps({"stages": [], "saturation": None, "status": "aborted"}))
    rep = build_report([load_run(run_dir)])
    st = rep["runs"][0]["stages"]
    assert st["source"] is None and st["bench_status"] == "aborted"
    text = format_report(rep)
    assert "the bench ended aborted before any stage did: no goodput" in text
    assert "no bench.json yet" not in text


def test_warm_up_cost_with_an_unpriced_model_is_a_lower_bound(make_run):
    # One warm-up row of a model genai-prices does not know dropped the warm-up cost clause.
    rows = synthetic_rows()
    warm = [r for r in rows if r["stage"].endswith("#warmup")]
    warm[0].update(model="acme-private-7", model_requested="acme-private-7")
    rep = build_report([load_run(make_run(rows, info={"config": {"mode": "stream"}}))])
    st = rep["runs"][0]["stages"]
    assert st["warmup_cost_complete"] is False and st["warmup_cost_usd"] > 0
    said = f"their cost >= {fmt_usd(st['warmup_cost_usd'])} is in no total"
    assert said in format_report(rep)
    for r in warm:  # all of them unpriced: the clause stays, as a bound of $0
        r.update(model="acme-private-7", model_requested="acme-private-7")
    rep = build_report([load_run(make_run(rows, info={"config": {"mode": "stream"}}))])
    assert "their cost >= $0 is in no total" in format_report(rep)


def test_a_stages_rates_leave_out_the_cancel_instant_of_rows_cut_at_its_end(make_run):
    # As bench counts them: 20 answers over 1.95 s, then 3 stalled requests cancelled 30 s on.
    rows = [row(input_index=i, custom_id=str(i), stage="c=4", scheduled_at=T0 + 0.1 * i,
                sent_at=T0 + 0.1 * i, completed_at=T0 + 0.1 * i + 0.05) for i in range(20)]
    rows += [row(input_index=20 + i, custom_id=str(20 + i), stage="c=4", status="cancelled",
                 error_type="cancelled", scheduled_at=T0 + 0.5, sent_at=T0 + 0.5,
                 completed_at=T0 + 32.0, latency_s=None, total_s=None) for i in range(3)]
    run = build_report([load_run(make_run(rows, info={"kind": "bench"}))])["runs"][0]
    stage = next(g for g in run["groups"] if g["key"] == {"stage": "c=4"})
    assert stage["throughput"]["wall_s"] == pytest.approx(1.95)
    assert stage["throughput"]["ok_requests_per_s"] == pytest.approx(20 / 1.95)


def test_client_bound_is_flagged_in_text_json_and_html(synthetic, tmp_path):
    run_dir, _rows = synthetic
    html = tmp_path / "bench.html"
    result = invoke(str(run_dir), "--html", str(html))
    assert result.exit_code == 0, result.output
    text = result.output
    assert "warm-up rows excluded: 12" in text
    assert re.search(r"\n  !\s+rate=100\s+rate 100/s", text), text
    assert "! CLIENT-BOUND: rate=100" in text
    assert "rate=100 !" in text.split("Throughput (", 1)[1]  # every table marks the stage
    assert "saturation: highest passing rate 20/s" in text

    doc = orjson.loads(invoke(str(run_dir), "--json").output)
    st = doc["runs"][0]["stages"]
    assert [e["client_bound"] for e in st["per_stage"]] == [True, False, False]
    assert set(st) == {"group_by", "order", "source", "bench_status", "warmup_rows",
                       "warmup_by_stage", "warmup_cost_usd", "warmup_cost_complete", "slos",
                       "saturation", "per_stage", "notes"}
    assert "bench runs" in doc["rows_used"]

    page = html.read_text()
    flagged = re.findall(r'<tr class="flag">(.*?)</tr>', page)
    assert len(flagged) == 1 and ">rate=100<" in flagged[0]
    svg = curve(page)
    points = markers(svg)
    assert Counter(p.get("data-point") for p in points) == {"rate=100": 4, "c=4": 4,
                                                           "rate=20": 4}
    hollow = {p.get("data-point") for p in points if p.get("fill") == "#ffffff"}
    assert hollow == {"rate=100"}
    assert {p.tag for p in points if p.get("data-point") == "c=4"} == {f"{SVG}circle"}
    assert {p.tag for p in points if p.get("data-point") != "c=4"} == {f"{SVG}rect"}
    svg_text = " ".join(e.text or "" for e in svg.iter())
    assert "client-bound" in svg_text  # the legend says what hollow means
    hlines = [e.find(f"{SVG}title").text for e in svg.iter() if e.get("class") == "hline"]
    assert hlines == ["SLO latency_p99<=0.2s"]  # ttft_p99<=9s is far above: named, not drawn
    assert "SLO ttft_p99<=9s: above the plotted range" in svg_text
    vlines = [e.find(f"{SVG}title").text for e in svg.iter() if e.get("class") == "vline"]
    assert vlines == ["saturation: highest passing rate 20/s"]


def test_a_comparison_of_bench_runs_flags_their_client_bound_stages(synthetic, make_run):
    # The comparison dropped the "!": a client-bound stage's +25.6 % read as a gateway's gain
    # (bench walkthrough).
    run_dir, rows = synthetic
    other = make_run(rows, name="other-bench", info={
        "kind": "bench", "config": {"mode": "stream"},
        "bench": {"slos": ["latency_p99<=0.2s", "ttft_p99<=9s"]}})
    (other / "bench.json").write_bytes((run_dir / "bench.json").read_bytes())
    result = invoke(str(run_dir), str(other))
    assert result.exit_code == 0, result.output
    by_group = result.output.split("By group (groups present in every run)", 1)[1]
    assert "stage=rate=100 !" in by_group and "stage=c=4 !" not in by_group
    assert ("! client-bound (these figures measure the client, not the gateway): "
            "synthetic-bench rate=100; other-bench rate=100") in by_group
    doc = orjson.loads(invoke(str(run_dir), str(other), "--json").output)
    assert doc["comparison"]["client_bound_stages"] == {"synthetic-bench": ["rate=100"],
                                                        "other-bench": ["rate=100"]}


def test_runs_without_stages_are_unchanged(make_run):
    rows = [row(input_index=i, custom_id=str(i)) for i in range(5)]
    run = build_report([load_run(make_run(rows))], by=["model"])["runs"][0]
    assert run["stages"] is None
    assert [g["key"] for g in run["groups"]] == [{"model": "claude-haiku-4-5"}]
    # groups of a plain run share the run's wall time (they add up), as before
    assert run["groups"][0]["throughput"] == run["overall"]["throughput"]
    text = format_report(build_report([load_run(make_run(rows))]))
    assert "Stages (" not in text and "warm-up" not in text


def test_two_bench_runs_compare_stage_by_stage(synthetic, make_run):
    run_dir, rows = synthetic
    other = make_run(rows, name="again", info={"kind": "bench"})
    cmp = build_report([load_run(run_dir), load_run(other)])["comparison"]
    assert [g["key"] for g in cmp["groups"]] == [{"stage": s} for s in
                                                  ["rate=100", "c=4", "rate=20"]]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_bench_html_renders_in_chromium(synthetic, tmp_path):
    run_dir, _rows = synthetic
    html = tmp_path / "bench.html"
    assert invoke(str(run_dir), "--html", str(html)).exit_code == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=700,700",
         f"--screenshot={shot}", html.as_uri()],
        capture_output=True, text=True, timeout=90)
    assert shot.exists(), proc.stderr[-2000:]
    width, height, bpp, pixels = decode_png(shot.read_bytes())
    colours = Counter(pixels[i:i + 3] for i in range(0, len(pixels), bpp))
    assert colours.get(b"\xff\xff\xff", 0) < 0.97 * width * height, "the page is (almost) blank"
    # The saturation curve comes first: its legend swatches and markers are palette colours.
    for hex_colour in PALETTE[:4]:
        rgb = bytes.fromhex(hex_colour[1:])
        assert colours.get(rgb, 0) >= 30, f"curve colour {hex_colour} missing: not rendered"
