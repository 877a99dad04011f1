"""batchrunner's full path vs a raw aiohttp+uvloop loop, against the same fixed-response server.

Both clients run as their own process pinned to core 0; the server (``_fixed_server.py``) is
pinned to core 1. "Ours" is ``batchrunner run`` itself: source reading, pacing, the client,
retries bookkeeping and rows written to the journal and compacted to Parquet. Its rate is
requests / (last completion - first send) from its own rows, and its p99 is the p99 of
``latency_s``; the raw loop reports the same two figures from its own timings.

    python benchmarks/client_throughput.py [--requests 40000] [-c 64] [--mode json|sse|both]

Targets (issue 3): ratio >= 0.7 (0.8 stretch) and our p99 <= 2x raw's; the same for SSE events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAW_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import aiohttp, uvloop
    url, n, c, sse, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": sse,
                       "messages": [{"role": "user", "content": "Question number 1: why?"}]}).encode()
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    async def main():
        lat = []; events = 0; left = [n + warm]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def worker():
                nonlocal events
                while left[0] > 0:
                    left[0] -= 1
                    warm_phase = left[0] >= n
                    t = time.perf_counter()
                    async with s.post(url, data=body, headers=headers) as r:
                        if sse:
                            async for line in r.content:
                                if line.startswith(b"data:") and not warm_phase:
                                    events += 1
                        else:
                            await r.read()
                    if not warm_phase:
                        lat.append(time.perf_counter() - t)
            tasks = [asyncio.create_task(worker()) for _ in range(c)]
            # time only the measured part: start once the warm-up is consumed
            while left[0] > n:
                await asyncio.sleep(0.001)
            t0 = time.perf_counter()
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - t0
        lat.sort()
        print(json.dumps({"n": len(lat), "wall": wall, "rate": len(lat) / wall, "events": events,
                          "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)]}))
    uvloop.run(main())
    """
)


def pinned(core: int, cmd: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def start_server(mode: str, events: int) -> tuple[subprocess.Popen[str], int]:
    cmd = [
        sys.executable,
        str(HERE / "_fixed_server.py"),
        "--port",
        "0",
        "--mode",
        mode,
        "--events",
        str(events),
    ]
    proc = subprocess.Popen(pinned(1, cmd), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().strip())


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def raw(url: str, n: int, c: int, sse: bool, warm: int) -> dict[str, float]:
    cpu0 = child_cpu_s()
    out = subprocess.run(
        pinned(
            0,
            [sys.executable, "-c", RAW_CLIENT, url, str(n), str(c), "1" if sse else "0", str(warm)],
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cpu_us_per_req"] = (child_cpu_s() - cpu0) / (n + warm) * 1e6
    return result


def ours(url: str, n: int, c: int, sse: bool, workdir: Path, extra: list[str]) -> dict[str, float]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    requests = workdir / f"set-{n}.jsonl"
    if not requests.exists():
        with requests.open("w") as fh:
            for i in range(n):
                fh.write(
                    json.dumps(
                        {
                            "custom_id": f"r{i}",
                            "params": {
                                "model": "claude-sonnet-4-5",
                                "max_tokens": 64,
                                "messages": [
                                    {"role": "user", "content": f"Question number {i}: why?"}
                                ],
                            },
                        }
                    )
                    + "\n"
                )
    out = workdir / f"run-{'sse' if sse else 'json'}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "batchrunner",
        "run",
        str(requests),
        "--gateway",
        url,
        "--out",
        str(out),
        "-c",
        str(c),
        "-q",
        "--mode",
        "stream" if sse else "sync",
        *extra,
    ]
    cpu0 = child_cpu_s()
    subprocess.run(pinned(0, cmd), check=True, timeout=600)
    cpu_us = (child_cpu_s() - cpu0) / n * 1e6
    table = pq.read_table(
        out / "data", columns=["sent_at", "completed_at", "latency_s", "content_deltas", "status"]
    )
    first = pc.min(table["sent_at"]).as_py().timestamp()
    last = pc.max(table["completed_at"]).as_py().timestamp()
    lat = table["latency_s"]
    q = pc.quantile(lat, q=[0.5, 0.99]).to_pylist()
    ok = pc.sum(pc.equal(table["status"], "ok")).as_py()
    # content deltas + the 6 framing events of each stream, to count events as the raw loop does
    deltas = pc.sum(table["content_deltas"]).as_py() or 0
    events = deltas + 6 * ok if sse else 0
    wall = last - first
    return {
        "n": table.num_rows,
        "ok": ok,
        "wall": wall,
        "rate": table.num_rows / wall,
        "events": events,
        "p50": q[0],
        "p99": q[1],
        "cpu_us_per_req": cpu_us,
    }


def compare(label: str, mine: dict[str, float], base: dict[str, float], sse: bool) -> None:
    unit = "events/s" if sse else "req/s"
    mine_rate = mine["events"] / mine["wall"] if sse else mine["rate"]
    base_rate = base["events"] / base["wall"] if sse else base["rate"]
    print(
        f"[{label}] raw aiohttp+uvloop: {base_rate:,.0f} {unit} ({base['rate']:,.0f} req/s), "
        f"p50 {base['p50'] * 1e3:.2f} ms, p99 {base['p99'] * 1e3:.2f} ms"
    )
    print(
        f"[{label}] batchrunner run:    {mine_rate:,.0f} {unit} ({mine['rate']:,.0f} req/s), "
        f"p50 {mine['p50'] * 1e3:.2f} ms, p99 {mine['p99'] * 1e3:.2f} ms, ok {mine['ok']:,}/{mine['n']:,}"
    )
    print(
        f"[{label}] whole-process CPU per request (startup, reading, Parquet included): "
        f"raw {base['cpu_us_per_req']:.0f} us, ours {mine['cpu_us_per_req']:.0f} us "
        f"-> CPU-efficiency ratio {base['cpu_us_per_req'] / mine['cpu_us_per_req']:.2f}"
    )
    print(
        f"[{label}] ratio {mine_rate / base_rate:.2f} (target >= 0.7, stretch 0.8); "
        f"p99 ratio {mine['p99'] / base['p99']:.2f} (target <= 2.0)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--sse-requests", type=int, default=8_000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--mode", choices=["json", "sse", "both"], default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ["json", "sse"] if args.mode == "both" else [args.mode]:
            sse = mode == "sse"
            n = args.sse_requests if sse else args.requests
            server, port = start_server(mode, args.events)
            url = f"http://127.0.0.1:{port}"
            try:
                base = raw(url + "/anthropic/v1/messages", n, args.concurrency, sse, warm=n // 20)
                mine = ours(url, n, args.concurrency, sse, Path(tmp), [])
                lean = ours(url, n, args.concurrency, sse, Path(tmp), ["--no-response-json"])
            finally:
                server.terminate()
                server.wait(timeout=10)
            compare(mode, mine, base, sse)
            compare(mode + ", --no-response-json", lean, base, sse)


if __name__ == "__main__":
    main()
