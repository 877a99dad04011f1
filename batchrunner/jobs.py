"""Async-job mode: submit with ``x-bf-async``, record the job id, poll within the TTL.

Protocol traps handled here (see the gateway protocol spec, Gotchas): submit and pending polls
both answer 200 with a stub, so "done" is decided by ``type == "message"``; a failed job answers
every poll with the provider's own status, so a non-2xx poll is the job's outcome unless its
message is ``job not found or expired`` (404, or 400 on older gateways), which means unknown,
expired or bound to another key. A completed poll carries the result itself, so a job seen
completed is read at once; results vanish ``ttl`` seconds after completion, and poll gaps stay
well below that (:mod:`batchrunner.polling`).

Durations of a job whose submit happened in an earlier process (resume, ``collect``) can only
come from the wall clock; all others use ``perf_counter``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchrunner.client import Attempt, is_error_body, is_job_stub
from batchrunner.execute import (
    STOPPED_AT_CEILING,
    ExecContext,
    attempt_retry_delay,
    base_row,
    cancelled_row,
    encode_body,
    fill_attempt,
    final_row,
    held_for_gateway,
    not_retried,
    not_sent,
)
from batchrunner.outage import MAX_HOLDS_PER_REQUEST
from batchrunner.pacing import RateCeiling
from batchrunner.polling import PROBES, PollPlanner
from batchrunner.retry import parse_retry_after, retry_delay
from batchrunner.schema import (
    ERROR_JOB_EXPIRED,
    ERROR_JOB_NOT_FOUND,
    ERROR_TIMEOUT,
    Mode,
    RequestRecord,
    Status,
)

ASYNC_HEADER = "x-bf-async"
JOB_ID_HEADER = "x-bf-async-id"
TTL_HEADER = "x-bf-async-job-result-ttl"
NOT_FOUND_MESSAGE = "job not found or expired"
#: This many jobs not found (before they could have expired) while no job of the session was
#: found stop it: the jobs are being polled with the wrong key or gateway, not lost.
MAX_UNKNOWN_JOBS = 20
#: A poll answered with this is the gateway's own storage failing, not the job's outcome.
TRANSIENT_POLL_MESSAGE = "failed to retrieve async job"
ASYNC_UNAVAILABLE = "async operations not available"
DEFAULT_TTL_S = 3600
#: Polls are cheap lookups for the gateway, but thousands of jobs finishing together need as
#: many polls to be seen: the ceiling bounds both the gateway's load and our detection delay.
DEFAULT_POLL_RATE = 1000.0
DEFAULT_POLL_CONCURRENCY = 32
#: Polls failing in transit this many times in a row end the job as an error row.
MAX_POLL_FAILURES = 30
#: Longest a poll may take (or ``--timeout`` if shorter). A poll is a lookup: under the
#: LLM-sized request timeouts, ``--poll-concurrency`` hung polls held every poll slot for up to
#: 10 minutes, and completed results expired meanwhile (444 of 500 with a 10 s TTL).
POLL_TIMEOUT_S = 30.0
#: Statuses of a poll answered by an auth layer, not by the job (without an error body).
_REFUSED_POLL = frozenset({401, 403, 407})
#: Polls of one job that may wait for an unreachable gateway (then they count as failures).
MAX_POLL_HOLDS = MAX_HOLDS_PER_REQUEST
POLL_BODY = b"{}"
#: How Bifrost's own failure of a job begins (``markFailed``: HTTP 500), unlike a provider's.
GATEWAY_INTERNAL = "internal error: "


@dataclass(slots=True)
class Job:
    """One accepted job while it is outstanding."""

    input_index: int
    custom_id: str
    job_id: str
    submitted_at: float  # epoch: submit answered
    ttl_s: float
    record: RequestRecord | None = None
    scheduled: float | None = None  # perf instants, when submitted by this process
    scheduled_at: float | None = None
    sent: float | None = None  # the first submit's send (a resubmitted job keeps it)
    sent_at: float | None = None
    final_sent: float | None = None  # this job's accepted submit: where latency_s starts
    submitted: float | None = None
    ttfb_s: float | None = None
    attempts: int = 1
    #: Of those, the attempts that waited for an unreachable gateway (no retry spent).
    holds: int = 0
    polls: int = 0
    #: Polls that could not connect and waited for the gateway.
    poll_holds: int = 0
    poll_failures: int = 0
    last_pending_at: float | None = None  # epoch of the latest poll that saw it unfinished
    last_poll: float | None = None  # perf instant of the latest poll's answer
    #: Perf instant before which it is not polled: the end of a pause a proxy asked for.
    not_before: float = 0.0

    def elapsed_s(self, now_at: float) -> float:
        if self.submitted is not None:
            return time.perf_counter() - self.submitted
        return now_at - self.submitted_at


@dataclass(slots=True)
class JobCounters:
    submitted: int = 0
    outstanding: int = 0
    resubmitted: int = 0
    polls: int = 0


@dataclass
class JobContext:
    """What submit and poll share in one run."""

    exec: ExecContext
    ttl_s: float
    record_job: Callable[[Job], None]
    #: Whether a failed job may be submitted again (``collect`` never submits: a failed job is
    #: its error row, which ``run --retry-failed`` sends again).
    resubmit: bool = True
    planner: PollPlanner = field(default_factory=PollPlanner)
    counters: JobCounters = field(default_factory=JobCounters)
    on_fatal: Callable[[str], None] = lambda message: None


def kept_request(record: RequestRecord, *, resubmit: bool) -> RequestRecord:
    """What an outstanding job keeps of its request: the fields of its row (id, model,
    metadata, headers) and, when it may be submitted again, its encoded body; not the parsed
    ``params``, which take about ten times the body's size. A request whose body would need
    re-encoding (one with its own ``stream``) is kept whole when it may be resubmitted."""
    params = record.params
    if resubmit and (record.body is None or "stream" in params):
        return record
    model = params.get("model")
    metadata_json = record.metadata_json
    if metadata_json is None and record.metadata is not None:
        metadata_json = orjson.dumps(record.metadata).decode()
    return RequestRecord(
        record.input_index, record.custom_id, {"model": model} if model is not None else {},
        location=record.location, extra_headers=record.extra_headers,
        body=record.body if resubmit else None, metadata_json=metadata_json,
    )


def submit_headers(record: RequestRecord, run_id: str, ttl_s: float) -> list[tuple[str, str]]:
    return [
        (ASYNC_HEADER, "true"),
        (TTL_HEADER, str(int(ttl_s))),
        ("x-request-id", f"{run_id}-{record.input_index}"),
        *record.extra_headers.items(),
    ]


async def submit(
    record: RequestRecord,
    jctx: JobContext,
    *,
    scheduled: float,
    scheduled_at: float,
    attempts_before: int = 0,
    holds_before: int = 0,
) -> Job | None:
    """Submit one request as a job (with retries). Returns the recorded job, or ``None`` when the
    request already ended as a row (submit refused, or a gateway that answered synchronously).
    """
    ctx = jctx.exec
    body = encode_body(record, Mode.SYNC)
    headers = submit_headers(record, ctx.run_id, jctx.ttl_s)
    tries = _Tries(attempts_before, holds_before)
    try:
        return await _submit(record, jctx, body, headers, scheduled, scheduled_at, tries)
    except asyncio.CancelledError:
        # Before the gateway gave a job id (after it, nothing awaits): the request ends as a
        # cancelled row, which a resume sends again, as in sync mode.
        first = tries.first
        # A first attempt still in flight: its start stands for the send instant (as in sync).
        sent, sent_at = (first.sent, first.sent_at) if first else tries.starting or (None, None)
        ctx.emit(cancelled_row(
            record, ctx, f"{ctx.run_id}-{record.input_index}", scheduled, scheduled_at,
            tries.attempts, sent, sent_at,
            "the run was stopped while this job was being submitted",
        ))  # fmt: skip
        raise


@dataclass(slots=True)
class _Tries:
    """A submit's attempts so far (also those of the job it resubmits), and of them those that
    waited for an unreachable gateway."""

    attempts: int
    holds: int
    first: Attempt | None = None
    #: When the first attempt began (perf_counter, epoch), until it returns.
    starting: tuple[float, float] | None = None


async def _submit(
    record: RequestRecord,
    jctx: JobContext,
    body: bytes,
    headers: list[tuple[str, str]],
    scheduled: float,
    scheduled_at: float,
    tries: _Tries,
) -> Job | None:
    ctx = jctx.exec
    last: Attempt | None = None
    while True:
        if ctx.throttle is not None:
            await ctx.throttle.acquire()
            if ctx.stopping():  # waited for the rate ceiling past a stop: not submitted
                first = tries.first
                ctx.emit(cancelled_row(
                    record, ctx, f"{ctx.run_id}-{record.input_index}", scheduled, scheduled_at,
                    tries.attempts, first.sent if first else None,
                    first.sent_at if first else None,
                    "submit " + not_retried(last) if last is not None else STOPPED_AT_CEILING,
                ))  # fmt: skip
                return None
        tries.attempts += 1
        attempts = tries.attempts
        if tries.first is None:
            tries.starting = (time.perf_counter(), time.time())
        attempt = last = await ctx.client.send(body, stream=False, extra_headers=headers)
        first = tries.first = tries.first or attempt
        if attempt.ok and is_job_stub(attempt.parsed):
            job = Job(
                input_index=record.input_index,
                custom_id=record.custom_id,
                job_id=attempt.parsed["id"],
                submitted_at=attempt.sent_at + (attempt.done - attempt.sent),
                ttl_s=jctx.ttl_s,
                # Held until the job ends (minutes, or all of a --detach run): not the parsed
                # request, only what the row and a resubmit need.
                record=kept_request(record, resubmit=True),
                scheduled=scheduled,
                scheduled_at=scheduled_at,
                sent=first.sent,
                sent_at=first.sent_at,
                final_sent=attempt.sent,
                submitted=attempt.done,
                ttfb_s=(attempt.first_byte - attempt.sent) if attempt.first_byte else None,
                attempts=attempts,
                holds=tries.holds,
            )
            # Durable before the submit counts as done: a crash from here on never loses it.
            jctx.record_job(job)
            jctx.counters.submitted += 1
            return job
        if attempt.ok and attempt.message is not None:
            # A gateway without async support for this route answered synchronously: the
            # result is here, so it is simply the row.
            ctx.emit(_row(record, ctx, attempt, first, attempts, scheduled, scheduled_at))
            return None
        if attempt.http_status == 400 and ASYNC_UNAVAILABLE in (attempt.error_message or ""):
            jctx.on_fatal(
                f"the gateway does not offer async jobs: {attempt.error_message} "
                "(Bifrost needs a logs store and the governance plugin for async requests)"
            )
        held = await held_for_gateway(ctx, attempt, tries.holds)
        if held is False:
            ever = attempts > tries.holds + 1  # else never sent: no sent_at, as in execute
            ctx.emit(cancelled_row(
                record, ctx, f"{ctx.run_id}-{record.input_index}", scheduled, scheduled_at,
                attempts, first.sent if ever else None, first.sent_at if ever else None,
                not_sent(ctx, attempt),
            ))  # fmt: skip
            return None
        if held:
            tries.holds += 1
            continue
        # Every attempt counts against --max-retries, the failed jobs' and their resubmits'
        # too: a budget per submit let a job failing upstream be sent again without end. Not
        # those that waited for an unreachable gateway, which never saw them.
        delay = attempt_retry_delay(ctx, attempt, attempts - tries.holds)
        if delay is None:
            row = _row(record, ctx, attempt, first, attempts, scheduled, scheduled_at)
            row["error_message"] = f"submit failed: {row.get('error_message')}"
            ctx.emit(row)
            return None
        if not ctx.stopping():
            await asyncio.sleep(delay)
        if ctx.stopping():  # before the back-off or during it: cancelled, as in execute
            ctx.emit(cancelled_row(
                record, ctx, f"{ctx.run_id}-{record.input_index}", scheduled, scheduled_at,
                attempts, first.sent, first.sent_at, "submit " + not_retried(attempt),
            ))  # fmt: skip
            return None


def _row(
    record: RequestRecord,
    ctx: ExecContext,
    attempt: Attempt,
    first: Attempt,
    attempts: int,
    scheduled: float,
    scheduled_at: float,
) -> dict[str, Any]:
    return final_row(
        record,
        ctx,
        attempt,
        attempts=attempts,
        first_sent=first.sent,
        first_sent_at=first.sent_at,
        scheduled=scheduled,
        scheduled_at=scheduled_at,
    )


class JobPoller:
    """Polls outstanding jobs: earliest due first, under a global poll-rate ceiling.

    :param jctx: the shared job context.
    :param poll_rate: polls per second, at most (all jobs together).
    :param poll_concurrency: polls in flight, at most.
    :param keyed: polls carry a virtual key (see ``_found_any``).
    """

    def __init__(
        self,
        jctx: JobContext,
        *,
        poll_rate: float | None = DEFAULT_POLL_RATE,
        poll_concurrency: int = DEFAULT_POLL_CONCURRENCY,
        keyed: bool = False,
    ) -> None:
        self.jctx = jctx
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._closed = False
        self._active: set[asyncio.Task[None]] = set()
        self._ceiling = RateCeiling(poll_rate) if poll_rate else None
        self._slots = asyncio.Semaphore(poll_concurrency)
        self._probes: set[str] = set()
        #: Whether a poll of this session has found any job. Polling with a virtual key, until
        #: then a job not found before it could have expired is more likely polled with another
        #: key (a ``collect`` with the wrong --virtual-key) than lost, so it gets no final row
        #: yet: with one, the results would be lost for good, paid. Without a key a job is
        #: readable by anyone, so not found means lost (a gateway restart).
        self._found_any = not keyed
        self._unknown: list[Job] = []

    @property
    def outstanding(self) -> int:
        return len(self._heap) + len(self._active)

    def _delay(self, job: Job, now_at: float) -> float:
        planner = self.jctx.planner
        probe = True
        if planner.learning:
            probe = job.job_id in self._probes or len(self._probes) < PROBES
            if probe:
                self._probes.add(job.job_id)
        return planner.next_delay(job.elapsed_s(now_at), job.ttl_s, probe=probe)

    def _learned(self) -> None:
        """The first durations are known: reschedule every waiting job by the estimate, counting
        from its last poll (a job polled slowly while learning may be due at once)."""
        now, now_at = time.perf_counter(), time.time()
        heap = []
        for _due, seq, job in self._heap:
            last = job.last_poll if job.last_poll is not None else job.submitted
            if last is None:
                due = now + self._delay(job, now_at)
            else:
                then_at = now_at - (now - last)
                due = max(now, last + self._delay(job, then_at))
            heap.append((max(due, job.not_before), seq, job))
        heapq.heapify(heap)
        self._heap = heap
        self._wake.set()

    def add(self, job: Job, delay_s: float | None = None) -> None:
        """Start polling ``job`` (first poll after ``delay_s``, default from the planner)."""
        if delay_s is None:
            delay_s = self._delay(job, time.time())
        heapq.heappush(self._heap, (time.perf_counter() + delay_s, next(self._seq), job))
        self.jctx.counters.outstanding = self.outstanding
        self._wake.set()

    def close(self) -> None:
        """No more jobs will be added: :meth:`run` returns once all are finished."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Poll until closed and nothing is outstanding (cancel it to stop early)."""
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    if not self._heap:
                        if self._closed and not self._active:
                            if self._unknown:
                                self._none_known()
                            return
                        self._wake.clear()
                        await self._wake.wait()
                        continue
                    due = self._heap[0][0]
                    wait = due - time.perf_counter()
                    if wait > 0:
                        self._wake.clear()
                        try:
                            await asyncio.wait_for(self._wake.wait(), wait)
                        except TimeoutError:
                            pass
                        continue
                    _, _, job = heapq.heappop(self._heap)
                    if self._ceiling is not None:
                        await self._ceiling.acquire()
                    await self._slots.acquire()
                    task = tg.create_task(self._poll(job))
                    self._active.add(task)
                    task.add_done_callback(self._active.discard)
                    task.add_done_callback(self._after_poll)
        finally:
            self.jctx.counters.outstanding = self.outstanding

    def _after_poll(self, _task: asyncio.Task[None]) -> None:
        self._slots.release()
        self.jctx.counters.outstanding = self.outstanding
        self._wake.set()

    async def _poll(self, job: Job) -> None:
        ctx = self.jctx.exec
        headers = [(JOB_ID_HEADER, job.job_id), ("x-request-id", f"{ctx.run_id}-{job.input_index}")]
        attempt = await self._send_poll(headers)
        job.polls += 1
        self.jctx.counters.polls += 1
        now_at = attempt.sent_at + (attempt.done - attempt.sent)
        status = attempt.http_status
        message = attempt.error_message or ""
        outage = ctx.outage
        if attempt.connect_failed and outage is not None and job.poll_holds < MAX_POLL_HOLDS:
            # The gateway cannot be connected to: wait for it as requests do (--max-outage)
            # instead of backing off silently for many minutes. If it stays away, the run stops
            # and the job stays in jobs.jsonl for collect.
            job.poll_holds += 1
            if await outage.hold(message, poll=True):
                self.add(job, 0.0)
            return
        if status is not None and 200 <= status < 300 and attempt.message is not None:
            self._found()
            self._finish(job, attempt, now_at, Status.OK)
        elif status is not None and 200 <= status < 300 and is_job_stub(attempt.parsed):
            self._found()
            job.last_pending_at = now_at
            job.last_poll = attempt.done
            job.poll_failures = 0
            self.add(job, self._delay(job, now_at))
        elif status in (400, 404) and NOT_FOUND_MESSAGE in message:
            self._expired(job, attempt, now_at)
        elif (
            attempt.transport_failure
            or attempt.timed_out
            or status is None
            or (status >= 500 and TRANSIENT_POLL_MESSAGE in message)
            or (200 <= status < 300)  # an unreadable 2xx: ask again
        ):
            self._poll_again(job, attempt, now_at)
        elif not is_error_body(attempt.parsed):
            # A failed job's poll is the stored error as an Anthropic error body; anything else
            # came from in front of the gateway (a load balancer's 502/503 page, an auth
            # layer's 401). Taken for the job's failure, it had the job submitted again and
            # paid twice (259 jobs for 200 requests behind a proxy failing 5 % of polls).
            if status in _REFUSED_POLL:
                self.jctx.on_fatal(
                    f"polls are refused with HTTP {status} by something in front of the "
                    f"gateway's jobs ({message[:200]}): a proxy or auth layer that wants other "
                    "credentials? The jobs stay recorded, without rows: collect again once "
                    "polls get through"
                )
                return
            if 400 <= status < 500 and status not in (408, 429):
                # A 404 or 405 page: the polls do not reach the gateway's jobs (a proxy's
                # route, a wrong --gateway path); asking again would only wait.
                self.jctx.on_fatal(
                    f"polls are answered with HTTP {status} by something other than the "
                    f"gateway's jobs ({message[:200]}): is the gateway address right? The "
                    "jobs stay recorded, without rows: collect again with the right one"
                )
                return
            self._poll_again(job, attempt, now_at)
        else:
            await self._failed(job, attempt, now_at)

    async def _send_poll(self, headers: list[tuple[str, str]]) -> Attempt:
        """One poll, given up after :data:`POLL_TIMEOUT_S` (a timed-out attempt: polled again)."""
        client = self.jctx.exec.client
        limit = min(POLL_TIMEOUT_S, client.timeouts.attempt_s or POLL_TIMEOUT_S)
        sent, sent_at = time.perf_counter(), time.time()
        try:
            async with asyncio.timeout(limit):
                return await client.send(POLL_BODY, stream=False, extra_headers=headers)
        except TimeoutError:
            attempt = Attempt(sent=sent, sent_at=sent_at, done=time.perf_counter())
            attempt.timed_out = True
            attempt.error_type = ERROR_TIMEOUT
            attempt.error_message = f"the poll got no answer within {limit:g} s"
            return attempt

    def _poll_again(self, job: Job, attempt: Attempt, now_at: float) -> None:
        """A poll that failed, not the job: ask again later (an error row once polls have
        failed :data:`MAX_POLL_FAILURES` times in a row)."""
        job.poll_failures += 1
        if job.poll_failures >= MAX_POLL_FAILURES:
            self._finish(job, attempt, now_at, Status.ERROR, note="polling kept failing: ")
            return
        planner = self.jctx.planner
        delay = planner.retry_delay(job.poll_failures)
        hinted = parse_retry_after(attempt.headers) if attempt.headers is not None else None
        if hinted is not None:
            # A proxy's 429 or 503 asking for a pause: polling sooner is refused again and
            # counts towards MAX_POLL_FAILURES. Capped as a request's pause is, and at a
            # quarter of the TTL as every poll gap is, so that no finished result expires.
            cap = self.jctx.exec.policy.max_retry_after_s
            if job.ttl_s:
                cap = min(cap, max(planner.min_gap_s, job.ttl_s / 4))
            delay = max(delay, min(hinted, cap))
            job.not_before = time.perf_counter() + delay
        self.add(job, delay)

    def _found(self) -> None:
        """A job was found: the key and gateway are right, so the jobs not found before are
        polled once more, and end as ``job_not_found`` if still unknown."""
        if self._found_any:
            return
        self._found_any = True
        for job in self._unknown:
            self.add(job, 0.0)
        self._unknown.clear()

    def _none_known(self) -> None:
        n = len(self._unknown)
        self.jctx.on_fatal(
            f"{n} job{'s' if n > 1 else ''} in a row not found before {'their' if n > 1 else 'its'}"
            " results could have expired, and none found: the gateway does not know this run's "
            "jobs (another --virtual-key than they were submitted with?). Nothing "
            "was recorded for them: collect again with the same key and gateway (after their "
            "TTL they are recorded as expired); if the gateway lost them (restarted without its "
            "logs store), resume with run ... --abandon-jobs to submit them again"
        )

    async def _failed(self, job: Job, attempt: Attempt, now_at: float) -> None:
        """The job failed upstream: submit it again when retryable, else it is an error row."""
        self._found()
        ctx = self.jctx.exec
        delay = retry_delay(
            ctx.policy,
            attempts_done=job.attempts - job.holds,
            http_status=attempt.http_status,
            error_type=attempt.error_type,
            headers=attempt.headers,
            rng=ctx.rng,
            error_message=attempt.error_message,
        )
        note = "job failed: "
        if attempt.http_status == 500 and (attempt.error_message or "").startswith(
                GATEWAY_INTERNAL):
            # Bifrost failed the job itself (a panic, a result it could not store), perhaps
            # after the model had answered and been paid: each resubmit could be paid again.
            delay = None
            note = ("job failed in the gateway itself, perhaps after a paid answer (not "
                    "submitted again; run --retry-failed sends it): ")
        record = job.record
        # A record rebuilt from jobs.jsonl alone has no body: nothing that could be sent.
        sendable = record is not None and (record.body is not None or "messages" in record.params)
        if delay is None or not sendable or ctx.stopping() or not self.jctx.resubmit:
            self._finish(job, attempt, now_at, Status.ERROR, note=note)
            return
        assert record is not None
        await asyncio.sleep(delay)
        self.jctx.counters.resubmitted += 1
        new = await submit(
            record,
            self.jctx,
            scheduled=job.scheduled if job.scheduled is not None else time.perf_counter(),
            scheduled_at=job.scheduled_at if job.scheduled_at is not None else time.time(),
            attempts_before=job.attempts,
            holds_before=job.holds,
        )
        if new is not None:
            new.polls = job.polls
            if job.sent is not None:
                new.sent, new.sent_at = job.sent, job.sent_at
            self.add(new)

    def _expired(self, job: Job, attempt: Attempt, now_at: float) -> None:
        # The result is kept for the TTL from completion, which came after the last poll
        # that saw the job pending: before that instant plus the TTL it cannot have expired.
        possible_expiry = (job.last_pending_at or job.submitted_at) + job.ttl_s
        if now_at >= possible_expiry:
            error_type = ERROR_JOB_EXPIRED
            seen = (
                f"last seen pending {_iso(job.last_pending_at)}"
                if job.last_pending_at
                else "never seen completed"
            )
            why = (
                f"job {job.job_id} not found at {_iso(now_at)}: its result may have expired "
                f"(TTL {job.ttl_s:g} s from completion; submitted {_iso(job.submitted_at)}, "
                f"{seen})"
            )
        else:
            if not self._found_any:
                self._unknown.append(job)  # no row: still outstanding in jobs.jsonl
                if len(self._unknown) >= MAX_UNKNOWN_JOBS:
                    self._none_known()
                return
            error_type = ERROR_JOB_NOT_FOUND
            seen = (f", last seen pending {_iso(job.last_pending_at)}"
                    if job.last_pending_at else "")
            why = (
                f"job {job.job_id} not found at {_iso(now_at)}, before its result could have "
                f"expired (submitted {_iso(job.submitted_at)}{seen}, TTL {job.ttl_s:g} s): the "
                "gateway lost it (restart?), or it belongs to another virtual key"
            )
        self._finish(job, attempt, now_at, Status.EXPIRED, error=(error_type, why))

    def _finish(
        self,
        job: Job,
        attempt: Attempt,
        now_at: float,
        status: Status,
        *,
        note: str = "",
        error: tuple[str, str] | None = None,
    ) -> None:
        ctx = self.jctx.exec
        record = job.record or RequestRecord(job.input_index, job.custom_id, {})
        row = base_row(record, ctx, f"{ctx.run_id}-{job.input_index}", job.scheduled_at or 0.0)
        if job.scheduled_at is None:
            row["scheduled_at"] = None
        fill_attempt(row, attempt, ctx)
        if error is not None:
            row["error_type"], row["error_message"] = error
        elif note and row.get("error_message") is not None:
            row["error_message"] = note + row.get("error_message")
        row["status"] = status.value
        row["attempts"] = job.attempts
        row["job_id"] = job.job_id
        row["submitted_at"] = job.submitted_at
        row["job_done_at"] = now_at
        row["polls"] = job.polls
        row["ttl_s"] = job.ttl_s
        # The result completed after the last poll that saw it pending, so it stays readable
        # at least until that instant plus the TTL (and at most until now plus the TTL).
        if status is not Status.EXPIRED:
            row["expires_at"] = (job.last_pending_at or job.submitted_at) + job.ttl_s
        row["ttfb_s"] = job.ttfb_s
        row["sent_at"] = job.sent_at
        done = attempt.done
        if job.sent is not None:
            # The final attempt, as in sync and stream: earlier jobs that failed upstream, and
            # the back-off before resubmitting, are in total_s.
            row["latency_s"] = done - (job.final_sent if job.final_sent is not None else job.sent)
            row["queue_wait_s"] = max(0.0, job.sent - job.scheduled) if job.scheduled else None
            row["total_s"] = done - job.scheduled if job.scheduled is not None else None
        else:
            row["latency_s"] = now_at - job.submitted_at
            row["total_s"] = None
        self._probes.discard(job.job_id)
        planner = self.jctx.planner
        if status is Status.OK and job.submitted is not None:
            # Only jobs submitted by this process: one recovered from jobs.jsonl (resume,
            # collect) may have been done long before this process first polled it, and its
            # age would push every new job's first poll out to it.
            was_learning = planner.learning
            planner.observe(job.elapsed_s(now_at))
            if was_learning and not planner.learning:
                self._learned()
        ctx.emit(row)


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def poll_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median and p99 polls per job of finished rows (for summaries and benchmarks)."""
    polls = sorted(r["polls"] for r in rows if r.get("polls") is not None)
    if not polls:
        return {}
    return {"polls_p50": polls[len(polls) // 2], "polls_p99": polls[int(0.99 * (len(polls) - 1))]}
