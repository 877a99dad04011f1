"""The async job store: jobs created by ``x-bf-async``, their status, result and expiry.

Mirrors the gateway's rules (``framework/logstore/asyncjob.go``): a job starts ``pending``,
becomes ``processing`` at once, and ends ``completed`` or ``failed``; its result is readable for
``ttl`` seconds counted from completion; a job created with a virtual key is readable only with
that key. Expiry is checked lazily on every read (an expired job is gone at ``expires_at``
exactly) and swept periodically by the server. Instants are ``time.time()`` floats.
"""

from __future__ import annotations

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

_INT = re.compile(rb"[+-]?[0-9]+")


def parse_ttl(value: bytes | None, default_s: int) -> int:
    """TTL in seconds from the ``x-bf-async-job-result-ttl`` header.

    Missing, non-integer or negative → ``default_s``; ``0`` → 3600 (the gateway treats a
    non-positive TTL as its hard default); no upper bound.

    :param value: the raw header value, or ``None``.
    :param default_s: the configured default (``job_result_ttl_s``).
    """
    if not value:
        return default_s
    v = value.strip()
    if not _INT.fullmatch(v):
        return default_s
    n = int(v)
    if n < 0:
        return default_s
    return n if n > 0 else DEFAULT_TTL_S


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
    """Jobs by id, bounded: past ``max_jobs`` the oldest finished jobs are forgotten (they then
    read as "not found or expired", like an expired job).

    :param max_jobs: most jobs kept.
    """

    def __init__(self, max_jobs: int) -> None:
        self.max_jobs = max_jobs
        self._jobs: dict[str, Job] = {}
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def create(
        self, virtual_key: str | None, ttl_s: int, request_id: str, now: float | None = None
    ) -> Job:
        """Insert a new ``pending`` job.

        :param virtual_key: the key it was submitted with (reads must present the same one).
        :param ttl_s: result TTL, counted from completion.
        :param request_id: the submit request's id.
        :param now: creation instant (default ``time.time()``).
        """
        job = Job(
            str(uuid.uuid4()), virtual_key, ttl_s, request_id, time.time() if now is None else now
        )
        self._jobs[job.id] = job
        if len(self._jobs) > self.max_jobs:
            self._evict()
        return job

    def _evict(self) -> None:
        excess = len(self._jobs) - self.max_jobs
        for jid in [j.id for j in self._jobs.values() if j.terminal][:excess]:
            self._forget(jid)
            self.evicted += 1

    def _forget(self, job_id: str) -> None:
        # Ground truth keeps the Job for its timeline: drop the (possibly large) result body.
        self._jobs.pop(job_id).body = b""

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
            self._forget(job_id)
            self.expired += 1
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
        job.expires_at = t + job.ttl_s
        job.timer = None

    def sweep(self, now: float | None = None) -> int:
        """Delete expired jobs; returns how many."""
        t = time.time() if now is None else now
        dead = [j.id for j in self._jobs.values() if j.expires_at is not None and j.expires_at <= t]
        for jid in dead:
            self._forget(jid)
        self.expired += len(dead)
        return len(dead)

    def counts(self) -> dict[str, int]:
        """Stored jobs by status, plus expired/evicted totals."""
        out = {PENDING: 0, PROCESSING: 0, COMPLETED: 0, FAILED: 0}
        for j in self._jobs.values():
            out[j.status] += 1
        out["stored"] = len(self._jobs)
        out["expired"] = self.expired
        out["evicted"] = self.evicted
        return out

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def clear(self) -> list[Job]:
        """Forget every job; returns them so the caller can cancel their timers."""
        jobs = list(self._jobs.values())
        self._jobs.clear()
        self.expired = self.evicted = 0
        return jobs
