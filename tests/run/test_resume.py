"""Resuming with other options, of other directories, and what a resume reads and keeps."""

from __future__ import annotations

import errno
import gc
import os
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrunner import formats
from batchrunner.config import RunConfig
from batchrunner.rundir import RunDirError
from batchrunner.runner import run_sync
from batchrunner.store import RunStore

from .conftest import read_rows, run_cli, run_in_process, write_requests


def run(requests: Path, gateway: str, out: Path, **kw):
    return run_sync(RunConfig(requests=requests, gateway=gateway, out=out, **kw), quiet=True)


def leave_a_journal_row(out: Path) -> Path:
    """What a kill -9 leaves: a finished row (request 5) in a journal segment; its path."""
    (out / "journal").mkdir()
    segment = out / "journal" / "seg-000009.jsonl"
    segment.write_bytes(
        orjson.dumps({"input_index": 5, "custom_id": "req-5", "status": "ok"}) + b"\n"
    )
    return segment


def refusal_on_a_full_disk(monkeypatch, target: str, resume) -> str:
    """The RunDirError's message of ``resume()`` while *target* fails with ENOSPC."""

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(target, disk_full)
        with pytest.raises(RunDirError) as refused:
            resume()
    return str(refused.value)


def bare_requests(path: Path, n: int) -> Path:
    """Rows without model and max_tokens: the run's --model and --max-tokens fill them in."""
    params = {"messages": [{"role": "user", "content": "why?"}]}
    lines = [orjson.dumps({"custom_id": f"r{i}", "params": params}) for i in range(n)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_resume_that_would_build_other_requests_is_refused_naming_the_options(
    make_emulator, tmp_path
):
    # Before, the rest of the run went out with the new defaults while run.json named only
    # those: half the rows answered claude-sonnet-4-5 at 50 tokens, half claude-haiku-4-5 at 20.
    requests, out = bare_requests(tmp_path / "bare.jsonl", 10), tmp_path / "out"
    sonnet = {"model": "claude-sonnet-4-5", "max_tokens": 50}
    with make_emulator() as emu:
        first = run(requests, emu.base_url, out, max_requests=4, **sonnet)
        assert first.status == "incomplete"
        with pytest.raises(RunDirError) as refused:
            run(requests, emu.base_url, out, model="claude-haiku-4-5", max_tokens=20)
        assert str(refused.value).startswith(
            "cannot resume with --model 'claude-haiku-4-5' and --max-tokens 20: this run's rows "
            "were sent with --model 'claude-sonnet-4-5' and --max-tokens 50,"
        )
        with pytest.raises(RunDirError, match="cannot resume with no --model: "):
            run(requests, emu.base_url, out, max_tokens=50)
        assert len(read_rows(out)) == 4  # the refusals changed nothing
        done = run(requests, emu.base_url, out, **sonnet)
    assert done.status == "finished"
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(10))
    assert set(rows["model_requested"]) == {"claude-sonnet-4-5"}


def test_a_resume_with_other_plain_headers_is_refused_but_a_new_key_is_fine(
    make_emulator, tmp_path
):
    # -H anthropic-beta shapes the requests (a beta feature on or off); a credential header
    # may change between sessions (a rotated key) and is never on record anyway.
    requests, out = write_requests(tmp_path / "set.jsonl", 8), tmp_path / "out"
    beta = {"anthropic-beta": "context-1m-2025-08-07", "Authorization": "Bearer sk-old-0000000"}
    with make_emulator() as emu:
        run(requests, emu.base_url, out, max_requests=3, headers=beta)
        with pytest.raises(RunDirError) as refused:
            run(requests, emu.base_url, out, headers={"Authorization": "Bearer sk-old-0000000"})
        assert str(refused.value).startswith(
            "cannot resume with no -H: this run's rows were sent with "
            "-H 'anthropic-beta: context-1m-2025-08-07',"
        )
        with pytest.raises(RunDirError, match="cannot resume with -H 'anthropic-beta: other'"):
            run(requests, emu.base_url, out, headers={**beta, "anthropic-beta": "other"})
        assert len(read_rows(out)) == 3  # the refusals changed nothing
        rotated = {"ANTHROPIC-BETA": "context-1m-2025-08-07", "Authorization": "Bearer sk-new-1"}
        done = run(requests, emu.base_url, out, headers=rotated)
    assert done.status == "finished" and len(read_rows(out)) == 8


def test_a_run_without_rows_yet_may_be_resumed_with_the_missing_default(make_emulator, tmp_path):
    requests, out = bare_requests(tmp_path / "bare.jsonl", 6), tmp_path / "out"
    with make_emulator() as emu:
        rejected = run(requests, emu.base_url, out)  # no model: every row is rejected
        assert rejected.status == "rejected"
        fixed = run(requests, emu.base_url, out, model="claude-sonnet-4-5", max_tokens=8)
    assert fixed.status == "finished" and fixed.rejected == 0
    assert len(read_rows(out)) == 6


def test_rows_that_retry_failed_removes_do_not_hold_the_options(make_emulator, tmp_path):
    # Every row failed on a model the gateway refuses: --retry-failed with another one is fine;
    # a plain resume (which keeps the failed rows) is not.
    from batchrunner.retry import RetryPolicy

    requests, out = write_requests(tmp_path / "set.jsonl", 6), tmp_path / "out"
    no_retry = RetryPolicy(max_retries=0)
    with make_emulator(fail_models=("claude-bad",), fail_model_status=500) as emu:
        first = run(requests, emu.base_url, out, model_override="claude-bad", retry=no_retry)
        assert first.summary["status"] == {"error": 6}
        with pytest.raises(RunDirError, match="--model-override 'claude-bad'"):
            run(requests, emu.base_url, out, model_override="claude-haiku-4-5")
        fixed = run(
            requests, emu.base_url, out, model_override="claude-haiku-4-5", retry_failed=True
        )
    assert fixed.status == "finished" and fixed.summary["status"] == {"ok": 6}
    assert set(read_rows(out)["model_requested"]) == {"claude-haiku-4-5"}


def test_each_session_s_options_and_version_stay_on_record(make_emulator, tmp_path):
    requests, out = write_requests(tmp_path / "set.jsonl", 12), tmp_path / "out"
    with make_emulator() as emu:
        run(requests, emu.base_url, out, concurrency=2, max_requests=5)
        run(requests, emu.base_url, out, rate=500.0, concurrency=7, keep_response_json=False)
    info = orjson.loads((out / "run.json").read_bytes())
    assert info["format"] == 1
    first, second = info["sessions"]
    assert (first["config"]["concurrency"], first["config"]["max_requests"]) == (2, 5)
    assert first["config"]["rate"] is None and first["config"]["keep_response_json"] is True
    assert (second["config"]["concurrency"], second["config"]["rate"]) == (7, 500.0)
    assert second["config"]["keep_response_json"] is False
    assert info["config"] == second["config"]  # the top level is the latest session's
    assert (
        first["environment"]["versions"]["batchrunner"]
        == info["environment"]["versions"]["batchrunner"]
    )


def test_retry_failed_records_what_it_removed(make_emulator, tmp_path):
    from batchrunner.retry import RetryPolicy

    requests, out = write_requests(tmp_path / "set.jsonl", 6), tmp_path / "out"
    with make_emulator(fault_500=1.0) as emu:
        run(requests, emu.base_url, out, retry=RetryPolicy(max_retries=0))
    with make_emulator() as emu:
        run(requests, emu.base_url, out, retry_failed=True)
    sessions = orjson.loads((out / "run.json").read_bytes())["sessions"]
    assert "redone" not in sessions[0] and sessions[1]["redone"] == {"error": 6}


def test_a_run_directory_of_a_newer_format_is_not_resumed(make_emulator, tmp_path):
    requests, out = write_requests(tmp_path / "set.jsonl", 6), tmp_path / "out"
    with make_emulator() as emu:
        run(requests, emu.base_url, out, max_requests=2)
        info = orjson.loads((out / "run.json").read_bytes())
        info["format"] = 2
        info["environment"]["versions"]["batchrunner"] = "9.0.0"
        (out / "run.json").write_bytes(orjson.dumps(info))
        with pytest.raises(RunDirError, match=r"written by a newer batchrunner \(9.0.0\) in "):
            run(requests, emu.base_url, out)
        del info["format"]  # what versions before the field wrote: format 1
        (out / "run.json").write_bytes(orjson.dumps(info))
        assert run(requests, emu.base_url, out).status == "finished"


def test_resume_of_a_missing_directory_is_refused_not_started_afresh(make_emulator, tmp_path):
    # A mistyped --out with --resume started the whole set again, paid in full.
    requests, out = write_requests(tmp_path / "set.jsonl", 4), tmp_path / "typo"
    with make_emulator() as emu:
        for flag in ("resume", "retry_failed"):
            with pytest.raises(RunDirError, match=f"--{flag.replace('_', '-')}: there is no run"):
                run(requests, emu.base_url, out, **{flag: True})
        assert not out.exists()
        out.mkdir()  # an empty directory holds no run to resume either
        with pytest.raises(RunDirError, match="--resume: there is no run directory"):
            run(requests, emu.base_url, out, resume=True)
        assert not any(out.iterdir())


def test_resume_with_a_name_resumes_that_run_not_the_latest(make_emulator, tmp_path):
    # --name was ignored by --resume without a word: the latest run of the input was resumed.
    requests, root = write_requests(tmp_path / "set.jsonl", 6), tmp_path / "results"
    with make_emulator() as emu:
        def start(*extra: str):
            return run_cli("run", str(requests), "--gateway", emu.base_url, "--results-root",
                           str(root), "-q", *extra)

        assert start("--name", "first", "--max-requests", "2").returncode == 0
        assert start("--name", "second", "--max-requests", "3").returncode == 0
        resumed = start("--resume", "--name", "first")
        assert resumed.returncode == 0, resumed.stderr
        missing = start("--resume", "--name", "third")
    assert len(read_rows(root / "first")) == 6 and len(read_rows(root / "second")) == 3
    assert missing.returncode == 2 and "there is no run directory" in missing.stderr
    assert not (root / "third").exists()


def test_a_full_disk_while_recovering_the_journal_says_so_and_keeps_it(
    make_emulator, tmp_path, monkeypatch
):
    # Before: "cannot create the run directory out: ..." for a directory that exists.
    requests, out = write_requests(tmp_path / "set.jsonl", 6), tmp_path / "out"
    with make_emulator() as emu:
        run(requests, emu.base_url, out, max_requests=2)
        segment = leave_a_journal_row(out)

        refused = refusal_on_a_full_disk(
            monkeypatch,
            "batchrunner.store.compact_segment",
            lambda: run(requests, emu.base_url, out),
        )
        assert refused == (
            f"cannot convert {segment} (rows of an earlier session) into "
            f"{out / 'data' / 'part-000009.parquet'}: No space left on device; the segment is "
            "kept: free space, then resume"
        )
        assert segment.exists()
        result = run(requests, emu.base_url, out)
    assert result.status == "finished" and result.sent_this_session == 3
    assert sorted(read_rows(out)["input_index"]) == list(range(6))


class ParseCounter:
    def __init__(self) -> None:
        self.indices: list[int] = []
        self._parse = formats._parse_line

    def __call__(self, line: bytes, index: int, location: str) -> formats.RawRow:
        self.indices.append(index)
        return self._parse(line, index, location)


def test_a_resume_reads_only_the_rows_it_sends_and_still_finds_duplicates(
    make_emulator, tmp_path, monkeypatch
):
    # Before, every finished row was parsed again for its custom_id, on the event loop: 3 s
    # before the first request of a 1M-row run resumed at 40 %, and with scattered rows to
    # redo (--retry-failed) while requests were in flight: p50 latency 23 ms instead of 3 ms.
    requests = write_requests(tmp_path / "set.jsonl", 40)
    lines = requests.read_bytes().splitlines(keepends=True)
    lines[35] = lines[35].replace(b'"req-35"', b'"req-3"')  # repeats a finished row's id
    lines[36] = lines[36].replace(b'"max_tokens":32', b'"max_tokens":0')  # invalid
    requests.write_bytes(b"".join(lines))
    out = tmp_path / "out"
    with make_emulator() as emu:
        first = run(requests, emu.base_url, out, max_requests=20, concurrency=1)
        assert first.status == "incomplete" and first.rejected == 0
        parsed = ParseCounter()
        monkeypatch.setattr(formats, "_parse_line", parsed)
        second = run(requests, emu.base_url, out)
        assert sorted(parsed.indices) == list(range(20, 40))
        parsed.indices.clear()
        third = run(requests, emu.base_url, out)  # everything done: the rejects again
        assert parsed.indices == [35, 36]
    for result in (second, third):
        assert result.status == "finished" and result.rejected == 2
    rejects = [orjson.loads(line) for line in (out / "rejects.jsonl").read_bytes().splitlines()]
    assert [r["input_index"] for r in rejects] == [35, 36]
    assert rejects[0]["reason"].startswith("duplicate custom_id 'req-3'")
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == [i for i in range(40) if i not in (35, 36)]


def test_a_finished_run_without_rejects_is_resumed_without_reading_its_input(
    make_emulator, tmp_path, monkeypatch
):
    requests, out = write_requests(tmp_path / "set.jsonl", 10), tmp_path / "out"
    with make_emulator() as emu:
        assert run(requests, emu.base_url, out).status == "finished"
        parsed = ParseCounter()
        monkeypatch.setattr(formats, "_parse_line", parsed)
        again = run(requests, emu.base_url, out)
    assert again.status == "finished" and again.sent_this_session == 0
    assert parsed.indices == [] and len(read_rows(out)) == 10


def test_a_parquet_input_resumes_with_the_right_rows_and_duplicates(make_emulator, tmp_path):
    n = 30
    ids = [f"p{i}" for i in range(n)]
    ids[25] = "p2"  # a duplicate of a row the first session finished
    params = [
        orjson.dumps(
            {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": f"x{i}"}]}
        ).decode()
        for i in range(n)
    ]
    requests = tmp_path / "set.parquet"
    pq.write_table(pa.table({"custom_id": ids, "params": params}), requests, row_group_size=7)
    out = tmp_path / "out"
    with make_emulator() as emu:
        run(requests, emu.base_url, out, max_requests=11, concurrency=1)
        result = run(requests, emu.base_url, out)
    assert result.status == "finished" and result.rejected == 1
    rows = read_rows(out).sort_values("input_index")
    assert rows["input_index"].tolist() == [i for i in range(n) if i != 25]
    assert rows["custom_id"].tolist() == [ids[i] for i in range(n) if i != 25]
    reject = orjson.loads((out / "rejects.jsonl").read_bytes())
    assert reject["location"] == f"{requests}#row 25" and reject["input_index"] == 25


def test_opening_a_run_leaves_no_parquet_footer_waiting_for_the_garbage_collector(tmp_path):
    # meta.schema made each footer part of a reference cycle: ~1.3 MB per 50k-row part stayed
    # resident until a collection, +44 MB while opening a 1M-row run.
    store = RunStore.open(tmp_path / "run", segment_rows=10)
    store.append_rows([{"input_index": i, "custom_id": f"c{i}", "status": "ok"} for i in range(60)])
    store.close()
    gc.collect()
    gc.disable()
    try:
        RunStore.open(tmp_path / "run").close()
        alive = [o for o in gc.get_objects() if isinstance(o, pq.FileMetaData)]
    finally:
        gc.enable()
    assert alive == []


def test_a_full_disk_when_a_resume_starts_is_not_an_internal_error(
    make_emulator, tmp_path, monkeypatch
):
    # Before: the OSError escaped, and the CLI printed "Internal error" (exit 1, "a bug").
    requests, out = write_requests(tmp_path / "set.jsonl", 5), tmp_path / "out"

    with make_emulator() as emu:
        run(requests, emu.base_url, out, max_requests=2)
        refused = refusal_on_a_full_disk(
            monkeypatch,
            "batchrunner.runner.write_json_atomic",
            lambda: run(requests, emu.base_url, out),
        )
        assert refused == (
            f"cannot write {out / 'run.json'}: No space left on device; nothing was sent: free "
            "space, then resume"
        )
        # A new run's directory has no run.json for --resume to find: it is named.
        fresh = tmp_path / "fresh"
        refused = refusal_on_a_full_disk(
            monkeypatch,
            "batchrunner.runner.write_json_atomic",
            lambda: run(requests, emu.base_url, fresh),
        )
        assert refused == (
            f"cannot write {fresh / 'run.json'}: No space left on device; nothing was sent: "
            f"free space, then run again with --out {fresh}"
        )
        assert run(requests, emu.base_url, out).status == "finished"
    sessions = orjson.loads((out / "run.json").read_bytes())["sessions"]
    assert [s["status"] for s in sessions] == ["incomplete", "finished"]


def test_outstanding_async_jobs_count_as_sent_with_the_run_s_options(make_emulator, tmp_path):
    # Detached jobs have no rows yet: a resume with another --model was accepted, and the
    # polled jobs' rows then named the new model while the gateway ran the old one.
    from batchrunner.emulator import Dist
    from batchrunner.schema import Mode

    requests, out = bare_requests(tmp_path / "bare.jsonl", 6), tmp_path / "out"
    sonnet = {"model": "claude-sonnet-4-5", "max_tokens": 50}
    with make_emulator(ttft=Dist("fixed", 0.2)) as emu:
        run(requests, emu.base_url, out, mode=Mode.ASYNC, detach=True, max_requests=3, **sonnet)
        assert not (out / "data").exists() or read_rows(out).empty  # only jobs so far
        with pytest.raises(RunDirError, match="cannot resume with --model 'claude-haiku-4-5'"):
            run(
                requests,
                emu.base_url,
                out,
                mode=Mode.ASYNC,
                model="claude-haiku-4-5",
                max_tokens=50,
            )
        done = run(requests, emu.base_url, out, mode=Mode.ASYNC, **sonnet)
    assert done.status == "finished"
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(6))
    assert set(rows["model_requested"]) == {"claude-sonnet-4-5"}


def test_allow_changed_options_goes_on_warns_and_records_each_session(
    make_emulator, tmp_path, capsys
):
    requests, out = bare_requests(tmp_path / "bare.jsonl", 8), tmp_path / "out"
    long_a, long_b = "You are terse. " * 8 + "Answer in English.", "You are terse. " * 8 + "Ok."
    with make_emulator() as emu:
        run(
            requests,
            emu.base_url,
            out,
            max_requests=3,
            model="claude-sonnet-4-5",
            max_tokens=50,
            system=long_a,
        )
        # Long texts that differ past what the message shows say where they differ.
        with pytest.raises(RunDirError, match=r"differs from the one given after 120 characters\)"):
            run(
                requests, emu.base_url, out, model="claude-sonnet-4-5", max_tokens=50, system=long_b
            )
        done = run_sync(
            RunConfig(requests=requests, gateway=emu.base_url, out=out,
                      model="claude-haiku-4-5", max_tokens=50, system=long_a,
                      allow_changed_options=True),
            quiet=False,
        )  # fmt: skip
    assert done.status == "finished"
    err = capsys.readouterr().err
    assert "Warning (--allow-changed-options): this run's rows were sent with --model " in err
    assert "the rest will be sent with --model 'claude-haiku-4-5'" in err
    rows = read_rows(out).sort_values("input_index")
    assert list(rows["model_requested"]) == ["claude-sonnet-4-5"] * 3 + ["claude-haiku-4-5"] * 5
    sessions = orjson.loads((out / "run.json").read_bytes())["sessions"]
    assert [s["config"]["model"] for s in sessions] == ["claude-sonnet-4-5", "claude-haiku-4-5"]
    # The rows now differ: a refusal says whose options it quotes.
    with pytest.raises(
        RunDirError, match="this run's last session sent its rows with --model 'claude-haiku-4-5'"
    ):
        run(
            requests,
            "http://127.0.0.1:9",
            out,
            model="claude-sonnet-4-5",
            max_tokens=50,
            system=long_a,
        )


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda text: text[: len(text) // 2], "is not valid JSON (unexpected end of data"),
        (lambda text: b"[]", "holds a JSON list, not the run's description"),
    ],
    ids=["truncated", "not-an-object"],
)
def test_a_damaged_run_json_is_named_and_the_rows_are_said_to_be_intact(
    make_emulator, requests_file, tmp_path, damage, problem
):
    out = tmp_path / "out"
    requests = requests_file(4)
    run(requests, make_emulator().base_url, out)
    damaged = damage((out / "run.json").read_bytes())
    (out / "run.json").write_bytes(damaged)
    parts = {p: p.read_bytes() for p in (out / "data").iterdir()}
    result = run_in_process("run", str(requests), "--out", str(out))
    assert result.exit_code == 2, result.output
    error = result.output.strip()
    assert error.startswith(f"Error: {out / 'run.json'} {problem}")
    assert f"the rows already written ({out / 'data'}) are intact" in error
    assert "Restore run.json" in error and "give another --out to start a new run" in error
    assert "not a batchrunner run directory" not in error and len(error.splitlines()) == 1
    # nothing was touched: the file as it was, the rows as they were
    assert (out / "run.json").read_bytes() == damaged
    assert {p: p.read_bytes() for p in (out / "data").iterdir()} == parts


@pytest.mark.parametrize("recorded", [None, [], "set.jsonl", {"path": "set.jsonl"}])
def test_a_run_json_without_its_input_is_refused_by_name(
    make_emulator, requests_file, tmp_path, recorded
):
    # Before: "is not the file this run started with (None, None bytes)".
    out = tmp_path / "out"
    requests = requests_file(4)
    run(requests, make_emulator().base_url, out)
    info = orjson.loads((out / "run.json").read_bytes())
    if recorded is None:
        del info["input"]
    else:
        info["input"] = recorded
    (out / "run.json").write_bytes(orjson.dumps(info))
    result = run_in_process("run", str(requests), "--out", str(out), "--resume")
    assert result.exit_code == 2, result.output
    error = result.output.strip()
    assert error == (
        'Error: cannot resume: run.json records no input file (its "input" field is missing or '
        f"damaged), so rows already written cannot be matched to {requests}. Start a new run "
        "(--out NEW_DIR), or restore run.json."
    )


def test_collect_names_a_damaged_run_json(make_emulator, requests_file, tmp_path):
    out = tmp_path / "out"
    emu = make_emulator()
    run(requests_file(2), emu.base_url, out, mode="async", detach=True)
    (out / "run.json").write_bytes((out / "run.json").read_bytes()[:-40])
    result = run_in_process("collect", str(out), "--gateway", emu.base_url)
    assert result.exit_code == 2, result.output
    assert f"{out / 'run.json'} is not valid JSON (" in result.output
    assert "Restore run.json (e.g. from a backup) to go on with this run" in result.output
    assert "no run.json" not in result.output


def json_error(text: bytes) -> str:
    with pytest.raises(orjson.JSONDecodeError) as error:
        orjson.loads(text)
    return str(error.value)


def test_resume_does_not_skip_a_run_whose_run_json_is_damaged(make_emulator, tmp_path):
    # find_latest_run skipped such a directory in silence: --resume went on with an older run
    # (or started none), leaving the rows of the latest aside without a word.
    requests, root = write_requests(tmp_path / "set.jsonl", 6), tmp_path / "results"

    def start() -> Path:
        config = RunConfig(requests=requests, gateway=emu.base_url, results_root=root)
        config.max_requests = 2
        return run_sync(config, quiet=True).run_dir

    def resume(*args: str):
        return run_cli("run", str(requests), "--results-root", str(root), "--gateway",
                       emu.base_url, "--resume", *args)  # fmt: skip

    with make_emulator() as emu:
        older, latest = start(), start()
        assert older != latest and len(read_rows(older)) == len(read_rows(latest)) == 2
        # The latest is damaged: refused as --out refuses it; nothing sent, nothing changed.
        intact = (latest / "run.json").read_bytes()
        cut = intact[: len(intact) // 2]
        (latest / "run.json").write_bytes(cut)
        sent = emu.stats()["requests"]
        refused = resume()
        assert refused.returncode == 2, (refused.stdout, refused.stderr)
        assert refused.stderr.splitlines() == [
            f"Error: {latest / 'run.json'} is not valid JSON ({json_error(cut)}); the rows "
            f"already written ({latest / 'data'}) are intact. Restore run.json (e.g. from a "
            "backup) to go on with this run, or give the run directory to resume with --out, "
            "or leave out --resume to start a new run"
        ]
        assert emu.stats()["requests"] == sent and (latest / "run.json").read_bytes() == cut
        assert len(read_rows(older)) == 2 and sorted(p.name for p in root.iterdir()) == sorted(
            [older.name, latest.name]
        )
        # An older one is damaged (cut before it names its input or start: its default name
        # tells both), and
        # one of a custom name cannot be told: the latest is resumed, both are warned of.
        (latest / "run.json").write_bytes(intact)
        (older / "run.json").write_bytes(b"{\n")
        unknown = root / "mine"
        unknown.mkdir()
        # Cut inside its input's path (the audit's case, which was skipped without a word).
        custom_cut = b'{\n  "name": "mine",\n  "input": {\n    "p'
        (unknown / "run.json").write_bytes(custom_cut)
        resumed = resume()
        assert resumed.returncode == 0, resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("Warning: ")]
    assert warnings == [
        f"Warning: {older / 'run.json'} is not valid JSON (unexpected end of data: line 2 "
        f"column 1 (char 2)): an earlier run of {requests} than {latest}, which is resumed; its "
        f"rows ({older / 'data'}) are intact: restore run.json to resume it with --out {older}",
        f"Warning: {unknown / 'run.json'} is not valid JSON ({json_error(custom_cut)}), so "
        f"whether it is a run of {requests} cannot be "
        f"told: skipped; its rows ({unknown / 'data'}) are intact: restore run.json to resume "
        f"it with --out {unknown}",
    ]
    assert len(read_rows(latest)) == 6 and len(read_rows(older)) == 2


def test_the_directory_stays_locked_until_run_json_is_final(make_emulator, tmp_path,
                                                            monkeypatch):
    # The lock went with the store's close, before the closing summary and the last run.json
    # write: a resume started then took the directory over, and the two sessions overwrote each
    # other's record in run.json (a clean session ended up "died").
    import batchrunner.runner as runner_module
    from batchrunner.store import RunDirectoryInUseError, ensure_not_in_use

    out = tmp_path / "out"
    seen: list[str] = []
    real = runner_module.summarize_batches

    def summarize_and_look(*args, **kwargs):
        try:
            ensure_not_in_use(out)
            seen.append("free")
        except RunDirectoryInUseError:
            seen.append("locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "summarize_batches", summarize_and_look)
    with make_emulator() as emu:
        result = run_sync(RunConfig(requests=write_requests(tmp_path / "s.jsonl", 5),
                                    gateway=emu.base_url, out=out), quiet=True)
    assert result.status == "finished" and seen == ["locked"]
    ensure_not_in_use(out)  # and let go once the run is over


def test_a_run_directory_deleted_under_the_run_is_said_so(make_emulator, tmp_path, monkeypatch):
    # It ended as "Internal error: FileNotFoundError ... data", then "Any rows already written
    # are kept: add --resume", neither true.
    import shutil

    import batchrunner.runner as runner_module
    from batchrunner.runner import EXIT_ABORTED

    out = tmp_path / "out"
    real = runner_module._close_and_trim

    def deleted_first(store):
        shutil.rmtree(out)
        real(store)

    monkeypatch.setattr(runner_module, "_close_and_trim", deleted_first)
    with make_emulator() as emu:
        result = run_sync(RunConfig(requests=write_requests(tmp_path / "s.jsonl", 5),
                                    gateway=emu.base_url, out=out), quiet=True)
    assert (result.status, result.exit_code) == ("aborted", EXIT_ABORTED)
    assert result.message.startswith(
        f"the run directory {out} (or its data/) was removed while the run was writing to it: "
        "its rows are gone; start a new run"), result.message
    assert not result.resumable


def test_an_input_cut_under_the_run_ends_it_aborted_saying_so(make_emulator, tmp_path):
    # It ended "incomplete: stopped", exit code 0, with a resume command then refused (the
    # input no longer matched).
    import threading
    import time

    from batchrunner.emulator.config import Dist
    from batchrunner.runner import EXIT_ABORTED

    requests = write_requests(tmp_path / "set.jsonl", 3000)
    size = requests.stat().st_size
    stop_waiting = threading.Event()

    def cut_once_sending() -> None:
        # Cut once the run is sending (it has read the first records, far from the cut), to a
        # tenth: the run then sends about 300 requests, not the 1,000 of a third cut after a
        # fixed 0.5 s, whatever the machine's speed.
        deadline = time.monotonic() + 30
        while emu.stats()["requests"] < 5 and time.monotonic() < deadline:
            if stop_waiting.wait(0.01):
                return
        os.truncate(requests, size // 10)

    with make_emulator(ttft=Dist("fixed", 0.01)) as emu:
        cut = threading.Thread(target=cut_once_sending)
        cut.start()
        try:
            result = run_sync(RunConfig(requests=requests, gateway=emu.base_url,
                                        out=tmp_path / "out", concurrency=2), quiet=True)
        finally:
            stop_waiting.set()
            cut.join()
    assert (result.status, result.exit_code) == ("aborted", EXIT_ABORTED), result.message
    assert result.message.startswith(
        f"the input {requests} changed while the run read it ({size:,} bytes at the start, "
        f"{size // 10:,} now)"), result.message
    assert not result.resumable  # no resume command that would be refused


def test_a_resume_says_why_it_is_silent_while_a_big_journal_converts(
    make_emulator, tmp_path, monkeypatch
):
    # A crash's 630 MB of journal took 5 s to convert before the first line was printed.
    import io

    from batchrunner import runner as runner_module

    requests, out = write_requests(tmp_path / "set.jsonl", 6), tmp_path / "out"
    with make_emulator() as emu:
        run(requests, emu.base_url, out, max_requests=2)
        leave_a_journal_row(out)
        monkeypatch.setattr(runner_module, "JOURNAL_NOTICE_BYTES", 10)
        stderr = io.StringIO()
        result = run_sync(RunConfig(requests=requests, gateway=emu.base_url, out=out),
                          quiet=False, stderr=stderr, progress=False)
    said = stderr.getvalue()
    assert f"rows an earlier session left in {out / 'journal'} into Parquet first" in said
    assert said.index("into Parquet first") < said.index("Resuming run")
    assert result.status == "finished"


def test_collect_of_a_path_that_does_not_exist_says_so(tmp_path):
    # A typo in the path read as a damaged run: "is not a batchrunner run directory".
    missing = tmp_path / "no-such-run"
    result = run_in_process("collect", str(missing))
    assert result.exit_code == 2
    assert f"Error: {missing}: no such directory" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_in_process("collect", str(empty))
    assert result.exit_code == 2
    assert f"{empty} is not a batchrunner run directory (no run.json)" in result.output
