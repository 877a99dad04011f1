"""`batchrunner run` as a user runs it: a subprocess, signals, kill -9, exit codes."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from batchrunner.config import ConfigError
from batchrunner.emulator.config import Dist

from .conftest import read_rows, run_cli, run_in_process, write_requests

pytestmark = pytest.mark.slow


def start_run(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "BATCHRUNNER_GATEWAY"}
    return subprocess.Popen(
        [sys.executable, "-m", "batchrunner", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_rows(
    run_dir: Path, at_least: int, proc: subprocess.Popen, timeout: float = 30
) -> None:
    """Wait until the run has durably finished some requests (journal lines or parts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        # Journal segments only: a Parquet part is staged in journal/ too, and its bytes hold
        # newlines (counting them let a signal arrive before the run had started).
        lines = sum(p.read_bytes().count(b"\n") for p in run_dir.glob("journal/seg-*.jsonl"))
        parts = sum(pq.ParquetFile(p).metadata.num_rows for p in run_dir.glob("data/*.parquet"))
        if lines + parts >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError("the run made no progress")


def test_kill_9_then_resume_loses_nothing_and_sends_nothing_twice(
    make_emulator, requests_file, tmp_path
):
    requests = requests_file(300)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.03)) as emu:
        proc = start_run(
            str(requests), "--gateway", emu.base_url, "--out", str(out), "-c", "4", "-q"
        )
        wait_for_rows(out, 60, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        sent_before = len(emu.ground_truth())
        # the directory is consistent right after the crash: every part file reads
        for part in out.glob("data/*.parquet"):
            pq.read_table(part)
        done = run_cli(
            "run", str(requests), "--gateway", emu.base_url, "--out", str(out), "-c", "4", "-q"
        )
        assert done.returncode == 0, done.stderr
        sent_total = len(emu.ground_truth())
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(300))
    assert set(rows["status"]) == {"ok"}
    # only the requests in flight at the kill (at most -c 4) were sent twice
    assert sent_total - 300 <= 4
    assert sent_before < 300
    sessions = orjson.loads((out / "run.json").read_bytes())["sessions"]
    assert [s["status"] for s in sessions] == ["died", "finished"]


def signal_once_and_check_the_drain(
    make_emulator, requests: Path, out: Path, sig: signal.Signals
) -> str:
    """Send ``sig`` once mid-run: the run drains, exits 3 and prints how to resume (stderr)."""
    with make_emulator(ttft=Dist("fixed", 0.05)) as emu:
        proc = start_run(str(requests), "--gateway", emu.base_url, "--out", str(out), "-c", "3")
        wait_for_rows(out, 10, proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr
    assert resume_hint(stderr)[-2:] == ["--out", str(out)]
    rows = read_rows(out)
    assert "cancelled" not in set(rows["status"])  # in-flight requests finished (drained)
    assert 10 <= len(rows) < 100
    return stderr


def ctrl_c_twice_with_in_flight(emu, proc: subprocess.Popen, in_flight: int) -> str:
    """Once ``in_flight`` requests of ``proc`` are at the emulator, Ctrl-C it twice (drain,
    then cancel); its stderr once it has exited."""
    deadline = time.monotonic() + 20
    while emu.stats()["in_flight"] < in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=30)[1]


def test_ctrl_c_drains_then_second_ctrl_c_cancels(make_emulator, requests_file, tmp_path):
    requests = requests_file(100)
    out = tmp_path / "out"
    signal_once_and_check_the_drain(make_emulator, requests, out, signal.SIGINT)

    with make_emulator(ttft=Dist("fixed", 20.0)) as emu:  # requests that would hang
        proc = start_run(str(requests), "--gateway", emu.base_url, "--out", str(out), "-c", "3")
        stderr = ctrl_c_twice_with_in_flight(emu, proc, 3)
        assert proc.returncode == 3, stderr
    rows = read_rows(out)
    assert (rows["status"] == "cancelled").sum() == 3
    # They were sent (in flight for 20 s): their rows say when (they had no sent_at).
    cancelled = rows[rows["status"] == "cancelled"]
    assert cancelled["sent_at"].notna().all() and (cancelled["queue_wait_s"] >= 0).all()

    with make_emulator() as emu:
        done = run_cli("run", str(requests), "--gateway", emu.base_url, "--out", str(out), "-q")
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(100)) and set(rows["status"]) == {"ok"}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_retry_the_stop_skipped_is_cancelled_and_a_plain_resume_sends_it(
    make_emulator, requests_file, tmp_path, mode
):
    # Before: a failure during the drain that would have been retried (a read timeout) ended
    # as a failed row with attempts 1, and the printed resume (no --retry-failed) never sent it.
    requests, out = requests_file(20), tmp_path / "out"
    with make_emulator(fault_stall=1.0, stall_s=5.0) as emu:  # past the read timeout
        proc = start_run(
            str(requests), "--gateway", emu.base_url, "--out", str(out), "-c", "3",
            "--mode", mode, "--read-timeout", "1",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while emu.stats()["in_flight"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # the three time out during the drain
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    rows = read_rows(out)
    assert len(rows) == 3 and set(rows["status"]) == {"cancelled"}, rows["error_message"]
    assert rows["error_message"].str.contains(
        "not retried: the run stopped before the retry (attempt failed with timeout: ",
        regex=False,
    ).all(), rows["error_message"]
    assert rows["sent_at"].notna().all() and set(rows["attempts"]) == {1}
    hint = resume_hint(stderr)
    assert "--retry-failed" not in hint
    with make_emulator() as emu:
        at = hint.index("--gateway") + 1
        hint[at] = emu.base_url
        done = run_cli(*hint)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(20)) and set(rows["status"]) == {"ok"}


def test_sigterm_stops_like_ctrl_c(make_emulator, requests_file, tmp_path):
    # What timeout(1), systemd, Slurm and Kubernetes send before killing.
    out = tmp_path / "out"
    stderr = signal_once_and_check_the_drain(make_emulator, requests_file(100), out, signal.SIGTERM)
    assert "Stopping (SIGTERM)" in stderr and "interrupted: stopped by SIGTERM" in stderr
    session = orjson.loads((out / "run.json").read_bytes())["sessions"][-1]
    assert session["status"] == "interrupted" and session["message"] == "stopped by SIGTERM"


def test_a_signal_while_already_stopping_drains_and_is_recorded(
    make_emulator, requests_file, tmp_path
):
    # --duration has stopped new requests and the ones in flight are finishing: a SIGTERM then
    # must not cancel them (they are paid for); only a second signal would.
    requests = requests_file(50)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 2.0)) as emu:
        proc = start_run(
            str(requests), "--gateway", emu.base_url, "--out", str(out), "-c", "4",
            "--duration", "0.5",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while emu.stats()["in_flight"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)  # past --duration, the four still in flight
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr
    assert "already stopping (--duration reached)" in stderr
    rows = read_rows(out)
    assert len(rows) == 4 and set(rows["status"]) == {"ok"}
    session = orjson.loads((out / "run.json").read_bytes())["sessions"][-1]
    assert (session["status"], session["message"]) == ("interrupted", "stopped by SIGTERM")


def resume_hint(stderr: str) -> list[str]:
    """The printed resume command's arguments after ``batchrunner``."""
    line = next(x for x in stderr.splitlines() if x.startswith("Resume with: "))
    words = shlex.split(line.removeprefix("Resume with: "))
    assert words[:3] == ["python", "-m", "batchrunner"]  # as these tests start it
    return words[3:]


def test_the_printed_resume_command_works_verbatim_and_keeps_the_gateway(
    make_emulator, requests_file, tmp_path
):
    requests = requests_file(60)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.05)) as emu:
        proc = start_run(
            str(requests), "--gateway", emu.base_url, "--mode", "stream", "-c", "2",
            "--api-key", "sk-ant-hint-SECRET", "--out", str(out),
        )  # fmt: skip
        wait_for_rows(out, 5, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 3, stderr
        hint = resume_hint(stderr)
        assert "sk-ant-hint-SECRET" not in stderr and "--api-key" in stderr  # named, not shown
        assert hint[:2] == ["run", str(requests)] and "--mode" in hint and emu.base_url in hint
        # the old hint (no --gateway, no --mode) is refused instead of mixing in emulator rows
        bare = run_cli("run", str(requests), "--mode", "stream", "--out", str(out))
        assert bare.returncode == 2 and f"--gateway {emu.base_url}" in bare.stderr, bare.stderr
        done = run_cli(*hint)
        assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(60)) and set(rows["status"]) == {"ok"}
    assert set(rows["mode"]) == {"stream"}
    info = orjson.loads((out / "run.json").read_bytes())
    assert len({s["gateway"] for s in info["sessions"]}) == 1


def test_after_a_configuration_abort_the_resume_command_retries_the_failed(
    make_emulator, requests_file, tmp_path
):
    requests = requests_file(30)
    out = tmp_path / "out"
    with make_emulator() as emu:
        wrong = emu.base_url + "/anthropic"  # the path is appended again: every request 404s
        first = run_cli("run", str(requests), "--gateway", wrong, "-c", "1", "--out", str(out))
        assert first.returncode == 3, first.stderr
        hint = resume_hint(first.stderr)
        assert hint[-1] == "--retry-failed" and "once the gateway address" in first.stderr
        failed = len(read_rows(out))
        # without --gateway it would go on against the built-in emulator: refused, and the
        # failed rows it would have sent again are still there
        refused = run_cli("run", str(requests), "--out", str(out), "--retry-failed")
        assert refused.returncode == 2 and "--gateway" in refused.stderr
        assert len(read_rows(out)) == failed > 0
        fixed = [emu.base_url if word == wrong else word for word in hint]
        done = run_cli(*fixed)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(30)) and set(rows["status"]) == {"ok"}


def test_a_run_stopped_by_its_limit_says_which_and_that_it_counts_again(requests_file, tmp_path):
    requests, out = requests_file(20), tmp_path / "out"
    first = run_cli(
        "run", str(requests), "--max-requests=8", "--out", str(out), "--emulator-profile", "instant"
    )
    assert first.returncode == 0, first.stderr
    assert "incomplete: --max-requests 8 reached" in first.stderr
    assert "--max-requests counts again from the start of the resumed session" in first.stderr
    hint = resume_hint(first.stderr)
    assert "--max-requests=8" in hint
    rest = run_cli(*[word for word in hint if word != "--max-requests=8"], "-q")
    assert rest.returncode == 0, rest.stderr
    assert sorted(read_rows(out)["input_index"]) == list(range(20))


def test_demo_runs_on_the_built_in_emulator(tmp_path):
    demo = Path(__file__).resolve().parents[2] / "jobs" / "demo.jsonl"
    result = run_cli("run", str(demo), "--results-root", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert "built-in emulator" in result.stderr
    report = orjson.loads(result.stdout)
    assert report["status"] == "finished"
    assert report["summary"]["requests"] >= 50
    assert report["summary"]["status"].get("ok", 0) >= 50
    # The demo profile is a ready profile like the others (it could not be named, nor read).
    named = run_cli("run", str(demo), "--results-root", str(tmp_path), "--json",
                    "--emulator-profile", "demo")
    assert named.returncode == 0 and "(profile demo)" in named.stderr, named.stderr
    again = orjson.loads(named.stdout)["summary"]
    assert again["tokens"] == report["summary"]["tokens"]  # the same seeded answers


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.jsonl"], "missing.jsonl"),
        (["run", "{set}", "--gateway", "ftp://x"], "--gateway"),
        (["run", "{set}", "--rate", "0"], "--rate"),
        (["run", "{set}", "-H", "no-colon"], "Name: value"),
        # a malformed value is not quoted back: it is often a credential
        (["run", "{set}", "-H", "Authorization Bearer sk-ant-SECRET1"], "no ':' after"),
        (["run", "{set}", "--gateway", "ftp://admin:sk-SECRET2@127.0.0.1:9"], "got ftp://;"),
        (["run", "{set}", "--gateway", "localhost:8080"], "http:// or https://, got no scheme;"),
        (["run", "{set}", "--gateway", "http://u:sk-SECRET3@h:ab"], "not valid (Invalid port)"),
        (["run", "{set}", "-H", "Content-Length: 1"], "-H Content-Length: set by batchrunner"),
        (["run", "{set}", "-H", "x-bf-async: true"], "async jobs are made by --mode async"),
        (["run", "{set}", "--metadata-column", "topic"], "--metadata-column is for Parquet"),
        (["run", "{set}", "--prompt-column", "q"], "--prompt-column is for Parquet"),
        # NaN passed every range check (all comparisons with it are false)
        (["run", "{set}", "--rate", "nan"], "--rate must be a number, got nan"),
        (["run", "{set}", "--rpm", "nan"], "--rpm must be a number"),
        (["run", "{set}", "--duration", "nan"], "--duration must be a number"),
        (["run", "{set}", "--timeout", "nan"], "--timeout must be a number"),
        (["run", "{set}", "--drain-timeout", "nan"], "--drain-timeout must be a number"),
        (["run", "{set}", "--rate", "inf"], "--rate must be a finite number"),
        # inf was recorded as null in run.json; leaving the option out is "no limit"
        (["run", "{set}", "--max-cost", "inf"], "--max-cost must be a finite number"),
        (["run", "{set}", "-c", "1000000"], "--concurrency must be at most 100,000"),
        (["run", "{set}", "--seed", "99999999999999999999"], "--seed is too large"),
        (["run", "{set}", "--max-requests", "99999999999999999999"], "--max-requests is too"),
        (["run", "{set}", "--mode", "nope"], "--mode"),
        (["run", "{set}", "--emulator-profile", "nope"], "--emulator-profile"),
        (["run", "{set}", "--out", "{set}/run"], "cannot use"),  # under a file
        (["run", "{set}", "--out", "/proc/batchrunner-test"], "cannot create the run directory"),
        # load options that contradict each other: the measurement would not be the one asked
        (["run", "{set}", "--arrival", "poisson"], "--arrival poisson spaces the arrivals of"),
        (["run", "{set}", "--rate", "10", "--max-rate", "5"], "--rate 10/s is above the"),
        (["run", "{set}", "--rate", "10", "--rpm", "300"], "ceiling (5/s)"),
        # one ceiling in two units: the lower one was kept in silence
        (["run", "{set}", "--max-rate", "5", "--rpm", "600"],
         "--max-rate 5 and --rpm 600 are the same ceiling (per second and per minute): give one"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(requests_file, tmp_path, args, message):
    requests = requests_file(2)
    args = [a.replace("{set}", str(requests)) for a in args]
    before = set(tmp_path.rglob("*"))
    result = run_in_process(*args, "--results-root", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and "SECRET" not in result.output
    # Refused before anything is made (a mistyped --emulator-profile left a run directory).
    assert set(tmp_path.rglob("*")) == before


def test_an_input_with_no_valid_request_is_an_input_error(make_emulator, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    no_model = tmp_path / "nomodel.jsonl"
    no_model.write_text('{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}\n' * 3)
    with make_emulator() as emu:
        nothing = run_cli(
            "run", str(empty), "--gateway", emu.base_url, "--out", str(tmp_path / "a")
        )
        rejected = run_cli(
            "run", str(no_model), "--gateway", emu.base_url, "--out", str(tmp_path / "b")
        )
        assert emu.stats()["requests"] == 0
    assert nothing.returncode == 2 and f"{empty}: no requests" in nothing.stderr
    assert not (tmp_path / "a").exists()
    assert rejected.returncode == 2, rejected.stderr
    assert f"no valid request in {no_model}: all 3 rows were rejected" in rejected.stderr
    assert len((tmp_path / "b" / "rejects.jsonl").read_text().splitlines()) == 3
    with make_emulator() as emu:  # and so is resuming it
        again = run_cli(
            "run", str(no_model), "--gateway", emu.base_url, "--out", str(tmp_path / "b")
        )
    assert again.returncode == 2 and "all 3 rows were rejected" in again.stderr
    assert "Traceback" not in nothing.stderr + rejected.stderr


def test_an_input_with_no_valid_request_prints_no_summary_but_its_rejects(
    make_emulator, tmp_path
):
    # Every row rejected: the closing summary ("requests 0 (none)", "cost $0") read like a
    # successful empty run. Nothing was sent, so stdout stays empty and stderr names the
    # rejects, where they all are and what exit code 2 means.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}\n' * 6 + "{\n")
    out = tmp_path / "out"
    # No --gateway: the built-in emulator, as a user would meet it first.
    text = run_cli("run", str(bad), "--out", str(out))
    assert text.returncode == 2, text.stderr
    assert text.stdout == ""
    rejects = out / "rejects.jsonl"
    assert len(rejects.read_text().splitlines()) == 7
    lines = text.stderr.splitlines()
    first = lines.index(
        f"rejected: no valid request in {bad}: all 7 rows were rejected (see {rejects})"
    )
    assert lines[first + 1 : first + 8] == [
        *(
            f"  {bad}:{n}: missing model (set it in the request or give --model)"
            for n in range(1, 6)
        ),
        f"  … and 2 more in {rejects}",
        "Nothing was sent and no result rows were written (exit code 2: input error). Correct "
        f"the input and run again; `python -m batchrunner validate {bad}` checks it "
        "without sending anything.",
    ]
    assert "$0" not in text.stderr and "requests   0" not in text.stderr
    # The input options of the run are in the validate command it names; --json keeps the
    # whole result on stdout (status and exit code say what happened) and the same stderr.
    with make_emulator() as emu:
        as_json = run_cli(
            "run", str(bad), "--gateway", emu.base_url, "--max-tokens", "7",
            "--out", str(tmp_path / "json"), "--json",
        )  # fmt: skip
        assert emu.stats()["requests"] == 0
    assert as_json.returncode == 2, as_json.stderr
    result = orjson.loads(as_json.stdout)
    assert (result["status"], result["exit_code"], result["rejected"]) == ("rejected", 2, 7)
    assert result["summary"]["requests"] == 0
    assert f"  {bad}:1: missing model (set it in the request or give --model)" in as_json.stderr
    assert f"batchrunner validate {bad} --max-tokens 7` checks it" in as_json.stderr


def test_strict_aborts_at_the_first_invalid_row(make_emulator, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}\n'
    path.write_text(good * 3 + '{"model": 5}\n' + good)
    with make_emulator() as emu:
        result = run_cli(
            "run", str(path), "--gateway", emu.base_url, "--strict", "--out", str(tmp_path / "out")
        )
    assert result.returncode in (2, 3), result.stderr
    assert f"{path}:4" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(read_rows(tmp_path / "out")["input_index"]) == [0, 1, 2]


def test_quiet_prints_only_the_error_of_a_session_that_could_not_do_its_work(
    make_emulator, tmp_path
):
    good = '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}\n'
    all_bad, strict = tmp_path / "all-bad.jsonl", tmp_path / "strict.jsonl"
    all_bad.write_text('{"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}\n' * 2)
    strict.write_text(good * 2 + '{"model": 5}\n')
    with make_emulator() as emu:
        common = ("--gateway", emu.base_url, "-q")
        rejected = run_cli("run", str(all_bad), *common, "--out", str(tmp_path / "a"))
        aborted = run_cli("run", str(strict), *common, "--strict", "--out", str(tmp_path / "b"))
        fine = run_cli("run", str(strict), *common, "--out", str(tmp_path / "c"))
    assert (rejected.returncode, rejected.stdout) == (2, "")
    assert rejected.stderr.splitlines() == [
        f"rejected: no valid request in {all_bad}: all 2 rows were rejected "
        f"(see {tmp_path / 'a' / 'rejects.jsonl'})"
    ]
    assert (aborted.returncode, aborted.stdout) == (3, "")
    assert aborted.stderr.splitlines() == [
        f"aborted: {strict}:3: model must be a non-empty string, got 5"
    ]
    assert (fine.returncode, fine.stdout, fine.stderr) == (0, "", "")  # its reject is no error


def test_run_help_states_the_default_in_flight_caps():
    from batchrunner.config import DEFAULT_CONCURRENCY, OPEN_LOOP_MAX_OUTSTANDING

    help_text = " ".join(run_cli("run", "--help").stdout.split())
    assert f"in flight at once [default: {DEFAULT_CONCURRENCY}]" in help_text
    assert f"total_s) [default: {OPEN_LOOP_MAX_OUTSTANDING:,}]" in help_text


@pytest.mark.parametrize("load", [["-c", "4"], ["--rate", "400"]])
def test_strict_lets_requests_in_flight_finish_and_records_the_reject(
    make_emulator, tmp_path, load
):
    path = tmp_path / "bad.jsonl"
    good = '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}\n'
    path.write_text(good * 150 + "{not json\n" + good * 10)
    out = tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.05)) as emu:
        result = run_cli(
            "run", str(path), "--gateway", emu.base_url, "--strict", "--out", str(out), *load
        )
    assert result.returncode == 3, result.stderr
    assert f"{path}:151: invalid JSON" in result.stderr and "stops at the same row" in result.stderr
    rows = read_rows(out)
    # requests already sent were paid for: they finish (drain) instead of being cancelled
    assert set(rows["status"]) == {"ok"}
    # every valid row before the invalid one is sent, as `validate --strict` counts them (the
    # ones read with it in the same chunk used to be dropped)
    assert sorted(rows["input_index"]) == list(range(150))
    rejects = [orjson.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rejects] == [f"{path}:151"]


def run_with_file_size_limit(requests: Path, out: Path, limit: int) -> subprocess.CompletedProcess:
    """``batchrunner run`` on the built-in emulator where every write past ``limit`` bytes in a
    file fails (EFBIG), as on a full disk: RLIMIT_FSIZE needs neither root nor a mount."""
    import resource

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k != "BATCHRUNNER_GATEWAY"}
    return subprocess.run(
        [sys.executable, "-m", "batchrunner", "run", str(requests), "--out", str(out),
         "--emulator-profile", "instant"],
        capture_output=True, text=True, timeout=90, env=env, preexec_fn=limit_file_size,
    )  # fmt: skip


def test_a_full_disk_aborts_with_exit_3_and_a_resume_completes_the_run(requests_file, tmp_path):
    # RLIMIT_FSIZE makes every write past 256 KB in a file fail (EFBIG) as a full disk would:
    # the journal segment fills up first, mid-run.
    requests, out = requests_file(3000), tmp_path / "out"
    full = run_with_file_size_limit(requests, out, 256 << 10)
    assert full.returncode == 3, full.stderr
    assert f"aborted: cannot write results to {out}: [Errno 27] File too large" in full.stderr
    assert "Internal error" not in full.stderr and "Resume with: " in full.stderr
    session = orjson.loads((out / "run.json").read_bytes())["sessions"][-1]
    assert session["status"] == "aborted" and "File too large" in session["message"]
    done = run_cli("run", str(requests), "--out", str(out), "--emulator-profile", "instant", "-q")
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(3000)) and set(rows["status"]) == {"ok"}


def test_a_full_disk_for_rejects_jsonl_aborts_the_run(tmp_path):
    requests = tmp_path / "mostly-bad.jsonl"
    good = orjson.dumps(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )
    bad = b'{"model": "m", "max_tokens": 0, "pad": "' + b"x" * 200 + b'"}'
    requests.write_bytes(b"\n".join([good] + [bad] * 1000) + b"\n")
    out = tmp_path / "out"
    done = run_with_file_size_limit(requests, out, 64 << 10)
    assert done.returncode == 3, done.stderr
    assert f"aborted: cannot write results to {out}: [Errno 27] File too large" in done.stderr
    assert orjson.loads((out / "run.json").read_bytes())["status"] == "aborted"


def _failed_line(stderr: str) -> str | None:
    return next((x for x in stderr.splitlines() if " failed (" in x), None)


def test_a_run_finished_with_failed_rows_says_how_to_send_them_again(
    make_emulator, tmp_path
):
    requests = tmp_path / "mixed.jsonl"
    requests.write_bytes(b"".join(
        orjson.dumps({"custom_id": f"r{i}", "params": {
            "model": "claude-retired" if i % 2 else "claude-sonnet-4-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}}) + b"\n"
        for i in range(4)
    ))  # fmt: skip
    out = tmp_path / "out"
    key = "sk-bf-retry-SECRET"
    with make_emulator(fail_models=("claude-retired",), fail_model_status=400) as emu:
        args = ("run", str(requests), "--gateway", emu.base_url, "--virtual-key", key,
                "--out", str(out))  # fmt: skip
        first = run_cli(*args)
        # a resume of the complete run sends nothing, and still says it
        again = run_cli(*args)
        for done in (first, again):
            assert done.returncode == 0, done.stderr
            line = _failed_line(done.stderr)
            assert line is not None, done.stderr
            assert line.startswith("2 requests failed (error 2); send them again with: ")
            assert line.endswith(" (give --virtual-key again)") and key not in done.stderr
        assert "Resuming run" in again.stderr
        quiet = run_cli(*args, "-q")
        assert quiet.returncode == 0 and _failed_line(quiet.stderr) is None, quiet.stderr
        as_json = run_cli(*args, "--json")
        assert orjson.loads(as_json.stdout)["summary"]["status"] == {"ok": 2, "error": 2}
        assert _failed_line(as_json.stderr) is not None
        # the printed command, with the key given again, sends the failed ones once fixed
        emu.config.fail_models = ()
        command = line.split(" again with: ", 1)[1].removesuffix(" (give --virtual-key again)")
        words = shlex.split(command)
        assert words[:3] == ["python", "-m", "batchrunner"] and "--retry-failed" in words
        retried = run_cli(*words[3:], "--virtual-key", key)
    assert retried.returncode == 0, retried.stderr
    assert _failed_line(retried.stderr) is None
    assert set(read_rows(out)["status"]) == {"ok"} and len(read_rows(out)) == 4


def test_options_that_do_nothing_in_this_run_are_warned_of(tmp_path):
    requests = write_requests(tmp_path / "set.jsonl", 2)
    args = ("run", str(requests), "--results-root", str(tmp_path), "--emulator-profile",
            "instant", "--ttl", "60", "--poll-rate", "5", "--rate", "50", "--max-rate", "100")
    done = run_cli(*args, "--mode", "stream")
    assert done.returncode == 0, done.stderr
    warnings = [x for x in done.stderr.splitlines() if x.startswith("Warning: ")]
    assert warnings == [
        "Warning: with --rate, the --max-rate / --rpm ceiling holds back sends whenever they "
        "and retries go above it (Poisson bursts, retry waves); the delay shows in "
        "queue_wait_s and total_s",
        "Warning: --ttl, --poll-rate apply to --mode async only; ignored in --mode stream",
    ]
    quiet = run_cli(*args, "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    # --max-outage 0: the refused connections fail at once instead of being waited for (up to
    # 10 s for a gateway never reached); the warning is printed before anything is sent.
    gateway = run_cli("run", str(requests), "--results-root", str(tmp_path), "--gateway",
                      "http://127.0.0.1:1", "--emulator-profile", "instant", "--max-retries", "0",
                      "--max-outage", "0")
    assert "Warning: --emulator-profile is for the built-in emulator; ignored with --gateway" in (
        gateway.stderr
    )


def test_a_pipe_as_input_is_named_as_such_not_as_missing(tmp_path):
    # Before: "ff.jsonl: no such file" for a file that exists (a named pipe, or bash's <(...)).
    fifo = tmp_path / "set.jsonl"
    os.mkfifo(fifo)
    result = run_in_process("run", str(fifo), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"Error: {fifo}: not a regular file (a pipe or device); run reads its input more than "
        "once (to fingerprint it for resume, to count it, to send it): save it to a file first"
    )
    assert not (tmp_path / "out").exists()


def test_a_request_waiting_to_retry_when_the_run_stops_sends_no_retry(
    make_emulator, requests_file, tmp_path
):
    # The stop was checked only before the back-off: a request already waiting (here the 2 s
    # a 429's retry-after asks) sent its retry after the Ctrl-C, during the drain.
    out = tmp_path / "out"
    with make_emulator(fault_429=1.0, retry_after_s=2) as emu:
        proc = start_run(str(requests_file(10)), "--gateway", emu.base_url, "--out", str(out),
                         "-c", "2")
        deadline = time.monotonic() + 20
        while emu.stats()["requests"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        sent = emu.stats()["requests"]
    assert proc.returncode == 3, stderr
    assert sent == 2, (sent, stderr)  # the two first attempts, no retry
    rows = read_rows(out)
    assert len(rows) == 2 and set(rows["status"]) == {"cancelled"}
    assert rows["error_message"].str.contains("not retried: the run stopped before the retry",
                                              regex=False).all()


def test_run_names_parquet_columns_it_neither_sends_nor_keeps(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    body = {"model": "claude-haiku-4-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}
    path = tmp_path / "set.parquet"
    pq.write_table(pa.table({"params": [json.dumps(body)], "answer": ["a"]}), path)
    done = run_cli("run", str(path), "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert ("Note: column not used: answer (--metadata-column NAME keeps one in each row's "
            "metadata)") in done.stderr


def test_the_demo_profile_without_the_source_tree_is_the_same(monkeypatch, tmp_path):
    # Installed from a wheel, jobs/emulator/ is not there: the default must still run.
    from batchrunner import embedded

    shipped = embedded.load_emulator_profile(None, seed=3)
    monkeypatch.setattr(embedded, "PROFILE_DIR", tmp_path)
    assert embedded.load_emulator_profile(None, seed=3) == shipped
    with pytest.raises(ConfigError, match="--emulator-profile 'flaky': no such file"):
        embedded.load_emulator_profile("flaky")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_requests_waiting_for_the_rate_ceiling_are_not_sent_after_ctrl_c(
    make_emulator, requests_file, tmp_path, mode
):
    # -c 20 --max-rate 4: most workers wait for the ceiling. Before, each still went out
    # after the Ctrl-C (200 of 320 submits came after it in the audit, each a paid job).
    out = tmp_path / "out"
    with make_emulator() as emu:
        proc = start_run(str(requests_file(40)), "--gateway", emu.base_url, "--out", str(out),
                         "-c", "20", "--max-rate", "4", "--mode", mode)
        kind = "sync" if mode == "sync" else "async_submit"
        deadline = time.monotonic() + 20
        while (sum(1 for t in emu.ground_truth() if t["kind"] == kind) < 3
               and time.monotonic() < deadline):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        at_stop = sum(1 for t in emu.ground_truth() if t["kind"] == kind)
        _, stderr = proc.communicate(timeout=60)
        sent = sum(1 for t in emu.ground_truth() if t["kind"] == kind)
    assert proc.returncode == 3, stderr
    assert at_stop >= 3 and sent - at_stop <= 1, (at_stop, sent)  # one may be past the ceiling
    # Before: "waiting up to 30 s for 20 submits in flight", none of them sent yet.
    assert "waiting for the rate ceiling end as cancelled, not sent" in stderr
    rows = read_rows(out)
    waited = rows[rows["error_message"] == "not sent: the run stopped while it waited for the "
                  "rate ceiling"]
    assert len(waited) >= 10 and set(waited["status"]) == {"cancelled"}
    assert waited["sent_at"].isna().all() and (waited["attempts"] == 0).all()


def test_a_stop_ends_a_long_wait_for_the_rate_ceiling_at_once(make_emulator, requests_file,
                                                               tmp_path):
    # --rpm 30: one start every 2 s. The waiters were released one slot at a time after a
    # stop, so the run waited the whole --drain-timeout, and most of them were recorded as
    # "stopped while this request was in flight", never sent.
    out = tmp_path / "out"
    with make_emulator() as emu:
        proc = start_run(str(requests_file(20)), "--gateway", emu.base_url, "--out", str(out),
                         "-c", "20", "--rpm", "30", "--drain-timeout", "20")
        deadline = time.monotonic() + 20
        while emu.stats()["requests"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - stopped
        sent = emu.stats()["requests"]
    assert proc.returncode == 3, stderr
    assert took < 10, took  # not the 20 s drain
    rows = read_rows(out)
    waited = rows[rows["status"] == "cancelled"]
    assert len(rows) == 20 and len(waited) == 20 - sent
    assert set(waited["error_message"]) == {
        "not sent: the run stopped while it waited for the rate ceiling"}
