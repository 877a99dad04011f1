"""How steady this machine's CPU is: fixed Python work per window, on chosen cores at once.

The open-loop benchmark (``open_loop.py``) compares rates with a ceiling measured a few seconds
earlier, so it assumes the core runs at one speed. This shows whether it does: each core gets a
process pinned to it that repeats the same small piece of pure-Python work and counts how many
fit in each window. Nothing else of batchrunner runs. A window's speed is its count over the
best window's count on that core; on a quiet machine every window is near 1.00.

    python benchmarks/box_speed.py [--cores 0,1] [--seconds 10] [--window 0.1]

Run it with nothing else busy: another load on the same cores shows up as slow windows too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

SLOW = 0.8


def probe(seconds: float, window: float) -> list[int]:
    """Pieces of work done in each ``window`` for ``seconds``."""

    def piece() -> int:
        total = 0
        for i in range(20_000):
            total += i * i
        return total

    counts = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < window:
            piece()
            n += 1
        counts.append(n)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", default="0", help="comma-separated cores, probed at once [0]")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long [10]")
    parser.add_argument("--window", type=float, default=0.1, help="window in seconds [0.1]")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(" ".join(map(str, probe(args.seconds, args.window))))
        return
    cores = [int(c) for c in args.cores.split(",")]
    procs = []
    for core in cores:
        cmd = [sys.executable, __file__, "--child", f"--seconds={args.seconds}",
               f"--window={args.window}"]
        if shutil.which("taskset") and (os.cpu_count() or 1) > core:
            cmd = ["taskset", "-c", str(core), *cmd]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    speeds = {}
    for core, proc in zip(cores, procs):
        out, _ = proc.communicate(timeout=args.seconds + 30)
        counts = [int(x) for x in out.split()]
        best = max(counts)
        speeds[core] = [c / best for c in counts]
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{args.window * 1e3:g} ms windows, speed = work done / the core's best window")
    for core, s in speeds.items():
        slow = [x for x in s if x < SLOW]
        longest = run = 0
        for x in s:
            run = run + 1 if x < SLOW else 0
            longest = max(longest, run)
        print(f"core {core}: {len(s)} windows; median {statistics.median(s):.2f}, min {min(s):.2f}; "
              f"{len(slow)} below {SLOW:g} ({len(slow) / len(s):.0%}), the longest stretch "
              f"{longest * args.window:g} s")
        print("  " + " ".join(f"{x:.2f}" for x in s))
    if len(speeds) > 1:
        first, *others = speeds.values()
        for core, s in zip(cores[1:], others):
            n = min(len(first), len(s))
            both = sum(a < SLOW and b < SLOW for a, b in zip(first[:n], s[:n]))
            corr = statistics.correlation(first[:n], s[:n]) if n > 2 else float("nan")
            print(f"cores {cores[0]} and {core}: slow together in {both} windows; "
                  f"correlation {corr:.2f}")


if __name__ == "__main__":
    main()
