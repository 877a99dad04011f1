"""Orchestration of one run session: source → pacing → client → rows → store.

Everything runs in one ``TaskGroup`` on one event loop. The source is read on a worker thread in
batches; finished rows are handed to the store once per loop iteration (a request counts as
finished when its row is in the journal, so ``kill -9`` loses only requests in flight); closed
journal segments are compacted to Parquet on a thread. Stopping (first Ctrl-C, ``--duration``,
a fatal error) stops scheduling and lets in-flight requests finish within the drain timeout;
after that (or on a second Ctrl-C) they are cancelled and recorded as ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import Context
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar

import httpx
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from batchrunner.background import background_executor
from batchrunner.client import GatewayClient, messages_url, redact_url
from batchrunner.config import (
    DEFAULT_CONCURRENCY,
    OPEN_LOOP_MAX_OUTSTANDING,
    ConfigError,
    Redactor,
    RunConfig,
)
from batchrunner.dedupe import DuplicateDetector
from batchrunner.dispatch import ScheduleDispatcher
from batchrunner.execute import ExecContext, execute
from batchrunner.fdlimit import ensure_open_files
from batchrunner.feed import FEED_CHUNK, RecordFeed
from batchrunner.formats import PARQUET_SUFFIXES
from batchrunner.gateway_address import check_resolves
from batchrunner.heap import release_free_heap
from batchrunner.interrupts import SignalHandlers
from batchrunner.jobs import Job, JobContext, JobPoller, kept_request, submit
from batchrunner.outage import GatewayOutage
from batchrunner.pacing import LoopLagMeter, Pacer, RateCeiling, schedule_offsets
from batchrunner.polling import PollPlanner
from batchrunner.progress import LiveStats, ProgressDisplay
from batchrunner.ratelimit import RateLimits
from batchrunner.report import COST_COLUMNS, outstanding_cost, replaced_cost_usd, session_starts
from batchrunner.report_text import fmt_usd
from batchrunner.rundir import (
    RUN_FORMAT,
    RUN_JSON,
    RunDirError,
    check_resumable,
    check_same_requests,
    default_run_name,
    environment,
    find_latest_run,
    input_fingerprint,
    load_run_json,
    read_run_json,
)
from batchrunner.safe_output import safe
from batchrunner.schedule_check import open_loop_sessions
from batchrunner.schema import ERROR_CONNECTION, Mode, RequestRecord, Status
from batchrunner.sources import (
    InputError,
    Reject,
    SourceOptions,
    count_requests,
    iter_requests,
    unused_columns,
    unused_columns_note,
)
from batchrunner.spend import SETTLE_INTERVAL_S, SpendMeter
from batchrunner.store import (
    JOBS_FILE,
    READ_BATCH_ROWS,
    RunStore,
    RunStoreError,
    ensure_not_in_use,
    io_reason,
    run_has_rows,
    what_to_do,
    write_json_atomic,
)
from batchrunner.summary import SUMMARY_COLUMNS, summarize_batches
from batchrunner.wire import LOCAL_LIMIT_NOTE
from batchrunner.workers import ParkedWorkers

T = TypeVar("T")

#: What ``run.json`` records as the gateway of a run on the built-in emulator.
EMULATOR_GATEWAY = "built-in emulator"

# Exit codes (documented in the README and in `batchrunner run --help`).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_ERROR_RATE = 4

#: ``stage`` of rows in a bench stage's warm-up (excluded from its figures).
WARMUP_SUFFIX = "#warmup"
COMPACT_CHECK_S = 1.0
#: Compaction waits while the process used more than this share of a core over the last
#: check period, as long as fewer than COMPACT_MAX_BACKLOG segments wait.
COMPACT_DEFER_BUSY = 0.2
COMPACT_MAX_BACKLOG = 4
#: How often an open-loop schedule waiting for its next send looks for a stop request.
STOP_CHECK_S = 0.1
#: Open loop: connections opened before the schedule starts, enough for its first
#: OPEN_AHEAD_SCHEDULE_S (at least one, at most OPEN_AHEAD_MAX and the in-flight cap), and how
#: long the start waits for them at most (a run's own clock has not started; a bench stage's
#: agreed start bounds it too); connects still under way then finish in the background.
OPEN_AHEAD_SCHEDULE_S = 0.01
OPEN_AHEAD_MAX = 64
OPEN_AHEAD_WITHIN_S = 1.0
#: A closed loop starts all its workers at once: a connection each, opened ahead up to this
#: many (within OPEN_AHEAD_WITHIN_S too).
CLOSED_OPEN_AHEAD_MAX = 1024
#: How long another thread may hold the interpreter lock while the event loop waits for it.
#: Python's default, 5 ms, shows up whole in open-loop send lag (measured with a thread running
#: Python code beside a paced loop: lag p50 2.5 ms at 5 ms, 0.17 ms at 0.2 ms).
SEND_SWITCH_INTERVAL_S = 0.0005
#: This many consecutive requests failing in a way that says the configuration is wrong (bad
#: key, wrong URL, gateway unreachable) abort the run instead of burning through the whole set;
#: their rows are kept, and ``--retry-failed`` sends them again.
CONFIG_ERROR_STATUSES = frozenset({401, 403, 404, 405})
ASYNC_CREATE_FAILED = "failed to create async job"
MAX_CONSECUTIVE_CONFIG_ERRORS = 20
#: Models told of on stderr when first rate-limited; later ones are counted in run.json.
RATE_LIMITED_MODELS_SAID = 5
#: Gateway outages told on stderr; later ones are only counted (run.json's sessions).
OUTAGES_SAID = 5
REDO_ON_RETRY_FAILED = frozenset(
    {Status.CANCELLED.value, Status.ERROR.value, Status.TIMEOUT.value, Status.EXPIRED.value}
)


@dataclass(slots=True)
class RunResult:
    """What a finished (or stopped) session leaves behind.

    :ivar run_dir: the run directory.
    :ivar summary: :func:`batchrunner.summary.summarize` of all rows of the run.
    :ivar status: ``finished``, ``incomplete`` (limits reached), ``interrupted`` or ``aborted``.
    :ivar exit_code: the CLI's exit code for this outcome.
    """

    run_dir: Path
    summary: dict[str, Any]
    status: str
    exit_code: int
    message: str = ""
    rejected: int = 0
    sent_this_session: int = 0
    outstanding_jobs: int = 0
    collect_before: float | None = None
    #: Aborted because requests kept failing on the configuration (key, URL): resuming must
    #: send the failed ones again (``--retry-failed``).
    failed_on_config: bool = False
    #: Aborted by the input: an invalid row with ``--strict``, or an unreadable file.
    failed_on_input: bool = False
    #: Async: requests of the input neither answered nor submitted (``collect`` cannot send
    #: them; ``run`` can).
    unsubmitted: int = 0
    #: Whether the same command can go on with the run (not when the run directory was
    #: deleted under it, or the input changed).
    resumable: bool = True


class RunAborted(Exception):
    """The run cannot go on (bad input in strict mode, unwritable output, config errors)."""


@dataclass
class _Session:
    config: RunConfig
    store: RunStore
    client: GatewayClient
    run_id: str
    stats: LiveStats
    rejects: BinaryIO
    stderr: TextIO
    quiet: bool
    stopping: bool = False
    stop_reason: str = ""
    interrupted: bool = False
    #: What interrupted the run ("stopped by SIGTERM"), once a signal came.
    interrupted_by: str = ""
    #: Sending is over and the results are being written: signals are only acknowledged.
    finishing: bool = False
    #: rejects.jsonl refused a write (disk full): the run cannot say which rows it skipped.
    reject_write_error: OSError | None = None
    fatal: BaseException | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    redo_indices: frozenset[int] = frozenset()
    _pending_rows: list[dict[str, Any]] = field(default_factory=list)
    _flush_scheduled: bool = False
    #: Resolved once the rows pending are written (see :meth:`rows_written`).
    _written: asyncio.Future[None] | None = None
    _consecutive_config_errors: int = 0
    answered: bool = False  # a request of this run has succeeded
    failed_on_config: bool = False
    _drain_handle: asyncio.TimerHandle | None = None
    #: Resolved at the stop: ends the retries' back-offs (see :meth:`sleep_unless_stopped`).
    _stopped: asyncio.Future[None] | None = None
    #: Why the requests in flight were cancelled, for their rows (None: the run itself was).
    cancelled_because: str | None = None
    _duration_handle: asyncio.TimerHandle | None = None
    compaction: asyncio.Future[int] | None = None
    background: ThreadPoolExecutor = field(default_factory=background_executor)
    ctx: ExecContext = field(init=False)
    redact: Redactor = field(init=False)
    jctx: JobContext | None = None
    poller: JobPoller | None = None
    poller_task: asyncio.Task[None] | None = None
    stage: str | None = None
    #: Rows scheduled before this epoch instant belong to the stage's warm-up (bench).
    warmup_until_at: float | None = None
    on_row: Callable[[dict[str, Any]], None] | None = None
    #: Open loop: epoch instant the schedule starts and this process's offset in it.
    start_at: float | None = None
    phase_s: float = 0.0
    #: Open loop: times sending paused because the in-flight cap was full (None: closed
    #: loop). Tells the schedule check whether the cap or the client's CPU held sends back.
    cap_waits: int | None = None
    #: ``--max-cost``: what the run's rows have cost so far.
    spend: SpendMeter | None = None
    #: What the rows removed at the start of this and earlier sessions (to send again) cost.
    removed_cost_usd: float = 0.0
    #: The batch of rows being priced on its thread, if any.
    pricing: asyncio.Future[list[str]] | None = None
    #: How late the event loop ran while the session sent (its own delay is in the timings).
    loop_lag: LoopLagMeter = field(default_factory=LoopLagMeter)

    def __post_init__(self) -> None:
        self.redact = Redactor(self.config.secret_values())
        # For kept input lines: a short key ("1234") would blank the line's own numbers there.
        self.redact_line = Redactor([s for s in self.config.secret_values() if len(s) >= 8])

    # -- rows ---------------------------------------------------------------------------------
    def emit(self, row: dict[str, Any]) -> None:
        message = row.get("error_message")
        if message:  # a gateway may quote the key it refused
            row["error_message"] = self.redact(message)
        if (
            self.warmup_until_at is not None
            and (row.get("scheduled_at") or 0) < self.warmup_until_at
        ):
            row["stage"] = f"{self.stage}{WARMUP_SUFFIX}"
        if self.on_row is not None:
            self.on_row(row)
        if self.spend is not None:
            self.spend.add(row)
        self.stats.record(row)
        self._track_config_errors(row)
        self._pending_rows.append(row)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def write_pending(self) -> None:
        """Write the rows finished and not yet written, now (a request is about to go out)."""
        if self._pending_rows:
            self.flush()

    async def rows_written(self) -> None:
        """Wait until the rows emitted so far are written (at the end of this loop turn).

        A worker that finished a request waits here before sending its next: sent at once, it
        went out while the finished row was still only in memory, and a kill -9 then lost more
        than the requests in flight (a resume sent five again with -c 4). Writing each row
        before the next send instead cost ~35 µs of CPU a request (measured): rows finished in
        one turn are still written together. What is left (another request's row finished in
        the same turn as a send, an open loop's starts) is written by :meth:`write_pending`
        right before the send.
        """
        if not self._pending_rows:
            return
        written = self._written
        if written is None:
            written = self._written = asyncio.get_running_loop().create_future()
        try:
            await written
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # this worker is being cancelled
            # Another waiter's cancellation cancelled the shared wait: not this worker's end.
            self.write_pending()

    def flush(self) -> None:
        self._flush_scheduled = False
        rows, self._pending_rows = self._pending_rows, []
        written, self._written = self._written, None
        try:
            if rows:
                self.store.append_rows(rows)
        except OSError as exc:
            self.cannot_write(exc)
        finally:
            if written is not None and not written.done():
                written.set_result(None)  # (a refused write stops the run: its workers end)

    def cannot_write(self, exc: OSError) -> None:
        """The run directory refused a write (disk full, quota, read-only): stop and say so.
        Rows already in the journal stay there; the next session converts them."""
        if self.fatal is None:
            self.fatal = RunAborted(
                f"cannot write results to {self.store.run_dir}: "
                + (f"[Errno {exc.errno}] " if exc.errno is not None else "")
                + f"{io_reason(exc)}; finished rows are kept ({what_to_do(exc)})"
            )
        if not self.finishing:  # nothing to stop once sending is over
            self.stop("output is not writable")

    def _track_config_errors(self, row: dict[str, Any]) -> None:
        status = row.get("http_status")
        # Out of descriptors or memory to connect says nothing of the gateway or its address.
        unreachable = (
            row.get("error_type") == ERROR_CONNECTION
            and status is None
            and LOCAL_LIMIT_NOTE not in (row.get("error_message") or "")
            # In a bench whose gateway has answered (this stage or an earlier one), dropped
            # connections are the overloaded gateway's answer (the saturation search's failing
            # stage), not a wrong address; before any answer they still stop it ("check
            # --gateway": https to a plain port, a port serving something else).
            and (self.stage is None or not self.answered)
        )
        # Bifrost refuses an async submit whose virtual key it does not know with a plain 400
        # "failed to create async job" (the protocol spec, SubmitJob): a key problem as well.
        refused_job = status == 400 and ASYNC_CREATE_FAILED in (row.get("error_message") or "")
        # A 404 naming the request's model ("model: claude-x" from Anthropic) is that model's
        # problem (retired, misspelt): once some request of the run has succeeded, the
        # gateway and key work, and a set sorted by model must not stop at every block of a
        # retired one. Before that (a mistyped --model, say) it counts as any 404.
        model = row.get("model_requested")
        model_refused = status == 404 and model and model in (row.get("error_message") or "")
        if model_refused and self.answered:
            return
        # Only plain errors count: an expired job's 404 says nothing about the configuration.
        if row.get("status") == Status.ERROR.value and (
            status in CONFIG_ERROR_STATUSES or unreachable or refused_job
        ):
            self._consecutive_config_errors += 1
            if self._consecutive_config_errors == MAX_CONSECUTIVE_CONFIG_ERRORS:
                if unreachable:
                    what = (
                        f"could not reach the gateway ({row.get('error_message')}); check --gateway"
                    )
                else:
                    check = ("--model (or the input's models), " if model_refused else "") + (
                        "--gateway, --api-key and --virtual-key")
                    what = (
                        f"were refused with HTTP {status} ({row.get('error_type')}: "
                        f"{row.get('error_message')}); check {check}"
                    )
                if self.fatal is None:  # a --strict stop already under way keeps its reason
                    self.fatal = RunAborted(
                        f"{MAX_CONSECUTIVE_CONFIG_ERRORS} requests in a row (after retries) {what}"
                    )
                    self.failed_on_config = True
                self.stop("the gateway keeps failing every request")
        elif row.get("status") == Status.OK.value:
            self._consecutive_config_errors = 0
            self.answered = True

    def on_reject(self, reject: Reject) -> None:
        # Runs on the source thread; one short write per rejected line.
        self.stats.rejected += 1
        line = {
            "location": reject.location,
            "input_index": reject.input_index,
            "custom_id": reject.custom_id,
            "reason": reject.reason,
            "raw": self.redact_line(reject.raw),  # the run's own keys, wherever the line has them
        }
        try:
            self.rejects.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        except OSError as exc:  # not on the loop's thread: the run ends aborted by it
            self.reject_write_error = self.reject_write_error or exc

    # -- stopping -----------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_reason = reason
        if self.poller_task is not None:
            # Outstanding jobs are safe in jobs.jsonl: `collect` or a resume polls them later.
            self.poller_task.cancel()
        loop = asyncio.get_running_loop()
        timeout = self.config.drain_timeout_s
        self._drain_handle = loop.call_later(
            timeout, self.cancel_in_flight,
            f"still unanswered {timeout:g} s after the sending stopped ({reason}; "
            "--drain-timeout)")
        ctx = getattr(self, "ctx", None)  # unset when stopped before the requests were prepared
        if ctx is not None and ctx.outage is not None:  # nothing waits for the gateway now
            ctx.outage.release()
        if ctx is not None and ctx.rate_limits is not None:
            ctx.rate_limits.end()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)  # back-offs end: no retry is sent now

    async def sleep_unless_stopped(self, seconds: float) -> None:
        """A retry's back-off: *seconds*, or until the session stops."""
        if self.stopping:
            return
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._stopped), seconds)

    def cancel_in_flight(self, why: str) -> None:
        """Cancel the requests in flight; their rows say *why*."""
        self.cancelled_because = self.cancelled_because or why
        for task in list(self.tasks):
            task.cancel()

    def on_sigint(self) -> None:
        self.on_signal("Ctrl-C", "Press Ctrl-C again to cancel them.")

    def on_sigterm(self) -> None:
        # What timeout, systemd, Slurm and Kubernetes send: stop as on Ctrl-C, so that the
        # directory says how the run ended and the resume command is printed.
        self.on_signal("SIGTERM", "A second SIGTERM cancels them.")

    def on_sighup(self) -> None:
        # The terminal closed (or the ssh session dropped): as SIGTERM, and stderr is likely
        # gone (what is said then is dropped, see _say).
        self.on_signal("SIGHUP", "A second SIGHUP cancels them.")

    def on_signal(self, what: str, again: str) -> None:
        # The first signal drains, even when the run is already stopping (--duration, a
        # --strict reject): requests in flight are paid for. Only a second one cancels them.
        if self.finishing:
            # Nothing is left to cancel; stopping now would only leave run.json unfinished.
            self._say(f"\n{what}: sending is over; writing the results and run.json, a moment.")
            return
        if not self.interrupted_by:
            self.interrupted = True
            self.interrupted_by = f"stopped by {what}"
            ctx = getattr(self, "ctx", None)
            held = ctx.outage.waiting if ctx is not None and ctx.outage is not None else 0
            if ctx is not None and ctx.rate_limits is not None:
                held += ctx.rate_limits.waiting
            ceiling = getattr(ctx.throttle, "waiting", 0) if ctx is not None else 0
            flying = self.stats.in_flight - held - ceiling
            what_flies = "submit" if self.poller_task is not None else "request"
            waiting = (
                f"waiting up to {self.config.drain_timeout_s:g} s for {flying:,} "
                f"{what_flies}{'' if flying == 1 else 's'} in flight. {again}"
                if flying
                else "nothing is in flight."
            )
            if held:  # they end at once (stop() releases them): never sent
                waiting = (
                    f"the {held:,} request{'' if held == 1 else 's'} waiting for the gateway "
                    f"end as cancelled, not sent; {waiting}"
                )
            if ceiling:  # each ends as its turn comes (the stop is checked then): never sent
                waiting = (
                    f"the {ceiling:,} {what_flies}{'' if ceiling == 1 else 's'} waiting for the "
                    f"rate ceiling end as cancelled, not sent; {waiting}"
                )
            if self.poller_task is not None:  # async: polling stops at once, jobs are kept
                waiting = (
                    f"polling stops (outstanding jobs stay in jobs.jsonl for collect); {waiting}"
                )
            if self.stopping:
                self._say(f"\n{what}: already stopping ({self.stop_reason}); {waiting}")
            else:
                self.stop(self.interrupted_by)
                self._say(f"\nStopping ({what}): no new requests; {waiting}")
        else:
            self._say(f"\nCancelling in-flight requests ({what}; recorded as cancelled).")
            self.cancel_in_flight(f"cancelled in flight by a second {what}")

    def on_cancelled(self) -> None:
        """The session's task was cancelled (Ctrl-C in a script: asyncio.run cancels it); the
        requests in flight were cancelled with it and are recorded as such."""
        self.interrupted = True
        self.interrupted_by = self.interrupted_by or "cancelled (KeyboardInterrupt or task cancel)"

    def _say(self, text: str) -> None:
        if not self.quiet:
            try:
                print(self.redact(text), file=self.stderr, flush=True)
            except OSError:  # the terminal is gone (EIO after a hang-up): say nothing more
                self.quiet = True

    # -- scheduling ---------------------------------------------------------------------------
    def exec_context(self) -> ExecContext:
        cfg = self.config
        return ExecContext(
            client=self.client,
            mode=cfg.mode,
            run_id=self.run_id,
            policy=cfg.retry,
            emit=self.emit,
            before_send=self.write_pending,
            cancel_reason=lambda: self.cancelled_because,
            throttle=(RateCeiling(cfg.max_rate, lambda: self.stopping and self.stage is None)
                      if cfg.max_rate else None),
            keep_response_json=cfg.keep_response_json,
            keep_response_text=cfg.keep_response_text,
            stage=self.stage,
            stopping=lambda: self.stopping,
            rng=random.Random(cfg.seed),
            sleep=self.sleep_unless_stopped,
            outage=(
                GatewayOutage(
                    self.client.probe,
                    cfg.max_outage_s,
                    reached=lambda: self.client.connected_once,
                    on_down=self._gateway_down,
                    on_up=self._gateway_up,
                    on_give_up=self._gateway_gone,
                )
                if cfg.max_outage_s > 0 and self.client.can_probe
                else None
            ),
            # In a bench stage a 429 is the gateway's figure, not something to ride out.
            rate_limits=(
                RateLimits(
                    cfg.max_rate_limit_wait_s,
                    lambda: self.stats.in_flight,
                    on_slowed=self._rate_limited,
                    on_give_up=self._rate_limited_too_long,
                )
                if cfg.max_rate_limit_wait_s > 0 and self.stage is None
                else None
            ),
        )

    def _rate_limited(self, model: str, error: str) -> None:
        limits = self.ctx.rate_limits
        if limits is not None and len(limits.gates) > RATE_LIMITED_MODELS_SAID:
            return
        gate = limits.gate(model) if limits is not None else None
        window = f"at most {gate.window:.0f}" if gate is not None else "fewer"
        self._say(
            f"The gateway rate-limits requests for {model} ({error}): slowing them down "
            f"({window} in flight, widening as they succeed; paused while only 429s come "
            "back); rate-limited requests are sent again without using up a retry."
        )

    def _rate_limited_too_long(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = RunAborted(message)
        self.stop("the gateway rate-limits every request")

    def _gateway_down(self, error: str, limit_s: float) -> None:
        outages = self.ctx.outage.outages if self.ctx.outage is not None else 0
        if outages > OUTAGES_SAID:  # a flapping gateway: a line or two each time is noise
            return
        if outages == OUTAGES_SAID:
            self._say(
                f"The gateway cannot be connected to again ({outages} times now): further "
                "outages are counted in run.json (gateway_outages), not printed."
            )
            return
        if math.isinf(limit_s):
            upto = "as long as it takes"
        elif limit_s < self.config.max_outage_s:
            upto = f"up to {limit_s:g} s: it was never reached yet"
        else:
            upto = f"up to {limit_s:g} s; --max-outage"
        self._say(
            f"The gateway cannot be connected to ({error}): requests wait for it ({upto}), "
            "trying every 0.25 s."
        )

    def _gateway_up(self, seconds: float, waiting: int) -> None:
        if self.ctx.outage is not None and self.ctx.outage.outages >= OUTAGES_SAID:
            return
        self._say(
            f"The gateway takes connections again after {seconds:.1f} s; the {waiting:,} "
            f"waiting request{'' if waiting == 1 else 's'} go{'es' if waiting == 1 else ''} on."
        )

    def _gateway_gone(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = RunAborted(message)
        self.stop("the gateway is unreachable")

    def prepare(self) -> None:
        """Build what every request shares (and, in async mode, the job machinery)."""
        self.ctx = self.exec_context()
        self.stats.rate_limits = self.ctx.rate_limits
        if self.config.mode is Mode.ASYNC:
            self.jctx = JobContext(
                exec=self.ctx,
                ttl_s=self.config.ttl_s,
                resubmit=not self.config.collect_only,
                record_job=self._record_job,
                planner=PollPlanner(rng=random.Random(self.config.seed + 1)),
                on_fatal=self._fatal,
            )
            self.stats.jobs = self.jctx.counters
            if not self.config.detach:
                self.poller = JobPoller(
                    self.jctx,
                    poll_rate=self.config.poll_rate,
                    poll_concurrency=self.config.poll_concurrency,
                    keyed=_polls_with_a_key(self.config),
                )

    def _record_job(self, job: Job) -> None:
        record = job.record
        # What the row needs of the request, and the submits so far: collect then needs
        # neither the input file nor to count from 1 again.
        request: dict[str, Any] = {"attempts": job.attempts}
        if record is not None:
            model = record.params.get("model")
            request.update(
                model_requested=model if isinstance(model, str) else None,
                metadata=record.metadata_json if record.metadata_json is not None else (
                    None if record.metadata is None else orjson.dumps(record.metadata).decode()),
                request_kept=True,
            )
        try:
            self.store.record_job(
                job.input_index, job.custom_id, job.job_id, job.submitted_at, ttl_s=job.ttl_s,
                **request,
            )
        except OSError as exc:  # the job is still polled in this session
            self.cannot_write(exc)

    def input_failed(self, exc: InputError) -> None:
        """An invalid row (``--strict``) or an unreadable input: start nothing more, and let
        the requests in flight finish (they are paid for) within ``--drain-timeout``."""
        if self.fatal is None:
            self.fatal = exc
            if exc.reject is not None:
                self.on_reject(exc.reject)
        self.stop("invalid input")

    def _fatal(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = RunAborted(message)
        self.stop(message)

    async def handle(self, record: RequestRecord, scheduled: float, scheduled_at: float) -> None:
        """One request: sent and answered (sync/stream), or submitted as a job (async)."""
        if self.jctx is None:
            await execute(record, self.ctx, scheduled=scheduled, scheduled_at=scheduled_at)
            return
        job = await submit(record, self.jctx, scheduled=scheduled, scheduled_at=scheduled_at)
        if job is not None and self.poller is not None:
            self.poller.add(job)

    async def closed_loop(self, feed: RecordFeed, tg: asyncio.TaskGroup) -> None:
        async def worker() -> None:
            while not self.stopping:
                try:
                    record = await feed.next()
                except InputError as exc:
                    self.input_failed(exc)
                    return
                if record is None or self.stopping:
                    return
                self.stats.in_flight += 1
                self.stats.sent += 1
                try:
                    await self.handle(record, time.perf_counter(), time.time())
                finally:
                    self.stats.in_flight -= 1
                if self._pending_rows:
                    await self.rows_written()

        workers = self.config.concurrency or DEFAULT_CONCURRENCY
        await self.open_ahead(min(workers, CLOSED_OPEN_AHEAD_MAX))
        # --duration counts from here, as an open loop's from its schedule: connecting ahead
        # (up to 1 s to a slow gateway) is not sending time. From the agreed start when there
        # is one (bench workers wait for it).
        self.time_duration_from(self.start_at or time.time())
        for _ in range(workers):
            task = tg.create_task(worker())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def open_loop(self, feed: RecordFeed, tg: asyncio.TaskGroup) -> None:
        cfg = self.config
        assert cfg.rate is not None
        offsets = schedule_offsets(cfg.rate, cfg.arrival, cfg.seed)
        # The first read happens before the clock starts, so that the first requests are not
        # late before the run has really begun.
        first: list[RequestRecord | None] = [await feed.next()]
        cap = cfg.concurrency or OPEN_LOOP_MAX_OUTSTANDING
        if first[0] is not None:
            await self.open_ahead(
                min(cap, OPEN_AHEAD_MAX, max(1, math.ceil(cfg.rate * OPEN_AHEAD_SCHEDULE_S))))
        # Several workers sharing one schedule start at one agreed instant, each shifted by its
        # phase, so that their interleaved sends add up to the stage's rate.
        start_at = self.start_at if self.start_at is not None else time.time() + 0.01
        # --duration is the schedule's length: connections opened ahead (up to 1 s to a slow
        # gateway) and the first read come before it.
        self.time_duration_from(start_at)
        t0 = time.perf_counter() + (start_at - time.time()) + self.phase_s
        t0_at = start_at + self.phase_s

        upcoming = [next(offsets)]
        schedule_over = [False]

        def take() -> tuple[RequestRecord, float] | None:
            offset = upcoming[0]
            if cfg.duration_s and self.phase_s + offset >= cfg.duration_s:
                # The schedule covers [0, duration): R x D sends, not the one at D itself,
                # which raced the --duration timer (151 sends for 50/s over 3 s, or 150).
                schedule_over[0] = True
                return None
            record = first.pop() if first else feed.next_nowait()
            if record is None or self.stopping:
                return None
            upcoming[0] = next(offsets)
            return record, t0 + offset

        async def run_one(record: RequestRecord, scheduled: float) -> None:
            self.stats.in_flight += 1
            self.stats.sent += 1
            try:
                await self.handle(record, scheduled, t0_at + (scheduled - t0))
            finally:
                self.stats.in_flight -= 1

        def spawn(work: Coroutine[Any, Any, None], context: Context) -> asyncio.Task[None]:
            # In the task group: if the run fails, its requests are cancelled and each still
            # ends as a row before the store closes.
            task = tg.create_task(work, context=context)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return task

        workers = ParkedWorkers(run_one, spawn)
        pacer = Pacer()
        dispatcher = ScheduleDispatcher(
            pacer,
            take,
            workers.start,
            cap=cap,
            stopping=lambda: self.stopping,
        )
        try:
            dispatcher.begin()
            while not dispatcher.finished.done():
                # The dispatcher may sleep long between sends at low rates: look for a stop.
                await asyncio.wait([dispatcher.finished], timeout=STOP_CHECK_S)
                if self.stopping:
                    dispatcher.stop()
            dispatcher.finished.result()  # the input's error, if reading failed
            while schedule_over[0] and not self.stopping:
                # Every send of [0, D) is out; the --duration timer stops the session at D
                # itself (retries due before then are sent as usual).
                await asyncio.sleep(STOP_CHECK_S)
        finally:
            dispatcher.stop()
            pacer.close()
            workers.close()
            self.cap_waits = (self.cap_waits or 0) + dispatcher.cap_waits

    def time_duration_from(self, start_at: float) -> None:
        """Stop sending ``--duration`` after the epoch instant *start_at* (once per session)."""
        if not self.config.duration_s or self._duration_handle is not None:
            return
        lead_s = max(0.0, start_at - time.time())
        self._duration_handle = asyncio.get_running_loop().call_later(
            lead_s + self.config.duration_s, self.stop, "--duration reached"
        )

    async def open_ahead(self, n: int) -> None:
        """Up to *n* connections for the first sends, opened before the clock starts: the
        first sends would otherwise each wait for a connect, which their ``ttfb_s`` and
        ``latency_s`` would count (a closed loop's first 256 streams: +47 ms each)."""
        # Never more than the requests this session can send (a small set, --max-requests).
        left = [self.config.max_requests]
        if self.stats.total is not None:
            left.append(self.stats.total - self.stats.already_done)
        n = min([n, *(k for k in left if k is not None)])
        within = OPEN_AHEAD_WITHIN_S
        if self.start_at is not None:  # an agreed start (bench): be ready a little before it
            within = min(within, self.start_at + self.phase_s - time.time() - 0.005)
        await self.client.open_ahead(n, within)

    async def watch_spend(self) -> None:
        """Price the finished rows a few times a second; stop starting requests once they
        have cost ``--max-cost``."""
        assert self.spend is not None
        due = time.perf_counter()
        while True:
            # A fixed cadence: pricing a busy loop's rows takes time of its own.
            due += SETTLE_INTERVAL_S
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            due = max(due, time.perf_counter() - SETTLE_INTERVAL_S)
            rows = self.spend.take()
            if rows:
                # Shielded: cancelled at the end, the batch is still counted (check_spend).
                self.pricing = asyncio.ensure_future(asyncio.to_thread(self.spend.price, rows))
                new_unpriced = await asyncio.shield(self.pricing)
                self.pricing = None  # said here, not again at the end
                self.spent(new_unpriced)

    def check_spend(self) -> None:
        """Price the rows finished since the last look, here: sending is over."""
        spend = self.spend
        if spend is None:
            return
        self.spent(spend.settle(), final=True)
        if spend.reached and not self.stop_reason.startswith("--max-cost"):
            # Over it without a stop: requests in flight when it was reached, or a run shorter
            # than the first look.
            self.say_note(
                f"the run's rows cost {fmt_usd(spend.spent_usd)}, over --max-cost "
                f"{spend.limit_usd:,.10g}: they finished before it could stop the run"
            )

    def say_note(self, text: str) -> None:
        """``Note: …`` on stderr (unless quiet)."""
        self._say(f"Note: {text}")

    def spent(self, new_unpriced: list[str], final: bool = False) -> None:
        """Show the spend, name models it cannot count, and stop once the limit is reached
        (unless *final*)."""
        spend = self.spend
        assert spend is not None
        self.stats.spent_usd, self.stats.cost_limit_usd = spend.spent_usd, spend.limit_usd
        for model in new_unpriced:
            self._say(
                f"Warning: --max-cost cannot count {model}'s rows: genai-prices has no price "
                "for that model (or for its fast mode; they are counted apart, in run.json's "
                "spend)"
            )
        if spend.reached and not self.stopping and not final:
            self.stop(
                f"--max-cost {spend.limit_usd:,.10g} reached: the run's rows had cost "
                f"{fmt_usd(spend.spent_usd)} at list prices when it stopped starting requests; "
                "requests in flight were let finish (up to --drain-timeout), and the closing "
                "summary's cost counts them. To go on, resume with a higher --max-cost"
            )

    async def compactor(self) -> None:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while True:
            await asyncio.sleep(COMPACT_CHECK_S)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            busy = (cpu1 - cpu0) / max(wall1 - wall0, 1e-9)
            cpu0, wall0 = cpu1, wall1
            if not self.store.needs_compaction():
                continue
            if defer_compaction(busy, self.store.closed_segments, self.stopping):
                continue
            # Shielded and remembered: cancelling this task must not leave a compaction
            # running on its thread while the store is being closed.
            trim = busy <= COMPACT_DEFER_BUSY or self.stopping
            self.compaction = asyncio.get_running_loop().run_in_executor(
                self.background, self.compact, trim
            )
            try:
                await asyncio.shield(self.compaction)
            except OSError as exc:  # the segments stay in journal/ for the next session
                self.cannot_write(exc)
                return

    def compact(self, trim: bool) -> None:
        """Convert closed segments (on the background thread), then, if *trim*, hand the C
        heap they freed back to the OS.

        Not while sending keeps the process busy: ``malloc_trim`` locks every malloc arena in
        turn, the loop thread's too, and took 0.5-14 ms per call in a 400k-row run. Without it
        the compaction thread keeps ~6 MB more resident.
        """
        self.store.compact_closed()
        if trim:
            release_free_heap()


def _close_and_trim(store: RunStore) -> None:
    # The last compactions. The lock is held until run.json is final: a resume started in
    # between took the directory over, and the two sessions overwrote each other's record.
    store.close(keep_lock=True)
    release_free_heap()  # nothing is being timed any more


def defer_compaction(busy: float, backlog: int, stopping: bool) -> bool:
    """Whether waiting segments should wait a little longer.

    While sending keeps the process busy (``busy``: CPU seconds per second over the last check),
    converting would take CPU from the loop (send lag, late timestamps). The journal is durable,
    so compaction waits for a quieter moment, a long backlog, or the end of the run.
    """
    return busy > COMPACT_DEFER_BUSY and backlog < COMPACT_MAX_BACKLOG and not stopping


def resolve_run_dir(
    config: RunConfig,
    fingerprint: dict[str, Any] | None,
    warn: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any] | None]:
    """The run directory to use and, when resuming, its existing ``run.json``.

    :param warn: called with each warning (a skipped run directory whose ``run.json`` is
        damaged).
    :raises RunDirError: nothing to resume, or the directory belongs to another input.
    """
    out = config.out
    if out is None and config.run_name and (config.resume or config.retry_failed):
        out = config.results_root / config.run_name  # that run, not the latest (--name was lost)
    if out is not None:
        run_dir = out
        info = load_run_json(run_dir, "give another --out to start a new run")
        if info is None and run_dir.exists() and not _died_before_starting(run_dir):
            if _holds_rows(run_dir):
                raise RunDirError(
                    f"--out {run_dir} holds rows ({run_dir / 'data'}) but no run.json: which "
                    "input they answer is unknown, so they cannot count as this run's; restore "
                    "run.json to go on with that run, or give another --out"
                )
            raise RunDirError(
                f"--out {run_dir} exists, is not empty and is not a batchrunner run directory"
            )
        if (
            info is None
            and (config.resume or config.retry_failed)
            and (not run_dir.exists() or not any(run_dir.iterdir()))
        ):
            # A mistyped directory would otherwise start the whole set again, paid in full.
            flag = "--retry-failed" if config.retry_failed else "--resume"
            raise RunDirError(
                f"{flag}: there is no run directory {run_dir} to resume; check the name, or "
                f"leave out {flag} to start a new run there"
            )
    elif config.resume or config.retry_failed:
        flag = "--retry-failed" if config.retry_failed else "--resume"
        latest = find_latest_run(
            config.results_root,
            config.requests,
            config.mode.value,
            what_next=f"give the run directory to resume with --out, or leave out {flag} to "
            "start a new run",
            warn=warn,
        )
        if latest is None:
            raise RunDirError(
                f"--resume: no earlier run of {config.requests} under {config.results_root}/; "
                "give the run directory with --out"
            )
        run_dir, info = latest, read_run_json(latest)
    else:
        name = config.run_name or default_run_name(config.requests, config.mode.value)
        run_dir = config.results_root / name
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = config.results_root / f"{name}-{suffix}"
        info = None
    if info is not None:
        check_resumable(info, fingerprint, config.mode.value, collect=config.collect_only)
    return run_dir, info


async def check_gateway_resolves(config: RunConfig) -> None:
    """Resolve the gateway's host once, before anything is created or sent: a mistyped name
    would otherwise fail every request after its connect retries.

    :raises ConfigError: the host does not resolve (naming it); none with the built-in emulator.
    """
    if config.gateway is None:
        return
    try:
        await check_resolves(config.gateway)
    except ValueError as exc:
        raise ConfigError(Redactor(config.secret_values())(f"--gateway: {exc}")) from None


@contextlib.contextmanager
def _gateway(config: RunConfig, stderr: TextIO, quiet: bool) -> Iterator[str]:
    """The endpoint URL: the configured gateway, or the built-in emulator started in-process."""
    if config.gateway is not None:
        yield config.gateway
        return
    from batchrunner.embedded import embedded_emulator

    with embedded_emulator(config.emulator_profile, seed=config.seed) as (base_url, label):
        if not quiet:
            print(
                f"No --gateway given (nor BATCHRUNNER_GATEWAY): using the built-in emulator "
                f"({label}) at {base_url}",
                file=stderr,
                flush=True,
            )
        yield messages_url(base_url)


async def run_session(
    config: RunConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    http_client: httpx.AsyncClient | None = None,
    handle_signals: bool = False,
    quiet: bool = False,
    progress: bool = True,
    stderr: TextIO | None = None,
) -> RunResult:
    """Run (or resume) a request set and return what it left behind.

    :param config: the run configuration (validated here).
    :param transport: an httpx transport to send through (default: the `wire` client).
    :param http_client: an ``httpx.AsyncClient`` to send through instead.
    :param handle_signals: install Ctrl-C handling (first: drain, second: cancel).
    :param quiet: no messages on stderr.
    :param progress: show the live progress line (only when stderr is a terminal).
    :raises ConfigError: invalid options.
    :raises InputError: unreadable input, or an invalid row with ``strict``.
    :raises RunDirError: the run directory cannot be used.
    """
    stderr = safe(stderr or sys.stderr)  # a closed pipe must not stop the run
    config.validate()
    if not config.collect_only:
        for warning in config.check_load_options():
            if not quiet:
                print(warning, file=stderr, flush=True)
    if transport is None and http_client is None:
        # (A caller's own client may reach the gateway through a proxy that resolves it.)
        await check_gateway_resolves(config)
    if not config.collect_only:
        # Open loop without -c may have up to OPEN_LOOP_MAX_OUTSTANDING in flight: room is made
        # for them if allowed, but a warning is only due for a number the user asked for.
        asked = config.concurrency or (None if config.rate else DEFAULT_CONCURRENCY)
        warning = ensure_open_files(asked or OPEN_LOOP_MAX_OUTSTANDING)
        if warning and asked and not quiet:
            print(warning, file=stderr, flush=True)
    requests = config.requests
    if config.out is not None:
        try:
            await asyncio.to_thread(ensure_not_in_use, Path(config.out))
        except RunStoreError as exc:  # before reading a big input for nothing
            raise RunDirError(str(exc)) from None
    if requests.is_file():
        # Both read the whole file; side by side (hashing lets go of the interpreter lock,
        # counting does not, so the gain is modest): 1.9-2.0 s instead of 2.2-2.6 s for a
        # 1.2 GB input on 2 cores.
        fingerprint: dict[str, Any] | None
        fingerprint, total = await asyncio.gather(
            asyncio.to_thread(input_fingerprint, requests),
            asyncio.to_thread(count_requests, requests, config.source_options()),
        )
        if not quiet and _is_parquet(requests) and not config.collect_only:
            unused = await asyncio.to_thread(unused_columns, requests, config.source_options())
            if unused:
                note = unused_columns_note(unused)
                print(note[:1].upper() + note[1:], file=stderr, flush=True)
    elif config.collect_only:
        fingerprint, total = None, None  # collect can poll without the input file
    elif requests.exists():
        # A pipe or process substitution: read once, it could not be hashed, counted and sent.
        raise InputError(
            f"{requests}: not a regular file (a pipe or device); run reads its input more than "
            "once (to fingerprint it for resume, to count it, to send it): save it to a file "
            "first"
        )
    else:
        raise InputError(f"{requests}: no such file")
    try:
        run_dir, info = resolve_run_dir(
            config,
            fingerprint,
            None if quiet else lambda line: print(line, file=stderr, flush=True),
        )
    except OSError as exc:  # e.g. --out under a file, or in a read-only place
        where = config.out if config.out is not None else config.results_root
        reason = exc.strerror or exc
        raise RunDirError(f"cannot use {where} for the run directory: {reason}") from None
    if total == 0 and info is None:
        raise InputError(f"{requests}: no requests (the file has no data rows)")
    if total is None and info is not None:
        total = info.get("total_input")
    redo = REDO_ON_RETRY_FAILED if config.retry_failed else frozenset({Status.CANCELLED.value})
    redo_indices: frozenset[int] = frozenset()
    if config.retry_failed and config.mode is Mode.ASYNC and run_dir.exists():
        # Jobs whose rows are about to be removed must be submitted again, not polled again.
        redo_indices = await asyncio.to_thread(_indices_with_status, run_dir, redo)
    if info is not None:  # before the store opens: that already drops rows to send again
        _check_same_gateway(info.get("gateway"), gateway_label(config), stderr, quiet)
        await _check_same_requests(info, config, run_dir, redo, stderr, quiet)
    # Rows removed to be sent again were paid for: priced before they go (run.json keeps it,
    # for --max-cost now and in later sessions).
    removed = SpendMeter(math.inf)
    _say_journal_recovery(run_dir, stderr, quiet)
    try:
        store = await asyncio.to_thread(_open_store, run_dir, redo, removed.add_table)
    except OSError as exc:
        verb = "open" if (run_dir / RUN_JSON).exists() else "create"
        raise RunDirError(f"cannot {verb} the run directory {run_dir}: {io_reason(exc)}") from None
    except RunStoreError as exc:  # in use by another process, a damaged part, a full disk
        raise RunDirError(str(exc)) from None
    signals = SignalHandlers()  # given back last: a signal must not cut the end either
    try:
        # Read again under the lock: a process that held it may have finished meanwhile, and
        # the copy read before would mark its finished session "died" and overwrite it.
        fresh = await asyncio.to_thread(read_run_json, run_dir)
        if fresh is not None and fresh != info:
            check_resumable(fresh, fingerprint, config.mode.value, collect=config.collect_only)
            _check_same_gateway(fresh.get("gateway"), gateway_label(config), stderr, quiet)
            if not config.collect_only and (store.done_count or store.outstanding_jobs()):
                check_same_requests(
                    fresh, config.public_dict(), _is_parquet(requests), config.allow_changed_options
                )
            info = fresh
        return await _run_in_store(
            config, store, info, fingerprint, total, redo_indices, transport, http_client,
            handle_signals, signals, quiet, progress, stderr, removed.spent_usd,
        )  # fmt: skip
    finally:
        try:
            await asyncio.to_thread(store.close)
        finally:
            signals.remove()


async def _check_same_requests(
    info: dict[str, Any],
    config: RunConfig,
    run_dir: Path,
    redo: frozenset[str],
    stderr: TextIO,
    quiet: bool,
) -> None:
    """:func:`check_same_requests`, when the run keeps something sent with its options: rows
    (other than those --retry-failed removes: after a wrong --model, say, they may change), or
    async jobs, which are polled, not sent again, and whose rows name the request options.
    Not for collect: it sends nothing (its extra -H headers are for the polls)."""
    if config.collect_only:
        return
    try:
        change = check_same_requests(
            info, config.public_dict(), _is_parquet(config.requests), config.allow_changed_options
        )
    except RunDirError:
        if _has_jobs(run_dir) or await asyncio.to_thread(run_has_rows, run_dir, redo):
            raise
        return
    if change is not None and not quiet:
        print(f"Warning (--allow-changed-options): {change}", file=stderr, flush=True)


def _polls_with_a_key(config: RunConfig) -> bool:
    """Whether polls carry a virtual key (``--virtual-key``, or an ``sk-bf-`` key given as
    ``--api-key`` or in a header): then a job is readable only with the key it was made with."""
    values = [config.virtual_key or "", config.api_key or "", *config.headers.values()]
    return bool(config.virtual_key) or any("sk-bf-" in v.lower() for v in values)


def _has_jobs(run_dir: Path) -> bool:
    try:
        return (run_dir / JOBS_FILE).stat().st_size > 0
    except OSError:
        return False


#: A journal left this big takes seconds to convert before the run can go on: say so first.
JOURNAL_NOTICE_BYTES = 64 << 20


def _say_journal_recovery(run_dir: Path, stderr: TextIO, quiet: bool) -> None:
    """Tell why a resume is silent for a while: the journal an earlier session left (a crash
    at 630 MB took 5 s to convert, with nothing on the screen)."""
    if quiet:
        return
    try:
        size = sum(p.stat().st_size for p in (run_dir / "journal").glob("seg-*.jsonl"))
    except OSError:
        return
    if size >= JOURNAL_NOTICE_BYTES:
        print(f"Converting the {size / 2**20:,.0f} MB of rows an earlier session left in "
              f"{run_dir / 'journal'} into Parquet first…", file=stderr, flush=True)


def _open_store(run_dir: Path, redo: frozenset[str],
                on_removed: Callable[[pa.Table], Any] | None = None) -> RunStore:
    """:meth:`RunStore.open`, then the memory its recovery and part scan freed is handed back:
    nothing is being timed yet, and kept, it stayed resident through the whole session (24 MB
    after converting a 45k-row journal and scanning 400k rows)."""
    store = RunStore.open(run_dir, create=True, redo_statuses=redo, on_removed=on_removed)
    pa.default_memory_pool().release_unused()
    release_free_heap()
    return store


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


async def _unstoppable(task: asyncio.Future[T]) -> tuple[T, bool]:
    """*task*'s result, awaited to its end even if the caller is cancelled meanwhile, and
    whether it was (the caller re-raises the cancellation once it is safe)."""
    cancelled = False
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError:
            if task.cancelled():  # the task itself, not just this wait
                raise
            cancelled = True


@contextlib.contextmanager
def send_phase() -> Iterator[None]:
    """Interpreter settings for the sending phase, restored at the end (notebooks run many).

    The garbage collector is kept off the objects that exist before the sends start: start-up
    leaves ~100k long-lived objects (imports, config, buffers), and a full collection over them
    blocks the loop for 30-50 ms, which an open-loop schedule sees as send lag. And the GIL
    switch interval is shortened (:data:`SEND_SWITCH_INTERVAL_S`).
    """
    gc.collect()
    gc.freeze()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SEND_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        gc.unfreeze()


def _indices_with_status(run_dir: Path, statuses: frozenset[str]) -> frozenset[int]:
    store = RunStore.open(run_dir, create=True, redo_statuses=frozenset())
    try:
        table = store.read_table(["input_index", "status"])
    finally:
        store.close()
    mask = pc.is_in(table["status"], value_set=pa.array(sorted(statuses)))
    return frozenset(table.filter(mask)["input_index"].to_pylist())


async def _run_in_store(
    config: RunConfig,
    store: RunStore,
    info: dict[str, Any] | None,
    fingerprint: dict[str, Any] | None,
    total: int | None,
    redo_indices: frozenset[int],
    transport: httpx.AsyncBaseTransport | None,
    http_client: httpx.AsyncClient | None,
    handle_signals: bool,
    signals: SignalHandlers,
    quiet: bool,
    progress: bool,
    stderr: TextIO,
    redone_cost_usd: float = 0.0,
) -> RunResult:
    run_dir = store.run_dir
    for stale in run_dir.iterdir():  # under the lock: no other writer can own one
        if _is_run_json_temp(stale.name):
            stale.unlink(missing_ok=True)
    now = time.time()
    resumed = info is not None
    info = info or {
        "run_id": uuid.uuid4().hex[:12],
        "name": run_dir.name,
        "created_at": now,
        "input": fingerprint,
        "sessions": [],
    }
    run_id = info["run_id"]
    for earlier in info["sessions"]:
        if earlier.get("status") == "running":  # the process never closed it: kill -9, crash
            earlier.update(status="died", message="ended without closing (killed or crashed)")
    info["format"] = RUN_FORMAT
    # The top-level config and environment are the latest session's; each session keeps its
    # own, so that a resume with other load options (-c, --rate, a gateway) stays on record.
    info["config"] = config.public_dict()
    info["environment"] = environment()
    session_info: dict[str, Any] = {
        "started_at": now,
        "resumed": resumed,
        "status": "running",
        "config": info["config"],
        "environment": info["environment"],
    }
    if store.redone:  # rows removed at open to be sent again (cancelled, --retry-failed)
        session_info["redone"] = dict(store.redone)
        session_info["redone_cost_usd"] = redone_cost_usd
    info["sessions"].append(session_info)
    info["status"] = "running"
    options = config.source_options()
    stats = LiveStats(total, already_done=store.done_count, session_limit=config.max_requests)
    if config.collect_only:
        stats.rejected = int(info.get("rejected") or 0)  # collect reads no input
    if not quiet:
        verb = "Resuming" if resumed else "Starting"
        count = f"{total:,}" if total is not None else "?"
        print(
            f"{verb} run {run_dir} ({count} request{'' if total == 1 else 's'} in "
            f"{config.requests}"
            + (f", {store.done_count:,} already done" if resumed else "")
            + ")",
            file=stderr,
            flush=True,
        )
    session: _Session | None = None
    cancelled = False
    announced = False  # run.json says this session is running
    try:
        with _gateway(config, stderr, quiet) as url:
            info["gateway"] = gateway_label(config)
            session_info["gateway"] = info["gateway"]
            # Not cut by a cancellation: once written, it must be closed (below) by this session.
            try:
                _, cut = await _unstoppable(
                    asyncio.ensure_future(
                        asyncio.to_thread(write_json_atomic, run_dir / RUN_JSON, info)
                    )
                )
            except OSError as exc:  # a full disk, say: not an internal error
                again = (
                    "then resume" if resumed
                    # A directory without run.json is no run --resume finds: name it.
                    else f"then run again with --out {run_dir}"
                )
                raise RunDirError(
                    f"cannot write {run_dir / RUN_JSON}: {io_reason(exc)}; nothing was sent: "
                    f"{what_to_do(exc).removesuffix('then resume')}{again}"
                ) from None
            announced = True
            if cut:
                raise asyncio.CancelledError
            client = GatewayClient(
                url,
                config.request_headers(),
                transport=transport,
                client=http_client,
                timeouts=config.timeouts,
            )
            # Rejects are found again by every session that reads the input, so each rewrites it.
            # Unbuffered: each line is written at once, and closing has nothing left to write
            # (a full disk then fails the write that found it, never the close).
            rejects_mode = "ab" if config.collect_only else "wb"
            with (run_dir / "rejects.jsonl").open(rejects_mode, buffering=0) as rejects:
                session = _Session(config, store, client, run_id, stats, rejects, stderr, quiet)
                session.redo_indices = redo_indices
                session.removed_cost_usd = sum(
                    s["redone_cost_usd"] for s in info["sessions"]
                    if isinstance(s.get("redone_cost_usd"), int | float)
                )
                # A resumed run whose earlier sessions had answers: the gateway and key worked,
                # so a model's 404 is that model's (a resume may start in its block of rows).
                earlier = ((info.get("summary") or {}).get("status") or {}).get("ok")
                session.answered = isinstance(earlier, int) and earlier > 0
                if handle_signals:
                    signals.install(session.on_sigint, session.on_sigterm, session.on_sighup)
                try:
                    async with client:
                        with send_phase():
                            await _drive(session, options, progress and not quiet)
                except asyncio.CancelledError:
                    # Ctrl-C in a script (asyncio.run cancels its task), a notebook's interrupt:
                    # close the run as interrupted, then let the cancellation go on.
                    cancelled = True
                    session.on_cancelled()
        session.finishing = True
        # Whoever calls: from now on a signal is only acknowledged, and a cancellation waits,
        # so that run.json always gets its end (it stays "running" otherwise).
        signals.install(session.on_sigint, session.on_sigterm, session.on_sighup)
        result, cancelled_now = await _unstoppable(
            asyncio.ensure_future(_finish(session, info, session_info))
        )
        if cancelled or cancelled_now:
            raise asyncio.CancelledError
        return result
    except BaseException as exc:
        if announced and session_info["status"] == "running":
            _record_escape(run_dir, info, session_info, exc, Redactor(config.secret_values()))
        raise
    finally:
        # Only after _finish, which closes the store and summarizes on this executor; a
        # compaction already started still completes.
        if session is not None:
            session.background.shutdown(wait=False)


def _record_escape(
    run_dir: Path,
    info: dict[str, Any],
    session_info: dict[str, Any],
    exc: BaseException,
    redact: Redactor,
) -> None:
    """Close this session's account in ``run.json`` when something cut the session short
    before it could finish (a cancellation while starting, an internal error): left
    ``running``, it would only be marked ``died`` by the next session. Written at once, not on
    a thread: the caller may be being cancelled. Best effort: the error itself goes on."""
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        status, message = "interrupted", "stopped before the session could finish"
    else:
        status = "aborted"
        detail = redact(str(exc))
        message = f"internal error: {type(exc).__name__}" + (f": {detail}" if detail else "")
    session_info.update(finished_at=time.time(), status=status, message=message)
    info["status"] = status
    with contextlib.suppress(OSError):
        write_json_atomic(run_dir / RUN_JSON, info)


#: What a run directory holds before its ``run.json`` is written (the store's scaffolding;
#: versions before 2026-11-27 also made an empty ``jobs.jsonl`` then).
_SCAFFOLDING = frozenset({".lock", "data", "journal", "rejects.jsonl", "jobs.jsonl"})


def _is_run_json_temp(name: str) -> bool:
    """``write_json_atomic``'s temporary file for ``run.json``, left by a kill mid-write."""
    return name.startswith(f".{RUN_JSON}.") and name.endswith(".tmp")


def _died_before_starting(run_dir: Path) -> bool:
    """Whether ``run_dir`` (without ``run.json``) is empty, or is what a run killed while
    starting left: only the store's scaffolding. Nothing is sent before ``run.json`` is
    written, so such a directory holds no result and may be used afresh."""
    # A kill while run.json was first written leaves its temporary file (and no run.json).
    names = {p.name for p in run_dir.iterdir() if not _is_run_json_temp(p.name)}
    if not names <= _SCAFFOLDING:
        return False
    segments = list((run_dir / "journal").glob("seg-*")) if "journal" in names else []
    ledger = [run_dir / "jobs.jsonl"] if "jobs.jsonl" in names else []
    if not all(p.stat().st_size == 0 for p in segments + ledger):
        return False
    # Rows in data/ without a run.json (copied there, or run.json deleted) belong to a run
    # whose input is unknown: taken as done, they would stand in for this input's requests.
    return not _holds_rows(run_dir)


def _holds_rows(run_dir: Path) -> bool:
    """Whether ``data/`` of ``run_dir`` has a Parquet part with rows."""
    return any(_part_rows(p) for p in (run_dir / "data").glob("*.parquet"))


def _part_rows(path: Path) -> int:
    """Rows of a Parquet part (a part that cannot be read counts as holding some)."""
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, ValueError):
        return 1


def gateway_label(config: RunConfig) -> str:
    """How ``run.json`` names the run's gateway: its URL without credentials (a key is cut out
    even from its path), or the built-in emulator."""
    if config.gateway is None:
        return EMULATOR_GATEWAY
    return Redactor(config.secret_values())(redact_url(config.gateway))


def _check_same_gateway(before: str | None, now: str, stderr: TextIO, quiet: bool) -> None:
    """A resumed run goes on against the gateway it started with.

    Between the built-in emulator and a real gateway it is refused: the run would mix made-up
    rows with real ones (a resume command without ``--gateway`` did exactly that). Another
    real address is allowed (a gateway moves), with a warning.

    :raises ConfigError: the emulator where the run had a gateway, or the other way round.
    """
    if not before or before == now:
        return
    if EMULATOR_GATEWAY in (before, now):
        hint = (
            f"give --gateway {before} (or set BATCHRUNNER_GATEWAY)"
            if now == EMULATOR_GATEWAY
            else "start a new run (another --out) to use a gateway"
        )
        def named(where: str) -> str:
            return f"the {where}" if where == EMULATOR_GATEWAY else where

        raise ConfigError(
            f"this run was sent to {named(before)}; resuming it against {named(now)} would mix "
            f"their results in one run: {hint}"
        )
    if not quiet:
        print(f"Warning: this run was sent to {before}; it goes on against {now}", file=stderr)


async def _drive(
    session: _Session,
    options: SourceOptions,
    show_progress: bool,
    feed: RecordFeed | None = None,
) -> None:
    config = session.config
    session.prepare()
    restored = await _restore_jobs(session, options) if config.mode is Mode.ASYNC else []
    pending_jobs = {job.input_index for job in restored}
    store = session.store
    is_done = store.is_done
    if feed is None:
        total = session.stats.total
        source: Iterator[RequestRecord]
        if config.collect_only:
            source = iter(())
        elif total is not None and store.done_count >= total and not pending_jobs:
            # Every row has its result (so none was rejected): nothing to read.
            source = iter(())
        else:
            # The ids of the rows that are skipped come from their result rows (and job
            # records), so that the reader need not parse those rows for them: on the loop,
            # that cost ~7 µs a row, before the first request of a resume and, with scattered
            # rows to redo (--retry-failed), while requests were in flight (+20 ms latency).
            seen = (
                await asyncio.to_thread(_taken_ids, store, restored)
                if store.done_count or restored
                else None
            )
            source = iter_requests(
                config.requests,
                options,
                on_reject=session.on_reject,
                skip=(lambda i: is_done(i) or i in pending_jobs) if pending_jobs else is_done,
                batch_rows=FEED_CHUNK,
                seen=seen,
            )
        feed = RecordFeed(source, config.max_requests)
    if config.max_cost_usd is not None:
        await _start_spend(session)
    display = ProgressDisplay(session.stats, session.stderr, enabled=show_progress)
    try:
        async with asyncio.TaskGroup() as tg:
            helpers = [tg.create_task(display.run()), tg.create_task(session.compactor()),
                       tg.create_task(session.loop_lag.run())]
            if session.spend is not None:
                helpers.append(tg.create_task(session.watch_spend()))
            if session.poller is not None:
                for job in restored:
                    session.poller.add(job, 0.0)
                session.poller_task = tg.create_task(session.poller.run())
            try:
                if config.rate is not None:
                    await session.open_loop(feed, tg)  # times --duration from its schedule
                else:
                    await session.closed_loop(feed, tg)  # times --duration once connected
                while session.tasks:
                    await asyncio.wait(set(session.tasks))
                if session.poller is not None and session.poller_task is not None:
                    session.poller.close()
                    await asyncio.wait([session.poller_task])
            except InputError as exc:  # from the open loop's reads
                session.input_failed(exc)
                while session.tasks:
                    await asyncio.wait(set(session.tasks), return_when=asyncio.ALL_COMPLETED)
            finally:
                if session._duration_handle:
                    session._duration_handle.cancel()
                if session._drain_handle:
                    session._drain_handle.cancel()
                for task in helpers:
                    task.cancel()
                outage = session.ctx.outage  # (prepared above, before the try)
                if outage is not None:
                    if ((outage.down or outage.ended_down) and not session.client.connected_once
                            and session.fatal is None and not session.interrupted):
                        # The sending ended (--duration, a bench stage) before the outage
                        # could give up: every request waited for a gateway never reached,
                        # and ended cancelled. Not a run that finished (exit 0).
                        session.fatal = RunAborted(
                            "the gateway could not be connected to before the sending ended: "
                            "nothing was sent; check --gateway")
                    await outage.aclose()
    except* InputError as group:
        failure = group.exceptions[0]
        assert isinstance(failure, InputError)
        session.input_failed(failure)
    finally:
        session.finishing = True  # every request has its row: nothing is left to stop
        await feed.aclose()
        session.flush()
        if session.pricing is not None:
            (last,) = await asyncio.gather(session.pricing, return_exceptions=True)
            if isinstance(last, list):  # its warnings, had the watcher been cancelled first
                session.spent(last, final=True)
        session.check_spend()  # the rows drained after a stop: run.json's figure


async def _start_spend(session: _Session) -> None:
    """Set up ``--max-cost`` with what the run's earlier sessions have already spent (every
    row in the store, priced as the report prices it), and stop at once if that is enough."""
    config, store = session.config, session.store
    assert config.max_cost_usd is not None
    spend = SpendMeter(config.max_cost_usd)
    spend.spent_usd = session.removed_cost_usd
    # The prices are loaded before anything is sent (~0.25 s): loaded at the first look, a
    # fast run sent for that long past its limit.
    await asyncio.to_thread(lambda: spend.book)
    unpriced: list[str] = []
    if store.done_count:
        unpriced = await asyncio.to_thread(spend.add_batches, store.iter_batches(COST_COLUMNS))
    session.spend = spend
    session.spent(unpriced, final=True)  # the earlier rows' models it cannot count, said
    if spend.reached:
        session.stop(
            f"--max-cost {spend.limit_usd:,.10g} already reached: the run's rows cost "
            f"{fmt_usd(spend.spent_usd)} at list prices, so nothing was sent. To go on, resume "
            "with a higher --max-cost"
        )


def _taken_ids(store: RunStore, jobs: list[Job]) -> DuplicateDetector:
    """The ``custom_id`` of every row the store holds and of every job still outstanding: the
    ids of the input rows a resume skips (a later row repeating one is a duplicate)."""
    seen = DuplicateDetector()
    for table in store.iter_batches(["custom_id"]):
        seen.add([i for i in table.column("custom_id").to_pylist() if i is not None])
    ids = [job.custom_id for job in jobs]
    for start in range(0, len(ids), READ_BATCH_ROWS):
        seen.add(ids[start : start + READ_BATCH_ROWS])
    return seen


async def _restore_jobs(session: _Session, options: SourceOptions) -> list[Job]:
    """Jobs a previous session submitted and that have no row yet: poll them.

    What their rows need of the request (model, metadata) is in ``jobs.jsonl``. A resume also
    looks each request up in the input, to submit again a job that fails with a retryable
    error; ``collect`` never submits, so it reads the input only for jobs recorded before the
    ledger kept those fields. Each job keeps only what it needs of its request (see
    :func:`~batchrunner.jobs.kept_request`): a whole parsed request per outstanding job came to
    4-13 KB each, gigabytes for a 2M-job collect.
    """
    config = session.config
    if config.abandon_jobs:
        # Marked given up in jobs.jsonl before anything is sent: no later session polls them
        # (a stop before their requests are submitted again would otherwise leave them to
        # poll, lost). Their requests are read and submitted like any not done.
        def abandon() -> None:
            for r in session.store.iter_outstanding_jobs():
                session.store.record_job(
                    r.input_index, r.custom_id, r.job_id, r.submitted_at, ttl_s=r.ttl_s,
                    attempts=r.attempts, model_requested=r.model_requested,
                    metadata=r.metadata, request_kept=r.request_kept, abandoned=True,
                )

        await asyncio.to_thread(abandon)
        return []
    records = [
        r for r in session.store.outstanding_jobs() if r.input_index not in session.redo_indices
    ]
    if not records:
        return []
    wanted = {r.input_index for r in records
              if not (config.collect_only and r.request_kept)}
    found: dict[int, RequestRecord] = {}
    if wanted and config.requests.is_file():
        resubmit = not config.collect_only

        def lookup() -> None:
            for record in iter_requests(config.requests, options, skip=lambda i: i not in wanted):
                found[record.input_index] = kept_request(record, resubmit=resubmit)

        await asyncio.to_thread(lookup)
    legacy = sum(1 for r in records if not r.request_kept and r.input_index not in found)
    if legacy:
        # Ledgers written before jobs.jsonl kept model and metadata: their rows need the input.
        where = (f"{config.requests} does not hold them" if config.requests.is_file()
                 else f"{config.requests} is not there")
        many = legacy > 1
        session.say_note(
            f"{legacy:,} job{'s' if many else ''} in jobs.jsonl {'were' if many else 'was'}"
            f" recorded by an older batchrunner, without model and metadata, and {where}: "
            f"{'their rows leave' if many else 'its row leaves'} model_requested and "
            "metadata empty (put the input back there to fill them)"
        )
    jobs = []
    for r in records:
        record = found.get(r.input_index)
        if record is None and r.request_kept:
            record = RequestRecord(
                r.input_index, r.custom_id,
                {"model": r.model_requested} if r.model_requested is not None else {},
                metadata_json=r.metadata,
            )
        jobs.append(
            Job(
                input_index=r.input_index,
                custom_id=r.custom_id,
                job_id=r.job_id,
                submitted_at=r.submitted_at,
                ttl_s=r.ttl_s or config.ttl_s,
                record=record,
                attempts=r.attempts or 1,
            )
        )
    if session.jctx is not None:
        session.jctx.counters.submitted += len(jobs)
    return jobs


async def _finish(
    session: _Session, info: dict[str, Any], session_info: dict[str, Any]
) -> RunResult:
    store, stats, config = session.store, session.stats, session.config
    if session.reject_write_error is not None:
        session.cannot_write(session.reject_write_error)
    if session.compaction is not None:
        await asyncio.gather(session.compaction, return_exceptions=True)
    outstanding, deadline = (
        await asyncio.to_thread(_outstanding_jobs, store)
        if config.mode is Mode.ASYNC
        else (0, None)
    )
    # On the compaction thread: a thread of its own would bring its own malloc arena, ~10 MB
    # more resident memory at the end of the run.
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(session.background, _close_and_trim, store)
    except OSError as exc:  # the summary still reads the segments left in journal/
        session.cannot_write(exc)
    # Before the summary: its schedule check names this session's outages and 429s
    # (open_loop_sessions).
    session_info["gateway_outages"] = _outages(session)
    limits = session.ctx.rate_limits if getattr(session, "ctx", None) is not None else None
    if limits is not None and limits.active:
        session_info["rate_limited"] = limits.describe()
    if session.cap_waits is not None:
        session_info["cap_waits"] = session.cap_waits
    if session.spend is not None:
        session_info["spend"] = session.spend.describe()
    # Part by part: the whole table (and a frame of it) would cost ~1 GB per million rows.
    try:
        summary = await loop.run_in_executor(
            session.background,
            lambda: summarize_batches(
                store.iter_batches(SUMMARY_COLUMNS),
                reread=store.iter_batches,
                session_starts=session_starts(info),
                schedule=open_loop_sessions(info),
            ),
        )
    except FileNotFoundError:
        if (store.run_dir / "data").is_dir():
            raise
        # Deleted while the run wrote to it: nothing is kept, whatever else failed first.
        session.fatal = RunAborted(
            f"the run directory {store.run_dir} (or its data/) was removed while the run was "
            "writing to it: its rows are gone; start a new run"
        )
        summary = summarize_batches(iter(()))
    if outstanding:
        _count_outstanding(summary, outstanding)
    replaced = replaced_cost_usd(info)
    if replaced and summary.get("cost"):
        summary["cost"]["replaced_usd"] = replaced
    changed = _input_size_change(config, info)
    resumable = not changed and store.run_dir.is_dir()
    if changed and session.fatal is None:
        session.fatal = RunAborted(
            f"the input {config.requests} changed while the run read it ({changed}): the rows "
            "of the requests read before are kept, but the run can be resumed only with the "
            "file as it was; start a new run for the new one"
        )
    finished = summary["requests"]
    settled = finished - summary["status"].get(Status.CANCELLED.value, 0)
    complete = settled + stats.rejected >= (stats.total or 0) and not outstanding
    collect_hint = ""
    if outstanding:
        again = config.credentials_to_give_again()
        collect_hint = (
            f"{outstanding:,} jobs outstanding; collect them with `batchrunner collect "
            f"{store.run_dir}`"
            + (f" and {', '.join(again)} given again (never stored)" if again else "")
            + f" before {_iso(deadline)} (the earliest instant a result can "
            f"expire: TTL {config.ttl_s} s after a job's completion)"
        )
    # Requests of the input with neither a row nor a job: --max-requests, or a stop, left them
    # unsubmitted. collect cannot send them, so it must not say "run collect again" for them.
    unsubmitted = max(0, (stats.total or 0) - settled - stats.rejected - outstanding)
    again = config.credentials_to_give_again()
    send_rest = (
        f"{unsubmitted:,} request{'' if unsubmitted == 1 else 's'} of {config.requests} "
        f"{'was' if unsubmitted == 1 else 'were'} never submitted: send "
        f"{'it' if unsubmitted == 1 else 'them'} with `{config.async_run_command(store.run_dir)}`"
        + (f" and {', '.join(again)} given again" if again else "")
    )
    if config.detach and session.fatal is None and not session.interrupted:
        status, code, message = "detached", EXIT_OK, collect_hint
        if unsubmitted:
            message += "; " + send_rest
    elif (
        config.collect_only and session.fatal is None and not session.interrupted
        and not outstanding and unsubmitted
    ):  # fmt: skip
        status, code = "incomplete", EXIT_OK
        message = f"every job is collected; {send_rest}"
    elif session.fatal is not None:
        status, code, message = "aborted", EXIT_ABORTED, str(session.fatal)
        if collect_hint:
            message += "; " + collect_hint
    elif session.interrupted and not complete:  # a signal that cut nothing changes nothing
        status, code = "interrupted", EXIT_ABORTED
        message = session.interrupted_by or session.stop_reason
        if collect_hint:
            message += "; " + collect_hint
    elif complete and finished == 0 and stats.rejected:
        # A run that could send nothing: an input error, not a success (scripts check $?).
        status, code = "rejected", EXIT_USAGE
        message = (
            f"no valid request in {config.requests}: all {stats.rejected:,} rows were rejected "
            f"(see {store.run_dir / 'rejects.jsonl'})"
        )
    elif complete:
        status, code, message = "finished", EXIT_OK, ""
        if session.spend is not None and session.stop_reason.startswith("--max-cost"):
            # Reached once every request was sent: nothing was held back, and the run ended
            # "finished" above its limit in silence.
            message = (
                f"the run's rows cost {fmt_usd(session.spend.spent_usd)}, over --max-cost "
                f"{session.spend.limit_usd:,.10g}: every request had been sent when it was "
                "reached"
            )
            session.say_note(message)
    else:
        status, code = "incomplete", EXIT_OK
        message = session.stop_reason or (
            f"--max-requests {config.max_requests:,} reached"
            if config.max_requests is not None
            else "stopped"
        )
    failed = sum(v for k, v in summary["status"].items() if k not in ("ok", "cancelled"))
    # Of the requests that ended, as the report's error rate: a cancelled one is sent again.
    ended = finished - summary["status"].get("cancelled", 0)
    if code == EXIT_OK and config.max_error_rate is not None and ended:
        rate = failed / ended
        if rate > config.max_error_rate:
            code = EXIT_ERROR_RATE
            message = (
                f"{failed:,} of {ended:,} requests failed ({rate:.1%}), "
                f"above --max-error-rate {config.max_error_rate:.1%}"
            ) + (f"; {message}" if message else "")  # a --max-cost note stays on record
    message = session.redact(message)
    session_info.update(
        finished_at=time.time(),
        status=status,
        sent=stats.done,
        rejected=stats.rejected,
        message=message,
        exit_code=code,
        gateway_outages=_outages(session),
    )
    # This session's (the rows' figures may span sessions): said when it inflated timings.
    summary["loop_lag"] = session_info["loop_lag"] = session.loop_lag.describe()
    if limits is not None and limits.active:  # as it ended (the drain may have met more)
        summary["rate_limited"] = session_info["rate_limited"] = limits.describe()
    info.update(status=status, summary=summary, rejected=stats.rejected, total_input=stats.total)
    info["async"] = (
        {"outstanding_jobs": outstanding, "collect_before": deadline, "ttl_s": config.ttl_s}
        if config.mode is Mode.ASYNC
        else None
    )
    try:
        await asyncio.to_thread(write_json_atomic, store.run_dir / RUN_JSON, info)
    except OSError as exc:  # the rows are safe; only this session's account is lost
        message = f"{message}; run.json could not be updated: {exc}".lstrip("; ")
        if code == EXIT_OK:
            code = EXIT_ABORTED
    return RunResult(
        run_dir=store.run_dir,
        summary=summary,
        status=status,
        exit_code=code,
        message=message,
        rejected=stats.rejected,
        sent_this_session=stats.done,
        outstanding_jobs=outstanding,
        collect_before=deadline,
        failed_on_config=session.failed_on_config and session.fatal is not None,
        failed_on_input=isinstance(session.fatal, InputError),
        unsubmitted=unsubmitted if config.mode is Mode.ASYNC else 0,
        resumable=resumable,
    )


def _input_size_change(config: RunConfig, info: dict[str, Any]) -> str:
    """How the input's size differs from the one fingerprinted at the start ("" if not): a
    file cut or rewritten under the run ended "incomplete: stopped" with a resume command that
    was then refused."""
    recorded = (info.get("input") or {}).get("size")
    if config.collect_only or not isinstance(recorded, int):
        return ""
    try:
        size = config.requests.stat().st_size
    except OSError:
        return "it is gone"
    return f"{recorded:,} bytes at the start, {size:,} now" if size != recorded else ""


def _count_outstanding(summary: dict[str, Any], outstanding: int) -> None:
    """Jobs submitted but not collected have no row yet, and will be paid for: the summary's
    cost is only a lower bound (a detached run's "$0" read as a free run), as in ``report``."""
    summary["outstanding_jobs"] = outstanding
    if summary.get("cost") is not None:
        outstanding_cost(summary["cost"], outstanding)


def _outages(session: _Session) -> int:
    ctx = getattr(session, "ctx", None)  # unset when the session stopped before preparing
    return ctx.outage.outages if ctx is not None and ctx.outage is not None else 0


def _outstanding_jobs(store: RunStore) -> tuple[int, float | None]:
    """How many recorded jobs have no row yet, and the earliest instant one could expire."""
    count = 0
    earliest: float | None = None
    for job in store.iter_outstanding_jobs():
        count += 1
        expiry = job.submitted_at + (job.ttl_s or 0)
        earliest = expiry if earliest is None else min(earliest, expiry)
    return count, earliest


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def run_sync(config: RunConfig, **kwargs: Any) -> RunResult:
    """:func:`run_session` on a fresh event loop (uvloop when installed)."""
    return run_sync_coro(run_session(config, **kwargs))


def run_sync_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh event loop, uvloop when installed (it halves loop overhead)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(coro)
        # A Ctrl-C now came after the run had ended and recorded everything: nothing to stop.
        with contextlib.suppress(KeyboardInterrupt):
            runner.close()
        return result


__all__ = [
    "EXIT_ABORTED",
    "EXIT_ERROR_RATE",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConfigError",
    "RunAborted",
    "RunResult",
    "run_session",
    "run_sync",
]
