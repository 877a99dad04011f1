"""`bench.json` and its documentation (docs/run-directory.md) list the same keys.

A real bench (a short saturation search on the emulator, so that ``saturation`` is not null)
writes the file; its top-level, per-stage and saturation keys, and the keys of the objects the
doc spells out (``{p50, p99, max}``), must be exactly the ones the doc's tables name. A key
added to or dropped from ``bench.json`` without the doc fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from batchrunner.bench import Slo
from batchrunner.bench_run import BenchConfig, run_bench
from batchrunner.config import RunConfig
from batchrunner.emulator.config import Dist
from batchrunner.retry import RetryPolicy
from batchrunner.runner import run_sync_coro

DOC = Path(__file__).resolve().parents[2] / "docs" / "run-directory.md"
TABLES = {"top-level key": "top", "stage key": "stage", "saturation key": "saturation"}


def documented() -> dict[str, dict[str, set[str] | None]]:
    """Per table: each documented key → the keys of its object value when the type cell
    spells them out (``{p50, p99, max}``, ``list of {slo, value, met}``), else None."""
    text = DOC.read_text()
    start = text.index("### `bench.json`")
    end = text.find("\n### ", start + 1)
    section = text[start : end if end != -1 else None]
    tables: dict[str, dict[str, set[str] | None]] = {}
    current: dict[str, set[str] | None] | None = None
    for line in section.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if current is None:  # a table's header
            label = next((v for k, v in TABLES.items() if cells[0].startswith(k)), None)
            assert label is not None, f"a table of unknown keys in {DOC}: {line}"
            current = tables.setdefault(label, {})
            continue
        if set(cells[0]) <= {"-"}:
            continue
        spelled = re.search(r"\{([^}:]*)\}", cells[1])  # {error_type: rows} is a mapping
        sub = {k.strip() for k in spelled[1].split(",")} if spelled else None
        for key in re.findall(r"`([^`]+)`", cells[0]):
            current[key] = sub
    assert set(tables) == set(TABLES.values()), f"{DOC}: tables found: {sorted(tables)}"
    return tables


def check(where: str, value: dict, doc: dict[str, set[str] | None]) -> None:
    assert set(value) == set(doc), (
        f"{where}: in bench.json but not in {DOC.name}: {sorted(set(value) - set(doc))}; "
        f"documented but not in bench.json: {sorted(set(doc) - set(value))}"
    )
    for key, sub in doc.items():
        inner = value[key]
        items = inner if isinstance(inner, list) else [inner]
        for item in items:
            if sub is not None and item is not None:
                assert set(item) == sub, f"{where}.{key}: {sorted(item)}, documented {sorted(sub)}"


def test_every_bench_json_key_is_documented_and_every_documented_key_exists(
    make_emulator, tmp_path
):
    doc = documented()
    out = tmp_path / "out"
    run = RunConfig(requests=Path(), gateway="", mode="stream", out=out, max_tokens=4,
                    keep_response_json=False, retry=RetryPolicy(max_retries=0))
    with make_emulator(ttft=Dist("fixed", 0.002)) as emu:
        run.gateway = emu.base_url
        run_sync_coro(run_bench(BenchConfig(
            run=run, saturate=True, search_start=20, search_max=40, search_factor=2,
            stage_duration_s=0.3, warmup_s=0.05,
            slos=[Slo.parse("ttft_p99=1"), Slo.parse("error_rate=0.5")]), quiet=True))
    written = json.loads((out / "bench.json").read_text())
    check("bench.json", written, doc["top"])
    assert written["stages"] and written["saturation"] is not None, written
    for stage in written["stages"]:
        check(f"stages[{stage['stage']}]", stage, doc["stage"])
    check("saturation", written["saturation"], doc["saturation"])
