"""Fixtures for the report tests: run directories with known rows, and real emulator runs.

``make_run(rows, ...)`` writes rows (dicts of result columns; instants as float epoch seconds)
as ``<dir>/data/part-000001.parquet`` with ``RESULT_SCHEMA`` plus a ``run.json``, the way a
finished run looks. ``row(**columns)`` gives an ok sync row with sensible defaults.
``emulator_runs`` runs ``jobs/demo.jsonl`` on the built-in emulator (sync and stream) once per
session.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrunner.schema import INSTANT_COLUMNS, RESULT_SCHEMA, empty_row

REPO = Path(__file__).resolve().parents[2]
T0 = 1_790_000_000.0  # 2026-09-21T13:33:20Z


def row(**columns: Any) -> dict[str, Any]:
    """An ok sync row of claude-haiku-4-5 sent at T0, 100 ms latency; *columns* override."""
    r = empty_row()
    r.update(run_id="r", custom_id="0", input_index=0, mode="sync", model="claude-haiku-4-5",
             model_requested="claude-haiku-4-5", status="ok", http_status=200, attempts=1,
             scheduled_at=T0, sent_at=T0, completed_at=T0 + 0.1, queue_wait_s=0.0, ttfb_s=0.05,
             latency_s=0.1, total_s=0.1, input_tokens=10, output_tokens=20,
             cache_creation_input_tokens=0, cache_read_input_tokens=0,
             cache_creation_5m_input_tokens=0, cache_creation_1h_input_tokens=0)
    r.update(columns)
    return r


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    fixed = []
    for r in rows:
        r = {**empty_row(), **r}
        for name in INSTANT_COLUMNS:
            if r[name] is not None:
                r[name] = datetime.fromtimestamp(r[name], UTC)
        fixed.append(r)
    return pa.Table.from_pylist(fixed, schema=RESULT_SCHEMA)


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def make(rows: list[dict[str, Any]], *, name: str | None = None, parts: int = 1,
             info: dict[str, Any] | None = None) -> Path:
        run_dir = tmp_path / (name or f"run{next(counter)}")
        (run_dir / "data").mkdir(parents=True)
        size = max(1, -(-len(rows) // parts))
        pq.write_table(RESULT_SCHEMA.empty_table(), run_dir / "data" / "part-000000.parquet")
        for k in range(parts):
            chunk = rows[k * size:(k + 1) * size]
            if chunk:
                pq.write_table(to_table(chunk), run_dir / "data" / f"part-{k + 1:06d}.parquet")
        meta = {"run_id": "r", "name": run_dir.name, "status": "finished",
                "config": {"mode": rows[0]["mode"] if rows else "sync"}}
        (run_dir / "run.json").write_bytes(orjson.dumps({**meta, **(info or {})}))
        return run_dir

    return make


@pytest.fixture(scope="session")
def emulator_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``jobs/demo.jsonl`` run in-process on the instant emulator profile, sync and stream."""
    import batchrunner

    base = tmp_path_factory.mktemp("emu")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("BATCHRUNNER_GATEWAY", raising=False)  # the built-in emulator, always
        for mode in ("sync", "stream"):
            result = batchrunner.run(REPO / "jobs" / "demo.jsonl", out=base / mode, mode=mode,
                                     emulator_profile="instant")
            assert result.status == "finished", result.message
            out[mode] = result.run_dir
    return out
