"""Polls per job and detection delay of ``batchrunner run --mode async`` for several job-duration
profiles.

The emulator runs as its own process (``batchrunner emulate``) and tells, through its
ground-truth endpoint, the instant each job completed. Detection delay = the row's
``job_done_at`` (the poll that saw the job finished) − that instant. The target (issue 4):
median ≤ 4 polls per job, and detection within 10 % of the job's duration + 100 ms.

    python benchmarks/async_polling.py [--jobs 300] [-c 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# name: emulator flags shaping the job duration (TTFT + output tokens x per-token delay)
PROFILES = {
    "fixed 1 s": ["--ttft", "fixed:1.0", "--output-tokens", "fixed:1"],
    "lognormal ~2 s": [
        "--ttft",
        "lognormal:1.5,0.3",
        "--token-delay",
        "fixed:0.01",
        "--output-tokens",
        "uniform:20,60",
    ],
    "uniform 0.5-5 s": ["--ttft", "uniform:0.5,5.0", "--output-tokens", "fixed:1"],
    "short 0.2 s": [
        "--ttft",
        "fixed:0.15",
        "--token-delay",
        "fixed:0.002",
        "--output-tokens",
        "fixed:20",
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("emulator did not start")


def ground_truth(url: str) -> list[dict]:
    entries, since = [], 0
    while True:
        page = json.loads(
            urllib.request.urlopen(f"{url}/_emulator/ground-truth?since={since}", timeout=10).read()
        )
        entries.extend(page["entries"])
        if not page["entries"]:
            return entries
        since = page["next"]


def measure(name: str, flags: list[str], jobs: int, pacing: list[str], workdir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emu = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchrunner",
            "emulate",
            "--port",
            str(port),
            "--seed",
            "1",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(url)
        requests = workdir / "set.jsonl"
        with requests.open("w") as fh:
            for i in range(jobs):
                fh.write(
                    json.dumps(
                        {
                            "custom_id": f"j{i}",
                            "params": {
                                "model": "claude-sonnet-4-5",
                                "max_tokens": 64,
                                "messages": [{"role": "user", "content": f"job {i}"}],
                            },
                        }
                    )
                    + "\n"
                )
        out = workdir / "run"
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "batchrunner",
                "run",
                str(requests),
                "--mode",
                "async",
                "--gateway",
                url,
                "--out",
                str(out),
                *pacing,
                "-q",
            ],
            check=True,
            timeout=600,
        )
        truth = {
            t["job_id"]: t["job"]
            for t in ground_truth(url)
            if t.get("kind") == "async_submit" and t.get("job")
        }
    finally:
        emu.terminate()
        emu.wait(timeout=10)
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "data", columns=["job_id", "polls", "job_done_at", "status"])
    polls, delays, within = [], [], 0
    for job_id, n, done_at, status in zip(
        *(rows[c].to_pylist() for c in rows.column_names), strict=True
    ):
        job = truth[job_id]
        duration = job["completed_at"] - job["created_at"]
        delay = done_at.timestamp() - job["completed_at"]
        polls.append(n)
        delays.append(delay)
        within += delay <= 0.1 * duration + 0.1
        assert status == "ok", status
    polls.sort()
    delays.sort()
    p99 = polls[int(0.99 * (len(polls) - 1))]
    print(
        f"{name:<16} jobs {len(polls):>4}  polls/job median {statistics.median(polls):>4.1f} "
        f"p99 {p99:>3}  detection delay median {statistics.median(delays) * 1e3:6.1f} ms "
        f"p99 {delays[int(0.99 * (len(delays) - 1))] * 1e3:6.1f} ms  "
        f"within 10%+100ms: {within / len(delays):.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("-c", "--concurrency", type=int, default=50)
    parser.add_argument(
        "--rate", type=float, default=100.0, help="submissions per second in the paced pass"
    )
    args = parser.parse_args()
    print(
        f"load average before: {os.getloadavg()[0]:.2f}; target: median <= 4 polls/job, "
        "detection <= 10% of duration + 100 ms"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, pacing in (
            (
                f"burst: all {args.jobs} jobs submitted at once (-c {args.concurrency})",
                ["-c", str(args.concurrency)],
            ),
            (f"paced: submitted at {args.rate:g}/s (--rate)", ["--rate", str(args.rate)]),
        ):
            print(label)
            for name, flags in PROFILES.items():
                measure(name, flags, args.jobs, pacing, Path(tmp))


if __name__ == "__main__":
    main()
