"""Throughput of the built-in gateway emulator on ONE core: sync req/s and SSE events/s.

The emulator runs as ``batchrunner emulate`` in its own process, pinned to core 1 with
``taskset -c 1`` when available, with the instant (zero-latency) profile and ground truth off.
The load comes from a client that is not our code path: ``wrk`` when installed (pinned to core
0), else a raw aiohttp+uvloop loop in a subprocess on core 0. Each mode runs a warm-up and then
``--rounds`` measured rounds; the script prints every round and the median.

Two figures per mode:

* **wall**: what the client measured (requests/s, or SSE events/s = streams/s * events per
  stream). On a shared 2-core box this is also limited by the client and by other tenants.
* **per server core**: requests (or events) divided by the *CPU seconds* the emulator process
  used in the round (``/proc/<pid>/stat``), i.e. its capacity with one core fully its own.
  This is the figure to hold against the target when the box is noisy.

    python benchmarks/emulator_throughput.py [--duration 5] [--rounds 3] [-c 64] [--tokens 50]
                                             [--client auto|wrk|aiohttp]

Targets (issue 2): >= 10,000 sync req/s and >= 50,000 SSE events/s on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

TARGET_SYNC_RPS = 10_000
TARGET_SSE_EVENTS = 50_000
ROOT = Path(__file__).resolve().parents[1]

BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 256,
    "messages": [
        {
            "role": "user",
            "content": "Benchmark prompt: summarise the following text in one paragraph. "
            + "lorem ipsum " * 16,
        }
    ],
}

WRK_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = "sk-bf-bench"
wrk.headers["anthropic-version"] = "2023-06-01"
"""

RAW_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import aiohttp, uvloop
    url, duration, conns = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    body = sys.argv[4].encode()
    headers = {"content-type": "application/json", "x-api-key": "sk-bf-bench"}
    async def main():
        done = 0; bad = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            stop = time.perf_counter() + duration
            async def worker():
                nonlocal done, bad
                while time.perf_counter() < stop:
                    async with s.post(url, data=body, headers=headers) as r:
                        await r.read()
                        if r.status != 200:
                            bad += 1
                    done += 1
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(conns)))
            wall = time.perf_counter() - t0
        print(json.dumps({"requests": done, "seconds": wall, "non2xx": bad}))
    uvloop.run(main())
    """
)


def _pin(core: int) -> list[str]:
    return (
        ["taskset", "-c", str(core)]
        if shutil.which("taskset") and (os.cpu_count() or 1) > core
        else []
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_server(port: int, tokens: int) -> subprocess.Popen[bytes]:
    cmd = [
        *_pin(1),
        sys.executable,
        "-m",
        "batchrunner",
        "emulate",
        "--port",
        str(port),
        "--profile",
        str(ROOT / "jobs" / "emulator" / "instant.toml"),
        "--no-ground-truth",
        "--output-tokens",
        f"fixed:{tokens}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(
        f"emulator did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
    )


def _events_per_stream(url: str) -> int:
    req = urllib.request.Request(
        url, data=json.dumps({**BODY, "stream": True}).encode(), method="POST"
    )
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    return text.count("\nevent: ") + text.startswith("event: ")


def _run_wrk(
    url: str, stream: bool, duration: float, conns: int, lua_dir: Path
) -> dict[str, float]:
    lua = lua_dir / ("stream.lua" if stream else "sync.lua")
    lua.write_text(WRK_LUA.format(body=json.dumps({**BODY, "stream": stream})))
    out = subprocess.run(
        [
            *_pin(0),
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    secs = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": int(m.group(1)),
        "seconds": secs,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errs.group(1) if errs else "",
    }


def _run_aiohttp(url: str, stream: bool, duration: float, conns: int) -> dict[str, float]:
    out = subprocess.run(
        [
            *_pin(0),
            sys.executable,
            "-c",
            RAW_CLIENT,
            url,
            str(duration),
            str(conns),
            json.dumps({**BODY, "stream": stream}),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured round [5]")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per mode [3]")
    ap.add_argument("-c", "--connections", type=int, default=64, help="client connections [64]")
    ap.add_argument("--tokens", type=int, default=50, help="output tokens per response [50]")
    ap.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    args = ap.parse_args()

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "aiohttp"
    if client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk not installed (apt-get install -y wrk), use --client aiohttp")

    port = _free_port()
    url = f"http://127.0.0.1:{port}/anthropic/v1/messages"
    server = _start_server(port, args.tokens)
    print(
        f"emulator pid {server.pid} {'pinned to core 1' if _pin(1) else '(not pinned)'}; "
        f"client {client} {'pinned to core 0' if _pin(0) else '(not pinned)'}; "
        f"-c {args.connections}, {args.rounds} x {args.duration:g} s per mode, "
        f"{args.tokens} output tokens"
    )
    try:
        events = _events_per_stream(url)
        print(
            f"SSE events per stream: {events} (message_start, ping, content_block_start, "
            f"{args.tokens} deltas, content_block_stop, message_delta, message_stop)"
        )
        results: dict[str, list[tuple[float, float, float]]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("sync", "stream"):
                stream = mode == "stream"
                run = (
                    (lambda d, s=stream: _run_wrk(url, s, d, args.connections, Path(tmp)))
                    if client == "wrk"
                    else (lambda d, s=stream: _run_aiohttp(url, s, d, args.connections))
                )
                run(1.0)  # warm-up: connections, caches
                rows = []
                for i in range(args.rounds):
                    c0 = _cpu_s(server.pid)
                    r = run(args.duration)
                    cpu = _cpu_s(server.pid) - c0
                    per = events if stream else 1
                    wall_rate = r["requests"] * per / r["seconds"]
                    core_rate = r["requests"] * per / cpu if cpu > 0 else float("nan")
                    util = cpu / r["seconds"]
                    rows.append((wall_rate, core_rate, util))
                    unit = "events/s" if stream else "req/s"
                    extra = f", non-2xx {r['non2xx']}" if r.get("non2xx") else ""
                    extra += (
                        f", socket errors {r['socket_errors']}" if r.get("socket_errors") else ""
                    )
                    print(
                        f"  {mode:6s} round {i + 1}: wall {wall_rate:>12,.0f} {unit:9s} "
                        f"server CPU {util:6.1%}  per server core {core_rate:>12,.0f} {unit}{extra}"
                    )
                results[mode] = rows
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()

    print()
    print(f"{'mode':8s} {'median wall':>16s} {'median per core':>18s} {'target':>12s}  result")
    for mode, target, unit in (
        ("sync", TARGET_SYNC_RPS, "req/s"),
        ("stream", TARGET_SSE_EVENTS, "events/s"),
    ):
        rows = results[mode]
        wall = statistics.median(r[0] for r in rows)
        core = statistics.median(r[1] for r in rows)
        verdict = "OK" if max(wall, core) >= target else "BELOW TARGET"
        print(
            f"{mode:8s} {wall:>16,.0f} {core:>18,.0f} {target:>12,} {unit}  {verdict}"
            f"  (wall {wall / target:.1f}x, per core {core / target:.1f}x of target)"
        )


if __name__ == "__main__":
    main()
