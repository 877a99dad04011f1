"""An open-loop run (``--rate``) that did not keep its schedule says so: in ``run``'s closing
summary and in ``report`` (text, JSON, HTML), by the rule ``bench`` judges its stages with."""

from __future__ import annotations

import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchrunner.cli import main
from batchrunner.emulator.config import Dist
from batchrunner.report import build_report, load_run
from batchrunner.report_text import format_report, format_short, schedule_lines
from batchrunner.schedule_check import open_loop_sessions
from batchrunner.summary import SUMMARY_COLUMNS, summarize_batches

from .conftest import REPO, T0, row


def open_loop_rows(n: int, rate: float, sent_rate: float, start: float = T0,
                   first: int = 0) -> list[dict]:
    """Rows scheduled at *rate* but sent at *sent_rate* (each 100 ms to answer)."""
    rows = []
    for i in range(n):
        scheduled, sent = start + i / rate, start + i / sent_rate
        rows.append(row(input_index=first + i, custom_id=str(first + i), scheduled_at=scheduled,
                        sent_at=sent, completed_at=sent + 0.1, queue_wait_s=sent - scheduled,
                        latency_s=0.1, total_s=sent + 0.1 - scheduled))
    return rows


def session(started_at: float, rate: float | None, cap: int | None = 10_000) -> dict:
    return {"started_at": started_at, "config": {"mode": "sync", "rate": rate,
                                                 "in_flight_limit": cap}}


def invoke(*args: str):
    return CliRunner().invoke(main, ["report", *args], catch_exceptions=False)


def test_report_says_an_open_loop_fell_behind_its_schedule(make_run, tmp_path):
    s = session(T0 - 1, 100.0)
    run_dir = make_run(open_loop_rows(200, rate=100, sent_rate=60),
                       info={"config": s["config"], "sessions": [s]})

    doc = build_report([load_run(run_dir)])
    sched = doc["runs"][0]["schedule"]
    assert sched["kept"] is False and sched["target_rates"] == [100.0]
    assert sched["achieved_send_rate"] == pytest.approx(60)
    assert sched["scheduled_send_rate"] == pytest.approx(100)
    # the last rows waited 199 * (1/60 - 1/100) = 1.33 s for their send
    assert sched["send_lag_s"]["max"] == pytest.approx(199 * (1 / 60 - 1 / 100))
    assert sched["rows_used"] == 200 and sched["in_flight_caps"] == [10_000]
    assert sched["reasons"] == ["sent 60.0/s of the 100.0/s scheduled",
                                f"send lag p99 {sched['send_lag_s']['p99'] * 1000:,.1f} ms"]

    text = invoke(str(run_dir)).output
    assert ("schedule   NOT KEPT: --rate 100/s, sent 60.0/s (its schedule 100.0/s), send lag "
            "p99 1.31 s, max 1.33 s (queue_wait_s of 200 sent rows)") in text
    # 100 ms answers every 1/60 s: 6 in flight at most, far under the cap
    assert ("likely cause: requests in flight peaked at 6, under the cap (-c 10,000): the "
            "client's CPU most likely") in text
    html = tmp_path / "r.html"
    assert invoke(str(run_dir), "--html", str(html)).exit_code == 0
    assert '<p class="meta warn">schedule   NOT KEPT: --rate 100/s' in html.read_text()


def test_a_kept_schedule_and_a_closed_loop_resume_are_not_flagged(make_run):
    # Session 1: --rate 50, sent on time. Session 2, a day later, resumed without --rate: its
    # rows waited 0.5 s each (a --max-rate throttle), which is no schedule to keep.
    first = open_loop_rows(100, rate=50, sent_rate=50)
    later = T0 + 86_400
    second = [row(input_index=100 + i, custom_id=str(100 + i), scheduled_at=later + i * 0.1,
                  sent_at=later + i * 0.1 + 0.5, completed_at=later + i * 0.1 + 0.6,
                  queue_wait_s=0.5, total_s=0.6) for i in range(100)]
    sessions = [session(T0 - 1, 50.0), session(later - 1, None, cap=32)]
    run_dir = make_run(first + second, info={"config": sessions[1]["config"],
                                             "sessions": sessions})
    report = build_report([load_run(run_dir)])["runs"][0]
    sched = report["schedule"]
    assert sched["kept"] is True and sched["reasons"] == []
    assert sched["rows_used"] == 100 and sched["sessions"] == 1 and sched["target_rates"] == [50.0]
    assert sched["send_lag_s"]["max"] == pytest.approx(0.0, abs=1e-6)
    assert "NOT KEPT" not in format_report(build_report([load_run(run_dir)]))
    # A closed-loop run has no schedule to judge.
    closed = make_run([row()], info={"config": {"mode": "sync", "rate": None}})
    assert build_report([load_run(closed)])["runs"][0]["schedule"] is None


def test_the_closing_summary_judges_the_schedule_part_by_part(make_run):
    s1, s2 = session(T0 - 1, 100.0), session(T0 + 3_599, 100.0)
    # Two sessions an hour apart, the second one late: judged over the sessions' own windows.
    rows = open_loop_rows(150, 100, 100) + open_loop_rows(150, 100, 40, start=T0 + 3_600,
                                                          first=150)
    run_dir = make_run(rows, parts=3, info={"sessions": [s1, s2]})
    schedule = open_loop_sessions({"sessions": [s1, s2]})
    parts = sorted((run_dir / "data").glob("part-*.parquet"))

    def batches(columns: list[str]):
        for p in parts:
            yield pq.read_table(p, columns=columns)

    streamed = summarize_batches(batches(SUMMARY_COLUMNS), reread=batches, schedule=schedule)
    held = summarize_batches(batches(SUMMARY_COLUMNS), schedule=schedule)
    whole = build_report([load_run(run_dir)])["runs"][0]["schedule"]
    for got in (streamed["schedule"], held["schedule"]):
        assert got["kept"] is False and got["sessions"] == 2 and got["rows_used"] == 300
        for key in ("achieved_send_rate", "scheduled_send_rate", "send_overrun_s"):
            assert got[key] == pytest.approx(whole[key])
        assert got["send_lag_s"] == pytest.approx(whole["send_lag_s"])
    # 298 intervals over 1.49 s + 3.725 s of sends, against 2 x 1.49 s of schedule
    assert whole["achieved_send_rate"] == pytest.approx(298 / (149 / 100 + 149 / 40))
    assert whole["scheduled_send_rate"] == pytest.approx(100)
    text = format_short(streamed)
    assert "schedule   NOT KEPT: --rate 100/s, sent 57.1/s (its schedule 100.0/s)" in text
    assert ("likely cause: the client's CPU, or the in-flight cap (-c 10,000) full while the "
            "gateway was slow") in text


def test_run_says_when_its_in_flight_cap_kept_it_off_its_schedule(make_emulator, tmp_path):
    # 200/s asked, but at most 2 requests in flight that each take 100 ms: ~20/s at most.
    requests = tmp_path / "set.jsonl"
    line = '{"params":{"model":"claude-haiku-4-5","max_tokens":5,"messages":[{"role":"user",' \
           '"content":"hi"}]}}\n'
    requests.write_text(line * 24)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.1)) as emu:
        result = CliRunner().invoke(main, ["run", str(requests), "--gateway", emu.base_url,
                                           "--rate", "200", "-c", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "schedule   NOT KEPT: --rate 200/s, sent " in result.output
    waits = orjson.loads((out / "run.json").read_bytes())["sessions"][-1]["cap_waits"]
    assert 1 <= waits <= 22  # each of the 22 sends after the first two waited, at most once
    often = "once" if waits == 1 else f"{waits} times"
    # Before: "the client's CPU, or the in-flight cap (-c 2) full while the gateway was slow"
    assert (f"likely cause: requests in flight reached the cap (-c 2) {often}: sends waited "
            "for the gateway's answers") in result.output
    report = invoke(str(out)).output
    assert f"likely cause: requests in flight reached the cap (2, -c 2) {often}" in report


def test_a_run_that_never_filled_its_cap_blames_the_client(make_run):
    # The run counted no wait for its cap: the schedule was lost to the client itself, whatever
    # the in-flight peak computed from the rows suggests (sent_at to completed_at overlaps
    # include time after a response arrived and before its row was done).
    s = session(T0 - 1, 100.0, cap=6)
    s["cap_waits"] = 0
    run_dir = make_run(open_loop_rows(200, rate=100, sent_rate=60),
                       info={"config": s["config"], "sessions": [s]})
    sched = build_report([load_run(run_dir)])["runs"][0]["schedule"]
    assert sched["cap_waits"] == 0 and sched["in_flight_peak"] == 6
    # Before: "requests in flight reached the cap (6, -c 6): sends waited ..." (the peak rule)
    text = format_report(build_report([load_run(run_dir)]))
    assert ("likely cause: requests in flight peaked at 6, never reaching the cap (-c 6): the "
            "client's CPU most likely") in text
    # Before: "latency_s does not" (a busy client reads answers late too: the audit measured
    # latency_s p50 +12 ms, p99 +81-193 ms at 3,000 streams/s)
    assert ("latency_s leaves it out, but a client too busy to send on time also reads answers "
            "late, so latency_s, ttfb_s and ttft_s may be inflated too") in text
    table = pq.read_table(run_dir / "data")
    summary = summarize_batches(iter([table.select(SUMMARY_COLUMNS)]),
                                schedule=open_loop_sessions({"sessions": [s]}))
    assert ("likely cause: requests in flight never reached the cap (-c 6): the client's CPU "
            "most likely") in format_short(summary)


def test_cap_waits_are_summed_only_when_every_judged_session_counted_them(make_run):
    first, second = session(T0 - 1, 100.0), session(T0 + 3_599, 100.0)
    first["cap_waits"], second["cap_waits"] = 3, 4
    rows = open_loop_rows(150, 100, 60) + open_loop_rows(150, 100, 60, start=T0 + 3_600,
                                                         first=150)
    both = make_run(rows, info={"sessions": [first, second]})
    assert build_report([load_run(both)])["runs"][0]["schedule"]["cap_waits"] == 7
    # A session that died never wrote its count: the sum would be a guess, so there is none.
    del second["cap_waits"]
    died = make_run(rows, info={"sessions": [first, second]})
    sched = build_report([load_run(died)])["runs"][0]["schedule"]
    assert sched["cap_waits"] is None
    assert "peaked at 6, under the cap (-c 10,000)" in format_report(
        build_report([load_run(died)]))


def test_only_the_open_loop_sessions_that_sent_rows_are_judged(make_run):
    # As `run --rate 200 -c 2 --max-requests 30`, then `run -c 8` (closed loop), then
    # `run --rate 50 --retry-failed` (nothing to retry: sends no row), into one directory.
    late = [{**r, "completed_at": r["sent_at"] + 0.09}  # 2 in flight at most: the cap
            for r in open_loop_rows(30, rate=200, sent_rate=20)]
    closed_at = T0 + 10
    closed = [row(input_index=30 + i, custom_id=str(30 + i), scheduled_at=closed_at,
                  sent_at=closed_at, completed_at=closed_at + 0.1) for i in range(8)]
    sessions = [session(T0 - 1, 200.0, cap=2), session(closed_at - 1, None, cap=8),
                session(T0 + 20, 50.0)]
    sessions[1]["gateway_outages"] = 3  # a closed loop's outages are no schedule's cause
    run_dir = make_run(late + closed, info={"config": sessions[2]["config"],
                                            "sessions": sessions})
    run = build_report([load_run(run_dir)])["runs"][0]
    sched = run["schedule"]
    assert run["timeline"]["in_flight_peak"] == 8  # the closed loop's, over every row
    # Before: in_flight_peak 8 (the closed loop's), target_rates [200.0, 50.0], caps [2, 10,000]
    assert sched["kept"] is False and sched["rows_used"] == 30
    assert sched["in_flight_peak"] == 2
    assert sched["target_rates"] == [200.0] and sched["in_flight_caps"] == [2]
    assert sched["gateway_outages"] == 0
    text = format_report(build_report([load_run(run_dir)]))
    assert "schedule   NOT KEPT: --rate 200/s, sent 20.0/s (its schedule 200.0/s)" in text
    assert ("likely cause: requests in flight reached the cap (2, -c 2): sends waited for the "
            "gateway's answers") in text


def test_gateway_outages_come_first_in_the_likely_cause(make_run):
    s = session(T0 - 1, 100.0)
    s["gateway_outages"] = 2
    run_dir = make_run(open_loop_rows(200, rate=100, sent_rate=60),
                       info={"config": s["config"], "sessions": [s]})
    sched = build_report([load_run(run_dir)])["runs"][0]["schedule"]
    assert sched["kept"] is False and sched["gateway_outages"] == 2
    text = format_report(build_report([load_run(run_dir)]))
    assert ("likely cause: the gateway could not be connected to 2 times during the --rate "
            "session: requests waited for it; otherwise requests in flight peaked at 6, under "
            "the cap (-c 10,000): the client's CPU most likely") in text
    # the closing summary, from the same sessions (run passes the session's count)
    table = pq.read_table(run_dir / "data")
    summary = summarize_batches(iter([table.select(SUMMARY_COLUMNS)]),
                                schedule=open_loop_sessions({"sessions": [s]}))
    assert ("likely cause: the gateway could not be connected to 2 times during the --rate "
            "session: requests waited for it; otherwise the client's CPU") in format_short(summary)


def test_a_gateways_rate_limit_is_named_in_the_likely_cause(make_run):
    # A --rate run whose gateway answered 429: its requests waited for the limit (slowed down,
    # not failed), so the schedule was not kept, and not for the client's CPU.
    s = session(T0 - 1, 100.0)
    s["rate_limited"] = {"attempts": 37, "models": {}, "gave_up_on": None}
    run_dir = make_run(open_loop_rows(200, rate=100, sent_rate=60),
                       info={"config": s["config"], "sessions": [s]})
    report = build_report([load_run(run_dir)])
    assert report["runs"][0]["schedule"]["rate_limited"] == 37
    assert ("likely cause: the gateway rate-limited 37 attempts (HTTP 429) during the --rate "
            "session: requests waited for its limit; otherwise requests in flight peaked at 6, "
            "under the cap (-c 10,000): the client's CPU most likely (split the load over "
            "processes or machines); total_s and queue_wait_s include this lag, latency_s does "
            "not") in format_report(report)


def test_the_docs_show_the_real_client_cpu_wording():
    # docs/report.md introduced the client's-CPU case but showed the cap's line again.
    lines = schedule_lines({
        "kept": False, "target_rates": [20_000.0], "achieved_send_rate": 5178.0,
        "scheduled_send_rate": 20_000.0, "send_lag_s": {"p99": 0.5734, "max": 0.5745},
        "rows_used": 4000, "in_flight_caps": [10_000], "in_flight_peak": 590, "cap_waits": 0,
    })
    docs = (REPO / "docs" / "report.md").read_text().splitlines()
    assert lines[0] in docs and lines[1] in docs
