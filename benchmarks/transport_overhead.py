"""How much the httpx API over :class:`batchrunner.transport.AiohttpTransport` costs vs raw aiohttp.

One run, one fixed-response server (``benchmarks/_fixed_server.py``, pinned to core 1), one client
process pinned to core 0 on uvloop, closed loop at ``-c`` concurrent requests. Each variant gets a
fresh event loop, a warm-up whose numbers are discarded, then up to ``--requests`` requests bounded
by ``--duration`` seconds:

- ``raw``: ``aiohttp.ClientSession.post`` + ``read()`` (the ceiling);
- ``direct``: ``httpx.Request(...)`` → ``AiohttpTransport.handle_async_request`` → ``aread()``;
- ``fast``: the same with the request made by ``transport.build_request`` (~3× cheaper);
- ``client``: ``httpx.AsyncClient(transport=AiohttpTransport())`` → ``post()``;
- ``httpx``: plain ``httpx.AsyncClient`` (httpcore pool; fewer requests, it is slow);
- ``ref``: ``httpx_aiohttp.AiohttpTransport`` used like ``direct`` (only if installed).

``--mode sse`` streams ``--events`` content deltas per response and counts ``data:`` lines from
the chunks as they arrive (the same line splitter for every variant); rates are events/s.

Prints req/s (or events/s), client CPU µs per request, p50/p99 latency, and each variant's rate
and p99 as ratios to ``raw`` of the same round; with several ``--rounds`` (variants interleaved)
a closing table gives the median of the per-round ratios, plus "CPU eff×raw" (raw's CPU per
request ÷ the variant's), which is steadier than wall-clock rates on a shared machine. Speed is
never asserted: compare the ratios.

Usage::

    python benchmarks/transport_overhead.py [--mode json|sse|both] [-c 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchrunner.transport import AiohttpTransport, TransportTimeouts, build_request  # noqa: E402

HERE = Path(__file__).resolve().parent
PATH = "/anthropic/v1/messages"
BODY = (
    b'{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":'
    b'"Write a haiku about load testing an LLM gateway with a Python client, please."}],'
    b'"metadata":{"user_id":"bench"},"temperature":0.7,"system":"You are terse."}'
)
HEADERS = {
    "content-type": "application/json",
    "x-api-key": "sk-ant-bench-0000000000000000",
    "anthropic-version": "2023-06-01",
}
LONG = TransportTimeouts(connect_s=10.0, read_s=60.0)


@dataclass
class Result:
    name: str
    n: int
    events: int
    wall_s: float
    cpu_s: float
    p50_ms: float
    p99_ms: float
    ttfb_p50_ms: float | None


Op = Callable[[list[int]], Awaitable[int]]


def _count_data_lines(state: list[bytes], chunk: bytes) -> int:
    # Same splitter for every variant: lines may straddle chunks.
    buf = state[0] + chunk if state[0] else chunk
    lines = buf.split(b"\n")
    state[0] = lines.pop()
    n = 0
    for line in lines:
        if line.startswith(b"data:"):
            n += 1
    return n


async def _closed_loop(op: Op, count: int, duration_s: float, concurrency: int) -> Result:
    lat: list[int] = []
    ttfb: list[int] = []
    remaining = count
    events = 0
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal remaining, events
        perf_ns = time.perf_counter_ns
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            marks = [perf_ns()]
            got = await op(marks)  # not ``events += await ...``: that reads events before the await
            events += got
            end = perf_ns()
            lat.append(end - marks[0])
            if len(marks) > 1:
                ttfb.append(marks[1] - marks[0])

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    lat.sort()
    ttfb.sort()

    def pct(xs: list[int], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] / 1e6 if xs else float("nan")

    return Result(
        "", len(lat), events, wall, cpu, pct(lat, 0.5), pct(lat, 0.99), pct(ttfb, 0.5) if ttfb else None
    )


def _make_ops(variant: str, url: str, sse: bool, concurrency: int):  # noqa: C901 - a flat table
    """Return (setup, op, teardown) coroutines for one variant."""
    state: dict[str, object] = {}
    hx_url = httpx.URL(url)
    header_list = list(HEADERS.items())
    raw_headers = httpx.Headers(HEADERS).raw

    async def setup() -> None:
        if variant == "raw":
            state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        elif variant in ("direct", "fast", "client"):
            t = AiohttpTransport(limit=concurrency, timeouts=LONG)
            state["t"] = t
            if variant == "client":
                state["c"] = httpx.AsyncClient(transport=t, timeout=None)
        elif variant == "ref":
            import httpx_aiohttp

            state["t"] = httpx_aiohttp.AiohttpTransport(
                limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            )
        elif variant == "httpx":
            state["c"] = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
                timeout=None,
            )

    async def teardown() -> None:
        if "c" in state:
            await state["c"].aclose()  # type: ignore[attr-defined]
        if "t" in state:
            await state["t"].aclose()  # type: ignore[attr-defined]
        if "s" in state:
            await state["s"].close()  # type: ignore[attr-defined]

    if variant == "raw":

        async def op(marks: list[int]) -> int:
            async with state["s"].post(url, data=BODY, headers=HEADERS) as r:  # type: ignore[attr-defined]
                if not sse:
                    await r.read()
                    return 0
                st, n = [b""], 0
                async for chunk in r.content.iter_any():
                    if len(marks) == 1:
                        marks.append(time.perf_counter_ns())
                    n += _count_data_lines(st, chunk)
                return n

    elif variant in ("direct", "fast", "ref"):

        async def op(marks: list[int]) -> int:
            if variant == "fast":
                req = build_request("POST", hx_url, raw_headers, BODY)
            else:
                req = httpx.Request("POST", hx_url, headers=header_list, content=BODY)
            r = await state["t"].handle_async_request(req)  # type: ignore[attr-defined]
            if not sse:
                await r.aread()
                return 0
            st, n = [b""], 0
            try:
                async for chunk in r.aiter_bytes():
                    if len(marks) == 1:
                        marks.append(time.perf_counter_ns())
                    n += _count_data_lines(st, chunk)
            finally:
                await r.aclose()
            return n

    else:  # client, httpx

        async def op(marks: list[int]) -> int:
            c: httpx.AsyncClient = state["c"]  # type: ignore[assignment]
            if not sse:
                await c.post(hx_url, content=BODY, headers=HEADERS)
                return 0
            st, n = [b""], 0
            async with c.stream("POST", hx_url, content=BODY, headers=HEADERS) as r:
                async for chunk in r.aiter_bytes():
                    if len(marks) == 1:
                        marks.append(time.perf_counter_ns())
                    n += _count_data_lines(st, chunk)
            return n

    return setup, op, teardown


def run_variant(
    variant: str, url: str, sse: bool, concurrency: int, count: int, warmup: int, duration_s: float
) -> Result:
    async def main() -> Result:
        setup, op, teardown = _make_ops(variant, url, sse, concurrency)
        await setup()
        try:
            await _closed_loop(op, warmup, min(3.0, duration_s), concurrency)
            gc.collect()
            res = await _closed_loop(op, count, duration_s, concurrency)
        finally:
            await teardown()
        res.name = variant
        return res

    return uvloop.run(main())


def start_server(mode: str, events: int, sse_write: str) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, str(HERE / "_fixed_server.py"), "--port", "0", "--mode", mode]
    cmd += ["--events", str(events), "--sse-write", sse_write]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "1", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("fixed server did not start")
    return proc, int(line)


def report(results: list[Result], sse: bool) -> None:
    raw = next((r for r in results if r.name == "raw"), None)
    unit = "events/s" if sse else "req/s"
    head = f"{'variant':<8} {'n':>7} {unit:>10} {'CPU µs/req':>10} {'p50 ms':>8} {'p99 ms':>8}"
    if sse:
        head += f" {'ttfb p50':>8}"
    head += f" {'rate×raw':>8} {'p99×raw':>8}"
    print(head)
    for r in results:
        rate = (r.events if sse else r.n) / r.wall_s
        line = (
            f"{r.name:<8} {r.n:>7} {rate:>10,.0f} {r.cpu_s / r.n * 1e6:>10.1f}"
            f" {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
        )
        if sse:
            line += f" {r.ttfb_p50_ms or float('nan'):>8.2f}"
        if raw is not None:
            raw_rate = (raw.events if sse else raw.n) / raw.wall_s
            line += f" {rate / raw_rate:>8.3f} {r.p99_ms / raw.p99_ms:>8.2f}"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["json", "sse", "both"], default="both")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--httpx-requests", type=int, default=3_000)
    parser.add_argument("--sse-requests", type=int, default=8_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--duration", type=float, default=15.0, help="cap per variant, seconds")
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--sse-write", choices=["burst", "event"], default="event")
    parser.add_argument("--rounds", type=int, default=3, help="repeat the variant sequence")
    parser.add_argument(
        "--variants", default="raw,direct,fast,client,httpx", help="comma list; add 'ref' for httpx_aiohttp"
    )
    args = parser.parse_args(argv)

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    variants = [v for v in args.variants.split(",") if v]
    modes = ["json", "sse"] if args.mode == "both" else [args.mode]
    print(
        f"python {sys.version.split()[0]}  aiohttp {aiohttp.__version__}  httpx {httpx.__version__}"
        f"  uvloop {uvloop.__version__}  c={args.concurrency}"
    )
    for mode in modes:
        sse = mode == "sse"
        proc, port = start_server(mode, args.events, args.sse_write)
        by_variant: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in variants}
        try:
            url = f"http://127.0.0.1:{port}{PATH}"
            for rnd in range(args.rounds):
                what = f"{args.events} events, {args.sse_write} writes" if sse else "600-byte JSON"
                print(f"\n== {mode} ({what}) round {rnd + 1}/{args.rounds}")
                results = []
                for v in variants:
                    count = args.sse_requests if sse else args.requests
                    if v == "httpx":
                        count = args.httpx_requests if not sse else args.httpx_requests // 2
                    warm = min(args.warmup, count // 4)
                    r = run_variant(v, url, sse, args.concurrency, count, warm, args.duration)
                    results.append(r)
                    gc.collect()
                raw = results[0] if results[0].name == "raw" else None
                for r in results:
                    rate = (r.events if sse else r.n) / r.wall_s
                    raw_rate = (raw.events if sse else raw.n) / raw.wall_s if raw else float("nan")
                    by_variant[r.name].append(
                        (rate / raw_rate, r.p99_ms / raw.p99_ms if raw else float("nan"),
                         (raw.cpu_s / raw.n) / (r.cpu_s / r.n) if raw else float("nan"), rate)
                    )
                report(results, sse)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        if args.rounds > 1:
            print(f"\n== {mode}: medians over {args.rounds} rounds (ratios are per round, then median)")
            unit = "events/s" if sse else "req/s"
            print(f"{'variant':<8} {unit:>10} {'rate×raw':>8} {'p99×raw':>8} {'CPU eff×raw':>11}")
            for v, rows in by_variant.items():
                med = [statistics.median(col) for col in zip(*rows)]
                print(f"{v:<8} {med[3]:>10,.0f} {med[0]:>8.3f} {med[1]:>8.2f} {med[2]:>11.3f}")

if __name__ == "__main__":
    main()
