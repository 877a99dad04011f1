"""`run --mode async`, `--detach` and `collect` against the emulator over real sockets."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import orjson
import pytest

from batchrunner.client import Timeouts
from batchrunner.config import ConfigError, RunConfig
from batchrunner.emulator import EmulatorConfig, running_emulator
from batchrunner.emulator.config import Dist
from batchrunner.retry import RetryPolicy
from batchrunner.runner import EXIT_OK, run_sync

from .conftest import read_rows, run_cli
from .test_run_cli import ctrl_c_twice_with_in_flight, start_run, wait_for_rows

KEY_A = "sk-bf-team-a-000000000000"
KEY_B = "sk-bf-team-b-000000000000"


def run(requests: Path, gateway: str, out: Path, **kw):
    kw.setdefault("retry", RetryPolicy(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02))
    return run_sync(
        RunConfig(requests=requests, gateway=gateway, out=out, mode="async", **kw), quiet=True
    )


def jobs_in(run_dir: Path) -> list[dict]:
    return [
        orjson.loads(line) for line in (run_dir / "jobs.jsonl").read_bytes().splitlines() if line
    ]


def test_async_flow_rows_match_the_emulators_jobs(make_emulator, requests_file, tmp_path):
    with make_emulator(ttft=Dist("fixed", 0.2), token_delay=Dist("fixed", 0.005)) as emu:
        result = run(requests_file(20), emu.base_url, tmp_path / "out", concurrency=5, ttl_s=120)
        truth = [t for t in emu.ground_truth() if t["kind"] == "async_submit"]
    assert result.exit_code == EXIT_OK and result.status == "finished"
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 20 and set(rows["status"]) == {"ok"}
    assert rows["job_id"].is_unique and rows["polls"].min() >= 1
    assert (rows["response_text"].str.len() > 0).all() and (rows["output_tokens"] > 0).all()
    jobs = {t["job_id"]: t["job"] for t in truth}
    assert set(rows["job_id"]) == set(jobs)
    for row in rows.itertuples():
        job = jobs[row.job_id]
        done_at = row.job_done_at.timestamp()
        # we never see a job done before it was, and see it soon after (poll gaps <= 10 % of
        # the wait, min 0.1 s; margin for a loaded CI machine: benchmarks measure the real delay)
        assert job["completed_at"] <= done_at + 0.002
        duration = job["completed_at"] - job["created_at"]
        assert done_at - job["completed_at"] <= 0.1 * duration + 0.3
        assert row.ttl_s == 120
        assert row.expires_at.timestamp() <= job["completed_at"] + 120 + 0.002
        assert row.submitted_at <= row.job_done_at
    # one job id recorded per request, before its row
    assert sorted(j["input_index"] for j in jobs_in(tmp_path / "out")) == list(range(20))


@pytest.mark.parametrize(("status", "retried"), [(529, True), (400, False), (404, False)])
def test_failed_jobs_become_error_rows_with_their_status(
    make_emulator, requests_file, tmp_path, status, retried
):
    with make_emulator(fault_job=1.0, job_failure_status=status) as emu:
        run(requests_file(3), emu.base_url, tmp_path / "out")
    rows = read_rows(tmp_path / "out")
    assert set(rows["status"]) == {"error"}
    assert set(rows["http_status"]) == {status}
    # a failed job whose upstream said 404 is not an expired job
    assert "job_not_found" not in set(rows["error_type"])
    assert set(rows["attempts"]) == ({3} if retried else {1})
    assert rows["error_message"].str.startswith("job failed").all()


def test_detach_then_collect_from_another_process(make_emulator, requests_file, tmp_path):
    requests = requests_file(12)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.3), virtual_keys=(KEY_A,)) as emu:
        env = {"BIFROST_VK": KEY_A}
        detached = run_cli(
            "run",
            str(requests),
            "--mode",
            "async",
            "--detach",
            "--gateway",
            emu.base_url,
            "--out",
            str(out),
            env=env,
        )
        assert detached.returncode == 0, detached.stderr
        assert "batchrunner collect" in detached.stdout and "before" in detached.stdout
        # The closing summary must not read as a free, finished run: 12 jobs are paid for.
        assert "(none; 12 async jobs outstanding, no rows yet)" in detached.stdout
        assert "cost       >= $0  (" in detached.stdout
        assert "without the 12 outstanding jobs (priced once collected)" in detached.stdout
        cost = orjson.loads((out / "run.json").read_bytes())["summary"]["cost"]
        assert cost["complete"] is False and cost["total_usd"] is None
        assert cost["outstanding_jobs"] == 12
        assert not (out / "data").exists() or read_rows(out).empty
        assert len(jobs_in(out)) == 12
        # Reported before collecting: zero rows and $0 say nothing of the 12 jobs paid for.
        pending = run_cli("report", str(out))
        assert pending.returncode == 0, pending.stderr
        assert "12 async jobs not collected yet, so without rows or cost here: batchrunner " \
            f"collect {out} before 20" in pending.stdout
        keyless = run_cli("collect", str(out), "-q")  # polled without it: all "not found"
        assert keyless.returncode == 2 and "give the same --virtual-key" in keyless.stderr
        collected = run_cli("collect", str(out), "--json", env=env)
        assert collected.returncode == 0, collected.stderr
        report = orjson.loads(collected.stdout)
        assert report["status"] == "finished" and report["outstanding_jobs"] == 0
        assert report["summary"]["cost"]["complete"] and report["summary"]["cost"]["total_usd"]
        assert "outstanding_jobs" not in report["summary"]["cost"]
        info = orjson.loads((out / "run.json").read_bytes())
        assert info["config"]["in_flight_limit"] is None  # collect sends nothing
        again = run_cli("collect", str(out), "-q", env=env)  # repeatable, nothing left to do
        assert again.returncode == 0
        assert "not collected yet" not in run_cli("report", str(out)).stdout
        submits = collections.Counter(t["kind"] for t in emu.ground_truth())
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(12)) and set(rows["status"]) == {"ok"}
    assert submits["async_submit"] == 12  # collect never resubmits
    # The sending time is the submitting session's (its submits) plus the collecting one's
    # (from its start to the last job seen done). Before, the submitting session did not
    # count at all; nor, then, for a moment, the gap between the two.
    info = orjson.loads((out / "run.json").read_bytes())
    first_submit = rows["submitted_at"].min().timestamp()
    last_submit = rows["submitted_at"].max().timestamp()
    collect_start = info["sessions"][1]["started_at"]
    want = (last_submit - first_submit) + (rows["completed_at"].max().timestamp() - collect_start)
    assert report["summary"]["wall_s"] == pytest.approx(want, abs=0.01)
    assert KEY_A.encode() not in b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_short_ttl_and_a_slow_collector_give_expired_rows(make_emulator, requests_file, tmp_path):
    out = tmp_path / "out"
    with make_emulator() as emu:
        result = run(requests_file(4), emu.base_url, out, detach=True, ttl_s=1)
        assert result.status == "detached" and result.outstanding_jobs == 4
        time.sleep(2.2)  # results expire 1 s after completion
        collected = run_sync(
            RunConfig(
                requests=tmp_path / "set-4.jsonl",
                gateway=emu.base_url,
                out=out,
                mode="async",
                collect_only=True,
                ttl_s=1,
            ),
            quiet=True,
        )
    rows = read_rows(out)
    assert collected.status == "finished"
    assert set(rows["status"]) == {"expired"} and set(rows["error_type"]) == {"job_expired"}
    assert rows["error_message"].str.contains("may have expired").all()


@pytest.mark.parametrize(("not_found_status", "jobs"), [(404, 3), (400, 3), (404, 25)])
def test_collecting_with_another_key_records_nothing_and_the_right_key_still_collects(
    requests_file, tmp_path, not_found_status, jobs
):
    # It used to turn every paid job into a final job_not_found row: lost for good, and a
    # collect with the right key then had nothing left to poll.
    config = EmulatorConfig(virtual_keys=(KEY_A, KEY_B), job_not_found_status=not_found_status)
    out = tmp_path / "out"

    def collect(key: str):
        return run_sync(
            RunConfig(requests=tmp_path / f"set-{jobs}.jsonl", gateway=emu.base_url, out=out,
                      mode="async", collect_only=True, virtual_key=key),
            quiet=True,
        )  # fmt: skip

    with running_emulator(config) as emu:
        run(requests_file(jobs), emu.base_url, out, detach=True, virtual_key=KEY_A)
        wrong = collect(KEY_B)
        assert wrong.status == "aborted" and wrong.exit_code == 3
        assert "the gateway does not know this run's jobs" in wrong.message
        assert "another --virtual-key" in wrong.message
        assert not (out / "data").exists() or read_rows(out).empty
        right = collect(KEY_A)
    rows = read_rows(out)
    assert right.status == "finished"
    assert len(rows) == jobs and set(rows["status"]) == {"ok"}


def test_emulator_restart_loses_jobs_and_nothing_hangs(requests_file, tmp_path):
    out = tmp_path / "out"
    config = EmulatorConfig(ttft=Dist("fixed", 0.5))
    with running_emulator(config) as emu:
        port = int(emu.base_url.rsplit(":", 1)[1])
        run(requests_file(25), emu.base_url, out, detach=True)
    with running_emulator(config, port=port) as emu:  # same address, empty job store
        started = time.monotonic()
        # more lost jobs than the consecutive-failure abort threshold: all must become rows
        collected = run_sync(
            RunConfig(
                requests=tmp_path / "set-25.jsonl",
                gateway=emu.base_url,
                out=out,
                mode="async",
                collect_only=True,
            ),
            quiet=True,
        )
        assert time.monotonic() - started < 10
    rows = read_rows(out)
    assert collected.status == "finished" and len(rows) == 25
    assert set(rows["status"]) == {"expired"} and set(rows["error_type"]) == {"job_not_found"}


def test_kill_9_during_submission_then_resume(make_emulator, requests_file, tmp_path):
    requests = requests_file(400)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.2)) as emu:
        proc = start_run(
            str(requests),
            "--mode",
            "async",
            "--gateway",
            emu.base_url,
            "--out",
            str(out),
            "-c",
            "4",
            "--max-rate",
            "100",
            "-q",
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (out / "jobs.jsonl").exists() and len(jobs_in(out)) >= 40:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        recorded = {j["input_index"] for j in jobs_in(out)}
        assert 40 <= len(recorded) < 400
        time.sleep(2.0)  # the recorded jobs finish long before the resume polls them
        done = run_cli(
            "run",
            str(requests),
            "--mode",
            "async",
            "--gateway",
            emu.base_url,
            "--out",
            str(out),
            "-c",
            "8",
            "-q",
        )
        assert done.returncode == 0, done.stderr
        submits = collections.Counter(
            int(t["request_id"].rsplit("-", 1)[1])
            for t in emu.ground_truth()
            if t["kind"] == "async_submit"
        )
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(400)) and set(rows["status"]) == {"ok"}
    # no recorded job was submitted twice; at most the 4 submits in flight at the kill were
    assert all(submits[i] == 1 for i in recorded)
    assert sum(n - 1 for n in submits.values()) <= 4
    # The resume's own jobs (0.2 s each) are seen done promptly: the recorded jobs' age at
    # their first poll (over 2 s) is not taken for how long jobs take (it was, and every new
    # job's first poll waited that long).
    fresh = rows[~rows["input_index"].isin(recorded)]
    assert fresh["latency_s"].median() < 0.6


def test_ctrl_c_stops_and_leaves_jobs_to_collect(make_emulator, requests_file, tmp_path):
    requests = requests_file(30)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 30.0)) as emu:  # jobs that take long
        proc = start_run(
            str(requests),
            "--mode",
            "async",
            "--gateway",
            emu.base_url,
            "--out",
            str(out),
            "-c",
            "2",
            "--max-rate",
            "20",
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            (out / "jobs.jsonl").exists() and len(jobs_in(out)) >= 5
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:  # never leave a process behind, even on failure
                proc.kill()
                proc.communicate()
    assert proc.returncode == 3, stderr
    assert "batchrunner collect" in stderr
    assert "Stopping (Ctrl-C): no new requests; polling stops (outstanding jobs stay" in stderr
    info = orjson.loads((out / "run.json").read_bytes())
    assert info["status"] == "interrupted" and info["async"]["outstanding_jobs"] >= 5


def test_collect_of_a_partly_submitted_run_says_run_sends_the_rest(
    make_emulator, requests_file, tmp_path
):
    # A detached run stopped by --max-requests: collect brings its jobs in, and then said
    # "incomplete ... Resume with: batchrunner collect" for ever, though only run can submit
    # the requests left. The command it gives is run as printed: without --gateway it was
    # refused ("this run was sent to ...; resuming it against built-in emulator").
    import shlex

    requests, out = requests_file(10), tmp_path / "out"
    with make_emulator() as emu:
        detached = run_cli(
            "run", str(requests), "--mode", "async", "--detach", "--gateway", emu.base_url,
            "--out", str(out), "--max-requests", "4", "--ttl", "600",
        )  # fmt: skip
        assert detached.returncode == 0, detached.stderr
        rest = f"6 requests of {requests} were never submitted: send them with `batchrunner run "
        assert rest in detached.stdout
        collected = run_cli("collect", str(out))
        assert collected.returncode == 0, collected.stderr
        assert f"incomplete: every job is collected; {rest}" in collected.stderr
        assert "Resume with" not in collected.stderr
        assert len(read_rows(out)) == 4
        command = ["run", *shlex.split(collected.stderr.split(rest)[1].split("`")[0])]
        assert command[:5] == ["run", str(requests), "--mode", "async", "--out"]
        assert "--gateway" in command and float(command[command.index("--ttl") + 1]) == 600
        done = run_cli(*command)
        assert done.returncode == 0, done.stderr
    assert sorted(read_rows(out)["input_index"]) == list(range(10))


def test_collect_with_other_plain_headers_is_not_a_changed_request(
    make_emulator, requests_file, tmp_path
):
    # Resume refuses other -H headers (they shape the requests still to send); collect sends
    # nothing, so a header for the polls (a gateway routing header, say) is fine.
    out = tmp_path / "out"
    with make_emulator() as emu:
        detached = run_cli(
            "run", str(requests_file(4)), "--mode", "async", "--detach", "--gateway",
            emu.base_url, "--out", str(out), "-H", "anthropic-beta: b1", "-q",
        )  # fmt: skip
        assert detached.returncode == 0, detached.stderr
        collected = run_cli("collect", str(out), "-H", "x-route: poll-pool", "-q")
        assert collected.returncode == 0, collected.stderr
    assert set(read_rows(out)["status"]) == {"ok"}


def test_detach_needs_a_real_gateway(requests_file, tmp_path):
    with pytest.raises(ConfigError, match="--detach needs --gateway"):
        run_sync(
            RunConfig(requests=requests_file(1), out=tmp_path / "o", mode="async", detach=True),
            quiet=True,
        )


def test_quiet_detach_prints_nothing_and_json_still_gives_the_deadline(
    make_emulator, requests_file, tmp_path
):
    requests = requests_file(3)
    with make_emulator(ttft=Dist("fixed", 0.2)) as emu:
        common = ("run", str(requests), "--mode", "async", "--detach", "--gateway", emu.base_url)
        quiet = run_cli(*common, "--out", str(tmp_path / "quiet"), "-q")
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
        both = run_cli(*common, "--out", str(tmp_path / "json"), "-q", "--json")
    assert both.returncode == 0 and both.stderr == ""
    report = orjson.loads(both.stdout)  # the whole of stdout is the JSON document
    assert report["status"] == "detached" and report["outstanding_jobs"] == 3
    assert report["collect_before"] is not None and "batchrunner collect" in report["message"]


def test_wait_for_rows_helper_is_importable():
    assert callable(wait_for_rows)


def test_collect_reads_a_parquet_input_as_the_run_did(
    make_emulator, tmp_path
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"question": [f"q{i}" for i in range(6)]}), path)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.2)) as emu:
        detached = run_cli(
            "run", str(path), "--mode", "async", "--detach", "--gateway", emu.base_url,
            "--prompt-column", "question", "--model", "claude-haiku-4-5", "--max-tokens", "8",
            "--out", str(out),
        )  # fmt: skip
        assert detached.returncode == 0, detached.stderr
        collected = run_cli("collect", str(out), "--json")
        assert collected.returncode == 0, collected.stderr
    summary = orjson.loads(collected.stdout)["summary"]
    assert summary["status"] == {"ok": 6}
    assert sorted(read_rows(out)["input_index"]) == list(range(6))


def test_a_full_disk_for_the_job_ledger_aborts_the_run(
    make_emulator, requests_file, tmp_path, monkeypatch
):
    import errno

    from batchrunner.runner import EXIT_ABORTED
    from batchrunner.store import RunStore

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RunStore, "record_job", disk_full)
    out = tmp_path / "out"
    with make_emulator() as emu:
        result = run(requests_file(5), emu.base_url, out)
    assert (result.status, result.exit_code) == ("aborted", EXIT_ABORTED)
    assert "No space left on device" in result.message
    assert orjson.loads((out / "run.json").read_bytes())["status"] == "aborted"


def test_a_resubmitted_job_s_latency_is_its_final_job_and_retries_stay_within_the_limit(
    make_emulator, requests_file, tmp_path
):
    with make_emulator(
        ttft=Dist("fixed", 0.3), fault_job=0.5, job_failure_status=529, fault_drop=0.2
    ) as emu:
        run(requests_file(16), emu.base_url, tmp_path / "out", concurrency=16,
            retry=RetryPolicy(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02))  # fmt: skip
        truth = emu.ground_truth()
    submits = [t for t in truth if t["kind"] == "async_submit" and t["job_id"]]
    jobs = {t["job_id"]: t["job"] for t in submits}
    rows = read_rows(tmp_path / "out")
    # --max-retries 2 bounds every request to 3 attempts, submits and resubmits together (a
    # budget per resubmit allowed more)
    assert rows["attempts"].max() <= 3
    failed_jobs = collections.Counter(
        t["request_id"] for t in submits if t["job"]["status"] == "failed"
    )
    resubmitted = 0
    for row in rows[rows["status"] == "ok"].itertuples():
        final = jobs[row.job_id]
        # latency_s is the final job, from its submit to the poll that saw it done, as sync
        # mode's is the final attempt; the failed job before it and the back-off are in
        # total_s only
        seen_done_after = row.job_done_at.timestamp() - final["created_at"]
        # (a failed job takes 0.3 s: the margin tells them apart on a loaded machine)
        assert seen_done_after - 0.15 <= row.latency_s <= seen_done_after + 0.15
        if failed_jobs[row.request_id]:  # a failed job takes 0.3 s
            resubmitted += 1
            assert row.total_s - row.latency_s >= 0.3 * failed_jobs[row.request_id] - 0.01
    assert resubmitted >= 1  # a failed job was submitted again and then succeeded


def test_a_job_lost_while_it_was_pending_is_not_found_not_expired(requests_file, tmp_path):
    # Before: a job older than its TTL that the gateway lost was called expired ("its result
    # may have expired"), though a poll had seen it pending a moment before: the result is kept
    # for the TTL from completion, so it could not have expired yet.
    out = tmp_path / "out"
    config = EmulatorConfig(ttft=Dist("fixed", 30.0))
    with running_emulator(config) as emu:
        port = int(emu.base_url.rsplit(":", 1)[1])
        proc = start_run(
            str(requests_file(4)), "--mode", "async", "--gateway", emu.base_url,
            "--out", str(out), "--ttl", "2",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            (out / "jobs.jsonl").exists() and len(jobs_in(out)) == 4
        ):
            time.sleep(0.05)
        time.sleep(3.0)  # past submitted + TTL, the jobs still pending
    with running_emulator(config, port=port):  # same address, empty job store
        _, stderr = proc.communicate(timeout=60)
    rows = read_rows(out)
    assert len(rows) == 4, stderr
    assert set(rows["error_type"]) == {"job_not_found"}, rows["error_message"]
    assert rows["error_message"].str.contains("before its result could have expired").all()
    assert rows["error_message"].str.contains(", last seen pending ").all()


def test_submits_refused_for_a_wrong_key_stop_the_run_as_in_sync_mode(
    make_emulator, requests_file, tmp_path
):
    # Bifrost answers an async submit with a key it does not know "400 failed to create async
    # job". Before, every request of the set was submitted and failed (exit 0); a sync run
    # with the same key stops after 20 refusals.
    out = tmp_path / "out"
    with make_emulator(virtual_keys=(KEY_A,)) as emu:
        result = run_cli(
            "run", str(requests_file(60)), "--mode", "async", "--gateway", emu.base_url,
            "--virtual-key", "sk-bf-not-this-one", "--out", str(out), "-c", "2",
        )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert ("20 requests in a row (after retries) were refused with HTTP 400 (http_400: submit "
            "failed: failed to create async job); check --gateway, --api-key and --virtual-key"
            ) in result.stderr
    rows = read_rows(out)
    assert 20 <= len(rows) < 60 and set(rows["error_type"]) == {"http_400"}
    assert "--retry-failed" in result.stderr  # once the key is fixed, they are sent again
    assert "sk-bf-not-this-one" not in result.stderr


def test_collect_hints_say_which_credentials_to_give_again(requests_file, tmp_path):
    # Before: "collect them with `batchrunner collect RUN`" and "Resume with: batchrunner
    # collect RUN", which as printed fail with "RUN was submitted with a key".
    out = tmp_path / "out"
    requests = requests_file(3)
    with running_emulator(EmulatorConfig(virtual_keys=(KEY_A, KEY_B))) as emu:
        detached = run_cli("run", str(requests), "--mode", "async", "--gateway", emu.base_url,
                           "--virtual-key", KEY_A, "--out", str(out), "--detach")
        assert detached.returncode == 0, detached.stderr
        assert (f"collect them with `batchrunner collect {out}` and --virtual-key given again "
                "(never stored) before ") in detached.stdout
        other = f"http://localhost:{emu.base_url.rsplit(':', 1)[1]}"
        wrong = run_cli("collect", str(out), "--virtual-key", KEY_B, "--gateway", other)
        assert wrong.returncode == 3, wrong.stderr
        lines = (wrong.stdout + wrong.stderr).splitlines()
        at = lines.index(f"Resume with: batchrunner collect {out} --gateway {other}")
        assert lines[at + 1] == ("  (with --virtual-key given again; credentials are never "
                                 "stored or shown)")
        said = wrong.stdout + wrong.stderr + detached.stdout + detached.stderr
        assert KEY_A not in said and KEY_B not in said
        right = run_cli("collect", str(out), "--virtual-key", KEY_A, "--gateway", other)
    assert right.returncode == 0, right.stderr
    assert len(read_rows(out)) == 3


def test_submits_cancelled_in_flight_keep_when_they_were_sent(make_emulator, requests_file,
                                                              tmp_path):
    # A second Ctrl-C cancels the submits in flight (here held by the gateway): their rows
    # had no sent_at, though the requests had gone out.
    out = tmp_path / "out"
    with make_emulator(fault_stall=1.0, stall_s=20.0) as emu:
        proc = start_run(str(requests_file(10)), "--mode", "async", "--gateway", emu.base_url,
                         "--out", str(out), "-c", "3")
        stderr = ctrl_c_twice_with_in_flight(emu, proc, 3)
    assert proc.returncode == 3, stderr
    rows = read_rows(out)
    assert len(rows) == 3 and set(rows["status"]) == {"cancelled"}, stderr
    assert rows["sent_at"].notna().all() and (rows["queue_wait_s"] >= 0).all()


class _PollBreakingProxy:
    """A forwarding proxy in front of the emulator whose every *every*-th poll (a request with
    ``x-bf-async-id``) is answered by the proxy itself: HTTP *status* with an HTML page, as a
    load balancer or an auth layer answers."""

    def __init__(self, upstream: str, status: int, every: int,
                 headers: dict[str, str] | None = None) -> None:
        import http.server
        import threading
        import urllib.error
        import urllib.request

        proxy = self
        self.polls = self.broken = 0
        #: Each poll's job id, arrival (monotonic) and whether the proxy refused it, in order.
        self.poll_log: list[tuple[str, float, bool]] = []
        self.lock = threading.Lock()
        self.page_headers = headers or {}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("x-bf-async-id"):
                    with proxy.lock:  # handlers run on threads of their own
                        proxy.polls += 1
                        refuse = proxy.polls % every == 0
                        proxy.poll_log.append(
                            (self.headers["x-bf-async-id"], time.monotonic(), refuse))
                    if refuse:
                        proxy.broken += 1
                        page = b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
                        self.send_response(status)
                        for name, value in proxy.page_headers.items():
                            self.send_header(name, value)
                        self.send_header("content-type", "text/html")
                        self.send_header("content-length", str(len(page)))
                        self.end_headers()
                        self.wfile.write(page)
                        return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                req = urllib.request.Request(upstream + self.path, data=body, headers=headers,
                                             method="POST")
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        code, data, kind = resp.status, resp.read(), resp.headers
                except urllib.error.HTTPError as err:
                    code, data, kind = err.code, err.read(), err.headers
                self.send_response(code)
                for name in ("content-type", "x-bf-async-id"):
                    if kind.get(name):
                        self.send_header(name, kind[name])
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_polls_a_proxy_fails_are_polled_again_not_paid_for_twice(
    make_emulator, requests_file, tmp_path
):
    # Every 7th poll gets a load balancer's 502 page: before, each was taken for the job's own
    # failure and the job submitted again (259 jobs for 200 requests in the audit).
    with make_emulator(ttft=Dist("fixed", 0.3)) as emu:
        proxy = _PollBreakingProxy(emu.base_url, 502, every=7)
        try:
            result = run(requests_file(30), proxy.url, tmp_path / "out", concurrency=10)
        finally:
            proxy.close()
        submits = [t for t in emu.ground_truth() if t["kind"] == "async_submit"]
    assert proxy.broken >= 3
    assert result.status == "finished", result.message
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 30 and set(rows["status"]) == {"ok"}
    assert len(submits) == 30  # one paid job per request
    assert set(rows["attempts"]) == {1}


def test_a_proxy_asking_polls_to_wait_is_waited_for(make_emulator, requests_file, tmp_path):
    # A proxy's 429 page with retry-after: 1 on every 2nd poll. The poll was sent again after
    # the planner's short back-off (0.1-0.2 s), refused again, and each refusal counted
    # towards the 30 failures that end a job as an error row.
    with make_emulator(ttft=Dist("fixed", 0.5)) as emu:
        proxy = _PollBreakingProxy(emu.base_url, 429, every=2, headers={"retry-after": "1"})
        try:
            result = run(requests_file(6), proxy.url, tmp_path / "out", concurrency=6)
        finally:
            proxy.close()
    assert result.status == "finished", result.message
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 6 and set(rows["status"]) == {"ok"}
    gaps = []
    for i, (job_id, at, refused) in enumerate(proxy.poll_log):
        after = [t for j, t, _ in proxy.poll_log[i + 1:] if j == job_id]
        if refused and after:
            gaps.append(after[0] - at)
    assert len(gaps) >= 3, proxy.poll_log
    assert min(gaps) >= 0.95, sorted(gaps)


@pytest.mark.parametrize(("status", "said"), [
    (401, "polls are refused with HTTP 401 by something in front of the gateway"),
    (404, "polls are answered with HTTP 404 by something other than the gateway's jobs"),
])
def test_polls_an_auth_layer_refuses_stop_the_run_and_keep_the_jobs(
    make_emulator, requests_file, tmp_path, status, said
):
    # An auth proxy refusing every poll (401, no Anthropic error body): before, 20 completed
    # jobs became final error rows, results that could only be bought again. A proxy's 404
    # page was polled again up to 30 times a job, minutes of silence.
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.2)) as emu:
        proxy = _PollBreakingProxy(emu.base_url, status, every=1)
        try:
            result = run(requests_file(10), proxy.url, out, concurrency=10)
        finally:
            proxy.close()
        assert result.status == "aborted" and result.exit_code == 3, result.message
        assert said in result.message
        assert not (out / "data").exists() or len(read_rows(out)) == 0
        assert len(jobs_in(out)) == 10
        again = run_cli("collect", str(out), "--gateway", emu.base_url)
    assert again.returncode == 0, again.stderr
    rows = read_rows(out)
    assert len(rows) == 10 and set(rows["status"]) == {"ok"}


def test_hung_polls_are_given_up_and_asked_again(make_emulator, requests_file, tmp_path,
                                                 monkeypatch):
    # Some requests hang (the gateway never answers them). Polls ran under the request
    # timeouts (here a 6 s read timeout), holding the only two poll slots, while every job was
    # done in 0.1 s and its 3 s TTL ran out: expired rows for results that were there.
    import batchrunner.jobs

    monkeypatch.setattr(batchrunner.jobs, "POLL_TIMEOUT_S", 0.3)
    with make_emulator(ttft=Dist("fixed", 0.1), fault_stall=0.15, seed=5) as emu:
        started = time.monotonic()
        run(requests_file(20), emu.base_url, tmp_path / "out", concurrency=20, ttl_s=3,
            poll_concurrency=2, timeouts=Timeouts(connect_s=2, read_s=6, attempt_s=30),
            retry=RetryPolicy(max_retries=6, backoff_base_s=0.01, backoff_max_s=0.02))
        stalled = sum(1 for t in emu.ground_truth() if t["fault"] == "stall"
                      and t["kind"] == "async_poll")
    took = time.monotonic() - started
    rows = read_rows(tmp_path / "out")
    assert stalled >= 2  # seeded: enough hung polls to have filled both slots
    assert len(rows) == 20 and set(rows["status"]) == {"ok"}, rows["error_message"].tolist()
    assert took < 30, took  # hung submits wait for the read timeout, then are sent again


def test_collect_polls_the_recorded_gateway_not_one_left_in_the_environment(
    make_emulator, requests_file, tmp_path
):
    # A BATCHRUNNER_GATEWAY left over from another gateway won over run.json's: every job of a
    # run without a key ended as a final job_not_found row there, and run.json then recorded
    # the wrong gateway for later collects.
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.2)) as right, make_emulator() as other:
        detached = run_cli("run", str(requests_file(8)), "--mode", "async", "--detach",
                           "--gateway", right.base_url, "--out", str(out), "-q")
        assert detached.returncode == 0, detached.stderr
        collected = run_cli("collect", str(out), env={"BATCHRUNNER_GATEWAY": other.base_url})
        assert collected.returncode == 0, collected.stderr
        assert "Note: BATCHRUNNER_GATEWAY is not this run's gateway: polling the one in " \
               "run.json" in collected.stderr
        assert other.stats()["requests"] == 0
    rows = read_rows(out)
    assert len(rows) == 8 and set(rows["status"]) == {"ok"}
    assert orjson.loads((out / "run.json").read_bytes())["gateway"].startswith(right.base_url)


def test_collect_never_submits_and_needs_no_input(make_emulator, requests_file, tmp_path):
    # collect submitted failed jobs again when the input was at its recorded path (contrary to
    # "it never submits"), counted submits from 1 again in every session, and refused an
    # edited input with "start a new run" (paying for every job again).
    requests = requests_file(30)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.3), fault_job=0.4, job_failure_status=529,
                       fault_drop=0.3, seed=11) as emu:
        detached = run_cli("run", str(requests), "--mode", "async", "--detach", "--gateway",
                           emu.base_url, "--out", str(out), "-q", "--max-retries", "6")
        assert detached.returncode == 0, detached.stderr
        submits_then = collections.Counter(
            t["request_id"] for t in emu.ground_truth() if t["kind"] == "async_submit")
        ledger = {j["input_index"]: j for j in jobs_in(out)}
        assert {j["attempts"] for j in ledger.values()} > {1}  # some dropped submits (seeded)
        requests.write_text(requests.read_text().replace("why?", "how?"))  # edited since
        refused = run_cli("collect", str(out))
        assert refused.returncode == 2
        assert "collect can poll without it" in refused.stderr
        assert "new run" not in refused.stderr
        requests.rename(tmp_path / "elsewhere.jsonl")
        collected = run_cli("collect", str(out))
        assert collected.returncode in (0, 4), collected.stderr
        submits = [t for t in emu.ground_truth() if t["kind"] == "async_submit"]
    assert len(submits) == sum(submits_then.values())  # collect submitted nothing
    rows = read_rows(out).set_index("input_index")
    assert len(rows) == 30
    failed = rows[rows["status"] == "error"]
    assert len(failed) >= 1 and failed["error_message"].str.startswith("job failed").all()
    assert "--retry-failed" in collected.stdout + collected.stderr
    # Each row counts the submits of every session, and keeps its request's model and
    # metadata though collect never read the input.
    for i, r in rows.iterrows():
        assert r["attempts"] == submits_then[r["request_id"]] == ledger[i]["attempts"]
        assert r["model_requested"] == "claude-sonnet-4-5"
        assert orjson.loads(r["metadata"]) == {"i": i, "group": "a" if i % 2 else "b"}


def test_collect_of_an_older_ledger_without_its_input_says_what_rows_lack(
    make_emulator, requests_file, tmp_path
):
    # A jobs.jsonl written before it kept model and metadata, collected with the input moved
    # away: the rows silently had no model_requested and no metadata.
    requests = requests_file(6)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.5)) as emu:
        detached = run_cli("run", str(requests), "--mode", "async", "--detach", "--gateway",
                           emu.base_url, "--out", str(out), "-q")
        assert detached.returncode == 0, detached.stderr
        ledger = out / "jobs.jsonl"
        newer = ("attempts", "model_requested", "metadata", "request_kept", "abandoned")
        lines = [orjson.loads(line) for line in ledger.read_bytes().splitlines()]
        ledger.write_bytes(b"".join(
            orjson.dumps({k: v for k, v in j.items() if k not in newer}) + b"\n" for j in lines))
        requests.rename(tmp_path / "elsewhere.jsonl")
        collected = run_cli("collect", str(out))
    assert collected.returncode == 0, collected.stderr
    assert ("Note: 6 jobs in jobs.jsonl were recorded by an older batchrunner, without model "
            "and metadata") in collected.stderr
    assert f"{requests} is not there" in collected.stderr
    rows = read_rows(out)
    assert len(rows) == 6 and set(rows["status"]) == {"ok"}
    assert rows["model_requested"].isna().all() and rows["metadata"].isna().all()


def test_an_outstanding_job_keeps_only_what_its_row_and_a_resubmit_need():
    from batchrunner.jobs import kept_request
    from batchrunner.schema import RequestRecord

    params = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 500}]}
    record = RequestRecord(3, "c3", params, metadata={"k": 1}, extra_headers={"x-a": "b"},
                           body=orjson.dumps(params))
    kept = kept_request(record, resubmit=True)
    assert kept.params == {"model": "m"} and kept.body == record.body
    assert (kept.custom_id, kept.metadata_json, kept.extra_headers) == ("c3", '{"k":1}',
                                                                         {"x-a": "b"})
    assert kept_request(record, resubmit=False).body is None  # collect never submits
    # A body that must be re-encoded (its own "stream") is kept whole when it may be resent.
    streamed = RequestRecord(4, "c4", {**params, "stream": True}, body=orjson.dumps(params))
    assert kept_request(streamed, resubmit=True) is streamed


def test_jobs_a_restarted_gateway_lost_can_be_abandoned_and_sent_again(requests_file,
                                                                        tmp_path):
    # With a key, jobs a restart lost read as "another key?": every resume stopped at once, and
    # the run could not go on until their TTL (a day with --ttl 86400) had passed.
    config = EmulatorConfig(ttft=Dist("fixed", 0.5), virtual_keys=(KEY_A,))
    out = tmp_path / "out"
    requests = requests_file(25)
    with running_emulator(config) as emu:
        port = int(emu.base_url.rsplit(":", 1)[1])
        run(requests, emu.base_url, out, detach=True, virtual_key=KEY_A)
    with running_emulator(config, port=port) as emu:  # same address, empty job store
        blocked = run(requests, emu.base_url, out, virtual_key=KEY_A)
        assert blocked.status == "aborted" and "--abandon-jobs" in blocked.message
        # Stopped after 5 (--max-requests): the 20 lost jobs it did not get to were polled
        # again by the next, plain resume (and, with a key, blocked it once more).
        before = len(emu.ground_truth())
        part = run(requests, emu.base_url, out, virtual_key=KEY_A, abandon_jobs=True,
                   max_requests=5)
        assert part.status == "incomplete" and part.outstanding_jobs == 0, part.message
        again = run(requests, emu.base_url, out, virtual_key=KEY_A)
        submits = [t for t in emu.ground_truth() if t["kind"] == "async_submit"]
        polls_of_lost = [t for t in emu.ground_truth()[before:] if t["kind"] == "async_poll"
                         and t["http_status"] in (400, 404)]
    assert again.status == "finished", again.message
    rows = read_rows(out)
    assert len(rows) == 25 and set(rows["status"]) == {"ok"}
    assert len(submits) == 25  # each request once more, at the gateway that had lost them
    assert polls_of_lost == []
    assert again.outstanding_jobs == 0
    assert sum(1 for j in jobs_in(out) if j.get("abandoned")) == 25
    with pytest.raises(ConfigError, match="--abandon-jobs is for resuming a --mode async run"):
        run_sync(RunConfig(requests=requests, out=tmp_path / "s", abandon_jobs=True), quiet=True)


def test_the_retry_command_collect_prints_resends_the_failed_jobs(make_emulator,
                                                                  requests_file, tmp_path):
    # It gave only `run INPUT --mode async --out DIR --retry-failed`: a run sent with
    # --max-tokens (or --model, --system, ...) refused it ("cannot resume with no
    # --max-tokens"), and --ttl fell back to 3600.
    import shlex

    requests, out = requests_file(20), tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.2), fault_job=0.5, job_failure_status=529,
                       seed=4) as emu:
        detached = run_cli("run", str(requests), "--mode", "async", "--detach", "--gateway",
                           emu.base_url, "--out", str(out), "-q", "--max-tokens", "24",
                           "--ttl", "600", "-H", "x-team: evals")
        assert detached.returncode == 0, detached.stderr
        collected = run_cli("collect", str(out))
        line = next(x for x in collected.stderr.splitlines() if "send them again with: " in x
                    or "send it again with: " in x)
        command = shlex.split(line.split(" again with: ", 1)[1])
        assert command[:2] == ["batchrunner", "run"]
        assert command[command.index("--max-tokens"):][:2] == ["--max-tokens", "24"]
        assert command[command.index("--ttl"):][:2] == ["--ttl", "600"]
        assert "x-team: evals" in command
        failed = int((read_rows(out)["status"] != "ok").sum())
        assert failed >= 1
        resent = run_cli(*command[1:])
        assert resent.returncode == 0, resent.stderr
    rows = read_rows(out)
    assert len(rows) == 20 and int((rows["status"] != "ok").sum()) < failed


def test_a_job_the_gateway_itself_failed_is_not_paid_for_again(requests_file, tmp_path):
    # Bifrost's markFailed (a panic, a result it could not store: 500 "internal error: ..."),
    # perhaps after the model had answered and been paid, was submitted again up to
    # --max-retries times (5 jobs per request in the audit). A provider's 500 still is.
    import httpx

    submits: collections.Counter[str] = collections.Counter()

    def gateway(request: httpx.Request) -> httpx.Response:
        rid = request.headers["x-request-id"]
        job_id = request.headers.get("x-bf-async-id")
        if job_id is None:
            submits[rid] += 1
            return httpx.Response(200, json={"id": f"job-{rid}-{submits[rid]}", "type": "",
                                             "role": "", "content": None, "model": ""})
        if rid.endswith("-0"):  # a provider's 500: the job is submitted again
            return httpx.Response(500, json={"type": "error", "error": {
                "type": "api_error", "message": "Internal server error"}})
        return httpx.Response(500, json={"error": {"message": "internal error: panic in job"}})

    config = RunConfig(requests=requests_file(3), gateway="http://127.0.0.1:9",
                       out=tmp_path / "out", mode="async",
                       retry=RetryPolicy(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02))
    result = run_sync(config, quiet=True, transport=httpx.MockTransport(gateway))
    assert result.status == "finished", result.message
    rows = read_rows(tmp_path / "out").set_index("input_index")
    assert set(rows["status"]) == {"error"}
    run_id = rows.loc[0, "run_id"]
    assert submits[f"{run_id}-0"] == 3  # a provider's failure: retried as before
    for i in (1, 2):
        assert submits[f"{run_id}-{i}"] == 1 and rows.loc[i, "attempts"] == 1
        assert rows.loc[i, "error_message"].startswith(
            "job failed in the gateway itself, perhaps after a paid answer (not submitted "
            "again; run --retry-failed sends it): internal error: panic in job")
