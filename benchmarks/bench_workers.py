"""``batchrunner bench`` as a load generator: per-stage achieved vs target rate and send lag,
and ``--workers`` scaling (1 vs 2 processes) against one fixed-response server on loopback.

The server (``_fixed_server.py``) runs as its own process. On a 2-core machine it shares the
cores with the workers, so the 2-worker figure is a floor, not the ceiling of two free cores.

    python benchmarks/bench_workers.py [--stage-duration 5] [--rates 500,1000,2000,4000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_server() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, str(HERE / "_fixed_server.py"), "--port", "0",
                             "--mode", "json"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().strip())


def bench(url: str, out: Path, workers: int, stages: list[str], duration: float) -> list[dict]:
    cmd = [sys.executable, "-m", "batchrunner", "bench", "--gateway", url, "--mode", "sync",
           "--out", str(out), "--workers", str(workers), "--stage-duration", str(duration),
           "--warmup", "1", "--json", "-q", *stages]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode not in (0, 3):
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout)["stages"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage-duration", type=float, default=5.0)
    parser.add_argument("--rates", default="500,1000,2000,4000")
    parser.add_argument("--concurrency", default="64")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    server, port = start_server()
    url = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workers in (1, 2):
                stages = bench(url, Path(tmp) / f"w{workers}", workers,
                               ["--concurrency", args.concurrency, "--rate", args.rates],
                               args.stage_duration)
                print(f"--workers {workers}")
                for s in stages:
                    target = s["target"]["rate"]
                    sent = s["achieved_send_rate"] or 0.0
                    lag = s["send_lag_s"]["p99"]
                    line = (f"  {s['stage']:<11} ok/s {s['throughput_rps'] or 0:>9,.0f}  "
                            f"client cpu {s['client_cpu']:.0%}")
                    if target:
                        line += (f"  sent {sent:>8,.0f}/s ({sent / target:.1%} of target)  "
                                 f"send lag p99 {lag * 1000:,.2f} ms")
                    print(line + f"  {s['verdict']}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
