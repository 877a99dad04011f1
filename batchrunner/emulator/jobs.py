"""The async job store: jobs created by ``x-bf-async``, their status, result and expiry.

Mirrors the gateway's rules (``framework/logstore/asyncjob.go``): a job starts ``pending``,
becomes ``processing`` at once, and ends ``completed`` or ``failed``; its result is readable for
``ttl`` seconds counted from completion; a job created with a virtual key is readable only with
that key. Expiry is checked lazily on every read (an expired job is gone at ``expires_at``
exactly) and swept periodically by the server. Instants are ``time.time()`` floats.

The store is bounded: when full, the oldest finished job is forgotten; when every stored job is
still unfinished, a new one is refused (:class:`JobStoreFull`) rather than dropping a job a
client is waiting for.
"""

from __future__ import annotations

import heapq
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

PENDING = "pending"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"

#: The gateway's hard default when the TTL header is 0 (``DefaultAsyncJobResultTTL``).
DEFAULT_TTL_S = 3600
#: Largest TTL kept as given: the gateway computes ``time.Duration(ttl) * time.Second``, an
#: int64 of nanoseconds, so it has no meaningful TTL above this (~292 years; beyond it Go wraps
#: around). Larger values are clamped here: such a job simply never expires in practice.
MAX_TTL_S = (2**63 - 1) // 1_000_000_000
#: ``strconv.Atoi`` range: a value outside int64 is a parse error, hence the default.
_INT64_MAX = 2**63 - 1

_INT = re.compile(rb"[+-]?[0-9]+")


class JobStoreFull(Exception):
    """Every stored job is still pending or processing, so none can be forgotten."""


def parse_ttl(value: bytes | None, default_s: int) -> int:
    """TTL in seconds from the ``x-bf-async-job-result-ttl`` header.

    Missing, non-integer, negative or outside int64 → ``default_s`` (the gateway's
    ``strconv.Atoi`` fails, and it falls back silently: no error reaches the client); ``0`` →
    3600 (the gateway treats a non-positive TTL as its hard default); above :data:`MAX_TTL_S`
    → :data:`MAX_TTL_S`.

    :param value: the raw header value, or ``None``.
    :param default_s: the configured default (``job_result_ttl_s``).
    """
    if not value:
        return default_s
    v = value.strip()
    # Length first: int() of a huge digit string is slow (and limited), and any value of more
    # than 20 characters is outside int64 anyway.
    if len(v) > 20 or not _INT.fullmatch(v):
        return default_s
    n = int(v)
    if n < 0 or n > _INT64_MAX:
        return default_s
    return min(n, MAX_TTL_S) if n > 0 else DEFAULT_TTL_S


@dataclass(slots=True, eq=False)
class Job:
    """One async job and its timeline."""

    id: str
    virtual_key: str | None
    ttl_s: int
    request_id: str
    created_at: float
    status: str = PENDING
    started_at: float | None = None
    completed_at: float | None = None
    expires_at: float | None = None
    #: HTTP status of the stored result (200, or the error's status).
    http_status: int | None = None
    #: Encoded response body served to polls once terminal.
    body: bytes = b""
    fault: str | None = None
    error_type: str | None = None
    #: Creation order within the store (eviction forgets the lowest first).
    seq: int = field(default=0, repr=False)
    #: Loop-side state: the completion timer, whether the job holds a capacity slot, and
    #: whether it was dropped by a reset or stop.
    timer: Any = field(default=None, repr=False)
    holds_slot: bool = field(default=False, repr=False)
    cancelled: bool = field(default=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in (COMPLETED, FAILED)

    def timeline(self) -> dict[str, Any]:
        """The job's state as plain values, for ground truth."""
        return {
            "id": self.id,
            "status": self.status,
            "ttl_s": self.ttl_s,
            "http_status": self.http_status,
            "fault": self.fault,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "expires_at": self.expires_at,
        }


class JobStore:
    """Jobs by id, bounded to ``max_jobs``.

    When full, the oldest (by creation) finished job is forgotten, and then reads as "not found
    or expired", like an expired job. Unfinished jobs are never forgotten: when every stored job
    is unfinished, :meth:`create` refuses the new one, so memory stays bounded and no accepted
    job silently disappears.

    Finished jobs also sit in two min-heaps, by creation (for eviction) and by expiry (for the
    sweep), so a submit to a full store and a sweep cost O(log n) per job instead of a scan of
    every stored job. Entries of jobs forgotten another way are skipped when popped, and the
    heaps are rebuilt when such stale entries outnumber the stored jobs (amortised O(1)).

    :param max_jobs: most jobs kept.
    """

    def __init__(self, max_jobs: int) -> None:
        self.max_jobs = max_jobs
        self._jobs: dict[str, Job] = {}
        self._by_age: list[tuple[int, Job]] = []
        self._by_expiry: list[tuple[float, int, Job]] = []
        self._seq = 0
        self.expired = 0
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def create(
        self, virtual_key: str | None, ttl_s: int, request_id: str, now: float | None = None
    ) -> Job:
        """Insert a new ``pending`` job, forgetting the oldest finished jobs if the store is full.

        :param virtual_key: the key it was submitted with (reads must present the same one).
        :param ttl_s: result TTL, counted from completion.
        :param request_id: the submit request's id.
        :param now: creation instant (default ``time.time()``).
        :raises JobStoreFull: when the store is full of unfinished jobs.
        """
        if len(self._jobs) >= self.max_jobs:
            # max_jobs is live and may have shrunk: evict down to one free place.
            self._evict(len(self._jobs) - self.max_jobs + 1)
            if len(self._jobs) >= self.max_jobs:
                self.refused += 1
                raise JobStoreFull(f"{len(self._jobs)} unfinished async jobs stored")
        job = Job(
            str(uuid.uuid4()),
            virtual_key,
            min(ttl_s, MAX_TTL_S),
            request_id,
            time.time() if now is None else now,
            seq=self._seq,
        )
        self._seq += 1
        self._jobs[job.id] = job
        return job

    def _evict(self, n: int) -> None:
        heap = self._by_age
        while n > 0 and heap:
            job = heapq.heappop(heap)[1]
            if self._jobs.get(job.id) is job:
                self._forget(job)
                self.evicted += 1
                n -= 1
        self._compact()

    def _forget(self, job: Job) -> None:
        # Ground truth keeps the Job for its timeline: drop the (possibly large) result body.
        del self._jobs[job.id]
        job.body = b""

    def _compact(self) -> None:
        # Each finished job has one entry per heap; past twice that plus a margin, most entries
        # are stale: rebuild (O(n), after at least n removals).
        if len(self._by_age) + len(self._by_expiry) <= 4 * len(self._jobs) + 1024:
            return
        done = [j for j in self._jobs.values() if j.terminal]
        self._by_age = [(j.seq, j) for j in done]
        self._by_expiry = [(j.expires_at or 0.0, j.seq, j) for j in done]
        heapq.heapify(self._by_age)
        heapq.heapify(self._by_expiry)

    def get(self, job_id: str, virtual_key: str | None, now: float | None = None) -> Job | None:
        """The job if the caller may read it, else ``None`` (unknown, expired or other key).

        :param job_id: from ``x-bf-async-id``.
        :param virtual_key: the caller's key, or ``None``.
        :param now: instant for the expiry check (default ``time.time()``).
        """
        job = self._jobs.get(job_id)
        if job is None:
            return None
        exp = job.expires_at
        if exp is not None and exp <= (time.time() if now is None else now):
            self._forget(job)
            self.expired += 1
            self._compact()
            return None
        if job.virtual_key is not None and job.virtual_key != virtual_key:
            return None
        return job

    def finish(
        self, job: Job, status: str, http_status: int, body: bytes, now: float | None = None
    ) -> None:
        """Mark a job terminal and start its TTL.

        :param status: ``completed`` or ``failed``.
        :param http_status: status served to polls.
        :param body: body served to polls.
        """
        t = time.time() if now is None else now
        job.status = status
        job.http_status = http_status
        job.body = body
        job.completed_at = t
        job.expires_at = exp = t + job.ttl_s
        job.timer = None
        if self._jobs.get(job.id) is job:  # not already dropped by a reset
            heapq.heappush(self._by_age, (job.seq, job))
            heapq.heappush(self._by_expiry, (exp, job.seq, job))

    def sweep(self, now: float | None = None) -> int:
        """Delete expired jobs; returns how many."""
        t = time.time() if now is None else now
        heap = self._by_expiry
        n = 0
        while heap and heap[0][0] <= t:
            job = heapq.heappop(heap)[2]
            if self._jobs.get(job.id) is job:
                self._forget(job)
                n += 1
        self.expired += n
        self._compact()
        return n

    def counts(self) -> dict[str, int]:
        """Stored jobs by status, plus expired/evicted/refused totals."""
        out = {PENDING: 0, PROCESSING: 0, COMPLETED: 0, FAILED: 0}
        for j in self._jobs.values():
            out[j.status] += 1
        out["stored"] = len(self._jobs)
        out["expired"] = self.expired
        out["evicted"] = self.evicted
        out["refused"] = self.refused
        return out

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def clear(self) -> list[Job]:
        """Forget every job; returns them so the caller can cancel their timers."""
        jobs = list(self._jobs.values())
        self._jobs.clear()
        self._by_age.clear()
        self._by_expiry.clear()
        self.expired = self.evicted = self.refused = 0
        return jobs
