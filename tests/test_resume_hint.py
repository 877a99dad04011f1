"""The resume command printed after an interrupted run: the user's command, runnable as is."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from click.testing import CliRunner

from batchrunner.cli.resume_hint import RecordingCommand, raw_args, resume_command

RUN_DIR = Path("results/set-sync-20261126T000000Z")


def test_keeps_every_option_and_points_at_the_run_directory() -> None:
    args = [
        "set.jsonl",
        "--gateway",
        "http://gw:8080",
        "--mode",
        "stream",
        "-c",
        "64",
        "--rate=20",
        "--arrival",
        "poisson",
        "-H",
        "X-Team: evals",
        "--seed",
        "7",
    ]
    command, left_out = resume_command(args, RUN_DIR)
    assert shlex.split(command) == ["batchrunner", "run", *args, "--out", str(RUN_DIR)]
    assert left_out == []


def test_replaces_out_name_results_root_and_resume_in_either_spelling() -> None:
    args = [
        "set.jsonl",
        "--out",
        "old",
        "--name=n",
        "--results-root",
        "r",
        "--resume",
        "--out=other",
        "-q",
    ]
    command, _ = resume_command(args, RUN_DIR)
    assert shlex.split(command) == ["batchrunner", "run", "set.jsonl", "-q", "--out", str(RUN_DIR)]


def test_leaves_out_every_credential_in_every_spelling() -> None:
    args = [
        "set.jsonl",
        "--api-key",
        "sk-ant-1",
        "--virtual-key=sk-bf-2",
        "-H",
        "Authorization: Bearer tok-3",
        "--header=X-Api-Token: tok-4",
        "-HX-Trace: sk-5",
        "-H",
        "X-Team: evals",
        "--gateway",
        "http://gw",
    ]
    command, left_out = resume_command(args, RUN_DIR)
    for secret in ("sk-ant-1", "sk-bf-2", "tok-3", "tok-4", "sk-5"):
        assert secret not in command
    assert shlex.split(command) == [
        "batchrunner",
        "run",
        "set.jsonl",
        "-H",
        "X-Team: evals",
        "--gateway",
        "http://gw",
        "--out",
        str(RUN_DIR),
    ]
    assert left_out == [
        "--api-key",
        "--virtual-key",
        "-H 'Authorization: …'",
        "-H 'X-Api-Token: …'",
        "-H 'X-Trace: …'",
    ]


def test_adds_retry_failed_once_when_asked_and_quotes_paths() -> None:
    command, _ = resume_command(["my set.jsonl"], Path("runs/a b"), retry_failed=True)
    assert shlex.split(command) == [
        "batchrunner",
        "run",
        "my set.jsonl",
        "--out",
        "runs/a b",
        "--retry-failed",
    ]
    again, _ = resume_command(["s.jsonl", "--retry-failed"], RUN_DIR, retry_failed=True)
    assert again.count("--retry-failed") == 1


def test_a_recording_command_keeps_its_arguments_as_typed() -> None:
    seen: list[list[str] | None] = []

    @click.command(cls=RecordingCommand)
    @click.argument("path")
    @click.option("--api-key")
    def cmd(path: str, api_key: str | None) -> None:
        seen.append(raw_args())

    result = CliRunner().invoke(cmd, ["x.jsonl", "--api-key=k"])
    assert result.exit_code == 0, result.output
    assert seen == [["x.jsonl", "--api-key=k"]]


def test_a_gateway_url_holding_credentials_is_left_out() -> None:
    args = ["s.jsonl", "--gateway", "http://bob:SECRETPW@127.0.0.1:1/?k=SECRETQ", "-c", "4"]
    command, left_out = resume_command(args, RUN_DIR)
    assert "SECRET" not in command and left_out == ["--gateway (its URL holds credentials)"]
    assert shlex.split(command)[2:] == ["s.jsonl", "-c", "4", "--out", str(RUN_DIR)]


def test_a_key_anywhere_else_in_the_command_is_redacted() -> None:
    args = ["s.jsonl", "--gateway", "http://127.0.0.1:1/sk-PATHKEY", "--api-key", "sk-PATHKEY"]
    command, left_out = resume_command(args, RUN_DIR, secrets=["sk-PATHKEY"])
    assert "sk-PATHKEY" not in command and "http://127.0.0.1:1/<redacted>" in command
    assert left_out == ["--api-key", "the parts shown as <redacted>"]


def test_options_go_before_a_double_dash_and_the_program_is_kept() -> None:
    command, _ = resume_command(
        ["-c", "4", "--", "--odd-name.jsonl"], RUN_DIR, program="python -m batchrunner run"
    )
    assert shlex.split(command) == [
        "python", "-m", "batchrunner", "run", "-c", "4", "--out", str(RUN_DIR), "--",
        "--odd-name.jsonl",
    ]  # fmt: skip


def test_the_failed_line_counts_each_kind_and_is_empty_without_failures():
    from batchrunner.cli.resume_hint import retry_failed_line

    command = "batchrunner run x.jsonl --out d --retry-failed"
    line = retry_failed_line({"ok": 5, "error": 1, "timeout": 1_200, "expired": 0}, command, [])
    assert line == (
        "1,201 requests failed (error 1, timeout 1,200); send them again with: " + command
    )
    assert retry_failed_line({"expired": 1}, command, ["--api-key", "--api-key"]).endswith(
        "send it again with: " + command + " (give --api-key again)"
    )
    assert retry_failed_line({"ok": 3, "cancelled": 2}, command, []) == ""


def test_leaves_out_abandon_jobs() -> None:
    # Given again, it would abandon the jobs the session had just submitted: paid twice.
    command, _ = resume_command(["set.jsonl", "--mode", "async", "--abandon-jobs"], RUN_DIR)
    assert shlex.split(command) == ["batchrunner", "run", "set.jsonl", "--mode", "async",
                                    "--out", str(RUN_DIR)]
