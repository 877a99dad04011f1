"""Load testing: stages of closed-loop concurrency or open-loop rate, SLOs, saturation search.

A bench run is one run directory whose rows carry a ``stage`` column (``c=32``, ``rate=100``;
warm-up rows get ``#warmup`` appended and are left out of the figures). Each stage is the same
engine as ``run`` (:mod:`batchrunner.runner`) fed by a request set that is cycled as long as the
stage needs. Every stage gets a verdict that says whether the *client* could keep up: an open
loop that fell behind its schedule, or a client whose CPU was pegged, measured its own limit,
not the gateway's, and is reported so instead of as the gateway's capacity. An open loop is
judged by the schedule it actually drew (``scheduled_at`` against ``sent_at`` of its rows), never
by the nominal rate: a short Poisson schedule may span much more or less than requests / rate.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from batchrunner.config import ConfigError, RunConfig
from batchrunner.schedule_check import schedule_misses  # the open-loop rule, shared with run
from batchrunner.schema import RequestRecord, Status

#: Closed loop: client CPU at or above this share of one core means the client is the limit.
#: (Not applied to open-loop stages: their send lag says directly whether they kept up, and
#: without a timerfd (not Linux) they spin before each send, so their CPU share says nothing.)
CPU_PEGGED = 0.9
#: ... measured over at least this much of a worker's wall time: over a few milliseconds (a
#: stage that --max-errors stopped at once) the share is its start's, not the load's (seen:
#: 0.57-0.94 for 12 requests answered in 3.5 ms).
MIN_CPU_WALL_S = 0.5
#: An event loop that runs a timer this late (p99) is saturated, in either loop.
MAX_LOOP_LAG_P99_S = 0.01
DEFAULT_STAGE_DURATION_S = 30.0
DEFAULT_SEARCH_FACTOR = 2.0
DEFAULT_SEARCH_STEPS = 3
SLO_METRICS = {
    "ttft": "ttft_s",
    "latency": "latency_s",
    "total": "total_s",
    "tpot": "tpot_s",
    "ttfb": "ttfb_s",
    "itl": "itl_p99_s",
    "queue_wait": "queue_wait_s",
}
_SLO = re.compile(r"^(?P<metric>[a-z_]+?)_p(?P<q>\d{1,2}(?:\.\d+)?)=(?P<limit>[0-9.eE+-]+)$")


@dataclass(frozen=True, slots=True)
class Slo:
    """A service-level objective: ``<metric>_p<q> <= limit`` seconds, or ``error_rate <= limit``.

    A stage meets it when the percentile over its measured ``ok`` rows is within the limit.
    For goodput, one request meets it when its own value is within the limit.
    """

    metric: str
    quantile: float | None
    limit: float

    @classmethod
    def parse(cls, text: str) -> Slo:
        """``ttft_p99=0.5``, ``latency_p95=4``, ``error_rate=0.01``.

        :raises ConfigError: an unknown metric or a malformed value.
        """
        text = text.strip()
        if text.startswith("error_rate="):
            try:
                rate = float(text.split("=", 1)[1])
            except ValueError:
                raise ConfigError(f"--slo {text}: the limit must be a number") from None
            if not 0 <= rate <= 1:  # also NaN
                raise ConfigError(f"--slo {text}: the error rate must be between 0 and 1")
            return cls("error_rate", None, rate)
        m = _SLO.match(text)
        if not m or m["metric"] not in SLO_METRICS:
            raise ConfigError(
                f"--slo {text!r}: expected METRIC_pQ=SECONDS with METRIC one of "
                f"{', '.join(sorted(SLO_METRICS))}, or error_rate=FRACTION"
            )
        try:
            limit = float(m["limit"])
        except ValueError:
            raise ConfigError(f"--slo {text}: the limit must be a number") from None
        quantile = float(m["q"]) / 100.0
        if not (limit >= 0 and math.isfinite(limit)):
            raise ConfigError(f"--slo {text}: the limit must be a number of seconds >= 0")
        if not 0 < quantile <= 1:
            raise ConfigError(f"--slo {text}: the percentile must be above 0 and at most 100")
        return cls(m["metric"], quantile, limit)

    def spec(self) -> str:
        """The form :meth:`parse` reads back (``str()`` is for people: ``ttft_p99<=0.5s``)."""
        if self.quantile is None:
            return f"{self.metric}={self.limit!r}"
        return f"{self.metric}_p{self.quantile * 100:g}={self.limit!r}"

    def __str__(self) -> str:
        if self.quantile is None:
            return f"{self.metric}<={self.limit:g}"
        return f"{self.metric}_p{self.quantile * 100:g}<={self.limit:g}s"


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage: closed loop (``concurrency``) or open loop (``rate``), bounded in time or
    count."""

    name: str
    concurrency: int | None = None
    rate: float | None = None
    duration_s: float | None = DEFAULT_STAGE_DURATION_S
    requests: int | None = None
    warmup_s: float = 0.0

    @property
    def target(self) -> str:
        return (
            f"rate {self.rate:g}/s" if self.rate is not None else f"concurrency {self.concurrency}"
        )


def parse_list(text: str, cast: Callable[[str], Any], option: str) -> list[Any]:
    """``1,8,32`` → ``[1, 8, 32]``.

    :raises ConfigError: a value that is not a positive number.
    """
    values = []
    for part in text.split(","):
        try:
            value = cast(part.strip())
        except ValueError:
            what = "an integer" if cast is int else "a number"
            raise ConfigError(f"{option}: {part.strip()!r} is not {what}") from None
        if not 0 < value < math.inf:  # NaN too
            raise ConfigError(f"{option}: values must be numbers > 0")
        values.append(value)
    return values


def plan_stages(
    *,
    concurrency: list[int] | None = None,
    rates: list[float] | None = None,
    ramp: tuple[float, float, int] | None = None,
    duration_s: float | None = DEFAULT_STAGE_DURATION_S,
    requests: int | None = None,
    warmup_s: float = 0.0,
) -> list[StageSpec]:
    """The stages of a bench from its options (a ramp is a list of evenly spaced rates)."""
    stages: list[StageSpec] = []
    if ramp is not None:
        start, end, steps = ramp
        if steps < 2:
            raise ConfigError("--ramp START:END:STEPS needs at least 2 steps")
        if not (0 < start < math.inf and 0 < end < math.inf):
            raise ConfigError("--ramp START:END:STEPS: the rates must be numbers > 0")
        rates = [start + (end - start) * i / (steps - 1) for i in range(steps)]
    for c in concurrency or []:
        # A scenario file's scalar skips parse_list: every value is checked here.
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f"--concurrency: values must be integers >= 1, got {c!r}")
        stages.append(
            StageSpec(
                f"c={c}", concurrency=c, duration_s=duration_s, requests=requests, warmup_s=warmup_s
            )
        )
    for r in rates or []:
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r < math.inf:
            raise ConfigError(f"--rate: values must be numbers > 0, got {r!r}")
        stages.append(
            StageSpec(
                f"rate={r:g}", rate=r, duration_s=duration_s, requests=requests, warmup_s=warmup_s
            )
        )
    return stages


class StageCollector:
    """Compact per-stage measurements of measured (non warm-up) rows, mergeable across workers."""

    TIMINGS = ("latency_s", "ttft_s", "total_s", "tpot_s", "ttfb_s", "itl_p99_s", "queue_wait_s")

    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.values: dict[str, array[float]] = {k: array("d") for k in self.TIMINGS}
        self.lag = array("d")  # queue_wait_s of every measured row (send lag in open loop)
        self.sent_at = array("d")
        self.first_scheduled_at = math.inf
        # The schedule of the rows that were sent: its span against theirs says if sends lagged.
        self.first_sent_scheduled_at = math.inf
        self.last_sent_scheduled_at = -math.inf
        self.last_completed_at = -math.inf
        #: The last ok answer: the window's end (a failure that ended later, a timeout after
        #: the stage, would stretch it).
        self.last_ok_completed_at = -math.inf
        self.good = 0  # ok rows meeting every per-request SLO
        self.warmup_rows = 0
        self.warmup_failed = 0  # not in the figures, but --max-errors counts every failure
        self.output_tokens = 0
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.loop_lag_p99_s: float | None = None
        self.slos: list[Slo] = []

    def add(self, row: dict[str, Any]) -> None:
        stage = row.get("stage") or ""
        if stage.endswith("#warmup"):
            self.warmup_rows += 1
            self.warmup_failed += row["status"] != Status.OK.value
            return
        status = row["status"]
        self.status[status] += 1
        if status != Status.OK.value:
            self.errors[row.get("error_type") or status] += 1
        lag = row.get("queue_wait_s")
        if lag is not None:
            self.lag.append(lag)
        scheduled_at = row.get("scheduled_at")
        if row.get("sent_at") is not None:
            self.sent_at.append(row["sent_at"])
            if scheduled_at is not None:
                self.first_sent_scheduled_at = min(self.first_sent_scheduled_at, scheduled_at)
                self.last_sent_scheduled_at = max(self.last_sent_scheduled_at, scheduled_at)
        if scheduled_at is not None:
            self.first_scheduled_at = min(self.first_scheduled_at, scheduled_at)
        # A request cancelled at the stage's end (its drain timed out) never completed: its
        # cancel instant, up to --drain-timeout later, would stretch the window of the rates.
        if row.get("completed_at") is not None and status != Status.CANCELLED.value:
            self.last_completed_at = max(self.last_completed_at, row["completed_at"])
            if status == Status.OK.value:
                self.last_ok_completed_at = max(self.last_ok_completed_at, row["completed_at"])
        if status != Status.OK.value:
            return
        self.output_tokens += row.get("output_tokens") or 0
        good = True
        for name in self.TIMINGS:
            value = row.get(name)
            if value is not None:
                self.values[name].append(value)
        for slo in self.slos:
            if slo.quantile is None:
                continue
            value = row.get(SLO_METRICS[slo.metric])
            if value is not None and value > slo.limit:
                good = False
        self.good += good

    def to_json(self) -> dict[str, Any]:
        return {
            "status": dict(self.status), "errors": dict(self.errors),
            "values": {k: list(v) for k, v in self.values.items()}, "lag": list(self.lag),
            "sent_at": list(self.sent_at), "first_scheduled_at": self.first_scheduled_at,
            "first_sent_scheduled_at": self.first_sent_scheduled_at,
            "last_sent_scheduled_at": self.last_sent_scheduled_at,
            "last_completed_at": self.last_completed_at, "good": self.good,
            "last_ok_completed_at": self.last_ok_completed_at,
            "warmup_rows": self.warmup_rows, "warmup_failed": self.warmup_failed,
            "output_tokens": self.output_tokens,
            "cpu_s": self.cpu_s, "wall_s": self.wall_s, "loop_lag_p99_s": self.loop_lag_p99_s,
        }  # fmt: skip

    def merge_json(self, data: dict[str, Any]) -> None:
        self.status.update(data["status"])
        self.errors.update(data["errors"])
        for k, v in data["values"].items():
            self.values[k].extend(v)
        self.lag.extend(data["lag"])
        self.sent_at.extend(data["sent_at"])
        self.first_scheduled_at = min(self.first_scheduled_at, data["first_scheduled_at"])
        self.first_sent_scheduled_at = min(
            self.first_sent_scheduled_at, data["first_sent_scheduled_at"]
        )
        self.last_sent_scheduled_at = max(
            self.last_sent_scheduled_at, data["last_sent_scheduled_at"]
        )
        self.last_completed_at = max(self.last_completed_at, data["last_completed_at"])
        self.last_ok_completed_at = max(self.last_ok_completed_at,
                                        data.get("last_ok_completed_at", -math.inf))
        self.good += data["good"]
        self.warmup_rows += data["warmup_rows"]
        self.warmup_failed += data.get("warmup_failed", 0)
        self.output_tokens += data["output_tokens"]
        lag = data.get("loop_lag_p99_s")
        if lag is not None:
            self.loop_lag_p99_s = max(lag, self.loop_lag_p99_s or 0.0)
        # Workers run in parallel: the busiest one tells whether the client side was saturated.
        if data["wall_s"] and (not self.wall_s or data["cpu_s"] / data["wall_s"] > self.cpu_share):
            self.cpu_s, self.wall_s = data["cpu_s"], data["wall_s"]

    @property
    def failed_requests(self) -> int:
        """Every request of the stage that failed, warm-up ones included (``--max-errors``)."""
        return sum(self.status.values()) - self.status.get("ok", 0) + self.warmup_failed

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0


def quantile(values: array[float] | list[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default), ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def stage_result(
    spec: StageSpec, c: StageCollector, slos: list[Slo], max_error_rate: float | None = None,
    cancelled_failed: bool = True,
) -> dict[str, Any]:
    """The figures and verdict of one stage (JSON-serialisable, stable keys).

    :param max_error_rate: ``--max-error-rate``: with the ``error_rate`` SLOs, the share of
        failures above which the verdict is "errors" (else :data:`ERRORS_VERDICT_SHARE`).
    :param cancelled_failed: count cancelled rows as failed (False when the user cancelled
        them: a second Ctrl-C says nothing of the gateway).
    """
    n = sum(c.status.values())
    ok = c.status.get(Status.OK.value, 0)
    # Cancelled rows count: in a stage they are requests never answered by the drain after its
    # end, or never sent because the gateway could not be connected to. Left out, a gateway
    # that hung 11 % of requests, or was down, read "err 0.0%, ok".
    failed = n - ok - (0 if cancelled_failed else c.status.get(Status.CANCELLED.value, 0))
    answered = n and math.isfinite(c.last_completed_at)  # not every row cancelled
    # To the last ok answer when there is one: a request that hung and timed out after the
    # stage (the drain waits the --timeout) made 75 ok/s read 9.
    end = c.last_ok_completed_at if math.isfinite(c.last_ok_completed_at) else c.last_completed_at
    window = end - c.first_scheduled_at if answered else 0.0
    if spec.rate is not None and n:
        # Each scheduled request owns 1/rate of the schedule: at 0.1/s, one request answered in
        # 95 ms is 0.1 ok/s carried, not 10.5 (the window of its own latency).
        window = max(window, n / spec.rate)
    sent = sorted(c.sent_at)
    send_span = sent[-1] - sent[0] if len(sent) > 1 else 0.0
    achieved = (len(sent) - 1) / send_span if send_span > 0 else None
    # The same requests' own schedule: what the client was asked to keep, Poisson draws included.
    schedule_span = max(0.0, c.last_sent_scheduled_at - c.first_sent_scheduled_at)
    scheduled_rate = (len(sent) - 1) / schedule_span if len(sent) > 1 and schedule_span else None
    result: dict[str, Any] = {
        "stage": spec.name,
        "target": {"concurrency": spec.concurrency, "rate": spec.rate},
        "requests": n,
        "warmup_requests": c.warmup_rows,
        "ok": ok,
        "failed": failed,
        "error_rate": failed / n if n else None,
        "errors": dict(c.errors),
        "window_s": window if n else None,
        "throughput_rps": ok / window if window > 0 else None,
        "output_tokens_per_s": c.output_tokens / window if window > 0 else None,
        "goodput_rps": (c.good / window if window > 0 else None) if slos else None,
        "achieved_send_rate": achieved,
        "scheduled_send_rate": scheduled_rate,
        "send_overrun_s": send_span - schedule_span if len(sent) > 1 else None,
        "send_lag_s": {
            "p50": quantile(c.lag, 0.5),
            "p99": quantile(c.lag, 0.99),
            "max": max(c.lag) if c.lag else None,
        },  # fmt: skip
        "client_cpu": c.cpu_share,
        "client_wall_s": c.wall_s,
        "loop_lag_p99_s": c.loop_lag_p99_s,
    }
    for name in StageCollector.TIMINGS:
        values = c.values[name]
        result[name] = (
            {f"p{q}": quantile(values, q / 100) for q in (50, 90, 95, 99)} | {"n": len(values)}
            if values
            else None
        )
    slo_results = []
    for slo in slos:
        if slo.quantile is None:
            value = result["error_rate"]
        else:
            values = c.values[SLO_METRICS[slo.metric]]
            value = quantile(values, slo.quantile)
        # No value (TPOT of one-token answers, TTFT with no answer): not judged, as goodput
        # does not judge such a request; "missed" contradicted a goodput of every ok request.
        met = None if value is None else value <= slo.limit
        slo_results.append({"slo": str(slo), "value": value, "met": met})
    result["slos"] = slo_results
    judged = [s["met"] for s in slo_results if s["met"] is not None]
    result["slo_met"] = (all(judged) if judged else None) if slos else None
    error_limits = [slo.limit for slo in slos if slo.quantile is None]
    if max_error_rate is not None:
        error_limits.append(max_error_rate)
    result["verdict"] = verdict(spec, result, min(error_limits, default=ERRORS_VERDICT_SHARE))
    return result


#: A stage with more than this share of failed requests is reported as "errors", not "ok"
#: (unless an ``error_rate`` SLO says how many are acceptable).
ERRORS_VERDICT_SHARE = 0.01


def verdict(spec: StageSpec, r: dict[str, Any], error_limit: float = ERRORS_VERDICT_SHARE) -> str:
    """Who limited the stage: the client (say so), or the gateway (its figures stand).

    :param error_limit: the failed share above which the stage is "errors" (an ``error_rate``
        SLO sets it).
    """
    reasons = []
    if spec.rate is not None:
        reasons += schedule_misses(r["achieved_send_rate"], r["scheduled_send_rate"],
                                   r["send_overrun_s"], r["send_lag_s"]["p99"])
    elif r["client_cpu"] >= CPU_PEGGED and _cpu_measured(r):
        reasons.append(f"client CPU {r['client_cpu']:.0%} of a core")
    loop_lag = r.get("loop_lag_p99_s")
    if loop_lag is not None and loop_lag > MAX_LOOP_LAG_P99_S:
        reasons.append(f"event loop lag p99 {loop_lag * 1000:,.1f} ms")
    if reasons:
        return "client-bound (" + "; ".join(reasons) + "): add --workers or machines"
    if r["requests"] == 0:
        return "no requests"
    error_rate = r["error_rate"] or 0.0
    if error_rate > error_limit:  # the gateway's figures are of its failures
        return f"errors ({error_rate:.1%} failed)"
    if r["slo_met"] is False:
        return "SLO missed"
    return "ok"


def _cpu_measured(r: dict[str, Any]) -> bool:
    """Whether the stage's client CPU share was taken over long enough to mean anything."""
    wall = r.get("client_wall_s")
    return wall is None or wall >= MIN_CPU_WALL_S  # None: a bench.json from before it was kept


def record_offset(spec: StageSpec, workers: int, worker: int, count: int) -> int:
    """Where worker ``worker`` of ``workers`` starts in a set of ``count`` records: after the
    earlier workers' parts of ``--stage-requests`` (together they send what one process would),
    else ``worker/workers`` of the way in."""
    if spec.requests is not None and workers > 1:
        active = stage_workers(replace(spec, requests=None), workers)
        return sum(_share(spec.requests, active, j) for j in range(min(worker, active)))
    return worker * count // max(workers, 1)


def cycle_records(
    records: list[RequestRecord], stage: str, base: int, worker: int = 0, workers: int = 1,
    offset: int | None = None,
) -> Iterator[RequestRecord]:
    """Endless copies of ``records`` for one stage; worker ``k`` of ``n`` takes every n-th index.

    Each worker goes through the whole set, from an offset of its own (k/n of the way in): with
    every n-th record, a set whose length shares a factor with n gave each worker a fixed
    subset (2 requests, 2 workers: one sent only the short one), and a closed loop then skewed
    the mix toward the cheap requests.
    """
    if offset is None:
        offset = worker * len(records) // workers
    for j in itertools.count():
        index = base + worker + workers * j
        src = records[(offset + j) % len(records)]
        yield RequestRecord(
            index,
            f"{stage}-{index}",
            src.params,
            src.metadata,
            src.location,
            src.extra_headers,
            src.body,
            src.metadata_json,
        )


@dataclass
class BenchState:
    """Counters that stop conditions read across stages."""

    errors: int = 0
    requests: int = 0
    started: float = field(default_factory=time.perf_counter)
    stop_reason: str = ""


def _share(total: int, workers: int, worker: int) -> int:
    """Worker ``worker``'s part of ``total`` split among ``workers``: the parts add up to it."""
    return total // workers + (1 if worker < total % workers else 0)


def stage_workers(spec: StageSpec, workers: int) -> int:
    """How many of ``workers`` processes have a part of the stage: no more than its requests in
    flight (closed loop) or its request count. One with no part would send nothing, and its
    idle second of CPU would read as a client pegged at 100 %."""
    limit = workers
    if spec.rate is None and spec.concurrency:
        limit = min(limit, spec.concurrency)
    if spec.requests:
        limit = min(limit, spec.requests)
    return max(1, limit)


def stage_config(base: RunConfig, spec: StageSpec, workers: int = 1, worker: int = 0) -> RunConfig:
    """The run configuration of one stage for worker ``worker`` of ``workers`` processes.

    Concurrency and the request count are split so that the parts add up to the stage's (each
    worker rounding up ran ``-c 1`` at 2 with two workers); a worker whose part is 0 sends
    nothing.
    """
    concurrency = spec.concurrency
    requests = spec.requests
    if workers > 1:
        closed = concurrency is not None and spec.rate is None
        active = stage_workers(replace(spec, requests=None), workers)
        if worker >= active:  # more workers than requests in flight: this one has no part
            concurrency, requests = 1, 0
        else:
            if closed and concurrency:
                concurrency = _share(concurrency, workers, worker)
            if requests is not None:
                requests = _share(requests, active, worker)
    rate = spec.rate / workers if spec.rate is not None else None
    duration = spec.duration_s
    if duration is not None:
        duration += spec.warmup_s
    return replace(
        base,
        concurrency=concurrency if spec.rate is None else base.concurrency,
        rate=rate,
        duration_s=duration,
        max_requests=requests,
    )


def search_rates(start: float, limit: float, factor: float) -> Iterator[float]:
    """Geometric rates for the saturation search: start, start×f, … and limit itself last
    (the help promises it is tried; 10 × 2**9 = 5,120 stopped short of 10,000)."""
    rate = start
    while rate <= limit * (1 + 1e-9):
        yield rate
        rate *= factor
    if rate / factor < limit * (1 - 1e-9):
        yield limit


def passes(result: dict[str, Any], max_error_rate: float | None) -> bool:
    """A stage the gateway handled: SLOs met, errors within bounds, client not the limit,
    and something measured (a stage all warm-up, or all failed, proves no capacity)."""
    if result["verdict"].startswith(("client-bound", "errors", "no requests")):
        return False
    if not result["ok"]:
        return False
    if result["slo_met"] is False:
        return False
    rate = result["error_rate"]
    return not (max_error_rate is not None and rate is not None and rate > max_error_rate)
