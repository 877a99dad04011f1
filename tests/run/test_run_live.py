"""`run` against the real emulator over loopback sockets."""

from __future__ import annotations

import asyncio
import re
import time
import types
from pathlib import Path
from unittest import mock

import httpx
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from keyecho import key_echo_server

import batchrunner
from batchrunner.client import Timeouts
from batchrunner.config import ConfigError, RunConfig
from batchrunner.emulator.config import Dist
from batchrunner.retry import RetryPolicy
from batchrunner.rundir import RunDirError
from batchrunner.runner import EXIT_ABORTED, EXIT_ERROR_RATE, EXIT_OK, run_sync
from batchrunner.schema import RESULT_SCHEMA, Mode
from batchrunner.store import RunStore

from .conftest import SECRET_KEY, read_rows, run_cli


def run(requests: Path, gateway: str, out: Path, **kw) -> batchrunner.RunResult:
    config = RunConfig(requests=requests, gateway=gateway, out=out, **kw)
    return run_sync(config, quiet=True)


def test_sync_run_writes_one_row_per_request(make_emulator, requests_file, tmp_path):
    with make_emulator() as emu:
        result = run(requests_file(40), emu.base_url, tmp_path / "out", concurrency=8)
    assert result.exit_code == EXIT_OK and result.status == "finished"
    table = pq.read_table(tmp_path / "out" / "data")
    assert table.schema.equals(RESULT_SCHEMA, check_metadata=False)
    rows = table.to_pandas()
    assert sorted(rows["input_index"]) == list(range(40))
    assert set(rows["status"]) == {"ok"}
    assert (rows["custom_id"] == "req-" + rows["input_index"].astype(str)).all()
    assert (rows["output_tokens"] > 0).all() and (rows["input_tokens"] > 0).all()
    assert rows["response_text"].str.len().gt(0).all()
    assert (rows["attempts"] == 1).all()
    assert (
        rows["metadata"].map(orjson.loads).map(lambda m: m["i"]).tolist()
        == rows["input_index"].tolist()
    )
    assert (rows["latency_s"] > 0).all() and (rows["total_s"] >= rows["latency_s"]).all()
    assert rows["ttft_s"].isna().all()  # sync mode has no TTFT
    # run.json describes the run; the summary counted every row
    info = orjson.loads((tmp_path / "out" / "run.json").read_bytes())
    assert info["status"] == "finished" and info["summary"]["requests"] == 40
    assert result.summary["status"] == {"ok": 40}


def test_stream_timings_match_emulator_ground_truth(make_emulator, requests_file, tmp_path):
    """Recorded TTFT/latency vs the delays the emulator injected (catches a 10 ms error)."""
    with make_emulator(
        ttft=Dist("fixed", 0.08), token_delay=Dist("fixed", 0.004), output_tokens=Dist("fixed", 20)
    ) as emu:
        result = run(
            requests_file(12), emu.base_url, tmp_path / "out", mode="stream", concurrency=4
        )
        truth = {t["request_id"]: t for t in emu.ground_truth() if t.get("request_id")}
    assert result.exit_code == EXIT_OK
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 12 and set(rows["status"]) == {"ok"}
    for row in rows.itertuples():
        t = truth[row.request_id]
        injected_ttft = t["ttft_s"]
        assert injected_ttft == pytest.approx(0.08)
        # measured TTFT is the injected delay plus loopback and parsing: never less, and
        # within 10 ms of it on a quiet machine (generous: 25 ms here for shared CI cores)
        assert injected_ttft - 0.002 <= row.ttft_s <= injected_ttft + 0.025
        expected_latency = injected_ttft + 19 * 0.004
        assert expected_latency - 0.002 <= row.latency_s <= expected_latency + 0.04
        assert row.ttfb_s <= row.ttft_s <= row.latency_s
        assert row.content_deltas >= 19
        assert row.itl_p50_s == pytest.approx(0.004, abs=0.003)
        assert row.output_tokens == t["output_tokens"] == 20
        assert row.tpot_s == pytest.approx((row.latency_s - row.ttft_s) / 19)


def test_concurrency_is_capped(make_emulator, requests_file, tmp_path):
    with make_emulator(ttft=Dist("fixed", 0.02)) as emu:
        run(requests_file(60), emu.base_url, tmp_path / "out", concurrency=5)
        stats = emu.stats()
    assert 1 < stats["in_flight_max"] <= 5


def test_retries_obey_retry_after_and_count_attempts(make_emulator, requests_file, tmp_path):
    with make_emulator(fault_429=0.5, retry_after_s=0, seed=3) as emu:
        result = run(
            requests_file(30),
            emu.base_url,
            tmp_path / "out",
            concurrency=4,
            retry=RetryPolicy(max_retries=8, backoff_base_s=0.01, backoff_max_s=0.02),
        )
    rows = read_rows(tmp_path / "out")
    assert result.exit_code == EXIT_OK
    assert set(rows["status"]) == {"ok"}
    assert rows["attempts"].max() > 1
    retried = rows[rows["attempts"] > 1]
    assert (retried["total_s"] >= retried["latency_s"]).all()


def test_failures_are_rows_with_stable_error_types(make_emulator, requests_file, tmp_path):
    with make_emulator(fault_500=1.0) as emu:
        result = run(
            requests_file(10),
            emu.base_url,
            tmp_path / "out",
            retry=RetryPolicy(max_retries=1, backoff_base_s=0.001, backoff_max_s=0.001),
            max_error_rate=0.5,
        )
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 10
    assert set(rows["status"]) == {"error"}
    assert set(rows["error_type"]) == {"api_error"}
    assert set(rows["http_status"]) == {500}
    assert (rows["attempts"] == 2).all()
    assert result.exit_code == EXIT_ERROR_RATE


def test_stalled_requests_time_out_as_rows(make_emulator, requests_file, tmp_path):
    with make_emulator(fault_stall=1.0) as emu:
        run(
            requests_file(3),
            emu.base_url,
            tmp_path / "out",
            timeouts=Timeouts(connect_s=2, read_s=0.3, attempt_s=0.5),
            retry=RetryPolicy(max_retries=0),
        )
    rows = read_rows(tmp_path / "out")
    assert set(rows["status"]) == {"timeout"} and set(rows["error_type"]) == {"timeout"}


def test_mid_stream_error_is_an_error_row(make_emulator, requests_file, tmp_path):
    with make_emulator(fault_midstream=1.0) as emu:
        result = run(
            requests_file(4),
            emu.base_url,
            tmp_path / "out",
            mode="stream",
            retry=RetryPolicy(max_retries=0),
        )
        truth = {t["request_id"]: t for t in emu.ground_truth()}
    rows = read_rows(tmp_path / "out")
    assert set(rows["status"]) == {"error"}
    assert set(rows["http_status"]) == {200}
    assert rows["error_type"].notna().all()
    # What the stream said before failing stays in the row: the model, the usage reported in
    # message_start (the input was processed, so it is priced), and the text that came.
    # Before, all of it was dropped and the run's tokens and cost missed these requests.
    for row in rows.itertuples():
        t = truth[row.request_id]
        assert (row.model, row.response_id) == (t["model"], t["response_id"])
        assert row.input_tokens == t["input_tokens"] > 0
        assert row.cache_read_input_tokens == t["cache_read_input_tokens"]
        assert row.content_deltas == t["error_after_tokens"]
        assert len(row.response_text) > 0
        assert pd.isna(row.stop_reason) and pd.isna(row.tpot_s)
    assert result.summary["tokens"]["input"] == rows["input_tokens"].sum()
    assert result.summary["cost"]["total_usd"] > 0
    # Priced from message_start's usage, though more output came: the summary says how much
    # (it did not, and the total read as complete).
    beyond = rows["content_deltas"] - rows["output_tokens"]
    cut = result.summary["cost"]["cut_streams"]
    assert cut == {"rows": int((beyond > 0).sum()), "retried_attempts": 0,
                   "output_tokens_at_least": int(beyond[beyond > 0].sum())}
    from batchrunner.report_text import format_short

    assert cut["rows"] >= 1  # seeded: some stream had sent more than its usage said
    assert f"cut        {cut['rows']} stream" in format_short(result.summary)


def test_dropped_connections_are_connection_errors(make_emulator, requests_file, tmp_path):
    with make_emulator(fault_drop=1.0) as emu:
        run(requests_file(3), emu.base_url, tmp_path / "out", retry=RetryPolicy(max_retries=0))
    rows = read_rows(tmp_path / "out")
    assert set(rows["error_type"]) == {"connection_error"}
    assert rows["http_status"].isna().all()


def test_open_loop_schedule_is_recorded(make_emulator, requests_file, tmp_path):
    with make_emulator() as emu:
        run(requests_file(20), emu.base_url, tmp_path / "out", rate=50.0)
    rows = read_rows(tmp_path / "out").sort_values("input_index")
    scheduled = rows["scheduled_at"].astype("int64").to_numpy() / 1e6
    gaps = scheduled[1:] - scheduled[:-1]
    assert gaps == pytest.approx([0.02] * 19, abs=1e-4)
    assert (rows["queue_wait_s"] < 0.05).all()


def test_open_loop_opens_connections_for_its_first_sends_before_its_clock_starts(
    make_emulator, requests_file, tmp_path
):
    # 2,000/s: the first 10 ms of schedule (20 sends) get a connection each before the first
    # send; the 25 requests then reuse them (opening their own, they made fewer).
    with make_emulator() as emu:
        run(requests_file(25), emu.base_url, tmp_path / "out", rate=2000.0)
        # (more only if a stall had over 20 of them due at once)
        assert 20 <= emu.stats()["connections_total"] <= 25
    # The in-flight cap bounds them too, and so do the requests there are to send.
    with make_emulator() as emu:
        run(requests_file(5), emu.base_url, tmp_path / "out2", rate=2000.0, concurrency=3)
        assert emu.stats()["connections_total"] == 3
    assert list(read_rows(tmp_path / "out2")["status"]) == ["ok"] * 5
    with make_emulator() as emu:
        run(requests_file(30), emu.base_url, tmp_path / "out3", rate=2000.0, max_requests=2)
        assert emu.stats()["connections_total"] <= 2
    with make_emulator() as emu:
        run(requests_file(3), emu.base_url, tmp_path / "out4", rate=20000.0)
        assert emu.stats()["connections_total"] <= 3


def test_open_loop_duration_is_the_schedules_length_not_the_connect_time(
    make_emulator, requests_file, tmp_path
):
    # A gateway slow to connect (here: the connections opened ahead take 0.6 s): --duration
    # counts the schedule, so 1 s at 20/s sends ~20 requests, not the ~8 left after connects.
    from batchrunner.client import GatewayClient

    real = GatewayClient.open_ahead

    async def slow_open_ahead(self, n, within_s):
        await asyncio.sleep(0.6)
        return await real(self, n, within_s)

    with make_emulator() as emu, mock.patch.object(GatewayClient, "open_ahead", slow_open_ahead):
        result = run(requests_file(60), emu.base_url, tmp_path / "out", rate=20.0, duration_s=1.0)
    rows = read_rows(tmp_path / "out")
    assert result.status == "incomplete" and "--duration" in result.message
    span = (rows["scheduled_at"].max() - rows["scheduled_at"].min()).total_seconds()
    assert len(rows) == 20 and span >= 0.8  # the schedule is [0, 1 s): 20 sends at 20/s


def test_an_open_loop_with_duration_stops_at_the_duration_not_at_its_last_send(
    make_emulator, requests_file, tmp_path
):
    # Sends at 0, 1 and 2 s of a 2.5 s --duration: the session stops at 2.5 s (a retry due in
    # between is sent as usual), not at 2 s when the schedule ran out.
    with make_emulator() as emu:
        t0 = time.monotonic()
        result = run(requests_file(10), emu.base_url, tmp_path / "out", rate=1.0, duration_s=2.5)
        elapsed = time.monotonic() - t0
    assert result.summary["requests"] == 3 and "--duration" in result.message
    assert 2.5 <= elapsed < 4.5


def test_open_loop_stops_promptly_between_distant_sends(make_emulator, requests_file, tmp_path):
    # One send every 4 s: --duration must not wait for the next scheduled instant.
    with make_emulator() as emu:
        t0 = time.monotonic()
        result = run(requests_file(5), emu.base_url, tmp_path / "out", rate=0.25, duration_s=0.3)
        elapsed = time.monotonic() - t0
    assert elapsed < 3.0
    assert result.summary["requests"] == 1  # only the send at the start was due


def test_open_loop_outstanding_cap_delays_and_shows_it(make_emulator, requests_file, tmp_path):
    with make_emulator(ttft=Dist("fixed", 0.05)) as emu:
        run(requests_file(12), emu.base_url, tmp_path / "out", rate=200.0, concurrency=2)
    rows = read_rows(tmp_path / "out").sort_values("input_index")
    assert list(rows["status"]) == ["ok"] * 12
    # 2 at a time, 50 ms each: the last of 12 waits ~250 ms beyond its instant, and says so
    assert rows["queue_wait_s"].max() > 0.15
    assert (rows["total_s"] >= rows["queue_wait_s"] + rows["latency_s"] - 1e-3).all()


def fail_reading_after(monkeypatch: pytest.MonkeyPatch, records: int) -> None:
    """Make reading the input fail with an unexpected error after *records* records."""
    from batchrunner import feed as feed_module

    original = feed_module.RecordFeed.next_nowait
    calls = [0]

    def failing(self):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] > records:
            raise OSError(5, "Input/output error (simulated)")
        return original(self)

    monkeypatch.setattr(feed_module.RecordFeed, "next_nowait", failing)


def test_open_loop_failure_still_records_every_started_request(
    make_emulator, requests_file, tmp_path, monkeypatch
):
    # Reading fails mid-run with an unexpected error: requests already started are cancelled
    # and still end as rows before the store closes.
    fail_reading_after(monkeypatch, 10)
    with make_emulator(ttft=Dist("fixed", 0.5)) as emu, pytest.raises(ExceptionGroup):
        run(requests_file(40), emu.base_url, tmp_path / "out", rate=50.0)
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 10 and rows["input_index"].is_unique
    assert set(rows["status"]) == {"cancelled"}


def test_open_loop_failure_with_reused_workers_records_every_started_request(
    make_emulator, requests_file, tmp_path, monkeypatch
):
    # Fast answers: workers finish, park and are handed the next requests, which then start at
    # once from the timer (eagerly). A failure mid-run must still end each of them as a row.
    fail_reading_after(monkeypatch, 60)
    with make_emulator(ttft=Dist("fixed", 0.05)) as emu, pytest.raises(ExceptionGroup):
        run(requests_file(100), emu.base_url, tmp_path / "out", rate=200.0)
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 60 and rows["input_index"].is_unique
    assert set(rows["status"]) == {"ok", "cancelled"}
    assert (rows["status"] == "ok").sum() >= 30


@pytest.mark.parametrize("key", ["sk-secret\r\nx: y", "sk-secret\n", "sk-secret\r\n"])
@pytest.mark.parametrize("field", ["api_key", "virtual_key"])
def test_key_with_a_line_break_is_a_config_error_that_does_not_quote_it(
    requests_file, tmp_path, field, key
):
    # A trailing one too ("$(cat keyfile)" with CRLF): once it passed, as an internal error.
    with pytest.raises(ConfigError) as err:
        run(requests_file(1), "http://127.0.0.1:9", tmp_path / "out", **{field: key})
    assert "line break" in str(err.value) and "sk-secret" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_virtual_key_auth_and_no_secret_on_disk(make_emulator, requests_file, tmp_path):
    with make_emulator(virtual_keys=(SECRET_KEY,), require_virtual_key=True) as emu:
        ok = run(
            requests_file(5),
            emu.base_url,
            tmp_path / "ok",
            virtual_key=SECRET_KEY,
            headers={"Authorization": f"Bearer {SECRET_KEY}", "X-Team": "evals"},
        )
        bad = run(
            requests_file(25),
            emu.base_url,
            tmp_path / "bad",
            virtual_key="sk-bf-wrong",
            retry=RetryPolicy(max_retries=0),
            concurrency=1,
        )
    assert ok.exit_code == EXIT_OK and ok.summary["status"] == {"ok": 5}
    # a gateway that refuses every request aborts the run instead of burning the whole set
    assert bad.exit_code == EXIT_ABORTED and "401" in bad.message
    assert bad.summary["requests"] < 25
    for run_dir in (tmp_path / "ok", tmp_path / "bad"):
        for path in run_dir.rglob("*"):
            if path.is_file():
                assert SECRET_KEY.encode() not in path.read_bytes(), path
                assert b"sk-bf-wrong" not in path.read_bytes(), path


def test_a_404_for_the_requests_model_fails_its_rows_without_stopping_the_run(
    make_emulator, tmp_path
):
    # Before: a retired or misspelt model (404 not_found_error naming it) counted as "the
    # gateway refuses everything": a set sorted by model stopped after every 20 of its rows.
    requests = tmp_path / "sorted.jsonl"
    with requests.open("w") as fh:
        for i in range(40):
            model = "claude-old-1" if 5 <= i < 35 else "claude-haiku-4-5"
            body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
            fh.write(orjson.dumps({"custom_id": f"r{i}", "params": body}).decode() + "\n")
    with make_emulator(fail_models=("claude-old-1",), fail_model_status=404) as emu:
        done = run(requests, emu.base_url, tmp_path / "out", concurrency=2,
                   retry=RetryPolicy(max_retries=0))
        # A 404 that does not name the model (a wrong path) still stops the run.
        wrong_path = run(requests, f"{emu.base_url}/nowhere/v1/messages", tmp_path / "path",
                         concurrency=1, retry=RetryPolicy(max_retries=0))
        # A resume that starts inside the retired model's block: the run's earlier session
        # had answers, so the gateway and key work (it stopped after 20, at every resume).
        first = run(requests, emu.base_url, tmp_path / "resumed", concurrency=1,
                    max_requests=5, retry=RetryPolicy(max_retries=0))
        resumed = run(requests, emu.base_url, tmp_path / "resumed", concurrency=1,
                      retry=RetryPolicy(max_retries=0))
        # Nothing of the session answered yet: a model every request asks for and the
        # gateway refuses (a mistyped --model) stops the run as before.
        mistyped = run(requests, emu.base_url, tmp_path / "typo", concurrency=1,
                       model_override="claude-old-1", retry=RetryPolicy(max_retries=0))
    assert done.exit_code == EXIT_OK, done.message
    assert done.summary["status"] == {"ok": 10, "error": 30}
    assert wrong_path.exit_code == EXIT_ABORTED and "404" in wrong_path.message
    assert first.summary["status"] == {"ok": 5}
    assert resumed.exit_code == EXIT_OK, resumed.message
    assert resumed.summary["status"] == {"ok": 10, "error": 30}
    assert mistyped.exit_code == EXIT_ABORTED
    assert mistyped.message.endswith(
        "refused with HTTP 404 (not_found_error: model claude-old-1 is failing (emulated)); "
        "check --model (or the input's models), --gateway, --api-key and --virtual-key"
    ), mistyped.message
    assert mistyped.summary["requests"] == 20


def test_keys_a_gateway_quotes_back_never_reach_rows_run_json_or_stderr(
    requests_file, tmp_path, capsys
):
    secrets = ("sk-ant-echo-SECRET1", "vk-echo-SECRET2", "tok-echo-SECRET3")
    with key_echo_server() as url:
        config = RunConfig(
            requests=requests_file(25),
            gateway=url,
            out=tmp_path / "out",
            api_key=secrets[0],
            virtual_key=secrets[1],
            headers={"Authorization": f"Bearer {secrets[2]}"},
            retry=RetryPolicy(max_retries=0),
            concurrency=1,
        )
        result = run_sync(config, quiet=False)
    rows = read_rows(tmp_path / "out")
    assert result.exit_code == EXIT_ABORTED and "401" in result.message
    # the gateway's words are kept, the keys are not
    assert all(m.startswith("invalid x-api-key <redacted>") for m in rows["error_message"])
    assert "x-bf-vk <redacted>, authorization <redacted>" in rows["error_message"][0]
    captured = capsys.readouterr()
    for secret in secrets:
        assert secret not in result.message and secret not in captured.err + captured.out
        for path in (tmp_path / "out").rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_resume_sends_only_what_is_missing(make_emulator, requests_file, tmp_path):
    requests = requests_file(30)
    with make_emulator() as emu:
        first = run(requests, emu.base_url, tmp_path / "out", max_requests=12, concurrency=3)
        assert first.status == "incomplete" and first.summary["requests"] == 12
        emu.reset()
        second = run(requests, emu.base_url, tmp_path / "out", concurrency=3)
        sent_again = emu.stats()
    assert second.status == "finished" and second.sent_this_session == 18
    rows = read_rows(tmp_path / "out")
    assert sorted(rows["input_index"]) == list(range(30))
    assert len(set(rows["run_id"])) == 1
    info = orjson.loads((tmp_path / "out" / "run.json").read_bytes())
    assert [s["resumed"] for s in info["sessions"]] == [False, True]
    assert sent_again  # the emulator saw the second session's requests only (reset between)


def test_retry_failed_replaces_failed_rows(make_emulator, requests_file, tmp_path):
    requests = requests_file(8)
    with make_emulator(fault_500=1.0) as emu:
        run(requests, emu.base_url, tmp_path / "out", retry=RetryPolicy(max_retries=0))
    with make_emulator() as emu:
        result = run(requests, emu.base_url, tmp_path / "out", retry_failed=True)
    rows = read_rows(tmp_path / "out")
    assert result.status == "finished"
    assert len(rows) == 8 and set(rows["status"]) == {"ok"}


def test_resume_refuses_a_changed_input(make_emulator, requests_file, tmp_path):
    requests = requests_file(5)
    with make_emulator() as emu:
        run(requests, emu.base_url, tmp_path / "out", max_requests=2)
        requests.write_bytes(requests.read_bytes() + requests.read_bytes()[:200])
        with pytest.raises(RunDirError, match="not the file this run started with"):
            run(requests, emu.base_url, tmp_path / "out")


def test_resume_refuses_an_input_edited_in_the_middle(make_emulator, tmp_path):
    # Over 2 MiB, edited in the middle, same size: the first and last MiB are unchanged.
    line = '{"model":"m","max_tokens":64,"messages":[{"role":"user","content":"%05d"}]}\n'
    requests = tmp_path / "big.jsonl"
    requests.write_text("".join(line % i for i in range(40_000)))
    data = requests.read_bytes()
    middle = data.index(b'"max_tokens":64', len(data) // 2)
    edited = data[:middle] + b'"max_tokens":99' + data[middle + 15 :]
    out = tmp_path / "out"
    with make_emulator() as emu:
        run(requests, emu.base_url, out, max_requests=2)
        requests.write_bytes(edited)
        with pytest.raises(RunDirError, match="not the file this run started with"):
            run(requests, emu.base_url, out, max_requests=2)
        # A run recorded before the whole-file hash existed is compared on what it has.
        requests.write_bytes(data)
        info = orjson.loads((out / "run.json").read_bytes())
        del info["input"]["sha256"]
        (out / "run.json").write_bytes(orjson.dumps(info))
        result = run(requests, emu.base_url, out, max_requests=2)
    assert result.status == "incomplete" and len(read_rows(out)) == 4


def test_rejects_are_reported_and_skipped(make_emulator, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}\n'
        "{not json\n"
        '{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}\n'
        '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"again"}]}\n'
    )
    with make_emulator() as emu:
        result = run(path, emu.base_url, tmp_path / "out")
    assert result.status == "finished" and result.rejected == 2
    rows = read_rows(tmp_path / "out")
    assert sorted(rows["input_index"]) == [0, 3]
    rejects = [
        orjson.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()
    ]
    assert [r["location"] for r in rejects] == [f"{path}:2", f"{path}:3"]
    assert "max_tokens" in rejects[1]["reason"]


def test_parquet_with_a_named_prompt_column_runs(make_emulator, tmp_path):
    """The column options reach every reader of the file, the row count included."""
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"question": ["why?", "how?", "when?"], "tag": ["a", "b", "c"]}), path)
    with make_emulator() as emu:
        result = run(
            path,
            emu.base_url,
            tmp_path / "out",
            prompt_column="question",
            metadata_columns=["tag"],
            model="claude-haiku-4-5",
            max_tokens=8,
        )
        sent = emu.ground_truth()
    assert result.exit_code == EXIT_OK and result.summary["status"] == {"ok": 3}
    rows = read_rows(tmp_path / "out").sort_values("input_index")
    assert rows["metadata"].map(orjson.loads).tolist() == [{"tag": t} for t in "abc"]
    assert sorted(e["model"] for e in sent) == ["claude-haiku-4-5"] * 3


def test_library_entry_point_without_gateway_uses_the_emulator(requests_file, tmp_path):
    result = batchrunner.run(requests_file(6), out=tmp_path / "out", emulator_profile="instant")
    assert result.exit_code == EXIT_OK and result.summary["status"] == {"ok": 6}
    assert result.run_dir == tmp_path / "out"
    config = orjson.loads((tmp_path / "out" / "run.json").read_bytes())["config"]
    assert (config["concurrency"], config["in_flight_limit"]) == (None, 32)  # what -c came to


def test_bad_config_is_a_config_error(requests_file, tmp_path):
    with pytest.raises(ConfigError, match="--gateway"):
        run(requests_file(1), "ftp://nope", tmp_path / "out")
    with pytest.raises(ConfigError, match="--rate"):
        run(requests_file(1), "http://127.0.0.1:9", tmp_path / "out", rate=-1.0)


def test_response_payload_can_be_left_out(make_emulator, requests_file, tmp_path):
    with make_emulator() as emu:
        run(
            requests_file(3),
            emu.base_url,
            tmp_path / "out",
            keep_response_json=False,
            keep_response_text=False,
        )
    rows = read_rows(tmp_path / "out")
    assert rows["response_json"].isna().all() and rows["response_text"].isna().all()
    assert (rows["output_tokens"] > 0).all()


def test_run_dir_is_readable_as_one_dataset(make_emulator, requests_file, tmp_path):
    with make_emulator() as emu:
        run(requests_file(5), emu.base_url, tmp_path / "out")
    files = sorted((tmp_path / "out" / "data").glob("*.parquet"))
    assert files
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 5
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "out").rglob("*"))
    assert isinstance(pq.read_table(tmp_path / "out" / "data"), pa.Table)
    assert (tmp_path / "out" / "rejects.jsonl").exists()


def test_resume_takes_the_latest_run_of_the_same_mode(make_emulator, requests_file, tmp_path):
    requests = requests_file(20)
    root = tmp_path / "results"

    def go(mode: Mode, **kw) -> batchrunner.RunResult:
        config = RunConfig(
            requests=requests, gateway=emu.base_url, results_root=root, mode=mode, **kw
        )
        return run_sync(config, quiet=True)

    with make_emulator() as emu:
        sync_run = go(Mode.SYNC, max_requests=5)
        stream_run = go(Mode.STREAM, max_requests=5)  # the latest run of the file
        resumed = go(Mode.SYNC, resume=True)
    assert stream_run.run_dir != sync_run.run_dir
    assert resumed.run_dir == sync_run.run_dir and resumed.status == "finished"
    assert resumed.sent_this_session == 15


def test_a_directory_left_by_a_run_killed_while_starting_can_be_used(
    make_emulator, requests_file, tmp_path
):
    # Killed after the store made its directories but before run.json: nothing was sent.
    # Left by the real store (an older version also left an empty jobs.jsonl, and a
    # hand-made copy of the scaffolding once hid that) and by a kill before its clean-up.
    left_by_store, older, killed = tmp_path / "store", tmp_path / "older", tmp_path / "killed"
    RunStore.open(left_by_store, create=True).close()
    RunStore.open(older, create=True).close()
    (older / "jobs.jsonl").touch()
    (killed / "data").mkdir(parents=True)
    (killed / "journal").mkdir()
    (killed / ".lock").write_text("12345\n")
    # killed while run.json was first written: its temporary file, no run.json
    mid_write = tmp_path / "mid-write"
    RunStore.open(mid_write, create=True).close()
    (mid_write / ".run.json.9_lmu1ch.tmp").write_text('{"sessions": [')
    with make_emulator() as emu:
        for out in (left_by_store, older, killed, mid_write):
            result = run(requests_file(5), emu.base_url, out)
            assert result.status == "finished" and len(read_rows(out)) == 5
    assert not (left_by_store / "jobs.jsonl").exists()  # a sync run records no job
    assert not list(mid_write.glob(".run.json.*"))  # the stale temporary file is gone


@pytest.mark.parametrize("how", ["copied", "run.json deleted"])
def test_rows_without_a_run_json_are_refused_not_taken_for_this_inputs(
    make_emulator, requests_file, tmp_path, how
):
    # Before: "Starting run", then the 5 rows of another input counted as done, so rows 0-4 of
    # this one were never sent and the others' answers stood in their places.
    other, out = tmp_path / "other", tmp_path / "out"
    with make_emulator() as emu:
        run(requests_file(5), emu.base_url, other)
        if how == "copied":
            (out / "data").mkdir(parents=True)
            for part in (other / "data").iterdir():
                (out / "data" / part.name).write_bytes(part.read_bytes())
        else:
            other.rename(out)
            (out / "run.json").unlink()
        before = sorted(p.name for p in out.rglob("*"))
        result = run_cli("run", str(requests_file(12)), "--gateway", emu.base_url,
                         "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"Error: --out {out} holds rows ({out / 'data'}) but no run.json: which input they "
        "answer is unknown, so they cannot count as this run's; restore run.json to go on "
        "with that run, or give another --out"
    )
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing touched


def test_a_run_json_written_while_waiting_for_the_lock_is_read_again(
    make_emulator, requests_file, tmp_path, monkeypatch
):
    # Two runs on one --out, the second started as the first ends: the second read run.json
    # while the first still said "running", then got the lock once the first had finished,
    # and marked its finished session "died". The timing is forced here.
    import batchrunner.runner as runner_module

    out = tmp_path / "out"
    requests = requests_file(3)
    with make_emulator() as emu:
        run(requests, emu.base_url, out)
        finished = orjson.loads((out / "run.json").read_bytes())
        stale = orjson.loads((out / "run.json").read_bytes())
        stale["status"] = stale["sessions"][-1]["status"] = "running"
        real = runner_module.resolve_run_dir
        monkeypatch.setattr(runner_module, "resolve_run_dir", lambda *a: (real(*a)[0], stale))
        run(requests, emu.base_url, out)
    sessions = orjson.loads((out / "run.json").read_bytes())["sessions"]
    assert [s["status"] for s in sessions] == ["finished", "finished"]
    assert sessions[0] == finished["sessions"][0]


def test_a_locked_run_directory_is_a_run_dir_error_for_the_library(requests_file, tmp_path):
    out = tmp_path / "out"
    with RunStore.open(out, create=True):  # another process's run holds it
        with pytest.raises(batchrunner.RunDirError, match="in use"):
            batchrunner.run(requests_file(2), out=out, quiet=True)
        # Said before the input is hashed and counted (seconds for a big file), not after.
        hashing = mock.patch("batchrunner.runner.input_fingerprint", side_effect=AssertionError)
        refused = pytest.raises(batchrunner.RunDirError, match=r"in use by .* \(pid \d+\)")
        with hashing, refused:
            batchrunner.run(requests_file(2), out=out, quiet=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="is not a batchrunner run directory"):
        run(requests_file(5), "http://127.0.0.1:9", tmp_path / "other")


def test_library_run_checks_its_arguments_and_sets_each_timeout(
    make_emulator, requests_file, tmp_path
):
    requests = requests_file(2)
    with pytest.raises(ConfigError, match="mode must be one of 'sync', 'stream', 'async'"):
        batchrunner.run(requests, mode="turbo", out=tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown option 'concurency'"):
        batchrunner.run(requests, concurency=4, out=tmp_path / "a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(batchrunner.RunDirError):
        batchrunner.run(requests, out=tmp_path / "file" / "run", emulator_profile="instant")
    # Wrong types and values: a ConfigError naming the option, before anything is created
    # (they raised TypeError, ValueError, AttributeError or an ExceptionGroup after creating
    # and aborting the run directory; a 0 timeout silently meant the default).
    for kw, message in (
        ({"concurrency": 2.5}, "--concurrency must be a whole number, got 2.5"),
        ({"concurrency": "8"}, "--concurrency must be a whole number, got '8'"),
        ({"concurrency": True}, "--concurrency must be a whole number, got True"),
        ({"max_requests": 10**400}, "--max-requests is too large"),  # not an OverflowError
        ({"rate": "5"}, "--rate must be a number, got '5'"),
        ({"seed": "x"}, "--seed must be a whole number, got 'x'"),
        ({"max_retries": "3"}, "max_retries must be a whole number >= 0, got '3'"),
        ({"max_retries": -1}, "max_retries must be a whole number >= 0, got -1"),
        ({"timeout_s": -1}, "--timeout must be > 0 seconds"),
        ({"timeout_s": 0}, "--timeout must be > 0 seconds"),
        ({"read_timeout_s": 0}, "--read-timeout must be > 0 seconds"),
        # it crashed the run after every job was submitted (a date beyond gmtime's reach)
        ({"mode": "async", "gateway": "http://127.0.0.1:9", "ttl_s": 10**17},
         "--ttl must be from 1 to 9,000,000,000 seconds"),
        ({"headers": [("x-team", "a")]}, "headers must be a dict of header names to string"),
        ({"transport": httpx.MockTransport(lambda r: httpx.Response(500)),
          "http_client": httpx.AsyncClient()}, "give transport= or http_client=, not both"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            batchrunner.run(requests, out=tmp_path / "a", emulator_profile="instant", **kw)
    assert not (tmp_path / "a").exists()
    # numpy's numbers (a notebook's) are the plain ones they stand for, as run.json stores them
    import numpy as np

    config = RunConfig(requests=requests, concurrency=np.int64(2), rate=np.float32(5.0),
                       max_requests=1e6, ttl_s=3600.0, headers=types.MappingProxyType({"a": "b"}))
    config.validate()
    assert (type(config.concurrency), type(config.rate)) == (int, float)
    assert (config.max_requests, type(config.ttl_s), config.headers) == (10**6, int, {"a": "b"})
    assert batchrunner.run(requests, out=tmp_path / "np", emulator_profile="instant",
                           max_retries=np.int64(1), concurrency=4.0).status == "finished"
    with make_emulator(fault_stall=1.0) as emu:
        for name, kw, expected in (
            (
                "read",
                {"timeout_s": 5, "read_timeout_s": 0.3},
                "ReadTimeout: no response data for 0.3 s",
            ),
            ("whole", {"timeout_s": 0.4}, "Timeout: no complete response within 0.4 s"),
        ):
            batchrunner.run(
                requests, gateway=emu.base_url, out=tmp_path / name, max_retries=0, **kw
            )
            messages = set(read_rows(tmp_path / name)["error_message"])
            assert messages == {expected}, messages


def test_a_disk_full_at_the_final_conversion_aborts_and_keeps_the_rows(
    make_emulator, requests_file, tmp_path, monkeypatch
):
    import errno

    from batchrunner.store import RunStore

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    requests, out = requests_file(30), tmp_path / "out"
    with make_emulator() as emu:
        with monkeypatch.context() as patch:
            patch.setattr(RunStore, "compact_closed", disk_full)
            result = run(requests, emu.base_url, out)
        assert (result.status, result.exit_code) == ("aborted", EXIT_ABORTED)
        assert "No space left on device; finished rows are kept" in result.message
        assert result.summary["requests"] == 30  # read from the segments left in journal/
        left = list((out / "journal").glob("seg-*.jsonl"))
        assert sum(p.read_bytes().count(b"\n") for p in left) == 30
        assert orjson.loads((out / "run.json").read_bytes())["status"] == "aborted"
        again = run(requests, emu.base_url, out)
        assert len(emu.ground_truth()) == 30  # the resume found every row: nothing re-sent
    assert again.status == "finished" and len(read_rows(out)) == 30


def test_a_resumed_run_s_rates_leave_out_the_gap_between_sessions(
    make_emulator, requests_file, tmp_path
):
    from batchrunner.report import build_report, load_run

    requests, out = requests_file(40), tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.02)) as emu:
        first = run(requests, emu.base_url, out, concurrency=4, max_requests=20)
        time.sleep(2.0)  # the gap: the run is stopped, nothing is sent
        second = run(requests, emu.base_url, out, concurrency=4)
    assert (first.status, second.status) == ("incomplete", "finished")
    s = second.summary
    assert s["span_s"] - s["wall_s"] >= 1.9
    # each session sends 20 requests 4 at a time, 0.02 s each: about 0.1 s per session
    assert s["wall_s"] < 1.5 and s["requests_per_s"] == pytest.approx(40 / s["wall_s"])
    report = build_report([load_run(out)])
    assert report["runs"][0]["window"]["active_s"] == pytest.approx(s["wall_s"])
    assert report["runs"][0]["overall"]["throughput"]["requests_per_s"] == pytest.approx(
        s["requests_per_s"]
    )


def test_a_job_stub_in_sync_mode_is_an_error_row_and_not_retried(
    make_emulator, requests_file, tmp_path
):
    # A client of the caller's own that adds x-bf-async (-H refuses it): the gateway makes a
    # job and answers with its stub, which is not the answer; each retry would make another.
    import asyncio

    import httpx

    from batchrunner.runner import run_session

    async def main(config):
        async with httpx.AsyncClient(headers={"x-bf-async": "true"}) as client:
            return await run_session(config, http_client=client, quiet=True)

    out = tmp_path / "out"
    with make_emulator() as emu:
        result = asyncio.run(main(RunConfig(requests=requests_file(3), gateway=emu.base_url,
                                            out=out)))  # fmt: skip
        submits = [t for t in emu.ground_truth() if t["kind"] == "async_submit"]
    rows = read_rows(out)
    assert result.status == "finished" and set(rows["status"]) == {"error"}
    assert set(rows["error_type"]) == {"unexpected_job_stub"} and set(rows["attempts"]) == {1}
    assert rows["error_message"].str.contains("use --mode async").all() and len(submits) == 3


def test_a_client_too_busy_to_read_on_time_says_its_timings_include_its_own_delay(
    requests_file, tmp_path
):
    # A transport that holds the event loop 60 ms per request (as a client busy with its own
    # work does): every answer is read late, and latency_s counts it. Before, run said nothing
    # (the audit: ttfb_s p99 +12-75 ms at c=256 with no warning).
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
               "usage": {"input_tokens": 3, "output_tokens": 1}}

    async def busy(request: httpx.Request) -> httpx.Response:
        time.sleep(0.06)  # noqa: ASYNC251 (on purpose: the loop is held, as a busy client)
        await asyncio.sleep(0)  # as a real client's I/O, it lets the loop turn in between
        return httpx.Response(200, json=message)

    result = batchrunner.run(requests_file(40), out=tmp_path / "out", concurrency=4,
                             gateway="http://127.0.0.1:9", transport=httpx.MockTransport(busy))
    lag = result.summary["loop_lag"]
    assert lag["samples"] >= 3 and lag["p99_s"] > 0.03 and lag["max_s"] >= lag["p99_s"]
    assert lag["over_10ms"] >= 3
    info = orjson.loads((tmp_path / "out" / "run.json").read_bytes())
    assert info["sessions"][-1]["loop_lag"] == lag
    from batchrunner.report_text import format_short

    assert "client     LATE: batchrunner's event loop ran late (p99 " in format_short(
        result.summary)
    # A loop on time (p99 under 10 ms) says nothing of it; nor one late once or twice (a
    # short run's p99 is its worst sample).
    calm = {**result.summary, "loop_lag": {**lag, "p99_s": 0.004, "max_s": 0.2}}
    assert "LATE" not in format_short(calm)
    blip = {**result.summary, "loop_lag": {**lag, "samples": 30, "over_10ms": 1}}
    assert "LATE" not in format_short(blip)


def test_a_closed_loop_opens_its_connections_before_its_first_requests(
    make_emulator, requests_file, tmp_path, monkeypatch
):
    # Each of a closed loop's first requests connected first, and its ttfb_s and latency_s
    # counted the connect: the first 256 streams of a -c 256 run read +47 ms (the timing
    # audit). The open loop already opened its first connections ahead.
    from batchrunner.client import GatewayClient

    asked: list[int] = []
    real = GatewayClient.open_ahead

    async def spy(self, n: int, within_s: float) -> int:
        asked.append(n)
        return await real(self, n, within_s)

    monkeypatch.setattr(GatewayClient, "open_ahead", spy)
    with make_emulator() as emu:
        run(requests_file(20), emu.base_url, tmp_path / "a", concurrency=8)
        run(requests_file(5), emu.base_url, tmp_path / "b", concurrency=8)  # 5 to send
    # One connection per worker, up to the requests left. (Their effect, a first wave whose
    # ttfb_s holds no connect, is too small to time on loopback: ~0.1 ms against the 47 ms
    # seen for 256 streams against an emulator in its own process.)
    assert asked == [8, 5]


def test_duration_counts_from_when_the_closed_loop_has_connected(requests_file, tmp_path):
    # Connections are opened ahead (up to 1 s) before a closed loop's first requests; the
    # --duration clock had started before that, so `-c 2 --duration 0.5` against a gateway
    # slow to connect (a TLS handshake nobody answers) sent nothing at all.
    import socket
    import threading

    held: list[socket.socket] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)  # never answers: the handshake waits for --connect-timeout

    threading.Thread(target=accept, daemon=True).start()
    try:
        result = run(requests_file(10), f"https://127.0.0.1:{listener.getsockname()[1]}",
                     tmp_path / "out", concurrency=2, duration_s=0.5,
                     timeouts=Timeouts(connect_s=2, read_s=2, attempt_s=3),
                     retry=RetryPolicy(max_retries=0))
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert result.summary["requests"] >= 1, result.message  # before: 0 (none started)


@pytest.mark.parametrize("rate", [None, 100_000])
def test_no_request_goes_out_while_a_finished_one_is_only_in_memory(requests_file, tmp_path,
                                                                      rate):
    # Rows were written together at the end of the loop turn, and a worker that finished one
    # request sent its next at once: a kill -9 in between lost a finished row as well as the
    # requests in flight (a resume sent 5 again with -c 4). Here each request, as it goes out,
    # looks at what the journal holds: every earlier request's row, with -c 1.
    out = tmp_path / "out"
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
               "usage": {"input_tokens": 3, "output_tokens": 1}}
    written_when_sent: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        lines = sum(p.read_bytes().count(b"\n") for p in out.glob("journal/seg-*.jsonl"))
        written_when_sent.append(lines)
        return httpx.Response(200, json=message)

    # (An open loop starts every due request in one wake-up: each is answered, and its row
    # emitted, before the next starts.)
    result = batchrunner.run(requests_file(12), out=out, concurrency=None if rate else 1,
                             rate=rate, gateway="http://127.0.0.1:9",
                             transport=httpx.MockTransport(answer))
    assert result.status == "finished", result.message
    assert written_when_sent == list(range(12))


def test_an_older_bifrost_s_full_queue_is_waited_out(requests_file, tmp_path):
    # 400 "request dropped: queue is full" (an older Bifrost core with drop_excess_requests):
    # each was an error row after one attempt.
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
               "usage": {"input_tokens": 3, "output_tokens": 1}}
    seen: dict[str, int] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        rid = request.headers["x-request-id"]
        seen[rid] = seen.get(rid, 0) + 1
        if seen[rid] == 1:
            return httpx.Response(400, json={"type": "error", "error": {
                "type": "", "message": "request dropped: queue is full"}})
        return httpx.Response(200, json=message)

    result = batchrunner.run(requests_file(5), out=tmp_path / "out", concurrency=5,
                             gateway="http://127.0.0.1:9", transport=httpx.MockTransport(answer),
                             retry=RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.02))
    assert result.status == "finished", result.message
    rows = read_rows(tmp_path / "out")
    assert set(rows["status"]) == {"ok"} and set(rows["attempts"]) == {2}
