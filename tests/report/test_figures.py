"""Every figure of the report against an independent computation on known rows."""

from __future__ import annotations

import itertools
import math

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from batchrunner import report_stats as stats
from batchrunner.report import build_report, compare, load_run, summarize_table
from batchrunner.report_text import comparison_tables, format_short, run_tables
from batchrunner.summary import SUMMARY_COLUMNS, summarize_batches

from .conftest import T0, row, to_table


def mixed_rows(n: int = 200, seed: int = 3) -> list[dict]:
    """Ok and failed rows of two models and two tags, with known timings and tokens."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        status = "ok" if i % 10 else ("error" if i % 20 else "timeout")
        sched = T0 + i * 0.05
        queue = float(rng.uniform(0, 0.02))
        latency = float(rng.lognormal(-1.5, 0.5))
        r = row(custom_id=str(i), input_index=i, status=status,
                model="claude-sonnet-4-5" if i % 3 else "claude-haiku-4-5",
                metadata=orjson.dumps({"split": "dev" if i % 2 else "test", "n": i % 4}).decode(),
                scheduled_at=sched, sent_at=sched + queue, completed_at=sched + queue + latency,
                queue_wait_s=queue, ttfb_s=latency / 2, latency_s=latency,
                total_s=queue + latency, input_tokens=int(rng.integers(5, 500)),
                output_tokens=int(rng.integers(1, 300)),
                cache_creation_input_tokens=0, cache_read_input_tokens=int(rng.integers(0, 900)))
        if status != "ok":
            r.update(error_type="overloaded_error" if status == "error" else "timeout",
                     error_message=f"failure {i}", http_status=529 if status == "error" else None,
                     input_tokens=None, output_tokens=None, cache_read_input_tokens=None,
                     cache_creation_input_tokens=None, cache_creation_5m_input_tokens=None,
                     cache_creation_1h_input_tokens=None)
        rows.append(r)
    return rows


def test_counts_percentiles_throughput_tokens(make_run):
    rows = mixed_rows()
    rep = build_report([load_run(make_run(rows, parts=3))])
    run = rep["runs"][0]
    o = run["overall"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert o["requests"] == 200
    assert o["status"] == {"ok": 180, "error": 10, "timeout": 10, "expired": 0, "cancelled": 0}
    assert o["error_rate"] == pytest.approx(20 / 200)
    # latency over ok rows only, and it says how many rows it used and left out
    assert o["latency"]["rows_used"] == 180 and o["latency"]["rows_excluded"] == 20
    for metric in ("latency_s", "total_s", "queue_wait_s", "ttfb_s"):
        values = np.array([r[metric] for r in ok])
        d = o["latency"]["metrics"][metric]
        assert d["n"] == 180
        for p in (50, 90, 95, 99):
            assert d[f"p{p}"] == pytest.approx(np.percentile(values, p), rel=1e-12)
        assert d["max"] == pytest.approx(values.max())
        assert d["mean"] == pytest.approx(values.mean())
    # columns with no value at all (sync: no TTFT, no ITL) are left out
    assert run["metrics"] == ["queue_wait_s", "ttfb_s", "latency_s", "total_s"]
    # throughput: every row over first schedule → last completion
    wall = max(r["completed_at"] for r in rows) - min(r["scheduled_at"] for r in rows)
    assert run["window"]["wall_s"] == pytest.approx(wall, abs=2e-6)
    assert o["throughput"]["requests_per_s"] == pytest.approx(200 / wall, rel=1e-5)
    assert o["throughput"]["ok_requests_per_s"] == pytest.approx(180 / wall, rel=1e-5)
    out_tokens = sum(r["output_tokens"] or 0 for r in rows)
    assert o["throughput"]["output_tokens_per_s"] == pytest.approx(out_tokens / wall, rel=1e-5)
    t = o["tokens"]
    assert t["input"] == sum(r["input_tokens"] or 0 for r in rows)
    assert t["output"] == out_tokens
    assert t["cache_read"] == sum(r["cache_read_input_tokens"] or 0 for r in rows)
    assert t["rows_with_usage"] == 180


def test_errors_have_counts_statuses_and_the_first_example(make_run):
    rows = mixed_rows()
    errors = build_report([load_run(make_run(rows))])["runs"][0]["overall"]["errors"]
    by_type = {e["error_type"]: e for e in errors}
    assert set(by_type) == {"overloaded_error", "timeout"}
    e = by_type["overloaded_error"]
    assert e["count"] == 10 and e["share"] == pytest.approx(0.05)
    assert e["statuses"] == {"error": 10} and e["http_statuses"] == {"529": 10}
    first = min(r["input_index"] for r in rows if r["status"] == "error")
    assert e["example"] == f"failure {first}"
    assert by_type["timeout"]["http_statuses"] == {}


def test_group_by_model_and_metadata_matches_subsets(make_run):
    rows = mixed_rows()
    run_dir = make_run(rows)
    by = ["model", "metadata.split"]
    run = build_report([load_run(run_dir, by)], by=by)["runs"][0]
    groups = run["groups"]
    assert sum(g["requests"] for g in groups) == 200
    for g in groups:
        model, split = g["key"]["model"], g["key"]["metadata.split"]
        subset = [r for r in rows if r["model"] == model and orjson.loads(r["metadata"])["split"]
                  == split]
        # the group's section is the same as a report over just its rows (same wall time)
        alone = build_report([load_run(make_run(subset))])["runs"][0]["overall"]
        assert g["requests"] == alone["requests"] == len(subset)
        assert g["status"] == alone["status"]
        assert g["latency"] == alone["latency"]
        assert g["tokens"] == alone["tokens"]
        assert g["cost"]["usd"]["total"] == pytest.approx(alone["cost"]["usd"]["total"])
    # numbers as metadata values are labels too
    run = build_report([load_run(run_dir, ["metadata.n"])], by=["metadata.n"])["runs"][0]
    assert sorted(g["key"]["metadata.n"] for g in run["groups"]) == ["0", "1", "2", "3"]


def test_max_groups_merges_the_rest_into_other(make_run):
    rows = [row(input_index=i, metadata=orjson.dumps({"id": i}).decode()) for i in range(12)]
    rows += [row(input_index=100 + i, metadata='{"id": 0}') for i in range(5)]
    run = build_report([load_run(make_run(rows), ["metadata.id"])], by=["metadata.id"],
                       max_groups=3)["runs"][0]
    keys = [g["key"]["metadata.id"] for g in run["groups"]]
    assert keys[0] == "0" and keys[-1] == "(other)" and len(keys) == 4
    assert sum(g["requests"] for g in run["groups"]) == 17  # no row dropped
    assert run["groups"][-1]["requests"] == 17 - 6 - 1 - 1


def test_missing_metadata_key_and_bad_metadata_are_none(make_run):
    rows = [row(input_index=0, metadata='{"a": "x"}'), row(input_index=1, metadata=None),
            row(input_index=2, metadata="not json"), row(input_index=3, metadata='{"b": 1}')]
    run = build_report([load_run(make_run(rows), ["metadata.a"])], by=["metadata.a"])["runs"][0]
    assert {g["key"]["metadata.a"]: g["requests"] for g in run["groups"]} == {"(none)": 3, "x": 1}


def brute_in_flight(starts, ends, edges):
    mean, peak = [], []
    for a, b in itertools.pairwise(edges):
        overlap = np.clip(np.minimum(ends, b) - np.maximum(starts, a), 0, None).sum()
        mean.append(overlap / (b - a))
        # the count is piecewise constant: check it at every event inside and at the start
        points = [a, *[t for t in np.concatenate([starts, ends]) if a <= t < b]]
        peak.append(max(int(((starts <= t) & (ends > t)).sum()) for t in points))
    return np.array(mean), np.array(peak)


def test_in_flight_against_brute_force():
    rng = np.random.default_rng(5)
    starts = np.round(rng.uniform(0, 10, 300), 3)
    ends = starts + np.round(rng.exponential(1.0, 300), 3)
    edges = np.linspace(0, ends.max() + 0.5, 23)
    mean, maxima, peak, busy = stats.in_flight(starts, ends, edges)
    want_mean, want_max = brute_in_flight(starts, ends, edges)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(maxima, want_max)
    assert peak == want_max.max()
    grid = np.linspace(0, edges[-1], 200_001)  # busy time: where at least one is in flight
    covered = np.zeros(grid.size, bool)
    for s, e in zip(starts, ends, strict=True):
        covered |= (grid >= s) & (grid < e)
    assert busy == pytest.approx(covered.mean() * edges[-1], abs=0.01)


def test_timeline_buckets(make_run):
    rows = mixed_rows(n=120)
    run = build_report([load_run(make_run(rows))])["runs"][0]
    tl = run["timeline"]
    t0 = min(r["scheduled_at"] for r in rows)
    width = tl["bucket_s"]
    assert width == stats.bucket_width(run["window"]["wall_s"])
    done = np.array([r["completed_at"] for r in rows]) - t0
    want = np.bincount(np.minimum((done // width).astype(int), len(tl["t_s"]) - 1),
                       minlength=len(tl["t_s"]))
    assert tl["completed"] == list(want) and sum(tl["completed"]) == 120
    failed = np.array([r["status"] != "ok" for r in rows])
    assert sum(tl["failed"]) == failed.sum()
    assert sum(sum(v) for v in tl["errors_by_type"].values()) == failed.sum()
    assert tl["requests_per_s"] == pytest.approx([c / width for c in tl["completed"]])
    starts = np.array([r["sent_at"] for r in rows]) - t0
    edges = np.array([*tl["t_s"], tl["t_s"][-1] + width])
    want_mean, want_max = brute_in_flight(starts, done, edges)
    # rows store µs instants: allow for that rounding (a few µs per interval per bucket)
    np.testing.assert_allclose(tl["in_flight_mean"], want_mean, atol=1e-3)
    assert tl["in_flight_max"] == list(want_max)


@pytest.mark.parametrize(("span", "width"), [(0.03, 0.001), (3.4, 0.05), (100, 1), (119, 1),
                                             (600, 5), (3600, 30), (86400 * 3, 3600)])
def test_bucket_width_is_readable(span, width):
    assert stats.bucket_width(span) == width
    assert span / stats.bucket_width(span) <= 120


def test_cdf_and_histogram():
    values = np.array([0.3, 0.1, np.nan, 0.2, 0.4])
    pts = stats.cdf_points(values, points=4)
    assert pts[0] == [0.1, 0.0] and pts[-1] == [0.4, 1.0]
    median = next(p for p in pts if p[1] == 0.5)[0]
    assert median == pytest.approx(np.quantile([0.1, 0.2, 0.3, 0.4], 0.5))
    hist = stats.histogram(np.arange(1000.0), bins=10)
    assert sum(hist["counts"]) + hist["overflow"] == 1000 and hist["overflow"] == 5


def test_stream_metrics_appear_only_where_present(make_run):
    rows = [row(input_index=i, mode="stream", ttft_s=0.01 * (i + 1), itl_mean_s=0.001,
                itl_p50_s=0.001, itl_p99_s=0.002, itl_max_s=0.003, tpot_s=0.0011)
            for i in range(10)]
    rows.append(row(input_index=10, mode="stream", status="error", ttft_s=9.0,
                    error_type="api_error"))
    run = build_report([load_run(make_run(rows))])["runs"][0]
    assert "ttft_s" in run["metrics"] and "tpot_s" in run["metrics"]
    ttft = run["overall"]["latency"]["metrics"]["ttft_s"]
    assert ttft["n"] == 10 and ttft["max"] == pytest.approx(0.1)  # the failed row's 9 s is out
    assert ttft["p50"] == pytest.approx(np.percentile([0.01 * (i + 1) for i in range(10)], 50))


def test_empty_run_and_cancelled_rows(make_run):
    run = build_report([load_run(make_run([]))])["runs"][0]
    assert run["overall"]["requests"] == 0 and run["timeline"] is None
    assert run["overall"]["throughput"]["requests_per_s"] is None
    rows = [row(input_index=0), row(input_index=1, status="cancelled", error_type="cancelled",
                                    sent_at=None, completed_at=None, latency_s=None)]
    o = build_report([load_run(make_run(rows))])["runs"][0]["overall"]
    assert o["status"]["cancelled"] == 1 and o["error_rate"] == 0  # cancelled is not an error
    assert o["errors"][0]["error_type"] == "cancelled"  # but it is listed, never dropped


def test_comparison_deltas(make_run):
    a = make_run([row(input_index=i, latency_s=0.1 * (i + 1)) for i in range(10)], name="a")
    b = make_run([row(input_index=i, latency_s=0.2 * (i + 1), output_tokens=40)
                  for i in range(10)], name="b")
    rep = build_report([load_run(a), load_run(b)])
    cmp = rep["comparison"]
    assert cmp["baseline"] == "a" and cmp["runs"] == ["a", "b"]
    figs = {f["figure"]: f for f in cmp["overall"]}
    p50 = figs["latency_s p50"]
    assert p50["values"] == pytest.approx([0.55, 1.1])
    assert p50["delta"] == pytest.approx([0.55]) and p50["delta_pct"] == pytest.approx([100.0])
    cost = figs["cost_usd"]
    assert cost["delta"][0] == pytest.approx(cost["values"][1] - cost["values"][0])
    assert figs["requests"]["delta_pct"] == [0.0]
    assert compare(rep["runs"]) == cmp


def test_a_run_with_unpriced_rows_has_no_cost_total_to_compare(make_run):
    # Same work; half of b's rows went to a model nobody prices. Its priced part alone used to
    # compare as a 50 % saving.
    a = make_run([row(input_index=i, model="claude-haiku-4-5") for i in range(10)], name="a")
    b = make_run([row(input_index=i, model="claude-haiku-4-5" if i < 5 else "claude-foo-9")
                  for i in range(10)], name="b")
    rep = build_report([load_run(a), load_run(b)])
    cmp = rep["comparison"]
    figs = {f["figure"]: f for f in cmp["overall"]}
    assert figs["cost_usd"]["values"][0] > 0 and figs["cost_usd"]["values"][1] is None
    assert figs["cost_usd"]["delta"] == [None] and figs["cost_usd"]["delta_pct"] == [None]
    assert figs["cost_usd output"]["values"][1] is None
    # Per request is unknown too: the priced rows' mean compared as "+0.0 %" (and an unpriced
    # model's error rows as $0 a request).
    assert figs["cost_per_request_usd"]["values"][1] is None
    assert figs["cost_per_request_usd"]["delta_pct"] == [None]
    by_model = {m["model"]: m["cost"] for m in rep["runs"][1]["cost_by_model"]}
    assert by_model["claude-foo-9"]["per_request_usd"] is None
    assert by_model["claude-haiku-4-5"]["per_request_usd"] is not None
    assert cmp["unpriced"] == {"b": ["claude-foo-9"]}
    from batchrunner.report_text import format_report

    assert "no cost total for b (unpriced: claude-foo-9)" in format_report(rep)


def test_no_change_is_never_a_negative_zero():
    from batchrunner.report import _rows
    from batchrunner.report_text import comparison_tables

    # Two cost totals summed in another order: -2e-17 apart, which is no difference.
    (fig,) = _rows([{"cost_usd": 0.09386874999999999}, {"cost_usd": 0.09386874999999997}])
    assert fig["delta"] == [0.0] and fig["delta_pct"] == [0.0]
    assert math.copysign(1, fig["delta"][0]) == 1 and math.copysign(1, fig["delta_pct"][0]) == 1
    # A real change too small for the usual decimals is not shown as zero: two significant
    # digits, with its own sign; only no change reads +0.0%.
    figures = [
        fig,
        {"figure": "latency_s p50", "values": [2.0, 1.9999], "delta": [-1e-4],
         "delta_pct": [-0.005]},
        {"figure": "error_rate", "values": [0.5, 0.49999], "delta": [-1e-5], "delta_pct": [-0.002]},
        {"figure": "requests", "values": [7, 7], "delta": [0], "delta_pct": [0.0]},
    ]  # fmt: skip
    cmp = {"runs": ["a", "b"], "baseline": "a", "overall": figures, "cost_by_model": [],
           "groups": []}  # fmt: skip
    rows = comparison_tables(cmp)[0].rows
    assert [r[-1] for r in rows] == ["+0.0%", "-0.0050%", "-0.0020%", "+0.0%"]
    assert rows[2][1:] == ["50.0000%", "49.9990%", "-0.0010pp", "-0.0020%"]


def test_summary_keys_and_values(make_run):
    rows = mixed_rows(60)
    s = summarize_table(to_table(rows))
    assert s["requests"] == 60 and s["status"] == {"ok": 54, "error": 3, "timeout": 3}
    assert s["error_types"] == {"overloaded_error": 3, "timeout": 3}
    ok = np.array([r["latency_s"] for r in rows if r["status"] == "ok"])
    assert s["latency_s"]["p99"] == pytest.approx(np.percentile(ok, 99))
    assert s["latency_s"]["n"] == 54 and s["ttft_s"] is None
    assert s["tokens"]["output"] == sum(r["output_tokens"] or 0 for r in rows)
    assert s["cost"]["complete"] and s["cost"]["total_usd"] > 0
    assert math.isclose(s["cost"]["total_usd"], sum(s["cost"]["usd"][k] for k in (
        "input", "output", "cache_write_5m", "cache_write_1h", "cache_read")))
    orjson.dumps(s)  # JSON-ready (it goes into run.json)


def test_session_windows_against_brute_force():
    rng = np.random.default_rng(7)
    starts = [100.0, 5000.0, 9000.0]
    begin = np.concatenate([rng.uniform(s + 1, s + 50, 300) for s in starts])
    done = begin + rng.uniform(0.1, 20, begin.size)
    begin[::17] = np.nan  # rows that were never sent: they count by their completion
    done[::23] = np.nan  # rows with no completion
    order = rng.permutation(begin.size)  # any order, in any batches
    windows = stats.SessionWindows(reversed(starts))
    for chunk in np.array_split(order, 7):
        windows.add(begin[chunk], done[chunk])
    expected = 0.0
    for k, s in enumerate(starts):
        at = np.where(np.isfinite(begin), begin, done)
        mine = (at >= s) & (at < (starts[k + 1] if k + 1 < len(starts) else np.inf))
        expected += np.nanmax(done[mine]) - np.nanmin(begin[mine])
    assert windows.active == pytest.approx(expected)
    assert windows.start == np.nanmin(begin) and windows.end == np.nanmax(done)
    plain = stats.SessionWindows()  # one session: the plain window
    plain.add(begin, done)
    assert plain.active == pytest.approx(np.nanmax(done) - np.nanmin(begin))


def test_an_async_job_spanning_two_sessions_counts_in_each_not_between():
    windows = stats.SessionWindows([100.0, 200.0, 10_000.0])
    # submitted in session 1, seen done by session 2's polls: activity of session 1 at its
    # submit and of session 2 at its completion, never the 95 s between the sessions
    windows.add(np.array([101.0, 102.0]), np.array([105.0, 204.0]))
    windows.add(np.array([201.0]), np.array([206.0]))  # sent and done in session 2
    assert windows.active == pytest.approx((105.0 - 101.0) + (206.0 - 201.0))
    # a job submitted in session 1 and collected (only polled) hours later by session 3,
    # which counts from its own start
    windows.add(np.array([103.0]), np.array([10_002.0]))
    assert windows.active == pytest.approx(4.0 + 5.0 + 2.0)
    assert windows.span == pytest.approx(10_002.0 - 101.0)


def test_a_session_that_only_collected_counts_from_its_own_start():
    windows = stats.SessionWindows([100.0, 200.0])
    windows.add(np.array([101.0, 102.0]), np.array([105.0, 110.0]))  # sent and done in session 1
    windows.add(np.array([np.nan, np.nan]), np.array([203.0, 206.0]))  # polled by session 2
    assert windows.active == pytest.approx(9.0 + 6.0)


def test_the_summary_errors_line_leaves_cancelled_rows_to_the_counts(make_run):
    # As in the report's error rate: cancelled rows are neither answered nor failed.
    rows = mixed_rows(40) + [
        row(custom_id=f"c{i}", input_index=100 + i, status="cancelled", error_type="cancelled",
            error_message="the run was stopped", completed_at=T0 + 1) for i in range(4)]
    run_dir = make_run(rows, parts=2)
    whole = summarize_table(to_table(rows))
    parts = sorted((run_dir / "data").glob("part-*.parquet"))
    streamed = summarize_batches(pq.read_table(p, columns=SUMMARY_COLUMNS) for p in parts)
    for s in (whole, streamed):
        assert s["status"] == {"ok": 36, "error": 2, "timeout": 2, "cancelled": 4}
        assert s["error_types"] == {"overloaded_error": 2, "timeout": 2}
        lines = format_short(s).splitlines()
        assert "requests   44  (cancelled 4, error 2, ok 36, timeout 2)" in lines
        assert "errors     overloaded_error 2, timeout 2" in lines


def test_a_comparison_never_rounds_a_rate_into_its_own_delta(make_run):
    # 1 error in 400,000 rows against none: "0.00% → 0.00%, Δ% -100.0%" read as a contradiction.
    figures = [
        {"figure": "error_rate", "values": [1 / 400_000, 0.0], "delta": [-1 / 400_000],
         "delta_pct": [-100.0]},
        {"figure": "error_rate", "values": [0.0, 1 / 400_000], "delta": [1 / 400_000],
         "delta_pct": [None]},
        {"figure": "error_rate", "values": [0.0, 0.0], "delta": [0.0], "delta_pct": [None]},
    ]  # fmt: skip
    cmp = {"runs": ["a", "b"], "baseline": "a", "overall": figures, "cost_by_model": [],
           "groups": []}  # fmt: skip
    rows = comparison_tables(cmp)[0].rows
    assert rows[0] == ["error_rate", "0.00025%", "0.00%", "-0.00025pp", "-100.0%"]
    assert rows[1] == ["error_rate", "0.00%", "0.00025%", "+0.00025pp", "from 0"]
    assert rows[2] == ["error_rate", "0.00%", "0.00%", "0.00pp", "-"]
    # The same in a real report, and in the per-run table: one error is not "0.0%".
    many = [row(custom_id=str(i), input_index=i) for i in range(39_999)]
    bad = row(custom_id="x", input_index=39_999, status="error", error_type="api_error")
    good = row(custom_id="x", input_index=39_999)
    report = build_report([load_run(make_run([*many, bad])), load_run(make_run([*many, good]))])
    text = [r for r in comparison_tables(report["comparison"])[0].rows if r[0] == "error_rate"]
    assert text == [["error_rate", "0.0025%", "0.00%", "-0.0025pp", "-100.0%"]]
    requests = run_tables(report["runs"][0], report["prices"], [])[0]
    assert requests.rows == [["40,000", "39,999", "1", "0", "0", "0", "0.0025%"]]


def test_a_comparison_never_prints_a_duration_or_rate_that_is_not_zero_as_zero(make_run):
    # Before: "queue_wait_s p50  7 µs  6 µs  -0 µs  -7.1%" for a delta of -0.49 µs.
    many = [row(custom_id=str(i), input_index=i, queue_wait_s=7e-6) for i in range(10)]
    a = make_run(many)
    b = make_run([{**r, "queue_wait_s": 6.51e-6} for r in many])
    report = build_report([load_run(a), load_run(b)])
    rows = {r[0]: r[1:] for r in comparison_tables(report["comparison"])[0].rows}
    assert rows["queue_wait_s p50"] == ["7 µs", "7 µs", "-0.49 µs", "-7.0%"]
    # The same rule for a duration under half a microsecond, a rate under 0.05/s and a Δ%.
    figures = [
        {"figure": "queue_wait_s p99", "values": [3e-7, 0.0], "delta": [-3e-7],
         "delta_pct": [-100.0]},
        {"figure": "requests_per_s", "values": [0.04, 0.01], "delta": [-0.03],
         "delta_pct": [-75.0]},
        {"figure": "requests", "values": [100_000, 100_001], "delta": [1], "delta_pct": [0.001]},
    ]  # fmt: skip
    cmp = {"runs": ["a", "b"], "baseline": "a", "overall": figures, "cost_by_model": [],
           "groups": []}  # fmt: skip
    assert [r[1:] for r in comparison_tables(cmp)[0].rows] == [
        ["0.30 µs", "0 µs", "-0.30 µs", "-100.0%"],
        ["0.040", "0.010", "-0.030", "-75.0%"],
        ["100,000", "100,001", "+1", "+0.0010%"],
    ]


def test_a_group_of_unpriced_rows_shows_no_cost_not_zero(make_run):
    # "acme  329  $0  $0  $0  $0  $0  >= $0" read as free, where the model table said UNPRICED.
    rows = [row(input_index=i, custom_id=str(i), model=m, model_requested=m)
            for i, m in enumerate(["claude-haiku-4-5", "acme-private-7", "acme-private-7"])]
    # a failed row without usage is priced at $0: it must not make the group look priced
    rows.append(row(input_index=3, custom_id="3", model="acme-private-7",
                    model_requested="acme-private-7", status="error", error_type="api_error",
                    input_tokens=None, output_tokens=None))
    rep = build_report([load_run(make_run(rows))], by=["model"])
    text = "\n".join(line for t in run_tables(rep["runs"][0], rep["prices"], ["model"])
                     for line in t.text())
    group = text.split("Cost USD by group", 1)[1]
    acme = next(line for line in group.splitlines() if line.lstrip().startswith("acme"))
    assert acme.split() == ["acme-private-7", "3", "-", "-", "-", "-", "-", "UNPRICED", "-"]
    haiku = next(line for line in group.splitlines() if "claude-haiku-4-5" in line)
    assert "UNPRICED" not in haiku and "$" in haiku


def test_cancelled_rows_stay_out_of_the_error_rate_the_window_and_the_series(make_run):
    # An outage abort: 156 never-sent rows cancelled at +5.3 s made a 3,120 req/s "peak" and
    # spread the rates over the wait; and each cancelled row lowered the error rate.
    rows = [row(input_index=i, custom_id=str(i), scheduled_at=T0 + 0.1 * i,
                sent_at=T0 + 0.1 * i, completed_at=T0 + 0.1 * i + 0.05) for i in range(10)]
    rows.append(row(input_index=10, custom_id="10", status="error", error_type="api_error",
                    scheduled_at=T0 + 1.0, sent_at=T0 + 1.0, completed_at=T0 + 1.05))
    rows += [row(input_index=11 + k, custom_id=str(11 + k), status="cancelled",
                 error_type="cancelled", scheduled_at=T0 + 1.1, sent_at=None, queue_wait_s=None,
                 completed_at=T0 + 30.0, latency_s=None, total_s=None, input_tokens=None,
                 output_tokens=None) for k in range(5)]
    rep = build_report([load_run(make_run(rows))])
    o = rep["runs"][0]["overall"]
    assert o["error_rate"] == pytest.approx(1 / 11) and o["ok_rate"] == pytest.approx(10 / 11)
    assert o["throughput"]["wall_s"] == pytest.approx(1.05)  # the sent rows' window
    assert o["throughput"]["requests_per_s"] == pytest.approx(11 / 1.05)
    tl = rep["runs"][0]["timeline"]
    assert sum(tl["completed"]) == 11 and tl["rows_used"] == 11
    assert max(tl["requests_per_s"]) <= 1 / tl["bucket_s"] * 2
    summary = summarize_table(to_table(rows))
    assert summary["requests_per_s"] == pytest.approx(11 / 1.05)
