from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

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
