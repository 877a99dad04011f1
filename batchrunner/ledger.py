"""The async-job ledger ``jobs.jsonl``: every job id the gateway accepted, recorded durably.

A submit counts as done only once its job id is on disk, so a crash never loses an accepted
job and a resume polls recorded jobs instead of paying for them twice. The file is
append-only, one JSON object per line, written with one ``os.write`` per record (it survives
``kill -9`` the moment :meth:`JobLedger.record` returns; add ``fsync=True`` to survive a power
loss too). A record for an ``input_index`` that already has one supersedes it (a job
submitted again after its result expired). A line torn by a crash is cut off when the ledger
is opened, so later records never glue onto it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from batchrunner.journal import fsync_dir, write_all

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20

#: Input indices at or above this are not tracked (done bitmaps stay small; 2**31 requests
#: is far beyond any real set, so only a bug gets there).
MAX_INPUT_INDEX = 1 << 31


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One accepted async job.

    :param input_index: the request's position in the input (the resume key).
    :param custom_id: the request's id.
    :param job_id: the id the gateway gave the job (the ``id`` of its 200 stub).
    :param submitted_at: when the submit was answered (``time.time()`` seconds).
    :param ttl_s: the result TTL asked for with ``x-bf-async-job-result-ttl``, if any.
    :param expires_hint: the latest instant (``time.time()`` seconds) at which the result can
        still be read, when known; None when it depends on a completion not yet seen.
    :param attempts: submits of the request so far, this job's included (failed submits and
        failed jobs before it), so that a later session goes on counting; None in ledgers
        written before it was kept (then 1).
    :param model_requested: the request's ``model``, for its row.
    :param metadata: the request's metadata as JSON text, for its row.
    :param request_kept: whether the two above were recorded (ledgers written before they were
        kept say nothing of the request: its row's fields come from the input then).
    :param abandoned: the job was given up (``run --abandon-jobs``: the gateway lost it); no
        session polls it, and its request is sent again like one never submitted.
    """

    input_index: int
    custom_id: str
    job_id: str
    submitted_at: float
    ttl_s: float | None = None
    expires_hint: float | None = None
    attempts: int | None = None
    model_requested: str | None = None
    metadata: str | None = None
    request_kept: bool = False
    abandoned: bool = False


class JobLedger:
    """Append-only ``jobs.jsonl`` of :class:`JobRecord` s (not thread-safe for writes).

    :param path: the ledger file, created by the first record (a run that submits no job, and
        every sync or streaming run, has none).
    :param fsync: fdatasync after each record (survives power loss; costs a disk flush).
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._closed = False
        self._fd: int | None = None
        if self.path.exists():
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with self.path.open("rb") as f:
            f.seek(max(0, size - _READ_CHUNK))
            tail = f.read()
        if tail.endswith(b"\n"):
            return
        last_nl = tail.rfind(b"\n")
        if last_nl < 0 and size > len(tail):
            # One line longer than the chunk: find its start the slow way (never in practice).
            with self.path.open("rb") as f:
                last_nl = f.read().rfind(b"\n")
            keep = last_nl + 1
        else:
            keep = size - len(tail) + last_nl + 1
        os.ftruncate(self._fd, keep)
        os.fsync(self._fd)
        log.warning("%s: dropped a torn last record (%d bytes)", self.path, size - keep)

    def record(self, rec: JobRecord) -> None:
        """Append *rec*; durable against ``kill -9`` when this returns.

        :raises RuntimeError: the ledger is closed.
        """
        if self._closed:
            raise RuntimeError(f"{self.path} is closed")
        if self._fd is None:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
            if self._fsync:  # the new name must survive a power cut too
                fsync_dir(self.path.parent)
        line = orjson.dumps(asdict(rec), option=orjson.OPT_APPEND_NEWLINE)
        before = os.fstat(self._fd).st_size
        try:
            write_all(self._fd, line)
        except BaseException:
            # Take back a partial write (a full disk): the next record would be glued onto
            # half a line, unreadable, and its job submitted (and paid for) again on resume.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise
        if self._fsync:
            os.fdatasync(self._fd)

    def iter_latest(self, is_done: Callable[[int], bool] | None = None) -> Iterator[JobRecord]:
        """The last record of each ``input_index``, in file order, skipping those *is_done*.

        Memory stays small with millions of records: a first pass finds the indices recorded
        more than once, a second yields. Lines that are not valid records are skipped.
        """
        seen = bytearray()
        repeated: dict[int, int] = {}  # input_index -> line number of its last record
        for lineno, rec in self._iter_records():
            i = rec.input_index
            if i >= len(seen):
                seen.extend(bytes(max(i + 1 - len(seen), len(seen))))
            if seen[i]:
                repeated[i] = lineno
            else:
                seen[i] = 1
        del seen
        for lineno, rec in self._iter_records(warn=False):
            last = repeated.get(rec.input_index)
            if last is not None and last != lineno:
                continue
            if rec.abandoned or (is_done is not None and is_done(rec.input_index)):
                continue
            yield rec

    def _iter_records(self, *, warn: bool = True) -> Iterator[tuple[int, JobRecord]]:
        bad = 0
        if not self.path.exists():  # no job recorded yet
            return
        with self.path.open("rb") as f:
            for lineno, line in enumerate(f):
                if not line.endswith(b"\n"):
                    break  # being written right now, or torn: not a record yet
                try:
                    obj = orjson.loads(line)
                    rec = JobRecord(
                        input_index=int(obj["input_index"]),
                        custom_id=str(obj["custom_id"]),
                        job_id=str(obj["job_id"]),
                        submitted_at=float(obj["submitted_at"]),
                        ttl_s=None if obj.get("ttl_s") is None else float(obj["ttl_s"]),
                        expires_hint=(
                            None if obj.get("expires_hint") is None else float(obj["expires_hint"])
                        ),
                        attempts=_count(obj.get("attempts")),
                        model_requested=_text(obj.get("model_requested")),
                        metadata=_text(obj.get("metadata")),
                        request_kept=obj.get("request_kept") is True,
                        abandoned=obj.get("abandoned") is True,
                    )
                    if not 0 <= rec.input_index < MAX_INPUT_INDEX:
                        raise ValueError("input_index out of range")
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    bad += 1
                    continue
                yield lineno, rec
        if bad and warn:
            log.warning("%s: skipped %d unreadable line(s)", self.path, bad)

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _count(value: object) -> int | None:
    """A recorded count (None for anything else: a hand-edited or damaged value)."""
    return value if type(value) is int and value >= 1 else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
