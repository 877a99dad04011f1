"""One worker process of ``bench --workers N``: runs its share of one stage, prints its figures.

Started by :mod:`batchrunner.bench_run` with a JSON job on stdin (stdin, not argv, so that keys
never show in a process list) and answers one JSON line on stdout: the stage measurements that
the parent merges. Its rows go to its own store under ``workers/``; the parent adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from batchrunner.bench import (
    Slo,
    StageCollector,
    StageSpec,
    cycle_records,
    record_offset,
    stage_config,
)
from batchrunner.bench_run import FAILURE_LINE, WORKER_STOP_SIGNAL, phase_of, worker_dir_name
from batchrunner.client import GatewayClient, Timeouts
from batchrunner.config import RunConfig
from batchrunner.feed import RecordFeed
from batchrunner.interrupts import SignalHandlers
from batchrunner.progress import LiveStats
from batchrunner.redaction import Redactor, secret_header_values, url_secret_values
from batchrunner.retry import RetryPolicy
from batchrunner.runner import _drive, _Session, send_phase
from batchrunner.schema import Mode, RequestRecord
from batchrunner.sources import iter_requests
from batchrunner.store import RunStore


async def work(job: dict[str, Any], read_start: Any) -> dict[str, Any]:
    opts = job["run"]
    spec = StageSpec(**job["spec"])
    k, n = job["worker"], job["workers"]
    requests = Path(job["records"]) if job["records"] else None
    run = RunConfig(
        requests=requests or Path(), gateway=job["url"], mode=Mode(opts["mode"]),
        arrival=opts["arrival"], seed=opts["seed"] + k,
        retry=RetryPolicy(max_retries=opts["max_retries"]),
        keep_response_json=opts["keep_response_json"],
        keep_response_text=opts["keep_response_text"],
        timeouts=Timeouts(opts["connect_s"], opts["read_s"], opts["attempt_s"]),
        concurrency=opts["concurrency"],
        max_rate=opts["max_rate"] / n if opts["max_rate"] else None,
        model=opts["model"], max_tokens=opts["max_tokens"],
        drain_timeout_s=opts.get("drain_timeout_s", 30.0),
    )  # fmt: skip
    if requests is not None:
        records = list(iter_requests(requests, run.source_options()))[:100_000]
    else:
        records = [RequestRecord(i, str(i), p) for i, p in enumerate(job["synthetic"])]
    cfg = stage_config(run, spec, workers=n, worker=k)
    store = RunStore.open(
        Path(job["run_dir"]) / "workers" / worker_dir_name(spec.name, k),
        create=True,
        redo_statuses=frozenset(),
    )
    collector = StageCollector()
    collector.slos = [Slo.parse(s) for s in job["slos"]]
    client = GatewayClient(job["url"], job["headers"], timeouts=run.timeouts)
    signals = SignalHandlers()
    try:
        with contextlib.ExitStack() as stack, open(os.devnull, "wb", buffering=0) as devnull:
            session = _Session(
                cfg,
                store,
                client,
                job["run_id"],
                LiveStats(None),
                devnull,
                sys.stderr,
                True,
                stage=spec.name,
            )
            # The credentials reach a worker only as request headers and the URL: the client
            # knows them all (the session's own configuration holds no key).
            session.redact = client.redact
            session.answered = bool(job.get("answered"))  # an earlier stage had answers
            # The parent passes its Ctrl-C on (drain, then cancel), from the start instant.
            signals.install(session.on_sigint, session.on_sigterm, session.on_sighup)
            # Ready: the parent waits for every worker, then gives all one start instant.
            sys.stdout.write("READY\n")
            sys.stdout.flush()
            job["start_at"] = float(await asyncio.to_thread(read_start))
            session.start_at = job["start_at"]
            session.phase_s = phase_of(spec.rate, k, n, run.arrival)
            if spec.warmup_s:
                session.warmup_until_at = job["start_at"] + spec.warmup_s
            max_errors = job.get("max_errors")
            errors = 0

            def on_row(row: dict[str, Any]) -> None:
                nonlocal errors
                collector.add(row)
                if max_errors is not None and row.get("status") != "ok":
                    errors += 1
                    sys.stdout.buffer.write(FAILURE_LINE)  # the parent sums all workers'
                    sys.stdout.flush()
                    if errors > max_errors and not session.stopping:
                        session.stop(f"--max-errors {max_errors} exceeded")

            session.on_row = on_row
            def stop_all() -> None:  # the workers together failed more than --max-errors
                if not session.stopping:
                    session.stop(f"--max-errors {max_errors} exceeded (all workers)")

            if max_errors is not None and WORKER_STOP_SIGNAL is not None:
                loop = asyncio.get_running_loop()

                def on_stop_signal(signum: int, frame: object) -> None:
                    # Not loop.add_signal_handler: closing the loop would put the default
                    # action back (terminate), and a late signal would kill this worker as it
                    # writes its result. This handler stays for the life of the process.
                    with contextlib.suppress(RuntimeError):  # the loop is closed: too late
                        loop.call_soon_threadsafe(stop_all)

                signal.signal(WORKER_STOP_SIGNAL, on_stop_signal)
            feed = RecordFeed(
                cycle_records(records, spec.name, job["base"], k, n,
                              record_offset(spec, n, k, len(records))),
                cfg.max_requests,
            )
            if spec.rate is None:
                # Closed loop: begin at the agreed instant too, so workers overlap fully.
                await asyncio.sleep(max(0.0, job["start_at"] - time.time()))
            stack.enter_context(send_phase())
            cpu0, wall0 = time.process_time(), time.perf_counter()
            try:
                async with client:
                    await _drive(session, cfg.source_options(), False, feed=feed)
            finally:
                session.background.shutdown(wait=False)  # a compaction under way still completes
            collector.loop_lag_p99_s = session.loop_lag.quantile(0.99)
            collector.cpu_s = time.process_time() - cpu0
            collector.wall_s = time.perf_counter() - wall0
    finally:
        store.close()
        signals.remove()
    result = collector.to_json()
    if session.fatal is not None:  # the parent stops the bench, naming it
        result["fatal"] = session.redact(str(session.fatal))
    return result


def main() -> None:
    job = json.loads(sys.stdin.readline())
    read_start = sys.stdin.readline
    try:
        try:
            import uvloop

            result = uvloop.run(work(job, read_start))
        except ImportError:  # pragma: no cover
            result = asyncio.run(work(job, read_start))
    except Exception as exc:
        # One line for the parent's "its error is above" (the traceback with BATCHRUNNER_DEBUG).
        if os.environ.get("BATCHRUNNER_DEBUG"):
            raise
        redact = Redactor(secret_header_values(job.get("headers") or {})
                          + url_secret_values(job.get("url") or ""))
        sys.stderr.write(redact(f"bench worker {job.get('worker')}: {type(exc).__name__}: "
                                f"{exc}") + "\n")
        sys.exit(1)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
