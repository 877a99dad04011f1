"""One request from schedule to result row: attempts, retries, timings and the row itself.

:func:`execute` never raises for a failed request; the failure is in the row. If the task is
cancelled (the run is stopping), it still emits a ``cancelled`` row before re-raising, so that
every request that was started ends as exactly one row.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from batchrunner.client import Attempt, GatewayClient, bifrost_headers
from batchrunner.outage import MAX_HOLDS_PER_REQUEST, GatewayOutage
from batchrunner.ratelimit import (
    ALONE_AT_A_WALL,
    PRESSED_RETRY_S,
    WALL_AFTER_S,
    ModelGate,
    RateLimits,
)
from batchrunner.ratelimit import MAX_HOLDS_PER_REQUEST as MAX_RATE_LIMIT_HOLDS
from batchrunner.retry import RetryPolicy, backoff_s, parse_retry_after, retry_delay
from batchrunner.schema import (
    ERROR_CANCELLED,
    ERROR_UNEXPECTED_JOB_STUB,
    Mode,
    RequestRecord,
    Status,
)


class Acquirer(Protocol):
    async def acquire(self) -> None: ...


@dataclass(slots=True)
class ExecContext:
    """What every request of a run shares."""

    client: GatewayClient
    mode: Mode
    run_id: str
    policy: RetryPolicy
    emit: Callable[[dict[str, Any]], None]
    throttle: Acquirer | None = None
    stage: str | None = None
    keep_response_json: bool = True
    keep_response_text: bool = True
    stopping: Callable[[], bool] = lambda: False
    rng: random.Random | None = None
    #: Attempts that cannot connect wait here for the gateway (None: they spend retries).
    outage: GatewayOutage | None = None
    #: Called right before each attempt is sent: writes rows finished and still only in memory
    #: (another request's, in the same loop turn), so that a kill -9 loses at most the
    #: requests in flight. Workers wait for their own row's write before their next request
    #: (``rows_written``), so this rarely finds anything to write.
    before_send: Callable[[], None] | None = None
    #: Why requests in flight were cancelled, if the session said (a drain that timed out, a
    #: second signal): their rows say it rather than blame a stop.
    cancel_reason: Callable[[], str | None] = lambda: None
    #: Models the gateway rate-limits, and their pace (None: a 429 spends a retry as any
    #: failure, as in bench stages).
    rate_limits: RateLimits | None = None
    #: Waits before a retry: a stop ends them (a Ctrl-C must not sit out a retry-after of
    #: minutes, nor have its rows blame a drain that timed out).
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep


def encode_body(record: RequestRecord, mode: Mode) -> bytes:
    """The JSON body sent for ``record`` in ``mode`` (``stream`` is set by the mode, not the
    input)."""
    params = record.params
    body = record.body
    if body is not None and "stream" not in params:
        # Encoded by the reader; a body is never empty (it has at least model and messages).
        return body[:-1] + b',"stream":true}' if mode is Mode.STREAM else body
    if mode is Mode.STREAM:
        params = {**params, "stream": True}
    elif "stream" in params:
        params = {k: v for k, v in params.items() if k != "stream"}
    return orjson.dumps(params)


async def execute(
    record: RequestRecord,
    ctx: ExecContext,
    *,
    scheduled: float,
    scheduled_at: float,
) -> None:
    """Send ``record`` (with retries) and emit its one result row through ``ctx.emit``.

    :param scheduled: ``perf_counter()`` instant the request should have started.
    :param scheduled_at: the same instant as epoch seconds.
    """
    stream = ctx.mode is Mode.STREAM
    body = encode_body(record, ctx.mode)
    request_id = f"{ctx.run_id}-{record.input_index}"
    extra = [("x-request-id", request_id), *record.extra_headers.items()]
    attempts = 0
    holds = 0  # attempts that could not connect and waited for the gateway: no retry spent
    limited: _Limited | None = None  # its 429s waited out, once it meets one
    limits = ctx.rate_limits
    first_sent: float | None = None
    first_sent_at: float | None = None
    starting = starting_at = 0.0
    attempt: Attempt | None = None
    # Usage reported by attempts that were not the last (a stream cut after message_start,
    # then sent again): billed, so the row keeps it apart from the final attempt's.
    retried: list[dict[str, Any]] = []
    try:
        while True:
            if ctx.throttle is not None:
                await ctx.throttle.acquire()
                if ctx.stopping() and ctx.stage is None:
                    # It waited for the rate ceiling past a stop (Ctrl-C: no new request
                    # starts): not sent, so a resume sends it.
                    ctx.emit(cancelled_row(
                        record, ctx, request_id, scheduled, scheduled_at, attempts, first_sent,
                        first_sent_at,
                        not_retried(attempt) if attempt is not None else STOPPED_AT_CEILING,
                        retried,
                    ))  # fmt: skip
                    return
            gate: ModelGate | None = None
            # Nothing to look up before a first 429; a request whose 429s are its own spends
            # retries on the usual back-off, without waiting for its model's pace.
            if limits is not None and limits.active and (limited is None or not limited.own):
                gate = limits.gate(_model_of(record))
                if gate is not None and not await gate.acquire():
                    ctx.emit(cancelled_row(
                        record, ctx, request_id, scheduled, scheduled_at, attempts, first_sent,
                        first_sent_at, not_sent_rate_limited(limits, attempt), retried,
                    ))  # fmt: skip
                    return
            attempts += 1
            if first_sent is None:
                # Until the first attempt returns, its start stands for the send instant: a
                # request cancelled in flight was sent, and its row says when.
                starting, starting_at = time.perf_counter(), time.time()
            if ctx.before_send is not None:
                ctx.before_send()
            try:
                attempt = await ctx.client.send(body, stream=stream, extra_headers=extra)
            finally:
                if gate is not None:
                    gate.release()
            if attempt.ok and attempt.message is None:
                _job_stub_is_no_answer(attempt)
            if first_sent is None:
                first_sent, first_sent_at = attempt.sent, attempt.sent_at
            if attempt.ok:
                if gate is not None:
                    gate.on_success()
                break
            if limits is not None and attempt.http_status == 429:
                if limited is None:
                    limited = _Limited()
                wait = limited.hold(ctx, limits, _model_of(record), attempt)
                if wait is not None and wait is not False and not ctx.stopping():
                    limits.resting += 1  # waits for the limit, not in flight (a stop ends it)
                    try:
                        await ctx.sleep(wait)
                    finally:
                        limits.resting -= 1
                if wait is False or (wait is not None and (ctx.stopping() or limits.ended)):
                    # Stopping, or the rate-limited model was given up on: not sent again,
                    # and a resume sends it.
                    ctx.emit(cancelled_row(
                        record, ctx, request_id, scheduled, scheduled_at, attempts, first_sent,
                        first_sent_at, not_sent_rate_limited(limits, attempt), retried,
                    ))  # fmt: skip
                    return
                if wait is not None:
                    continue  # the next attempt waits for the model's pace at the top
            held = await held_for_gateway(ctx, attempt, holds)
            if held is False:
                # Sent never, if no attempt ever connected: no sent_at, no send lag, so that
                # rates and the schedule check count only what went out.
                ever = attempts > holds + 1
                ctx.emit(cancelled_row(
                    record, ctx, request_id, scheduled, scheduled_at, attempts,
                    first_sent if ever else None, first_sent_at if ever else None,
                    not_sent(ctx, attempt), retried,
                ))  # fmt: skip
                return
            if held:
                holds += 1
                continue
            waited = holds + (limited.holds if limited is not None else 0)
            delay = attempt_retry_delay(ctx, attempt, attempts - waited)
            if delay is None:
                break
            # Not the row's last attempt (unless a bench stage stops below): kept before the
            # back-off, which a second Ctrl-C may cancel.
            kept = len(retried)
            keep_usage(retried, attempt)
            if not ctx.stopping():
                await ctx.sleep(delay)
            if ctx.stopping():  # before the back-off, or during it: no retry is sent
                if ctx.stage is not None:
                    # A bench stage is never resumed: the gateway's failure is the stage's
                    # figure, and an error row keeps its status and type.
                    del retried[kept:]  # the row's own usage after all
                    break
                # A retry the stop skipped is not a failure: cancelled, so that a plain resume
                # sends the request again (as a failed row it waited for --retry-failed).
                ctx.emit(cancelled_row(
                    record, ctx, request_id, scheduled, scheduled_at, attempts, first_sent,
                    first_sent_at, not_retried(attempt), retried,
                ))  # fmt: skip
                return
    except asyncio.CancelledError:
        if first_sent is None and attempts:
            first_sent, first_sent_at = starting, starting_at
        ctx.emit(cancelled_row(
            record, ctx, request_id, scheduled, scheduled_at, attempts, first_sent,
            first_sent_at,
            ctx.cancel_reason() or "the run was stopped while this request was in flight",
            retried,
        ))  # fmt: skip
        raise
    assert attempt is not None and first_sent is not None and first_sent_at is not None
    row = final_row(record, ctx, attempt, attempts=attempts, first_sent=first_sent,
                    first_sent_at=first_sent_at, scheduled=scheduled, scheduled_at=scheduled_at)
    if retried:
        row["retried_usage"] = orjson.dumps(retried).decode()
    ctx.emit(row)


async def held_for_gateway(ctx: ExecContext, attempt: Attempt, holds: int) -> bool | None:
    """After a failed attempt: ``None`` when it spends a retry as usual; ``True`` when it could
    not connect and the gateway takes connections again (try again, no retry spent: the gateway
    never saw it); ``False`` when the request ends as cancelled, not sent (the gateway stayed
    unreachable, or the run is stopping: a stopping run sends no retry)."""
    outage = ctx.outage
    if outage is None or not attempt.connect_failed or holds >= MAX_HOLDS_PER_REQUEST:
        return None
    if ctx.stopping():
        return False
    return await outage.hold(attempt.error_message or "") and not ctx.stopping()


def _model_of(record: RequestRecord) -> str:
    model = record.params.get("model")
    return model if isinstance(model, str) else str(model)


class _Limited:
    """A request's 429s that were waited out rather than spending retries."""

    __slots__ = ("alone", "holds", "mark", "own")

    def __init__(self) -> None:
        self.holds = 0
        #: Its 429s are taken for its own (a limit it alone is over): it spends retries.
        self.own = False
        #: 429s met while other requests of the model succeeded (the request's own problem?).
        self.alone = 0
        self.mark: int | None = None  # the model's successes at this request's last 429

    def hold(self, ctx: ExecContext, limits: RateLimits, model: str,
             attempt: Attempt) -> float | bool | None:
        """Seconds to wait before sending again, no retry spent; ``None``: spend a retry as
        usual; ``False``: the waiting has ended (do not send again)."""
        headers = attempt.headers or {}
        if self.own:
            gate = limits.gate(model)
            if gate is not None:
                gate.limited += 1  # counted, but no cause to slow its model down
            return None
        if headers.get("x-should-retry") == "false":
            return None
        if limits.ended:
            # In flight when the waiting ended (a stop, a give-up): answered 429 all the same,
            # and counted as the 429 that ended it is (not sent again, no retry spent).
            limits.late_429(model)
            return False
        gate = limits.on_limited(
            model, attempt.sent, f"HTTP 429 {attempt.error_type}: {attempt.error_message}")
        if limits.ended:  # this 429 was the one too many
            gate.waited_out += 1  # (no retry spent on it either)
            return False
        # Others of the model succeeded since this request's last 429, and the model is not
        # under its limit's pressure: this one may be over a limit of its own.
        if self.mark is not None and gate.successes != self.mark and not gate.pressed:
            self.alone += 1
        self.mark = gate.successes
        if self.alone >= MAX_RATE_LIMIT_HOLDS or (
            self.alone >= ALONE_AT_A_WALL and gate.limited_for() >= WALL_AFTER_S
        ):
            # Its own limit, most likely: 429s while the model's other requests went through
            # freely, and now nothing else of the model is answered (the end of a run, with a
            # request larger than a token limit left): waiting would last --max-rate-limit-wait.
            self.own = True
            return None
        self.holds += 1
        gate.waited_out += 1
        wait = parse_retry_after(headers)
        if wait is None and gate.pressed:
            # The model's limit, not this request: the model's pace (its window, its pauses
            # while only 429s come back) spaces the sends. A back-off growing with each 429
            # had requests sleep for tens of seconds: 0.7 req/s against a limit of 10.
            wait = (ctx.rng or random).uniform(0.0, PRESSED_RETRY_S)
        elif wait is None:
            wait = backoff_s(ctx.policy, self.holds, ctx.rng)
        # Never past --max-rate-limit-wait: the 429 that ends the waiting comes on time.
        return max(0.0, min(wait, ctx.policy.max_retry_after_s,
                            limits.limit_s - gate.limited_for()))


def not_sent_rate_limited(limits: RateLimits, attempt: Attempt | None = None) -> str:
    """The message of a request that ends cancelled, not sent (again), because the waiting for
    a rate-limited model ended: given up on (``--max-rate-limit-wait``), or the run stopped."""
    if limits.gave_up_on is None:
        if attempt is not None:
            return not_retried(attempt)
        return "not sent: the run stopped while it waited for the gateway's rate limit (HTTP 429)"
    why = (f"the gateway rate-limited every request for {limits.gave_up_on} for too long "
           "(HTTP 429; --max-rate-limit-wait)")
    if attempt is None:
        return f"not sent: {why}"
    return (f"not sent again: {why}; its last attempt failed with {attempt.error_type}: "
            f"{attempt.error_message}")


#: The message of a request that waited for ``--max-rate``/``--rpm`` until the run stopped.
STOPPED_AT_CEILING = "not sent: the run stopped while it waited for the rate ceiling"


def not_retried(attempt: Attempt) -> str:
    """The message of a request that ends cancelled because the run stopped before the retry
    its failed attempt was due."""
    return (f"not retried: the run stopped before the retry (attempt failed with "
            f"{attempt.error_type}: {attempt.error_message})")


def not_sent(ctx: ExecContext, attempt: Attempt) -> str:
    """The message of a request that ends cancelled because it could not connect."""
    if ctx.outage is not None and ctx.outage.gave_up:
        why = "the gateway could not be connected to"
    else:
        why = "the run stopped before the gateway could be connected to"
    return f"not sent: {why} ({attempt.error_message})"


#: What of a failed attempt's message is kept in ``retried_usage``: the columns its price
#: depends on, named as the row's own.
RETRIED_USAGE_KEYS = (
    "model", "input_tokens", "output_tokens", "cache_creation_input_tokens",
    "cache_read_input_tokens", "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens",
    "web_search_requests", "web_fetch_requests", "service_tier", "speed", "inference_geo",
)
_BILLED_COUNTS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                  "cache_read_input_tokens", "cache_creation_5m_input_tokens",
                  "cache_creation_1h_input_tokens", "web_search_requests")


def keep_usage(retried: list[dict[str, Any]], attempt: Attempt) -> None:
    """Append the usage a failed attempt reported (a stream cut after ``message_start``), if it
    reported any, to *retried*, as :data:`RETRIED_USAGE_KEYS` (those it has)."""
    message = attempt.message if attempt.message is not None else attempt.partial
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        return
    found: dict[str, Any] = {}
    fill_message(found, message)
    if not any(found.get(k) for k in _BILLED_COUNTS):
        return
    entry = {k: found[k] for k in RETRIED_USAGE_KEYS if found.get(k) is not None}
    if attempt.token_times:  # what it streamed beyond its usage counts in cut_streams
        entry["content_deltas"] = len(attempt.token_times)
    retried.append(entry)


def cancelled_row(
    record: RequestRecord,
    ctx: ExecContext,
    request_id: str,
    scheduled: float,
    scheduled_at: float,
    attempts: int,
    first_sent: float | None,
    first_sent_at: float | None,
    message: str,
    retried: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The row of a request the run gave up on before it had an answer (a resume sends it
    again); *retried*: the usage its failed attempts reported (billed, and priced)."""
    row = base_row(record, ctx, request_id, scheduled_at)
    if retried:
        row["retried_usage"] = orjson.dumps(retried).decode()
    row.update(
        status=Status.CANCELLED.value,
        error_type=ERROR_CANCELLED,
        error_message=message,
        attempts=attempts,
        total_s=time.perf_counter() - scheduled,
        completed_at=time.time(),
    )
    if first_sent is not None:
        row["sent_at"] = first_sent_at
        row["queue_wait_s"] = first_sent - scheduled
    return row


def _job_stub_is_no_answer(attempt: Attempt) -> None:
    """A 200 whose body is an async-job stub: the gateway made a job (an ``x-bf-async`` header
    went out, from ``-H`` or the input), so the answer is not here. An ``ok`` row would hold
    nothing; this one says why, and is not retried (each attempt would make another job)."""
    parsed = attempt.parsed if isinstance(attempt.parsed, dict) else {}
    attempt.error_type = ERROR_UNEXPECTED_JOB_STUB
    attempt.error_message = (
        f"the gateway answered with async job {parsed.get('id')!s} instead of the answer: an "
        "x-bf-async header was sent (-H or the input's headers); use --mode async for jobs"
    )


def attempt_retry_delay(ctx: ExecContext, attempt: Attempt, attempts_done: int) -> float | None:
    """:func:`batchrunner.retry.retry_delay` for a failed attempt (``None``: do not retry)."""
    return retry_delay(
        ctx.policy,
        attempts_done=attempts_done,
        http_status=attempt.http_status,
        error_type=attempt.error_type,
        headers=attempt.headers,
        transport_failure=attempt.transport_failure,
        timed_out=attempt.timed_out,
        rng=ctx.rng,
        error_message=attempt.error_message,
    )


def final_row(
    record: RequestRecord,
    ctx: ExecContext,
    attempt: Attempt,
    *,
    attempts: int,
    first_sent: float,
    first_sent_at: float,
    scheduled: float,
    scheduled_at: float,
) -> dict[str, Any]:
    """The row of a request whose last attempt was ``attempt`` (first one sent at
    ``first_sent``)."""
    row = base_row(record, ctx, f"{ctx.run_id}-{record.input_index}", scheduled_at)
    row["attempts"] = attempts
    row["sent_at"] = first_sent_at
    row["queue_wait_s"] = max(0.0, first_sent - scheduled)
    row["total_s"] = attempt.done - scheduled
    fill_attempt(row, attempt, ctx)
    return row


def base_row(
    record: RequestRecord, ctx: ExecContext, request_id: str, scheduled_at: float
) -> dict[str, Any]:
    # Sparse: only the columns a row has are set; the store fills the rest with nulls. A full
    # 50-key dict of mostly None would cost time to build, encode and parse for every request.
    row: dict[str, Any] = {}
    row["run_id"] = ctx.run_id
    row["custom_id"] = record.custom_id
    row["input_index"] = record.input_index
    if record.metadata_json is not None:
        row["metadata"] = record.metadata_json
    elif record.metadata is not None:
        row["metadata"] = orjson.dumps(record.metadata).decode()
    row["mode"] = ctx.mode.value
    row["stage"] = ctx.stage
    row["request_id"] = request_id
    model = record.params.get("model")
    row["model_requested"] = model if isinstance(model, str) else None
    row["scheduled_at"] = scheduled_at
    return row


_HEADER_COLUMNS = (
    ("x-bifrost-provider", "bifrost_provider", str),
    ("x-bifrost-resolved-model", "bifrost_resolved_model", str),
    ("x-bifrost-fallback-index", "bifrost_fallback_index", int),
    ("x-bifrost-upstream-latency-ms", "bifrost_upstream_latency_ms", float),
    ("x-bifrost-cost-usd", "bifrost_cost_usd", float),
)


def fill_attempt(row: dict[str, Any], attempt: Attempt, ctx: ExecContext) -> None:
    """Outcome, timings, usage and payload of the final attempt."""
    row["http_status"] = attempt.http_status
    row["completed_at"] = attempt.sent_at + (attempt.done - attempt.sent)
    row["latency_s"] = attempt.done - attempt.sent
    if attempt.first_byte is not None:
        row["ttfb_s"] = attempt.first_byte - attempt.sent
    headers = attempt.headers
    found = bifrost_headers(headers) if headers is not None else None
    if found:
        for name, column, cast in _HEADER_COLUMNS:
            value = found.get(name)
            if value is not None:
                try:
                    row[column] = cast(value)
                except ValueError:
                    pass
    if attempt.ok:
        row["status"] = Status.OK.value
    else:
        row["status"] = (Status.TIMEOUT if attempt.timed_out else Status.ERROR).value
        row["error_type"] = attempt.error_type
        row["error_message"] = attempt.error_message
    times = attempt.token_times
    if attempt.first_token is not None:
        row["ttft_s"] = attempt.first_token - attempt.sent
    if times:
        row["content_deltas"] = len(times)
        fill_itl(row, times)
    message = attempt.message
    if message is not None:
        fill_message(row, message)
        output_tokens = row.get("output_tokens")
        if attempt.first_token is not None and output_tokens and output_tokens > 1:
            row["tpot_s"] = (attempt.done - attempt.first_token) / (output_tokens - 1)
        if ctx.keep_response_json:
            if attempt.raw_body is not None:
                row["response_json"] = attempt.raw_body.decode("utf-8", "replace")
            else:
                row["response_json"] = json_text(message)
        if not ctx.keep_response_text:
            row["response_text"] = None
    elif attempt.partial is not None:
        # A stream that failed midway: its model, usage so far (priced like any row's) and
        # the text that came. Not a TPOT: the answer is not whole.
        if not times:
            row["content_deltas"] = 0  # it began: none came, which is not "unknown"
        fill_message(row, attempt.partial)
        if ctx.keep_response_json:
            row["response_json"] = json_text(attempt.partial)
        if not ctx.keep_response_text:
            row["response_text"] = None


def json_text(message: dict[str, Any]) -> str:
    """A rebuilt message as JSON text. The standard encoder takes what orjson refuses: an
    integer beyond 64 bits in a tool's input (kept exact), a lone surrogate (escaped)."""
    try:
        return orjson.dumps(message).decode()
    except TypeError:
        return json.dumps(message, separators=(",", ":"))


def fill_itl(row: dict[str, Any], times: list[float]) -> None:
    """Inter-token statistics over the gaps between content deltas."""
    if len(times) < 2:
        return
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    n = len(gaps)
    row["itl_mean_s"] = sum(gaps) / n
    row["itl_p50_s"] = _quantile(gaps, 0.50)
    row["itl_p99_s"] = _quantile(gaps, 0.99)
    row["itl_max_s"] = gaps[-1]


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def fill_message(row: dict[str, Any], message: dict[str, Any]) -> None:
    """Model, ids, stop reason, usage and text of an Anthropic Message."""
    row["response_id"] = message.get("id")
    model = message.get("model")
    row["model"] = model if isinstance(model, str) and model else None
    row["stop_reason"] = message.get("stop_reason")
    usage = message.get("usage")
    if isinstance(usage, dict):
        row["input_tokens"] = _int(usage.get("input_tokens"))
        row["output_tokens"] = _int(usage.get("output_tokens"))
        row["cache_creation_input_tokens"] = _int(usage.get("cache_creation_input_tokens"))
        row["cache_read_input_tokens"] = _int(usage.get("cache_read_input_tokens"))
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            row["cache_creation_5m_input_tokens"] = _int(split.get("ephemeral_5m_input_tokens"))
            row["cache_creation_1h_input_tokens"] = _int(split.get("ephemeral_1h_input_tokens"))
        # Priced too (web searches, fast mode, data residency, Priority Tier). Rows are sparse:
        # a field the response does not have is not set (null), which costs nothing here.
        tools = usage.get("server_tool_use")
        if isinstance(tools, dict):
            row["web_search_requests"] = _int(tools.get("web_search_requests"))
            row["web_fetch_requests"] = _int(tools.get("web_fetch_requests"))
        tier, speed, geo = (usage.get("service_tier"), usage.get("speed"),
                            usage.get("inference_geo"))
        if tier is not None:
            row["service_tier"] = tier if isinstance(tier, str) else None
        if speed is not None:
            row["speed"] = speed if isinstance(speed, str) else None
        if geo is not None:
            row["inference_geo"] = geo if isinstance(geo, str) else None
    content = message.get("content")
    if isinstance(content, list):
        texts = [
            b.get("text", "")
            for b in content
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
        row["response_text"] = "".join(texts)


def _int(value: Any) -> int | None:
    """A usage count as the gateway gave it; None for anything that cannot be one (a negative
    count would be priced as a refund; the columns are int64)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None
