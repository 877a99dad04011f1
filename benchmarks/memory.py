"""Peak memory of ``batchrunner run`` over 1,000,000 requests end to end, at 100k rows and at 1M.

The built-in emulator runs as its own process (``batchrunner emulate --port 0``, instant
profile, ground truth off, so its memory is not ours to count) pinned to core 1; ``batchrunner
run SET --gateway URL -c 64 --no-response-json -q`` runs pinned to core 0. The runner's RSS is
sampled from ``/proc/<pid>/status`` (``VmRSS``) every ``--interval`` seconds with a wall-clock
timestamp; afterwards each sample is mapped to the rows done at that instant through the rows'
``completed_at``. Printed: the peak RSS up to the moment 100k rows were done, the peak while
sending up to the last row, the peak over the whole process (start-up, final compaction and
summary included) with the kernel's ``VmHWM``, and the peak per 10 % of the rows to show where
memory grows. Before that big run, a whole run of the first 100k requests gives the reference
for comparing whole runs: both then include the one-time costs of the end (the final
compaction, the closing summary's price data and its 8 bytes per row of the metric it is
ranking), which the 100k point inside the big run has not paid yet. The input (one small
Batches-shaped request per line) is written once into a temporary directory.

    python benchmarks/memory.py [--requests 1000000] [-c 64] [--timeout 1800] [--interval 0.2]

Targets (issue 3): peak <= 300 MB and growth (peak at 1M / peak at 100k) <= 1.3x. Growth is
printed three ways: whole run to whole run, and inside the big run from the 100k point, while
sending and with its end.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_PEAK_MB = 300.0
TARGET_GROWTH = 1.3


def pinned(core: int, cmd: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def write_set(path: Path, n: int) -> None:
    # Formatting in blocks keeps this at a few seconds for 1M lines.
    head = '{"custom_id":"req-'
    mid = '","params":{"model":"claude-sonnet-4-5","max_tokens":32,"messages":[{"role":"user",'
    with path.open("w") as fh:
        for start in range(0, n, 50_000):
            fh.write(
                "".join(
                    f'{head}{i:07d}{mid}"content":"Say something about the number {i}."}}]}}}}\n'
                    for i in range(start, min(n, start + 50_000))
                )
            )


def start_emulator(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = (workdir / "emulator.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "batchrunner",
        "emulate",
        "--port",
        "0",
        "--profile",
        str(ROOT / "jobs" / "emulator" / "instant.toml"),
        "--no-ground-truth",
    ]
    proc = subprocess.Popen(pinned(1, cmd), stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # It says "batchrunner emulator listening on http://127.0.0.1:PORT" on stderr when ready.
        m = re.search(r"listening on (http://\S+)", (workdir / "emulator.log").read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"emulator did not start:\n{(workdir / 'emulator.log').read_text()}")


def _status_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        with Path(f"/proc/{pid}/status").open() as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name in keys:
                    out[name] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def run_sampled(
    cmd: list[str], interval: float, timeout: float
) -> tuple[np.ndarray, np.ndarray, int, int, float]:
    """Run ``cmd``, sampling its RSS; return (times, rss_kb, hwm_kb, exit code, wall seconds)."""
    proc = subprocess.Popen(cmd)
    times: list[float] = []
    rss: list[int] = []
    hwm = 0
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                proc.kill()
                proc.wait()
                raise SystemExit(f"timed out after {timeout:g} s (--timeout)")
            st = _status_kb(proc.pid, ("VmRSS", "VmHWM"))
            if "VmRSS" in st:
                times.append(time.time())
                rss.append(st["VmRSS"])
                hwm = max(hwm, st.get("VmHWM", 0))
            time.sleep(interval)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    return np.asarray(times), np.asarray(rss), hwm, proc.returncode, time.monotonic() - t0


def _fmt_mb(values: np.ndarray) -> str:
    return f"{float(values.max()):.0f}" if values.size else "-"  # no sample in this tenth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument(
        "--checkpoint", type=int, default=100_000, help="the early reference point [100000]"
    )
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.2, help="RSS sampling period [0.2 s]")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="kill the run after this many seconds [1800]"
    )
    args = parser.parse_args()
    n = args.requests
    checkpoint = min(args.checkpoint, n)

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        requests = workdir / "set.jsonl"
        t = time.perf_counter()
        write_set(requests, n)
        print(
            f"wrote {n:,} requests ({requests.stat().st_size / 1e6:,.0f} MB) in "
            f"{time.perf_counter() - t:.1f} s"
        )
        small = workdir / "small.jsonl"
        with requests.open("rb") as src, small.open("wb") as dst:
            dst.writelines(itertools.islice(src, checkpoint))
        emulator, url = start_emulator(workdir)
        out = workdir / "run"

        def command(path: Path, out: Path) -> list[str]:
            return [
                sys.executable,
                "-m",
                "batchrunner",
                "run",
                str(path),
                "--gateway",
                url,
                "--out",
                str(out),
                "-c",
                str(args.concurrency),
                "-q",
                "--no-response-json",
            ]

        try:
            # The reference: a whole run of `checkpoint` requests, end included, to compare with
            # the whole big run (one-time costs on both sides).
            _, small_rss, small_hwm, code, _ = run_sampled(
                pinned(0, command(small, workdir / "small-run")), args.interval, args.timeout
            )
            if code != 0:
                raise SystemExit(f"batchrunner run ({checkpoint:,} requests) exited with {code}")
            small_peak = max(float(small_rss.max()), small_hwm) / 1024
            times, rss, hwm, code, wall = run_sampled(
                pinned(0, command(requests, out)), args.interval, args.timeout
            )
        finally:
            emulator.terminate()
            try:
                emulator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                emulator.kill()
            emulator.wait()
        if code != 0:
            raise SystemExit(f"batchrunner run exited with {code}")
        table = pq.read_table(out / "data", columns=["completed_at", "status"])
        done_at = np.sort(
            table["completed_at"].cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
            / 1e6
        )
        ok = table.filter(pc.equal(table["status"], "ok")).num_rows

    rows_at = np.searchsorted(done_at, times, side="right")  # rows done at each sample
    rows_at[times > done_at[-1]] = -1  # after the last row: the finish, not a decile
    mb = rss / 1024.0

    def peak_until(k: int) -> float:
        # every sample taken up to the instant the k-th row completed (at least the first)
        upto = max(1, int(np.searchsorted(times, done_at[k - 1], side="right")))
        return float(mb[:upto].max())

    at_check = peak_until(checkpoint)
    at_end_sending = peak_until(done_at.size)
    overall = float(mb.max())
    print(
        f"batchrunner run: {done_at.size:,} rows (ok {ok:,}) in {wall:.0f} s "
        f"({done_at.size / (done_at[-1] - done_at[0]):,.0f} req/s while sending), "
        f"{times.size:,} RSS samples"
    )
    print(
        "peak RSS per 10 % of rows: "
        + ", ".join(
            f"{k:,} {_fmt_mb(mb[(rows_at > lo) & (rows_at <= k)])}"
            for lo, k in zip(
                [0, *np.linspace(n / 10, n, 10)[:-1].astype(int)],
                np.linspace(n / 10, n, 10).astype(int),
                strict=True,
            )
        )
        + " MB"
    )
    print(f"peak RSS at {checkpoint:,} rows done: {at_check:.1f} MB")
    print(
        f"peak RSS at {done_at.size:,} rows done: {at_end_sending:.1f} MB (while sending); "
        f"{overall:.1f} MB over the whole process (VmHWM {hwm / 1024:.1f} MB, incl. final "
        "compaction and summary)"
    )
    peak = max(overall, hwm / 1024)
    print(
        f"whole runs, end included: {checkpoint:,} requests peak {small_peak:.1f} MB, "
        f"{done_at.size:,} requests peak {peak:.1f} MB"
    )
    growth = at_end_sending / at_check
    growth_all = peak / at_check
    growth_runs = peak / small_peak
    ok_peak = peak <= TARGET_PEAK_MB
    print(
        f"peak {peak:.0f} MB (target <= {TARGET_PEAK_MB:.0f} MB): " + ("OK" if ok_peak else "MISS")
    )
    print(
        f"growth (target <= {TARGET_GROWTH}x): whole run to whole run {growth_runs:.2f}x "
        + ("OK" if growth_runs <= TARGET_GROWTH else "MISS")
        + f"; within the big run, from {checkpoint:,} rows done: {growth:.2f}x while sending "
        + ("OK" if growth <= TARGET_GROWTH else "MISS")
        + f", {growth_all:.2f}x incl. its end "
        + ("OK" if growth_all <= TARGET_GROWTH else "MISS")
    )
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
