"""What our HTTP clients cost per request (default wire client, httpx routes) vs raw aiohttp.

Measures ``batchrunner.wire.WirePool`` and ``batchrunner.transport.AiohttpTransport`` in one
run: one fixed-response server (``benchmarks/_fixed_server.py``, pinned to core 1), one client
process pinned to core 0 on uvloop, closed loop at ``-c`` concurrent requests. Each variant
gets a fresh event loop and a warm-up whose numbers are discarded, then up to ``--requests``
requests bounded by ``--duration`` seconds:

- ``raw``: ``aiohttp.ClientSession.post`` + ``read()``, the reference;
- ``wire``: ``batchrunner.wire.WirePool.post`` (batchrunner's default client, no httpx types;
  SSE chunks go to a sink called as they arrive);
- ``direct``: ``httpx.Request(...)`` -> ``AiohttpTransport.handle_async_request`` -> ``aread()``;
- ``fast``: the same, with the request made by ``transport.build_request`` (public httpx API,
  ~2x cheaper than ``httpx.Request(content=...)``);
- ``client``: ``httpx.AsyncClient(transport=AiohttpTransport())`` -> ``post()``;
- ``httpx``: plain ``httpx.AsyncClient`` (httpcore's pool; fewer requests, it is slow);
- ``ref``: ``httpx_aiohttp.AiohttpTransport`` used like ``direct`` (only if that is installed).

``--mode sse`` streams ``--events`` content deltas per response and counts ``data:`` lines in the
chunks as they arrive (one line splitter for every variant); its rates are events/s and its
"ttfb" is the time to the first body chunk. The server writes each event separately by default
(``--sse-write event``), so the client sees many small chunks, the costly case;
``--sse-write paced --gap-ms 5`` spaces them like a model emitting tokens (the first event one
gap after the headers), where "ttfb" shows whether a client delays the first token.

Prints, per round: rate, client CPU us per request, p50/p99 latency and, for each variant, its
rate and p99 divided by ``raw``'s in the same round. Variants are interleaved over ``--rounds``;
a closing table gives the median of the per-round ratios and "cpu-eff" (raw's CPU per request
divided by the variant's), which is steadier than wall-clock rates on a shared, noisy machine.
Nothing is asserted: read the ratios.

    python benchmarks/transport_overhead.py [--mode json|sse|both] [-c 64] [--rounds 3]
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
from typing import Any

import aiohttp
import httpx
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from batchrunner.transport import (  # noqa: E402
    AiohttpTransport,
    TransportTimeouts,
    build_request,
)
from batchrunner.wire import WirePool  # noqa: E402

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
TIMEOUTS = TransportTimeouts(connect_s=10.0, read_s=60.0)
ALL_VARIANTS = ("raw", "wire", "direct", "fast", "client", "httpx", "ref")

# One request: gets a list holding its start time (ns), appends the first-chunk time if any,
# and returns the number of SSE data lines it saw.
Op = Callable[[list[int]], Awaitable[int]]


@dataclass
class Result:
    name: str
    n: int
    events: int
    wall_s: float
    cpu_s: float
    p50_ms: float
    p99_ms: float
    ttfb_p50_ms: float

    def rate(self, sse: bool) -> float:
        return (self.events if sse else self.n) / self.wall_s


def count_data_lines(state: list[bytes], chunk: bytes) -> int:
    """Count complete ``data:`` lines; ``state[0]`` carries a line split across chunks."""
    buf = state[0] + chunk if state[0] else chunk
    lines = buf.split(b"\n")
    state[0] = lines.pop()
    return sum(1 for line in lines if line.startswith(b"data:"))


def _pct(sorted_ns: list[int], p: float) -> float:
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(p * len(sorted_ns)))] / 1e6


async def closed_loop(op: Op, count: int, duration_s: float, concurrency: int) -> Result:
    """Run ``op`` from ``concurrency`` workers until ``count`` requests or ``duration_s``."""
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
            got = await op(marks)  # not ``events += await op()``: that reads events too early
            events += got
            lat.append(perf_ns() - marks[0])
            if len(marks) > 1:
                ttfb.append(marks[1] - marks[0])

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    lat.sort()
    ttfb.sort()
    return Result("", len(lat), events, wall, cpu, _pct(lat, 0.5), _pct(lat, 0.99), _pct(ttfb, 0.5))


class Variant:
    """Set-up, one request, and tear-down of one way of sending."""

    def __init__(self, name: str, url: str, sse: bool, concurrency: int) -> None:
        self.name, self.url, self.sse, self.concurrency = name, url, sse, concurrency
        self.hx_url = httpx.URL(url)
        self.header_list = list(HEADERS.items())
        self.raw_headers = httpx.Headers(HEADERS).raw
        self.session: aiohttp.ClientSession | None = None
        self.transport: Any = None
        self.client: httpx.AsyncClient | None = None

    async def setup(self) -> None:
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        if self.name == "raw":
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency)
            )
        elif self.name == "wire":
            self.transport = WirePool(self.url, self.header_list, read_s=TIMEOUTS.read_s)
        elif self.name in ("direct", "fast", "client"):
            self.transport = AiohttpTransport(limit=self.concurrency, timeouts=TIMEOUTS)
            if self.name == "client":
                self.client = httpx.AsyncClient(transport=self.transport, timeout=None)
        elif self.name == "ref":
            import httpx_aiohttp  # optional: pip install httpx-aiohttp

            self.transport = httpx_aiohttp.AiohttpTransport(limits=limits)
        elif self.name == "httpx":
            self.client = httpx.AsyncClient(limits=limits, timeout=None)

    async def teardown(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.transport is not None:
            await self.transport.aclose()
        if self.session is not None:
            await self.session.close()

    def op(self) -> Op:
        kind = self.name if self.name in ("raw", "wire") else "client"
        return getattr(self, f"_op_{kind}")  # type: ignore[no-any-return]

    async def _op_wire(self, marks: list[int]) -> int:
        if not self.sse:
            await self.transport.post(BODY)
            return 0
        state, n = [b""], [0]

        def sink(chunk: bytes, now: float) -> bool:
            if len(marks) == 1:
                marks.append(time.perf_counter_ns())
            n[0] += count_data_lines(state, chunk)
            return False

        await self.transport.post(BODY, sink=sink)
        return n[0]

    async def _op_raw(self, marks: list[int]) -> int:
        assert self.session is not None
        async with self.session.post(self.url, data=BODY, headers=HEADERS) as r:
            if not self.sse:
                await r.read()
                return 0
            state, n = [b""], 0
            async for chunk in r.content.iter_any():
                if len(marks) == 1:
                    marks.append(time.perf_counter_ns())
                n += count_data_lines(state, chunk)
            return n

    async def _op_client(self, marks: list[int]) -> int:
        if self.client is not None:
            return await self._via_client(marks)
        if self.name == "fast":
            request = build_request("POST", self.hx_url, self.raw_headers, BODY)
        else:
            request = httpx.Request("POST", self.hx_url, headers=self.header_list, content=BODY)
        response = await self.transport.handle_async_request(request)
        if not self.sse:
            await response.aread()
            return 0
        try:
            return await self._count(response, marks)
        finally:
            await response.aclose()

    async def _via_client(self, marks: list[int]) -> int:
        assert self.client is not None
        if not self.sse:
            await self.client.post(self.hx_url, content=BODY, headers=HEADERS)
            return 0
        async with self.client.stream("POST", self.hx_url, content=BODY, headers=HEADERS) as r:
            return await self._count(r, marks)

    @staticmethod
    async def _count(response: httpx.Response, marks: list[int]) -> int:
        state, n = [b""], 0
        async for chunk in response.aiter_bytes():
            if len(marks) == 1:
                marks.append(time.perf_counter_ns())
            n += count_data_lines(state, chunk)
        return n


def run_variant(name: str, url: str, sse: bool, args: argparse.Namespace) -> Result:
    """Warm up, then measure one variant in a fresh uvloop event loop."""
    if sse:
        count = args.sse_requests if name != "httpx" else args.httpx_requests // 2
    else:
        count = args.requests if name != "httpx" else args.httpx_requests
    warmup = min(args.warmup, count // 4)

    async def main() -> Result:
        variant = Variant(name, url, sse, args.concurrency)
        await variant.setup()
        try:
            await closed_loop(variant.op(), warmup, min(3.0, args.duration), args.concurrency)
            gc.collect()
            result = await closed_loop(variant.op(), count, args.duration, args.concurrency)
        finally:
            await variant.teardown()
        result.name = name
        return result

    return uvloop.run(main())


def start_server(
    mode: str, events: int, sse_write: str, gap_ms: float = 5.0
) -> tuple[subprocess.Popen[str], int]:
    """Start ``_fixed_server.py`` (on core 1 when possible) and return it with its port."""
    cmd = [sys.executable, str(HERE / "_fixed_server.py"), "--port", "0", "--mode", mode]
    cmd += ["--events", str(events), "--sse-write", sse_write, "--gap-ms", str(gap_ms)]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "1", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the fixed server did not start")
    return proc, int(line)


def print_round(results: list[Result], sse: bool) -> None:
    raw = next((r for r in results if r.name == "raw"), None)
    unit = "events/s" if sse else "req/s"
    head = f"{'variant':<8} {'n':>7} {unit:>10} {'CPU us/req':>10} {'p50 ms':>8} {'p99 ms':>8}"
    head += f" {'ttfb ms':>8}" if sse else ""
    head += f" {'rate/raw':>8} {'p99/raw':>8}" if raw else ""
    print(head)
    for r in results:
        line = (
            f"{r.name:<8} {r.n:>7} {r.rate(sse):>10,.0f} {r.cpu_s / r.n * 1e6:>10.1f}"
            f" {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
        )
        line += f" {r.ttfb_p50_ms:>8.2f}" if sse else ""
        if raw is not None:
            line += f" {r.rate(sse) / raw.rate(sse):>8.3f} {r.p99_ms / raw.p99_ms:>8.2f}"
        print(line, flush=True)


def print_medians(mode: str, rounds: list[list[Result]], sse: bool) -> None:
    print(f"\n== {mode}: medians over {len(rounds)} rounds (ratios taken per round)")
    unit = "events/s" if sse else "req/s"
    print(f"{'variant':<8} {unit:>10} {'p99 ms':>8} {'rate/raw':>8} {'p99/raw':>8} {'cpu-eff':>8}")
    for i, first in enumerate(rounds[0]):
        rows = [rnd[i] for rnd in rounds]
        raws = [next((r for r in rnd if r.name == "raw"), None) for rnd in rounds]
        rate = statistics.median(r.rate(sse) for r in rows)
        p99 = statistics.median(r.p99_ms for r in rows)
        line = f"{first.name:<8} {rate:>10,.0f} {p99:>8.2f}"
        if all(raws):
            pairs = list(zip(rows, raws, strict=True))
            rr = statistics.median(r.rate(sse) / w.rate(sse) for r, w in pairs)  # type: ignore[union-attr]
            pr = statistics.median(r.p99_ms / w.p99_ms for r, w in pairs)  # type: ignore[union-attr]
            ce = statistics.median((w.cpu_s / w.n) / (r.cpu_s / r.n) for r, w in pairs)  # type: ignore[union-attr]
            line += f" {rr:>8.3f} {pr:>8.2f} {ce:>8.3f}"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["json", "sse", "both"], default="both")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=40_000, help="per variant and round")
    parser.add_argument("--sse-requests", type=int, default=8_000, help="streams per variant")
    parser.add_argument("--httpx-requests", type=int, default=3_000, help="for plain httpx")
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--duration", type=float, default=15.0, help="cap per variant, seconds")
    parser.add_argument("--events", type=int, default=50, help="content deltas per stream")
    parser.add_argument("--sse-write", choices=["burst", "event", "paced"], default="event")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="event spacing when paced")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument(
        "--variants",
        default="raw,wire,direct,fast,client,httpx",
        help=f"comma list from {','.join(ALL_VARIANTS)}; raw first gives the ratios",
    )
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(ALL_VARIANTS):
        parser.error(f"unknown variants: {sorted(unknown)}")

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    print(
        f"python {sys.version.split()[0]}  aiohttp {aiohttp.__version__}"
        f"  httpx {httpx.__version__}  uvloop {uvloop.__version__}  c={args.concurrency}"
    )
    for mode in ["json", "sse"] if args.mode == "both" else [args.mode]:
        sse = mode == "sse"
        what = f"{args.events} deltas, {args.sse_write} writes" if sse else "600-byte JSON"
        if sse and args.sse_write == "paced":
            what += f" {args.gap_ms:g} ms apart"
        proc, port = start_server(mode, args.events, args.sse_write, args.gap_ms)
        rounds: list[list[Result]] = []
        try:
            url = f"http://127.0.0.1:{port}{PATH}"
            for rnd in range(args.rounds):
                # Other work on this shared machine moves every figure; say how busy it was.
                load = f"  load avg {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
                print(f"\n== {mode} ({what}), round {rnd + 1}/{args.rounds}{load}")
                results = []
                for name in variants:
                    results.append(run_variant(name, url, sse, args))
                    gc.collect()
                print_round(results, sse)
                rounds.append(results)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        if args.rounds > 1:
            print_medians(mode, rounds, sse)


if __name__ == "__main__":
    main()
