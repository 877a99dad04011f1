"""`batchrunner validate`: summaries, exit codes (0 ok, 1 rejects, 2 usage/file), no tracebacks."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from batchrunner.cli import main

ROOT = Path(__file__).resolve().parents[1]
BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hi"}],
}


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, ["validate", *args])
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    return result


def write_lines(path: Path, *lines: object) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else orjson.dumps(x).decode()) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("name", ["demo.jsonl", "demo.parquet"])
def test_demo_is_valid(name: str) -> None:
    result = run(str(ROOT / "jobs" / name))
    assert result.exit_code == 0, result.output
    assert "60 rows read, 60 valid, 0 rejected" in result.stdout
    assert "claude-opus-4-1 (4)" in result.stdout


def test_rejects_are_listed_with_location_and_exit_1(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "a.jsonl",
        BODY,
        {**BODY, "max_tokens": 0},
        "{oops",
        {"custom_id": "0", "params": BODY},
        {**BODY, "stream": True},
    )
    result = run(str(path))
    assert result.exit_code == 1
    out = result.stdout
    assert "5 rows read, 2 valid, 3 rejected (1 duplicate custom_id)" in out
    assert f"{path}:2: max_tokens must be a positive integer, got 0" in out
    assert f"{path}:3: invalid JSON" in out
    assert f"{path}:4: duplicate custom_id '0'" in out
    assert "models: claude-haiku-4-5 (2)" in out
    assert "'stream' was removed from 1 request(s)" in out


def test_only_the_first_20_rejects_are_shown(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", *(["[]"] * 25))
    result = run(str(path))
    assert result.exit_code == 1
    assert result.stdout.count("not a JSON object") == 20
    assert "... and 5 more" in result.stdout


def test_defaults_make_a_set_valid(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", {"messages": BODY["messages"]})
    assert run(str(path)).exit_code == 1
    result = run(str(path), "--model", "claude-sonnet-4-5", "--max-tokens", "100", "--system", "s")
    assert result.exit_code == 0, result.output
    assert "claude-sonnet-4-5 (1)" in result.stdout


def test_strict_stops_at_the_first_reject(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", BODY, "[]", "[]")
    result = run(str(path), "--strict")
    assert result.exit_code == 1
    assert "stopped at the first invalid row" in result.stdout
    assert result.stdout.count("not a JSON object") == 1


def test_json_report(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", BODY, "[]")
    result = run(str(path), "--json")
    assert result.exit_code == 1
    report = orjson.loads(result.stdout)
    assert (report["total"], report["ok"], report["rejected"], report["valid"]) == (2, 1, 1, False)
    assert report["rejects"][0]["location"] == f"{path}:2"
    assert report["models"] == {"claude-haiku-4-5": 1}


def test_parquet_prompt_column_and_metadata_column(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"q": ["a", "b"], "tag": ["x", "y"]}), path)
    result = run(
        str(path),
        "--prompt-column",
        "q",
        "--metadata-column",
        "tag",
        "--model",
        "m",
        "--max-tokens",
        "8",
    )
    assert result.exit_code == 0, result.output
    result = run(str(path), "--model", "m", "--max-tokens", "8")
    assert result.exit_code == 2
    assert "no usable columns" in result.stderr


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing.jsonl", "no such file"),
        (lambda d: (d / "x.csv").write_text("a") and d / "x.csv", "unknown file type"),
        (
            lambda d: (d / "x.parquet").write_text("{}") and d / "x.parquet",
            "not a readable Parquet",
        ),
    ],
    ids=["missing", "extension", "not-parquet"],
)
def test_file_errors_exit_2(tmp_path: Path, setup, message: str) -> None:
    path = setup(tmp_path)
    result = run(str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {path}: {message}")
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [["--max-tokens", "0"], ["--max-tokens", "x"], ["--model", ""], [], ["a.jsonl", "--nope"]],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    path = write_lines(tmp_path / "a.jsonl", BODY)
    full = args if (not args or args[0] == "a.jsonl") else [str(path), *args]
    result = run(*full)
    assert result.exit_code == 2
    assert "Error" in result.stderr


def test_help() -> None:
    result = CliRunner().invoke(main, ["validate", "--help"])
    assert result.exit_code == 0
    assert "--prompt-column" in result.output and "Exit code" in result.output


def test_an_empty_set_is_not_valid(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    result = run(str(path))
    assert result.exit_code == 1, result.output
    assert "no requests: the file has no data rows" in result.output


def test_ctrl_c_while_validating_is_one_line_and_exit_130_not_1(tmp_path):
    # Before: click's "Aborted!" and exit code 1, which validate uses for "some rows would be
    # rejected": a script could not tell an interrupt from a bad file.
    import os
    import signal
    import subprocess
    import sys
    import time

    # A set big enough to take seconds to check (validate refuses a pipe it could wait on).
    big = tmp_path / "set.jsonl"
    big.write_bytes(b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}\n'
                    * 1_000_000)
    proc = subprocess.Popen([sys.executable, "-m", "batchrunner", "validate", str(big)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (130, "", "\nCtrl-C: validate stopped.\n")


def test_bytes_that_are_not_utf8_are_located_and_shown(tmp_path):
    # Before: "invalid JSON: str is not valid UTF-8: surrogates not allowed: line 1 column 1"
    # wherever the byte was, and for UTF-16 files too.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"'
                    b'\xff\xfe bad"}]}\n')
    result = run(str(bad))
    assert result.exit_code == 1
    assert f"{bad}:1: not valid UTF-8: byte 68 of the line is ff (bytes ff fe 20 62)" \
        in result.output
    assert "surrogates" not in result.output
    # A UTF-16 file (with or without its byte order mark) is refused whole, not line by line.
    line = '{"model":"m","max_tokens":16,"messages":[]}\n'
    for codec, named in (("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"),
                         ("utf-16-be", "UTF-16BE"), ("utf-32", "UTF-32"),
                         ("utf-32-le", "UTF-32LE"), ("utf-32-be", "UTF-32BE")):
        wide = tmp_path / f"{codec}.jsonl"
        wide.write_bytes(line.encode(codec))
        result = run(str(wide))
        assert result.exit_code == 2, (codec, result.output)
        assert (f"{wide}: the file is {named}, not UTF-8; JSONL must be UTF-8: convert it, e.g. "
                f"iconv -f {named} -t UTF-8 {wide} > fixed.jsonl") in result.output
        assert line.encode(codec).decode(named.lower()) == line  # the command's codec is right
    packed = tmp_path / "set.jsonl"  # gzip without the .gz name
    packed.write_bytes(gzip.compress(line.encode()))
    result = run(str(packed))
    assert result.exit_code == 2
    assert f"{packed}: the file is gzip-compressed; rename it to {packed}.gz" in result.output
    for empty in ("", "\n"):  # valid UTF-8 files are never refused
        (tmp_path / "e.jsonl").write_text(empty)
        assert run(str(tmp_path / "e.jsonl")).exit_code == 1  # no rows, not an encoding error


def test_reasons_for_a_forgotten_params_and_an_oversized_integer_id(tmp_path):
    from batchrunner.sources import _custom_id

    # a whole-number float id (a pandas float column) is not called too big
    assert _custom_id(1.0) == (None, "custom_id must be a string, got number")
    # Before: "missing model (set it in the request or give --model)" and "custom_id must be a
    # string, got number" (integer ids are accepted: this one was beyond 64 bits).
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    path = tmp_path / "edge.jsonl"
    path.write_text(f'{{"custom_id": {10**70}, "params": {orjson.dumps(body).decode()}}}\n'
                    '{"custom_id": "x"}\n{"custom_id": "y", "metadata": {"k": "v"}}\n')
    result = run(str(path))
    assert result.exit_code == 1
    assert (f"{path}:1: custom_id must be a string or an integer of at most 64 bits, got 1e+70"
            in result.output)
    for line in (2, 3):
        assert (f'{path}:{line}: missing params (the Message Batches shape is {{"custom_id": …, '
                '"params": {…}, "metadata": {…}})') in result.output
