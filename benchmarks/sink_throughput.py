"""Throughput and memory of the run store: append, compaction, close and reopen for 1M rows.

Appends synthetic result rows (about 50 columns, a few hundred characters of response text)
in batches, the way the runner does, while a worker thread compacts closed segments, as the
runner's compactor does. Prints the appending side's cost per row, the compaction rate, the
end-to-end rate, the time to reopen the directory (done bitmap), and RSS along the way. Also
compares, on one segment, the two ways of converting journal lines to Arrow.

    python benchmarks/sink_throughput.py                 # 1,000,000 rows
    python benchmarks/sink_throughput.py --rows 200000 --batch 1 --response-json
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from batchrunner.journal import encode_rows, segment_table
from batchrunner.schema import INSTANT_COLUMNS, RESULT_SCHEMA, empty_row
from batchrunner.store import RunStore

WORDS = "the quick brown fox jumps over a lazy dog while seven tired owls sing ünïcödé ✓".split()  # noqa: SIM905


def make_row(i: int, now: float, response_json: bool) -> dict[str, Any]:
    row = empty_row()
    text = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(40))
    row.update(
        run_id="bench-run",
        custom_id=f"req-{i:08d}",
        input_index=i,
        metadata='{"suite":"bench","shard":3}',
        mode="stream",
        stage="final",
        request_id=f"req_{i:016x}",
        model_requested="claude-sonnet-4-5",
        model="claude-sonnet-4-5-20250929",
        status="ok" if i % 50 else "error",
        http_status=200 if i % 50 else 529,
        error_type=None if i % 50 else "overloaded_error",
        error_message=None if i % 50 else "Overloaded",
        attempts=1 + (i % 50 == 0),
        stop_reason="end_turn",
        scheduled_at=now,
        sent_at=now + 0.0004,
        completed_at=now + 0.83,
        queue_wait_s=0.0004,
        ttfb_s=0.21,
        ttft_s=0.2134,
        latency_s=0.8296,
        total_s=0.83,
        itl_mean_s=0.0123,
        itl_p50_s=0.0119,
        itl_p99_s=0.0301,
        itl_max_s=0.0412,
        tpot_s=0.0125,
        content_deltas=52,
        input_tokens=1200 + i % 300,
        output_tokens=52,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=1024,
        cache_creation_5m_input_tokens=0,
        cache_creation_1h_input_tokens=0,
        response_id=f"msg_{i:024d}",
        bifrost_provider="anthropic",
        bifrost_resolved_model="claude-sonnet-4-5-20250929",
        bifrost_fallback_index=0,
        bifrost_upstream_latency_ms=801.5,
        bifrost_cost_usd=0.00438,
        response_text=text,
    )
    if response_json:
        row["response_json"] = orjson.dumps(
            {"id": row["response_id"], "content": [{"type": "text", "text": text}] * 4}
        ).decode()
    return row


def rss_mb() -> float:
    with Path("/proc/self/statm").open() as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Compactor(threading.Thread):
    def __init__(self, store: RunStore) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.stop = threading.Event()
        self.rows = 0
        self.seconds = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            if self.store.needs_compaction():
                t = time.perf_counter()
                n = self.store.compact_closed()
                self.seconds += time.perf_counter() - t
                self.rows += n
            else:
                self.stop.wait(0.02)


def conversion_comparison(rows: int, response_json: bool) -> None:
    now = time.time()
    buf = pa.py_buffer(encode_rows(make_row(i, now, response_json) for i in range(rows)))
    t = time.perf_counter()
    segment_table(buf)
    fast = time.perf_counter() - t
    t = time.perf_counter()
    dicts = [orjson.loads(line) for line in buf.to_pybytes().splitlines()]
    for d in dicts:
        for name in INSTANT_COLUMNS:
            v = d[name]
            d[name] = None if v is None else round(v * 1e6)
    ts_as_int = pa.schema(
        [pa.field(f.name, pa.int64()) if f.name in INSTANT_COLUMNS else f for f in RESULT_SCHEMA]
    )
    pa.Table.from_pylist(dicts, schema=ts_as_int)
    slow = time.perf_counter() - t
    print(
        f"convert {rows:,} journal rows -> Arrow: pyarrow.json {fast * 1e3:.0f} ms, "
        f"orjson.loads + Table.from_pylist {slow * 1e3:.0f} ms ({slow / fast:.1f}x slower)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=32, help="rows per append_rows call")
    ap.add_argument("--segment-rows", type=int, default=50_000)
    ap.add_argument("--segment-mib", type=int, default=32, help="segment size limit in MiB")
    ap.add_argument("--response-json", action="store_true", help="also store a response body")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()

    base = args.dir or Path(tempfile.mkdtemp(prefix="sink-bench-"))
    run_dir = base / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    print(
        f"rows={args.rows:,} batch={args.batch} segment_rows={args.segment_rows:,} "
        f"segment_bytes={args.segment_mib} MiB dir={run_dir}"
    )
    rss_start = rss_mb()

    store = RunStore.open(
        run_dir, segment_rows=args.segment_rows, segment_bytes=args.segment_mib << 20
    )
    compactor = Compactor(store)
    compactor.start()
    append_s = 0.0
    gen_s = 0.0
    rss_at_100k = None
    t_wall = time.perf_counter()
    for start in range(0, args.rows, args.batch):
        t0 = time.perf_counter()
        now = time.time()
        batch = [
            make_row(i, now, args.response_json)
            for i in range(start, min(start + args.batch, args.rows))
        ]
        t1 = time.perf_counter()
        store.append_rows(batch)
        append_s += time.perf_counter() - t1
        gen_s += t1 - t0
        if rss_at_100k is None and start + args.batch >= 100_000:
            rss_at_100k = rss_mb()
    compactor.stop.set()
    compactor.join()
    t_close = time.perf_counter()
    store.close()
    close_s = time.perf_counter() - t_close
    wall_s = time.perf_counter() - t_wall - gen_s
    rss_end = rss_mb()

    t = time.perf_counter()
    reopened = RunStore.open(run_dir)
    reopen_s = time.perf_counter() - t
    done = reopened.done_count
    reopened.close()
    data_mb = sum(p.stat().st_size for p in (run_dir / "data").iterdir()) / 2**20

    n = args.rows
    print(
        f"append : {n / append_s:,.0f} rows/s  "
        f"({append_s / n * 1e6:.2f} us/row on the appending thread)"
    )
    n_parts = len(list((run_dir / "data").glob("part-*.parquet"))) - 1  # minus the empty one
    per_part = n / max(n_parts, 1)
    print(
        f"compact: {compactor.rows / compactor.seconds:,.0f} rows/s in the worker thread "
        f"({compactor.seconds / compactor.rows * per_part * 1e3:.0f} ms per part; {n_parts} parts "
        f"of ~{per_part:,.0f} rows); close() {close_s * 1e3:.0f} ms"
        if compactor.seconds
        else f"compact: all at close() {close_s * 1e3:.0f} ms"
    )
    print(
        f"end to end: {n / wall_s:,.0f} rows/s "
        "(append + compaction + close, row generation excluded)"
    )
    print(f"reopen : {reopen_s * 1e3:.0f} ms for {done:,} done rows; data/ {data_mb:.1f} MiB")
    print(
        f"RSS MiB: start {rss_start:.0f}, at 100k rows {rss_at_100k or 0:.0f}, at {n:,} rows "
        f"{rss_end:.0f}, peak {peak_rss_mb():.0f}"
    )
    single_row_appends(base / "single", min(args.rows, 100_000), args.response_json)
    conversion_comparison(min(args.segment_rows, args.rows), args.response_json)
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


def single_row_appends(run_dir: Path, rows: int, response_json: bool) -> None:
    """The worst case for the appending side: one row per call (one write syscall per row)."""
    now = time.time()
    spent = 0.0
    with RunStore.open(run_dir) as store:
        for i in range(rows):
            r = make_row(i, now, response_json)
            t = time.perf_counter()
            store.append_rows([r])
            spent += time.perf_counter() - t
    print(f"append, 1 row per call: {spent / rows * 1e6:.2f} us/row ({rows:,} rows)")


if __name__ == "__main__":
    main()
