"""`batchrunner emulate`: every option documented, flags over profile, a real subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from batchrunner.cli import main
from batchrunner.emulator import FIELD_NAMES

from .helpers import MESSAGES, body

FLAG_OF = {"virtual_keys": "--virtual-key", "fail_models": "--fail-model", "stream_ping": "--ping"}


def test_help_documents_every_option() -> None:
    result = CliRunner().invoke(main, ["emulate", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for field in FIELD_NAMES:
        flag = FLAG_OF.get(field, "--" + field.replace("_", "-"))
        assert re.search(rf"{re.escape(flag)}\b", result.output), field
    for word in ("--profile", "--host", "--port", "lognormal", "/_emulator/ground-truth"):
        assert word in result.output


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["emulate", "--ttft", "gamma:1,2"])
    assert r.exit_code == 2 and "gamma" in r.output
    r = runner.invoke(main, ["emulate", "--profile", str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and "not found" in r.output
    r = runner.invoke(main, ["emulate", "--fault-500", "2"])
    assert r.exit_code == 2


def test_seed_past_64_bits_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import batchrunner.emulator

    monkeypatch.setattr(batchrunner.emulator, "serve", lambda *a, **k: pytest.fail("served"))
    r = CliRunner().invoke(main, ["emulate", "--port", "0", "--seed", str(2**64)])
    assert r.exit_code == 2 and "seed must be a 64-bit integer" in r.output


@pytest.mark.slow
def test_serves_until_sigterm(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("fault_529 = 1.0\nfault_500 = 0.0\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchrunner",
            "emulate",
            "--port",
            "0",
            "--profile",
            str(profile),
            "--fault-529",
            "0",
            "--fault-500",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, line
        with httpx.Client(base_url=url.group(0), timeout=5) as c:
            assert c.get("/health").status_code == 200
            assert c.post(MESSAGES, json=body()).status_code == 500  # flags override the profile
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0 and "stopped" in err
