"""How long ``batchrunner report`` takes on 1,000,000 result rows, cost included.

Builds a synthetic run directory (20 Parquet parts of RESULT_SCHEMA, like a real run's) with
several models (one behind an ``anthropic/`` prefix, one unknown to the price data), cache
writes (5m and 1h) and reads, ok/error/timeout/cancelled rows with error messages, stream
timings, and metadata tags on every row (each row's metadata text is distinct, the worst case
for ``--by metadata.KEY``). Then times the command a user types, each in a fresh process
(imports included):

1. ``batchrunner report RUN``: the text report with cost by model, the figure the issue's
   target (<= 10 s for 1M rows) is about;
2. ``batchrunner report RUN --json``;
3. ``batchrunner report RUN --by model --by metadata.task --html FILE``: every table per group,
   plus the HTML page with its plots.

Each line also gives the peak resident memory of that report process (``wait4``'s
``ru_maxrss``).

Usage: ``python benchmarks/report_scale.py [--rows N] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batchrunner.schema import RESULT_SCHEMA

MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5", "anthropic/claude-opus-4-1", "claude-opus-4-6",
          "claude-sonnet-4-6", "my-private-model"]
TASKS = ["summarize", "classify", "chat", "docqa", "support", "longform"]
PART_ROWS = 50_000


def make_part(rng: np.random.Generator, start: int, n: int, t0: float) -> pa.Table:
    idx = np.arange(start, start + n)
    status = rng.choice(["ok", "error", "timeout", "cancelled"], n, p=[0.95, 0.035, 0.01, 0.005])
    ok = status == "ok"
    error_type = np.where(status == "error", rng.choice(["overloaded_error", "rate_limit_error",
                                                         "api_error"], n),
                          np.where(status == "timeout", "timeout",
                                   np.where(status == "cancelled", "cancelled", None)))
    message = np.where(error_type == None, None,  # noqa: E711 (numpy elementwise)
                       np.char.add("emulated failure for request ", idx.astype(str)).astype(object))
    sched = t0 + idx / 1000.0  # 1,000 requests/s for 1,000 s
    queue = rng.exponential(0.002, n)
    ttft = rng.lognormal(np.log(0.3), 0.4, n)
    out_tokens = rng.integers(20, 800, n)
    latency = ttft + out_tokens * rng.uniform(0.004, 0.012, n)
    sent = sched + queue
    done = sent + latency
    cache_5m = np.where(rng.random(n) < 0.2, rng.integers(1024, 8000, n), 0)
    cache_1h = np.where(rng.random(n) < 0.05, rng.integers(1024, 8000, n), 0)
    cache_read = np.where(rng.random(n) < 0.5, rng.integers(1024, 60000, n), 0)
    # A few long-context requests cross the 200k tier of Sonnet 4.5.
    cache_read = np.where(rng.random(n) < 0.001, 210_000, cache_read)
    models = rng.choice(MODELS, n, p=[0.35, 0.3, 0.1, 0.1, 0.1, 0.05])
    tasks = rng.choice(TASKS, n)
    splits = rng.choice(["dev", "test"], n)
    metadata = [orjson.dumps({"task": t, "split": s, "i": int(i)}).decode()
                for t, s, i in zip(tasks, splits, idx, strict=True)]

    def ts(values: np.ndarray) -> pa.Array:
        return pa.array((values * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"))

    def masked(values: np.ndarray, mask: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.array(values, typ, mask=~mask)

    cols = {
        "run_id": pa.array(["bench"] * n),
        "custom_id": pa.array(idx.astype(str)),
        "input_index": pa.array(idx, pa.int64()),
        "metadata": pa.array(metadata),
        "mode": pa.array(["stream"] * n),
        "model_requested": pa.array(models),
        "model": masked(models, ok, pa.string()),
        "status": pa.array(status),
        "http_status": masked(np.where(ok, 200, 529), status != "timeout", pa.int32()),
        "error_type": pa.array(error_type, pa.string()),
        "error_message": pa.array(message, pa.string()),
        "attempts": pa.array(np.ones(n, np.int32)),
        "scheduled_at": ts(sched),
        "sent_at": ts(sent),
        "completed_at": ts(done),
        "queue_wait_s": pa.array(queue),
        "ttfb_s": pa.array(ttft * 0.9),
        "ttft_s": masked(ttft, ok, pa.float64()),
        "latency_s": pa.array(latency),
        "total_s": pa.array(latency + queue),
        "itl_mean_s": masked(latency / out_tokens, ok, pa.float64()),
        "itl_p50_s": masked(latency / out_tokens * 0.9, ok, pa.float64()),
        "itl_p99_s": masked(latency / out_tokens * 3, ok, pa.float64()),
        "itl_max_s": masked(latency / out_tokens * 5, ok, pa.float64()),
        "tpot_s": masked((latency - ttft) / (out_tokens - 1), ok, pa.float64()),
        "input_tokens": masked(rng.integers(10, 3000, n), ok, pa.int64()),
        "output_tokens": masked(out_tokens, ok, pa.int64()),
        "cache_creation_input_tokens": masked(cache_5m + cache_1h, ok, pa.int64()),
        "cache_read_input_tokens": masked(cache_read, ok, pa.int64()),
        "cache_creation_5m_input_tokens": masked(cache_5m, ok, pa.int64()),
        "cache_creation_1h_input_tokens": masked(cache_1h, ok, pa.int64()),
    }
    arrays = [cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type)
              for f in RESULT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=RESULT_SCHEMA)


def build(run_dir: Path, rows: int) -> None:
    rng = np.random.default_rng(7)
    data = run_dir / "data"
    data.mkdir(parents=True)
    t0 = 1_790_000_000.0
    for k, start in enumerate(range(0, rows, PART_ROWS)):
        table = make_part(rng, start, min(PART_ROWS, rows - start), t0)
        pq.write_table(table, data / f"part-{k + 1:06d}.parquet")
    (run_dir / "run.json").write_bytes(orjson.dumps(
        {"run_id": "bench", "name": "report-scale", "status": "finished",
         "config": {"mode": "stream"}}))


def _report(run_dir: Path, extra: list[str]) -> tuple[str, int]:
    """``batchrunner report RUN *extra`` in a fresh process: its stdout and its own peak RSS
    (kB, from wait4: this process's other children do not count)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "batchrunner", "report", str(run_dir),
                                 *extra], stdout=out, stderr=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"report exited {proc.returncode}")
        out.seek(0)
        return out.read().decode(), usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="build the run directory here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        t = time.perf_counter()
        build(run_dir, args.rows)
        print(f"built {args.rows:,} rows in {time.perf_counter() - t:.1f} s: {run_dir}")
        html = Path(tmp) / "report.html"
        cases = [
            ("report RUN (text, cost by model)", []),
            ("report RUN --json", ["--json"]),
            ("report RUN --by model --by metadata.task --html", [
                "--by", "model", "--by", "metadata.task", "--html", str(html)]),
        ]
        figures = []
        for label, extra in cases:
            t = time.perf_counter()
            stdout, peak_kb = _report(run_dir, extra)
            elapsed = time.perf_counter() - t
            figures.append(elapsed)
            print(f"{label:<52} {elapsed:6.2f} s  peak RSS {peak_kb / 1e3:,.0f} MB  "
                  f"({len(stdout) / 1e3:,.0f} kB stdout)")
        total = [ln for ln in stdout.splitlines() if ln.startswith("  total ")]
        print("cost line:", total[0].strip() if total else "?")
        print(f"HTML: {html.stat().st_size / 1e6:.2f} MB")
        print(f"target: <= 10 s for the report with cost on {args.rows:,} rows -> "
              f"{figures[0]:.2f} s = {figures[0] / 10:.2f} of the budget")


if __name__ == "__main__":
    main()
