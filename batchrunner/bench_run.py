"""Running a bench: its stages one after another, in this process or in ``--workers`` processes.

One stage in this process is one :func:`batchrunner.runner._drive` over a cycled request set,
writing into the bench's run directory. With ``--workers N``, each stage is run by N fresh
processes (one event loop each, so all cores are used) that share the stage's load: closed-loop
concurrency is split between them, an open-loop rate is split into N interleaved schedules
starting at one agreed instant. Each worker writes its own store under ``workers/`` and reports
its measurements; the parent merges those and moves the Parquet parts into ``data/``, so every
row lands once in one dataset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from batchrunner.bench import (
    DEFAULT_SEARCH_FACTOR,
    DEFAULT_SEARCH_STEPS,
    BenchState,
    Slo,
    StageCollector,
    StageSpec,
    cycle_records,
    passes,
    search_rates,
    stage_config,
    stage_result,
    stage_workers,
)
from batchrunner.client import GatewayClient, redact_url
from batchrunner.config import ConfigError, Redactor, RunConfig
from batchrunner.feed import RecordFeed
from batchrunner.interrupts import SignalHandlers
from batchrunner.progress import LiveStats
from batchrunner.rundir import default_run_name, environment
from batchrunner.runner import (
    RunDirError,
    _drive,
    _gateway,
    _Session,
    check_gateway_resolves,
    send_phase,
)
from batchrunner.safe_output import safe
from batchrunner.schema import Mode, RequestRecord
from batchrunner.sources import iter_requests
from batchrunner.store import RunStore, write_json_atomic

BENCH_JSON = "bench.json"
#: Requests kept in memory to cycle through; a bench needs variety, not millions of prompts.
MAX_BENCH_RECORDS = 100_000
#: After every worker said it is ready, the stage starts this much later on all of them.
WORKER_START_DELAY_S = 0.2
WORKER_READY_TIMEOUT_S = 60.0
#: SLO metrics that only streamed responses have (the rows of other modes leave them null).
STREAM_ONLY_SLO_METRICS = frozenset({"ttft", "tpot", "itl"})
#: A worker writes this line on stdout for each failed request, so that the parent sums them
#: while the stage goes: --max-errors is the stage's, not each worker's.
FAILURE_LINE = b"E\n"
#: What the parent sends every worker once their failures together pass --max-errors (None
#: where there is no such signal: each worker then stops at what is left of the budget).
WORKER_STOP_SIGNAL = getattr(signal, "SIGUSR1", None)
#: Longest line read from a worker (its result line).
WORKER_LINE_LIMIT = 1 << 40


@dataclass
class BenchConfig:
    """A bench: the base run configuration plus stages, SLOs and stop conditions."""

    run: RunConfig
    stages: list[StageSpec] = field(default_factory=list)
    slos: list[Slo] = field(default_factory=list)
    saturate: bool = False
    search_start: float = 10.0
    search_max: float = 10_000.0
    search_factor: float = DEFAULT_SEARCH_FACTOR
    search_steps: int = DEFAULT_SEARCH_STEPS
    stage_duration_s: float | None = 30.0
    stage_requests: int | None = None
    warmup_s: float = 0.0
    max_errors: int | None = None
    max_error_rate: float | None = None
    total_duration_s: float | None = None
    workers: int = 1
    synthetic_prompt: str = "Write a short paragraph about the sea."

    def open_loop(self) -> bool:
        """Whether any stage has a schedule (``--rate``, ``--ramp``, ``--saturate``)."""
        return self.saturate or any(spec.rate is not None for spec in self.stages)

    def validate(self) -> None:
        if not self.stages and not self.saturate:
            raise ConfigError("give stages (--concurrency, --rate or --ramp) or --saturate")
        if self.workers < 1 or self.workers > (os.cpu_count() or 1) * 4:
            raise ConfigError("--workers must be between 1 and 4x the number of cores")
        if self.saturate and not self.slos and self.max_error_rate is None:
            raise ConfigError("--saturate needs --slo or --max-error-rate to know when to stop")
        if self.saturate and self.stages:
            # They were dropped without a word: the search picks every stage's rate itself.
            raise ConfigError(
                "--saturate picks its stages' rates itself: leave out --concurrency, --rate "
                "and --ramp (or run those stages as a bench of their own)"
            )
        mode = Mode(self.run.mode)
        for slo in self.slos:
            if slo.metric in STREAM_ONLY_SLO_METRICS and mode is not Mode.STREAM:
                # Every stage would miss it with no value to show why (sync rows have none).
                raise ConfigError(
                    f"--slo {slo.spec()}: {slo.metric} is measured only with --mode stream "
                    f"(this bench is --mode {mode.value}); use latency or ttfb SLOs, or "
                    "--mode stream"
                )
        if self.run.arrival == "poisson" and not self.open_loop():
            raise ConfigError(poisson_without_open_loop("--arrival poisson", "--arrival"))
        finite = math.isfinite
        if not (self.search_factor > 1 and finite(self.search_factor)):
            raise ConfigError("--search-factor must be a number > 1")
        if not (0 < self.search_start <= self.search_max and finite(self.search_max)):
            raise ConfigError(
                "--search-start and --search-max must be numbers with 0 < start <= max"
            )
        if self.search_steps < 0:
            raise ConfigError("--search-steps must be >= 0")
        if self.stage_duration_s is not None and not (
            self.stage_duration_s > 0 and finite(self.stage_duration_s)
        ):
            raise ConfigError("--stage-duration must be a number of seconds > 0")
        if self.stage_requests is not None and self.stage_requests < 1:
            raise ConfigError("--stage-requests must be at least 1")
        if not (self.warmup_s >= 0 and finite(self.warmup_s)):  # a negative one never ended
            raise ConfigError("--warmup must be a number of seconds >= 0")
        if self.max_errors is not None and self.max_errors < 0:
            raise ConfigError("--max-errors must be >= 0")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise ConfigError("--max-error-rate must be between 0 and 1")
        if self.total_duration_s is not None and not (
            self.total_duration_s > 0 and finite(self.total_duration_s)
        ):
            raise ConfigError("--duration must be a number of seconds > 0")


def poisson_without_open_loop(given: str, leave_out: str) -> str:
    """The error for Poisson arrivals in a bench with no open-loop stage, as ``run`` refuses
    ``--arrival poisson`` without ``--rate``: every stage would measure a closed loop while the
    bench said it used Poisson arrivals.

    :param given: how the option was given (``--arrival poisson``, or the scenario's key).
    :param leave_out: what to leave out instead.
    """
    return (
        f"{given} spaces the arrivals of open-loop stages (--rate, --ramp, --saturate); every "
        f"stage here is a closed loop (-c) and has no arrivals: add a --rate or --ramp stage, "
        f"or leave out {leave_out}"
    )


@dataclass
class BenchResult:
    run_dir: Path
    stages: list[dict[str, Any]]
    saturation: dict[str, Any] | None
    status: str
    message: str = ""


def has_input(run: RunConfig) -> bool:
    """Whether the bench cycles a request file (else one synthetic request)."""
    return run.requests is not None and str(run.requests) not in ("", ".")


def load_records(config: BenchConfig) -> list[RequestRecord]:
    """The request set to cycle: the input file, or one synthetic request."""
    run = config.run
    if not has_input(run):
        params = {
            "model": run.model or "claude-sonnet-4-5",
            "max_tokens": run.max_tokens or 128,
            "messages": [{"role": "user", "content": config.synthetic_prompt}],
        }
        return [RequestRecord(0, "0", params)]
    records = []
    for record in iter_requests(run.requests, run.source_options()):
        records.append(record)
        if len(records) >= MAX_BENCH_RECORDS:
            break
    if not records:
        raise ConfigError(f"{run.requests}: no valid request to send")
    return records


async def run_bench(
    config: BenchConfig,
    *,
    quiet: bool = False,
    stderr: TextIO | None = None,
    handle_signals: bool = False,
) -> BenchResult:
    """Run every stage (or the saturation search) and write ``bench.json``.

    :raises ConfigError: invalid options.
    """
    stderr = safe(stderr or sys.stderr)  # a closed pipe must not stop the bench
    config.validate()
    run = config.run
    run.validate()
    await check_gateway_resolves(run)
    records = await asyncio.to_thread(load_records, config)
    name = run.run_name or default_run_name(run.requests or Path("bench"), "bench")
    run_dir = run.out or run.results_root / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"{run_dir} exists and is not empty: a bench always starts afresh")
    store = await asyncio.to_thread(RunStore.open, run_dir, create=True, redo_statuses=frozenset())
    run_id = uuid.uuid4().hex[:12]
    info: dict[str, Any] = {
        "run_id": run_id,
        "name": run_dir.name,
        "created_at": time.time(),
        "kind": "bench",
        # Each stage sets its own load: the base run's in-flight limit would mean nothing.
        "config": {k: v for k, v in run.public_dict().items() if k != "in_flight_limit"},
        "bench": _public_bench(config),
        "environment": environment(),
    }
    results: list[dict[str, Any]] = []
    state = BenchState()
    saturation: dict[str, Any] | None = None
    status, message = "finished", ""
    # Installed once the stages can record a signal, removed once bench.json is written: a
    # signal between stages, or while the results are written, must not cut them off.
    signals = SignalHandlers()
    try:
        try:
            with contextlib.ExitStack() as stack, _gateway(run, stderr, quiet) as url:
                redact = Redactor(run.secret_values())
                info["gateway"] = redact(redact_url(url)) if run.gateway else "built-in emulator"
                await asyncio.to_thread(write_json_atomic, run_dir / "run.json", info)
                client = GatewayClient(url, run.request_headers(), timeouts=run.timeouts)
                async with client:
                    runner = _StageRunner(
                        config, store, client, run_id, records, url, stderr, quiet
                    )
                    stack.callback(runner.close)
                    if handle_signals:
                        signals.install(runner.on_sigint, runner.on_sigterm, runner.on_sighup)
                    if config.saturate:
                        saturation = await _saturation_search(config, runner, results, state)
                    else:
                        for spec in config.stages:
                            if _should_stop(config, state, results):
                                break
                            result = await runner.run(spec, state)
                            if (runner.interrupted or runner.fatal) and not result["requests"]:
                                break  # stopped before it sent anything: no stage to show
                            results.append(result)
                            _print_stage(result, stderr, quiet)
                            if runner.interrupted or runner.fatal:
                                break
                    runner.finishing = True
                    if runner.fatal:
                        status, message = "aborted", runner.fatal
                    elif runner.interrupted:
                        status, message = "interrupted", runner.interrupted_by
                    elif state.stop_reason:
                        status, message = "stopped", state.stop_reason
        finally:
            await asyncio.to_thread(store.close)
        info.update(
            status=status,
            message=message,
            stages=results,
            saturation=saturation,
            finished_at=time.time(),
        )
        await asyncio.to_thread(write_json_atomic, run_dir / "run.json", info)
        await asyncio.to_thread(
            write_json_atomic,
            run_dir / BENCH_JSON,
            {"stages": results, "saturation": saturation, "status": status},
        )
    finally:
        signals.remove()
    return BenchResult(run_dir, results, saturation, status, message)


def _public_bench(config: BenchConfig) -> dict[str, Any]:
    data = asdict(config)
    data.pop("run")
    data["slos"] = [str(s) for s in config.slos]
    return data


def _should_stop(config: BenchConfig, state: BenchState, results: list[dict[str, Any]]) -> bool:
    if state.stop_reason:
        return True
    if config.total_duration_s and time.perf_counter() - state.started >= config.total_duration_s:
        state.stop_reason = "--duration reached"
        return True
    if results and config.max_error_rate is not None and not config.saturate:
        rate = results[-1]["error_rate"]
        if rate is not None and rate > config.max_error_rate:
            state.stop_reason = (
                f"stage {results[-1]['stage']}: error rate {rate:.1%} above --max-error-rate"
            )
            return True
    return False


async def _saturation_search(
    config: BenchConfig, runner: _StageRunner, results: list[dict[str, Any]], state: BenchState
) -> dict[str, Any]:
    """Raise the rate geometrically until a stage fails, then bisect between pass and fail."""
    base = StageSpec(
        "",
        duration_s=config.stage_duration_s,
        requests=config.stage_requests,
        warmup_s=config.warmup_s,
    )
    best: float | None = None
    failed: float | None = None
    failure = ""

    async def probe(rate: float) -> bool | None:
        nonlocal failure
        spec = StageSpec(
            f"rate={rate:g}",
            rate=rate,
            duration_s=base.duration_s,
            requests=base.requests,
            warmup_s=base.warmup_s,
        )
        result = await runner.run(spec, state)
        if (runner.interrupted or runner.fatal) and not result["requests"]:
            return None  # stopped before it sent anything: says nothing about the rate
        results.append(result)
        _print_stage(result, runner.stderr, runner.quiet)
        if runner.interrupted or runner.fatal:
            return None  # cut short by the user or a failure of ours: neither pass nor fail
        ok = passes(result, config.max_error_rate)
        if not ok:
            failure = result["verdict"] if result["verdict"] != "ok" else "error rate too high"
        return ok

    for rate in search_rates(config.search_start, config.search_max, config.search_factor):
        if _should_stop(config, state, []) or runner.interrupted or runner.fatal:
            break
        passed = await probe(rate)
        if passed is None:
            break
        if passed:
            best = rate
        else:
            failed = rate
            break
    if best is not None and failed is not None:
        lo, hi = best, failed
        for _ in range(config.search_steps):
            if _should_stop(config, state, []) or runner.interrupted or runner.fatal:
                break
            mid = (lo * hi) ** 0.5  # geometric midpoint: the search space is multiplicative
            passed = await probe(mid)
            if passed is None:
                break
            if passed:
                lo = best = mid
            else:
                hi = failed = mid
    client_bound = failure.startswith("client-bound")
    if client_bound:
        note: str | None = ("the client, not the gateway, was the limit: the gateway's capacity "
                            "is at least the highest passing rate")
    elif best is not None and failed is None and not (runner.interrupted or runner.fatal
                                                      or state.stop_reason):
        note = ("no rate up to --search-max failed: the gateway's capacity is at least the "
                "highest passing rate (raise --search-max to find it)")
    elif best is not None and (runner.interrupted or runner.fatal or state.stop_reason):
        # Cut before it ended: the highest rate that passed so far is no capacity found.
        why = runner.interrupted_by or ("a failure" if runner.fatal else state.stop_reason)
        note = (f"the search was cut short ({why}): the gateway's capacity is at least the "
                "highest passing rate, not known")
    else:
        note = None
    # An SLO with no value is not judged (TPOT of one-token answers): a rate that "passed" did
    # not meet it, and the result must not read as if it had.
    unjudged = [str(slo) for i, slo in enumerate(config.slos)
                if results and all(r["slos"][i]["met"] is None for r in results)]
    if unjudged:
        none = (f"{', '.join(unjudged)} had no value at any rate, so no rate was judged on "
                f"{'it' if len(unjudged) == 1 else 'them'}")
        note = f"{note}; {none}" if note else none
    return {
        "highest_passing_rate": best,
        "lowest_failing_rate": failed,
        "failure": failure or None,
        "client_bound": client_bound,
        "slos": [str(s) for s in config.slos],
        "note": note,
    }


def _print_stage(r: dict[str, Any], stderr: TextIO, quiet: bool) -> None:
    if quiet:
        return
    lat = r.get("latency_s") or {}
    ttft = r.get("ttft_s") or {}
    parts = [f"{r['stage']:<12}", f"n {r['requests']:>6,}"]
    if r["throughput_rps"] is not None:
        parts.append(f"{r['throughput_rps']:>8,.1f} ok/s")
    if r["achieved_send_rate"] is not None and r["target"]["rate"]:
        parts.append(f"sent {r['achieved_send_rate']:,.1f}/s")
    if r["goodput_rps"] is not None:
        parts.append(f"goodput {r['goodput_rps']:,.1f}/s")
    if lat:
        parts.append(f"lat p50 {lat['p50'] * 1e3:,.0f} p99 {lat['p99'] * 1e3:,.0f} ms")
    if ttft:
        parts.append(f"ttft p99 {ttft['p99'] * 1e3:,.0f} ms")
    if r["send_lag_s"]["p99"] is not None and r["target"]["rate"]:
        parts.append(f"lag p99 {r['send_lag_s']['p99'] * 1e3:.2f} ms")
    parts.append(f"err {r['error_rate'] or 0:.1%}")
    parts.append(f"cpu {r['client_cpu']:.0%}")
    parts.append(r["verdict"])
    with contextlib.suppress(OSError):  # a terminal gone away ends no stage
        print(" | ".join(parts), file=stderr, flush=True)


class _StageRunner:
    """Runs one stage, in this process or in worker processes."""

    def __init__(
        self,
        config: BenchConfig,
        store: RunStore,
        client: GatewayClient,
        run_id: str,
        records: list[RequestRecord],
        url: str,
        stderr: TextIO,
        quiet: bool,
    ) -> None:
        self.config = config
        self.store = store
        self.client = client
        self.run_id = run_id
        self.records = records
        self.url = url
        self.stderr = stderr
        self.quiet = quiet
        self.next_index = 0
        self.interrupted = False
        #: What interrupted the stages ("stopped by SIGTERM").
        self.interrupted_by = ""
        #: The session of the stage running in this process, which a signal goes to.
        self.current: _Session | None = None
        #: The stages are over and the results are being written.
        self.finishing = False
        #: Why a stage's session gave up (unwritable output, a gateway refusing every request or
        #: gone, a worker that died): the bench stops there, aborted.
        self.fatal = ""
        #: A second signal cancelled the requests in flight of the stage under way: its
        #: cancelled rows say nothing of the gateway.
        self.cancelled_by_user = False
        #: Some stage of the bench had an ok answer: the gateway's address works.
        self.answered = False
        #: Worker processes of the stage under way, and signals to pass on once they run.
        self._workers: list[asyncio.subprocess.Process] = []
        self._signals_to_pass = 0
        self._devnull = open(os.devnull, "wb", buffering=0)  # noqa: SIM115 - lives with the bench
        #: Stage names used so far: a name is the rows' ``stage`` and names the workers' files.
        self._names: set[str] = set()

    def on_sigint(self) -> None:
        self._on_signal("Ctrl-C", "Press Ctrl-C again to cancel them.")

    def on_sigterm(self) -> None:
        self._on_signal("SIGTERM", "A second SIGTERM cancels them.")

    def on_sighup(self) -> None:  # the terminal closed, the ssh session dropped
        self._on_signal("SIGHUP", "A second SIGHUP cancels them.")

    def _on_signal(self, what: str, again: str) -> None:
        # During a stage here, its session drains (then cancels) as a run does, and the bench
        # stops after it; between stages, or while worker processes run one, no further stage
        # starts.
        session = self.current
        if session is not None and not session.finishing and not self.finishing:
            if session.interrupted_by:  # its second: the requests in flight are cancelled
                self.cancelled_by_user = True
            session.on_signal(what, again)
            return
        if self.config.workers > 1 and not self.finishing and self._signals_to_pass < 2:
            # A stage in worker processes: each drains as a run does (a second signal cancels).
            self._signals_to_pass += 1
            if self._workers:
                self._signal_workers()
            if self._signals_to_pass == 2:
                self.cancelled_by_user = True
                self._say(f"{what}: the workers cancel their requests in flight.")
            elif self._workers:
                self._say(f"{what}: the workers let their requests in flight finish. {again}")
        if not self.interrupted:
            self.interrupted = True
            self.interrupted_by = f"stopped by {what}"
            self._say(f"{what}: {'writing the results' if self.finishing else 'no further stage'}.")

    def _say(self, text: str) -> None:
        if not self.quiet:
            try:
                print(f"\n{text}", file=self.stderr, flush=True)
            except OSError:  # the terminal is gone (EIO after a hang-up)
                self.quiet = True

    def _signal_workers(self) -> None:
        for proc in self._workers:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # it has just exited
                    proc.send_signal(signal.SIGINT)

    def close(self) -> None:
        self._devnull.close()

    async def run(self, spec: StageSpec, state: BenchState) -> dict[str, Any]:
        # A stage given twice (-c 4,4, or two search rates that print alike) gets a name of its
        # own: the same name merged two stages' rows in reports, and with --workers the
        # second stage's files replaced the first's.
        name, k = spec.name, 2
        while name in self._names:
            name, k = f"{spec.name} #{k}", k + 1
        self._names.add(name)
        spec = replace(spec, name=name)
        collector = StageCollector()
        collector.slos = self.config.slos
        base = self.next_index
        if self.config.workers > 1:
            await self._run_workers(spec, collector, base, state)
        else:
            await self._run_here(spec, collector, base, state)
        n = sum(collector.status.values()) + collector.warmup_rows
        self.next_index = base + max(n, 1) * max(1, self.config.workers) + self.config.workers
        state.requests += n
        # Warm-up failures too: the workers count them as they come, and a stage they stopped
        # in its warm-up must stop the bench.
        state.errors += collector.failed_requests
        max_errors = self.config.max_errors
        if max_errors is not None and state.errors > max_errors and not state.stop_reason:
            # Workers count their own errors only: the total is known once the stage is over
            # (and the bench's last stage must say it too).
            state.stop_reason = f"--max-errors {max_errors} exceeded"
        self.answered = self.answered or collector.status.get("ok", 0) > 0
        # Cancelled by a second Ctrl-C, the requests say nothing of the gateway.
        result = stage_result(spec, collector, self.config.slos, self.config.max_error_rate,
                              cancelled_failed=not self.cancelled_by_user)
        self.cancelled_by_user = False
        return result

    async def _run_here(
        self, spec: StageSpec, collector: StageCollector, base: int, state: BenchState
    ) -> None:
        cfg = stage_config(self.config.run, spec)
        session = _Session(
            cfg,
            self.store,
            self.client,
            self.run_id,
            LiveStats(None),
            self._devnull,
            self.stderr,
            self.quiet,
            stage=spec.name,
        )
        max_errors = self.config.max_errors
        # A gateway that answered an earlier stage is reachable: connections it drops now
        # are its answer under load, not a wrong address (see _Session._track_config_errors).
        session.answered = self.answered

        def on_row(row: dict[str, Any]) -> None:
            collector.add(row)
            if max_errors is not None and row.get("status") != "ok":
                state.errors += 1
                if state.errors > max_errors and not session.stopping:
                    state.stop_reason = f"--max-errors {max_errors} exceeded"
                    session.stop(state.stop_reason)

        session.on_row = on_row
        feed = RecordFeed(cycle_records(self.records, spec.name, base), cfg.max_requests)
        heap = send_phase()  # before the clock and the lag meter: the collection blocks the loop
        heap.__enter__()
        start_at = time.time() + 0.05
        session.start_at = start_at
        if spec.warmup_s:
            session.warmup_until_at = start_at + spec.warmup_s
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            self.current = session
            if self.interrupted:  # a signal came between stages: this one sends nothing
                session.stop(self.interrupted_by)
            # The bench's signal handlers send signals to this session.
            await _drive(session, cfg.source_options(), show_progress=not self.quiet, feed=feed)
        finally:
            self.current = None
            heap.__exit__(None, None, None)
            session.background.shutdown(wait=False)  # a compaction under way still completes
        collector.loop_lag_p99_s = session.loop_lag.quantile(0.99)
        collector.cpu_s = time.process_time() - cpu0
        collector.wall_s = time.perf_counter() - wall0
        # errors were counted live when --max-errors is set; avoid counting them twice
        if max_errors is not None:
            state.errors -= collector.failed_requests
        if session.interrupted:
            self.interrupted = True
            self.interrupted_by = session.interrupted_by or "interrupted"
        if session.fatal is not None and not self.fatal:
            self.fatal = session.redact(str(session.fatal))

    async def _run_workers(
        self, spec: StageSpec, collector: StageCollector, base: int, state: BenchState
    ) -> None:
        """Start N workers, wait until each is ready, then give them one start instant."""
        n = stage_workers(spec, self.config.workers)
        run = self.config.run
        max_errors = self.config.max_errors
        left = None if max_errors is None else max(0, max_errors - state.errors)
        common = {
            # Each worker stops once it alone has failed more than what is left of
            # --max-errors, and tells each failure ("E" on stdout): their sum stops them all.
            "max_errors": left,
            "run_dir": str(self.store.run_dir), "run_id": self.run_id, "url": self.url,
            "headers": run.request_headers(), "spec": asdict(spec), "base": base, "workers": n,
            "records": str(run.requests) if has_input(run) else None,
            "synthetic": None if has_input(run) else [r.params for r in self.records],
            "run": _worker_run_options(run), "slos": [s.spec() for s in self.config.slos],
            "answered": self.answered,
        }  # fmt: skip
        procs = []
        try:
            for k in range(n):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "batchrunner.bench_worker",
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    # Out of the terminal's process group: a Ctrl-C reaches the parent only,
                    # which passes it on once the workers can drain (they would die of it).
                    start_new_session=True,
                    # The result is one line holding every request's figures: megabytes, past
                    # the 64 KiB a line may have by default.
                    limit=WORKER_LINE_LIMIT,
                )
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({**common, "worker": k}).encode() + b"\n")
                await proc.stdin.drain()
                procs.append(proc)
            for k, proc in enumerate(procs):
                assert proc.stdout is not None
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(),
                                                  WORKER_READY_TIMEOUT_S)
                except TimeoutError:
                    line = b""  # as good as dead: killed below, the bench ends here
                    proc.kill()
                    await proc.wait()
                if line.strip() != b"READY":
                    # Out of memory reading the set, say: the bench ends here, its earlier
                    # stages and bench.json kept.
                    for other in procs:
                        if other.returncode is None:
                            other.kill()
                    await asyncio.gather(*(other.wait() for other in procs))
                    self.fatal = self.fatal or (
                        f"bench worker {k} of stage {spec.name} {_how_it_ended(proc)} before "
                        "it started (its error, if any, is above)")
                    await asyncio.to_thread(_adopt_worker_parts, self.store.run_dir, spec.name)
                    return
            start_at = time.time() + WORKER_START_DELAY_S
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(f"{start_at}\n".encode())
                await proc.stdin.drain()
                proc.stdin.close()
            self._workers = procs
            for _ in range(self._signals_to_pass):  # came while the workers were starting
                self._signal_workers()
            failed = 0

            def on_failure() -> None:
                nonlocal failed
                failed += 1
                if left is not None and failed == left + 1 and WORKER_STOP_SIGNAL is not None:
                    for proc in procs:  # all of them, as one session stops at its limit
                        if proc.returncode is None:
                            with contextlib.suppress(ProcessLookupError):  # just exited
                                proc.send_signal(WORKER_STOP_SIGNAL)

            outputs = await asyncio.gather(*(_worker_output(p, on_failure) for p in procs))
            for proc in procs:
                await proc.wait()
        except BaseException:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            raise
        finally:
            self._workers = []
            self._signals_to_pass = 0
        for k, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
            if proc.returncode != 0:
                # Killed (out of memory, kill -9) or crashed: the others' figures still stand,
                # and every row any of them wrote is kept; the bench stops here.
                if not self.fatal:
                    self.fatal = (f"bench worker {k} of stage {spec.name} {_how_it_ended(proc)}; "
                                  "the stage's figures leave out its requests")
                continue
            data = json.loads(out.decode().strip().splitlines()[-1])
            fatal = data.pop("fatal", None)
            if fatal and not self.fatal:
                self.fatal = str(fatal)
            collector.merge_json(data)
        await asyncio.to_thread(_adopt_worker_parts, self.store.run_dir, spec.name)


def _how_it_ended(proc: asyncio.subprocess.Process) -> str:
    """``was killed by signal 9`` or ``exited with code 1``, for a worker that ended badly."""
    code = proc.returncode
    return f"was killed by signal {-code}" if code is not None and code < 0 else (
        f"exited with code {code}")


async def _worker_output(
    proc: asyncio.subprocess.Process, on_failure: Callable[[], None]
) -> bytes:
    """A worker's stdout (its result line), calling ``on_failure`` for each failure it tells."""
    assert proc.stdout is not None
    kept = []
    async for line in proc.stdout:
        if line == FAILURE_LINE:
            on_failure()
        else:
            kept.append(line)
    return b"".join(kept)


def _worker_run_options(run: RunConfig) -> dict[str, Any]:
    return {
        "mode": run.mode.value, "arrival": run.arrival, "seed": run.seed,
        "max_retries": run.retry.max_retries, "keep_response_json": run.keep_response_json,
        "keep_response_text": run.keep_response_text, "connect_s": run.timeouts.connect_s,
        "read_s": run.timeouts.read_s, "attempt_s": run.timeouts.attempt_s,
        "concurrency": run.concurrency, "max_rate": run.max_rate,
        "model": run.model, "max_tokens": run.max_tokens, "drain_timeout_s": run.drain_timeout_s,
    }  # fmt: skip


def _adopt_worker_parts(run_dir: Path, stage: str) -> None:
    """Move the workers' Parquet parts of a stage into ``data/`` under unique names (after
    converting what a worker that died left in its journal)."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in stage)
    workers_dir = run_dir / "workers"
    for worker_dir in sorted(workers_dir.glob(f"{safe}-w*")):
        if not worker_dir.is_dir():
            continue  # not a worker's (it could not start for it): left as it is
        if (worker_dir / "journal").is_dir():
            RunStore.open(worker_dir, create=False, redo_statuses=()).close()
        for part in sorted((worker_dir / "data").glob("part-*.parquet")):
            if part.name == "part-000000.parquet":
                continue  # the store's empty schema part; data/ has its own
            target = run_dir / "data" / f"part-{worker_dir.name}-{part.name[5:]}"
            os.replace(part, target)
        for leftover in sorted(worker_dir.rglob("*"), reverse=True):
            if leftover.is_file():
                leftover.unlink()
            else:
                leftover.rmdir()
        worker_dir.rmdir()
    if workers_dir.exists() and not any(workers_dir.iterdir()):
        workers_dir.rmdir()


def worker_dir_name(stage: str, worker: int) -> str:
    safe = "".join(ch if ch.isalnum() else "_" for ch in stage)
    return f"{safe}-w{worker}"


def phase_of(rate: float | None, worker: int, workers: int, arrival: str) -> float:
    """Offset of worker k's schedule so that N constant schedules interleave evenly."""
    if rate is None or arrival != "constant" or workers == 1:
        return 0.0
    return worker / rate  # rate is the whole stage's rate


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
