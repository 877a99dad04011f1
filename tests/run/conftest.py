from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from batchrunner.cli import main

SECRET_KEY = "sk-bf-test-secret-0123456789"


def write_requests(
    path: Path,
    n: int,
    *,
    model: str = "claude-sonnet-4-5",
    max_tokens: int = 32,
    extra: dict | None = None,
) -> Path:
    with path.open("wb") as fh:
        for i in range(n):
            params = {
                "model": model,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"Question number {i}: why?"}],
                **(extra or {}),
            }
            fh.write(
                orjson.dumps(
                    {
                        "custom_id": f"req-{i}",
                        "params": params,
                        "metadata": {"i": i, "group": "a" if i % 2 else "b"},
                    }
                )
                + b"\n"
            )
    return path


@pytest.fixture
def requests_file(tmp_path):
    def make(n: int, **kw) -> Path:
        return write_requests(tmp_path / f"set-{n}.jsonl", n, **kw)

    return make


def read_rows(run_dir: Path):
    return pq.read_table(run_dir / "data").to_pandas()


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop(
        "BATCHRUNNER_GATEWAY", None
    ) if env is None or "BATCHRUNNER_GATEWAY" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "batchrunner", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def run_in_process(*args: str, env: dict[str, str] | None = None) -> Result:
    """``batchrunner *args`` in this process, for a command refused before it sends anything:
    a process of its own spends ~0.7 s importing batchrunner, and adds nothing to a usage error
    (python -m batchrunner's own path is taken by the run_cli tests). Exit code, stdout and
    stderr are those of the process; ``Result.output`` holds stdout and stderr together
    (``Result.stderr`` alone needs click >= 8.2)."""
    # As run_cli does: a BATCHRUNNER_GATEWAY of the caller's must not stand in for --gateway.
    # prog_name: click's own usage errors name the program as the process's did.
    return CliRunner().invoke(main, list(args), env={"BATCHRUNNER_GATEWAY": None, **(env or {})},
                              catch_exceptions=False, prog_name="python -m batchrunner")
