"""The durable run store: result rows journaled on append, compacted into Parquet parts, resumable.

A run directory (see ``docs/run-directory.md``) holds ``data/part-NNNNNN.parquet`` files, each
complete (written to a temp file, fsynced, renamed), so ``data/`` is a valid Parquet dataset at
every instant. A row is durable as soon as :meth:`RunStore.append_rows` returns: it is one line
of the current journal segment ``journal/seg-NNNNNN.jsonl``, written with a single
``os.write``. ``kill -9`` loses nothing that returned; a power loss may lose the last seconds
unless the store was opened with ``fsync=True``. When a segment is full (rows, bytes or age) it
is closed, and :meth:`RunStore.compact_closed` (meant for a worker thread) turns it into
``data/part-NNNNNN.parquet`` with the same number, then deletes it. Because the number is
shared, recovery knows that a segment whose part exists was already compacted (a crash between
the rename and the delete) and never duplicates its rows.

Opening a directory again recovers leftover segments into parts (dropping a line torn by a
crash), reads the ``input_index`` column of every part into a bitmap of finished requests, and
removes rows whose status the caller wants to redo (their parts are rewritten atomically), so
that only unfinished requests are sent again. A ``fcntl.flock`` on ``.lock`` keeps a second
process out; the kernel drops it when its holder dies, even by ``kill -9``.

Typical use from the runner::

    store = RunStore.open(run_dir)
    todo = (r for r in requests if not store.is_done(r.input_index))
    ...
    store.append_rows(rows)                   # on the event loop: a few µs per row
    if store.needs_compaction():              # e.g. from a periodic task
        await asyncio.to_thread(store.compact_closed)
    ...
    await asyncio.to_thread(store.close)      # compacts the rest: only Parquet parts remain
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrunner.journal import (
    SegmentBlocks,
    compact_segment,
    encode_rows,
    fsync_dir,
    segment_table,
    write_all,
    write_json_atomic,
    write_parquet_atomic,
)
from batchrunner.ledger import MAX_INPUT_INDEX, JobLedger, JobRecord
from batchrunner.schema import RESULT_SCHEMA, Status, conform

__all__ = [
    "DEFAULT_REDO_STATUSES",
    "RETRY_FAILED_STATUSES",
    "JobRecord",
    "RunDirectoryInUseError",
    "RunStore",
    "RunStoreError",
    "ensure_not_in_use",
    "run_has_rows",
    "write_json_atomic",
]

log = logging.getLogger(__name__)

#: Statuses whose rows a plain resume removes and sends again.
DEFAULT_REDO_STATUSES: frozenset[str] = frozenset({Status.CANCELLED.value})
#: Statuses a ``--retry-failed`` resume removes and sends again.
RETRY_FAILED_STATUSES: frozenset[str] = frozenset(
    {Status.CANCELLED.value, Status.ERROR.value, Status.TIMEOUT.value, Status.EXPIRED.value}
)

DEFAULT_SEGMENT_ROWS = 50_000
DEFAULT_SEGMENT_BYTES = 32 << 20
DEFAULT_SEGMENT_AGE_S = 60.0
#: Rows per table from :meth:`RunStore.iter_batches`. Measured at the end of a 1M-row run (the
#: closing summary reads every part back): whole parts cost ~30 MB more resident memory than
#: 16,384-row batches, and those ~13 MB more than 4,096-row ones, which take 0.6 s longer.
READ_BATCH_ROWS = 4_096

DATA_DIR = "data"
JOURNAL_DIR = "journal"
JOBS_FILE = "jobs.jsonl"
LOCK_FILE = ".lock"
# Seq 0 is never a segment: it names the empty part that makes data/ a valid dataset (with the
# schema) before the first rows land.
_EMPTY_PART_SEQ = 0
_PART_RE = re.compile(r"^part-(\d+)\.parquet$")
_SEG_RE = re.compile(r"^seg-(\d+)\.jsonl$")


class RunStoreError(RuntimeError):
    """The run directory cannot be used (locked, unreadable part, closed store, ...)."""


class RunDirectoryInUseError(RunStoreError):
    """Another process holds the run directory's lock."""


def _part_name(seq: int) -> str:
    return f"part-{seq:06d}.parquet"


def _seg_name(seq: int) -> str:
    return f"seg-{seq:06d}.jsonl"


def _numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    found = []
    for entry in os.scandir(directory):
        m = pattern.match(entry.name)
        if m:
            found.append((int(m.group(1)), Path(entry.path)))
    found.sort()
    return found


_NONE, _DONE, _REDO = 0, 1, 2  # states of an input index while scanning parts


def _max_index_from_stats(parts: list[tuple[int, Path]]) -> int:
    """The largest ``input_index`` the parts' footers know of (-1 if none): metadata only."""
    top = -1
    for _seq, path in parts:
        try:
            meta = pq.read_metadata(path)
            if not meta.num_row_groups:
                continue
            # Not meta.schema: the schema and the footer refer to each other, so every footer
            # (~1.3 MB for a 50k-row part) stayed alive until the next garbage collection:
            # +44 MB while opening a 1M-row run, ~0.5 GB for 10M.
            first = meta.row_group(0)
            col = next(
                c for c in range(first.num_columns)
                if first.column(c).path_in_schema == "input_index"
            )  # fmt: skip
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(col).statistics
                if stats is not None and stats.has_min_max:
                    top = max(top, min(int(stats.max), MAX_INPUT_INDEX - 1))
        except (OSError, ValueError, StopIteration, pa.ArrowException):
            continue  # _read_index reports unreadable parts; the scan grows if needed
    return top


def io_reason(exc: OSError) -> str:
    """An I/O error's cause, without Arrow's wrapping ("Error writing bytes to file. Detail:
    [errno 28] No space left on device", which Arrow puts in ``strerror`` itself)."""
    text = exc.strerror if exc.errno is not None and exc.strerror else str(exc)
    text = text.rpartition("Detail: ")[2]
    if text.startswith("[errno ") and "] " in text:
        text = text.partition("] ")[2]
    return text or type(exc).__name__



def what_to_do(exc: OSError) -> str:
    """What lets a resume write where this write failed, by its cause."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space, then resume"
    if exc.errno == errno.EROFS:
        return ("the file system is read-only: make it writable (or copy the run directory to "
                "one that is), then resume")
    if exc.errno == errno.EFBIG:
        return "a file size limit refused it (ulimit -f): raise it, then resume"
    return "fix the file system, then resume"


def run_has_rows(run_dir: Path, ignoring: Iterable[str] = ()) -> bool:
    """Whether *run_dir* holds a result row whose status is not in *ignoring* (rows that
    opening it would remove), in ``data/`` or ``journal/``, without opening it (no lock, no
    recovery). A part or segment that cannot be read counts as holding rows."""
    skipped = pa.array(sorted(set(ignoring)), type=pa.string())
    for _seq, path in _numbered_if_dir(Path(run_dir) / JOURNAL_DIR, _SEG_RE):
        try:
            for buf in SegmentBlocks(path):
                if _keeps_a_row(segment_table(buf, source=path.name).column("status"), skipped):
                    return True
        except (OSError, pa.ArrowException):
            return True
    for _seq, path in _numbered_if_dir(Path(run_dir) / DATA_DIR, _PART_RE):
        try:
            if not pq.read_metadata(path).num_rows:
                continue
            if not len(skipped):
                return True
            with pq.ParquetFile(path) as pf:
                status = pf.read(columns=["status"], use_threads=False).column("status")
            if _keeps_a_row(status, skipped):
                return True
        except (OSError, ValueError, KeyError, pa.ArrowException):
            return True
    return False


def _keeps_a_row(status: pa.ChunkedArray, skipped: pa.Array) -> bool:
    if not len(status):
        return False
    return not pc.all(pc.is_in(status, value_set=skipped).fill_null(False)).as_py()


def _numbered_if_dir(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    try:
        return _numbered(directory, pattern)
    except (FileNotFoundError, NotADirectoryError):
        return []


def ensure_not_in_use(run_dir: Path) -> None:
    """Fail at once if another process holds *run_dir*'s lock (checked again, for good, when the
    store opens): a resume first hashes and counts the whole input, seconds for a big file.

    :raises RunDirectoryInUseError: the directory is locked.
    """
    holder = lock_holder(run_dir)
    if holder is not None:
        raise RunDirectoryInUseError(
            f"run directory {run_dir} is in use by another batchrunner process (pid {holder})"
        )


def lock_holder(run_dir: Path) -> str | None:
    """Who holds *run_dir*'s lock: the pid it wrote (``"unknown"`` if none), or ``None`` when
    no process does (no lock file, or an unreadable one, counts as none).

    :param run_dir: a run directory.
    """
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _acquire_lock(run_dir: Path) -> int:
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirectoryInUseError(
            f"run directory {run_dir} is in use by another batchrunner process (pid {holder})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class RunStore:
    """Durable result rows and job ids of one run directory. Create it with :meth:`open`.

    Threads: :meth:`append_rows`, :meth:`needs_compaction` and :meth:`record_job` are meant for
    the event loop thread (they only touch the page cache); :meth:`compact_closed` for a worker
    thread; all are safe to call from any thread. Use it as a context manager, or call
    :meth:`close`.

    Attributes: ``run_dir``, ``data_dir``, ``journal_dir``, ``jobs_path``; ``done_count`` (rows
    present when opened, after redo removal); ``redone`` (rows removed at open, by status);
    ``rows_appended`` (rows appended since open).
    """

    run_dir: Path
    data_dir: Path
    journal_dir: Path
    jobs_path: Path
    done_count: int
    redone: dict[str, int]
    rows_appended: int

    def __init__(self) -> None:  # use RunStore.open()
        self._lock = threading.Lock()  # current segment, rotation, the done bitmap
        self._compact_lock = threading.Lock()  # one compaction (or snapshot read) at a time
        self._closed_segments: collections.deque[int] = collections.deque()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._jobs: JobLedger | None = None
        self._closed = False
        self._done = bytearray()
        self._duplicate_appends = 0
        self._segment_rows = DEFAULT_SEGMENT_ROWS
        self._segment_bytes = DEFAULT_SEGMENT_BYTES
        self._segment_age_s = DEFAULT_SEGMENT_AGE_S
        self._fsync = False
        self._on_removed: Callable[[pa.Table], None] | None = None
        self._metadata: dict[bytes, bytes] = {}
        self._next_seq = _EMPTY_PART_SEQ + 1
        self._seq = 0
        self._seg_rows = 0
        self._seg_bytes = 0
        self._seg_opened = 0.0
        self.rows_appended = 0
        self.done_count = 0
        self.redone = {}

    # ----------------------------------------------------------------------------------------
    # open / resume

    @classmethod
    def open(
        cls,
        run_dir: Path,
        *,
        create: bool = True,
        redo_statuses: Iterable[str] = DEFAULT_REDO_STATUSES,
        segment_rows: int = DEFAULT_SEGMENT_ROWS,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        segment_age_s: float = DEFAULT_SEGMENT_AGE_S,
        fsync: bool = False,
        file_metadata: Mapping[str, str] | None = None,
        on_removed: Callable[[pa.Table], None] | None = None,
    ) -> RunStore:
        """Open (or create) *run_dir* for writing, recovering whatever a crash left behind.

        Leftover journal segments become parts (a torn last line is dropped); rows whose status
        is in *redo_statuses* are removed so that their requests are sent again; if an
        ``input_index`` has several rows (a bug somewhere), the last written is kept and a
        warning logged.

        :param run_dir: the run directory.
        :param create: create it when missing; with False it must exist and hold ``data/``.
        :param redo_statuses: statuses whose rows are removed (``RETRY_FAILED_STATUSES`` for
            ``--retry-failed``; empty to keep everything).
        :param segment_rows: rows per journal segment, hence per Parquet part.
        :param segment_bytes: a segment is also closed once it holds this many bytes (bounds
            the memory compaction needs when rows carry big response bodies).
        :param segment_age_s: a non-empty segment is also closed after this many seconds, so a
            slow run still reaches Parquet (checked by :meth:`append_rows` and
            :meth:`needs_compaction`).
        :param fsync: fdatasync the journal after each append and the job ledger after each
            record (survives power loss, not only process death; costs a disk flush per call).
        :param file_metadata: key/value text stored in the schema metadata of each new part
            (run-level facts without secrets).
        :param on_removed: given the rows removed for *redo_statuses*, part by part, before
            they are gone (what they cost was paid).
        :raises FileNotFoundError: *create* is False and *run_dir* is not a run directory.
        :raises RunDirectoryInUseError: another process has it open.
        :raises RunStoreError: a part file is unreadable.
        """
        if segment_rows < 1 or segment_bytes < 1 or segment_age_s <= 0:
            raise ValueError("segment_rows, segment_bytes and segment_age_s must be positive")
        run_dir = Path(run_dir)
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
        elif not (run_dir / DATA_DIR).is_dir():
            raise FileNotFoundError(f"{run_dir} is not a batchrunner run directory (no data/)")

        self = cls()
        self.run_dir = run_dir
        self.data_dir = run_dir / DATA_DIR
        self.journal_dir = run_dir / JOURNAL_DIR
        self.jobs_path = run_dir / JOBS_FILE
        self._segment_rows = segment_rows
        self._segment_bytes = segment_bytes
        self._segment_age_s = segment_age_s
        self._fsync = fsync
        self._on_removed = on_removed
        meta = dict(RESULT_SCHEMA.metadata or {})
        meta.update({k.encode(): v.encode() for k, v in (file_metadata or {}).items()})
        self._metadata = meta
        self._lock_fd = _acquire_lock(run_dir)
        try:
            self._recover(frozenset(redo_statuses))
            self._jobs = JobLedger(self.jobs_path, fsync=fsync)
        except BaseException:
            self._release()
            raise
        return self

    def _recover(self, redo_statuses: frozenset[str]) -> None:
        self.data_dir.mkdir(exist_ok=True)
        self.journal_dir.mkdir(exist_ok=True)
        fsync_dir(self.run_dir)
        for stale in self.journal_dir.glob("*.tmp"):  # a compaction or rewrite cut short
            stale.unlink()
        for seq, seg in _numbered(self.journal_dir, _SEG_RE):
            part = self.data_dir / _part_name(seq)
            if part.exists():
                # Died between renaming the part and deleting the segment: the part is
                # complete (fsynced before the rename) and holds every line of the segment.
                log.info("%s was already compacted into %s", seg.name, part.name)
            else:
                try:
                    self._compact_segment_file(seq, seg, recovering=True)
                except OSError as exc:  # a full disk, most likely: nothing is lost
                    raise RunStoreError(
                        f"cannot convert {seg} (rows of an earlier session) into {part}: "
                        f"{io_reason(exc)}; the segment is kept: {what_to_do(exc)}"
                    ) from exc
            seg.unlink()
        fsync_dir(self.journal_dir)
        self._scan_parts(redo_statuses)
        parts = _numbered(self.data_dir, _PART_RE)
        empty = self.data_dir / _part_name(_EMPTY_PART_SEQ)
        if not parts or (parts[0][0] == _EMPTY_PART_SEQ and self._outdated(empty)):
            # A run written before columns were added has an empty part of the old schema;
            # dataset readers take the first file's schema, so it is rewritten with today's
            # (parts with rows are never rewritten for this: their missing columns read as
            # nulls, here and in pyarrow/pandas once the first file has them).
            write_parquet_atomic(self._empty_table(), empty, self.journal_dir)
        self._next_seq = max((seq for seq, _ in parts), default=_EMPTY_PART_SEQ) + 1

    def _outdated(self, empty_part: Path) -> bool:
        """Whether the empty part lacks columns of :data:`RESULT_SCHEMA` (and has no rows)."""
        try:
            # ParquetFile's schema_arrow, not meta.schema: that one ties the footer into a
            # reference cycle (see _max_index_from_stats).
            with pq.ParquetFile(empty_part) as pf:
                rows, names = pf.metadata.num_rows, pf.schema_arrow.names
        except (OSError, pa.ArrowException):
            return False  # not ours to judge: _scan_parts already read it
        return rows == 0 and not set(RESULT_SCHEMA.names) <= set(names)

    def _empty_table(self) -> pa.Table:
        return RESULT_SCHEMA.with_metadata(self._metadata).empty_table()

    def _scan_parts(self, redo_statuses: frozenset[str]) -> None:
        """Build the done bitmap from the parts; remove redo rows and duplicate rows."""
        redo_values = pa.array(sorted(redo_statuses), type=pa.string())
        parts = _numbered(self.data_dir, _PART_RE)
        # One byte per input index: _NONE, _DONE, or _REDO (has a row that will be removed).
        # Sized once from the Parquet statistics so that no growing copies stay resident.
        state = bytearray(_max_index_from_stats(parts) + 1)
        view = np.frombuffer(state, dtype=np.uint8)
        dups: set[int] = set()
        to_rewrite: dict[Path, int] = {}  # part -> number of redo rows in it
        unusable = 0
        for _seq, path in parts:
            idx, redo = self._read_index(path, redo_values)
            n_redo = int(np.count_nonzero(redo))
            if n_redo:
                to_rewrite[path] = n_redo
            usable = (idx >= 0) & (idx < MAX_INPUT_INDEX)
            if not usable.all():
                unusable += idx.size - int(np.count_nonzero(usable))
                redo, idx = redo[usable], idx[usable]
            if not idx.size:
                continue
            top = int(idx.max()) + 1
            if top > len(state):  # statistics missing or wrong: grow (view released first)
                del view
                state.extend(bytes(top - len(state)))
                view = np.frombuffer(state, dtype=np.uint8)
            again = idx[view[idx] != _NONE]
            ordered = np.sort(idx)
            within = ordered[1:][ordered[1:] == ordered[:-1]]
            if again.size or within.size:
                dups.update(again.tolist())
                dups.update(within.tolist())
            # Later parts override earlier ones, the way "keep the last row" wants it.
            view[idx[~redo]] = _DONE
            view[idx[redo]] = _REDO
        if unusable:
            log.warning(
                "%d row(s) have no usable input_index; kept, but count as no request", unusable
            )
        removals: dict[Path, np.ndarray] = {}
        if dups:
            removals = self._resolve_duplicates(parts, dups, redo_values, view)
        redone: dict[str, int] = {}
        for path in sorted(set(to_rewrite) | set(removals)):
            try:
                self._rewrite_without(path, redo_values, removals.get(path), redone)
            except OSError as exc:
                raise RunStoreError(
                    f"cannot rewrite {path} without the rows to send again: {io_reason(exc)}; "
                    f"the part is unchanged: {what_to_do(exc)}"
                ) from exc
        self.redone = redone
        if redone:
            log.info(
                "removed %d row(s) to send again: %s",
                sum(redone.values()),
                ", ".join(f"{n} {s}" for s, n in sorted(redone.items())),
            )
        np.bitwise_and(view, _DONE, out=view)  # _REDO -> _NONE, in place
        self.done_count = int(np.count_nonzero(view))
        del view
        self._done = state

    def _read_index(self, path: Path, redo_values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """input_index (nulls as -1) and "status is to be redone" of every row of a part."""
        columns = ["input_index", "status"] if len(redo_values) else ["input_index"]
        try:
            # ParquetFile without threads: pq.read_table's dataset machinery kept ~70 MB more
            # resident after scanning 10M rows, for no speed gain on a two-column read.
            with pq.ParquetFile(path) as pf:
                table = pf.read(columns=columns, use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            raise RunStoreError(
                f"{path} is not a readable Parquet part ({exc}); move it out of data/ to resume"
            ) from exc
        idx = table.column("input_index").fill_null(-1).to_numpy().astype(np.int64, copy=False)
        if len(redo_values):
            redo = pc.is_in(table.column("status"), value_set=redo_values).fill_null(False)
            return idx, redo.to_numpy()
        return idx, np.zeros(idx.size, dtype=np.bool_)

    def _resolve_duplicates(
        self,
        parts: list[tuple[int, Path]],
        dups: set[int],
        redo_values: pa.Array,
        state: np.ndarray,
    ) -> dict[Path, np.ndarray]:
        """Rows to drop so that only the last written row of each repeated index remains."""
        shown = sorted(dups)[:10]
        log.warning(
            "%d input_index value(s) have more than one row (e.g. %s); keeping the last written",
            len(dups),
            ", ".join(map(str, shown)),
        )
        dup_values = np.fromiter(dups, dtype=np.int64, count=len(dups))
        last: dict[int, tuple[Path, int, bool]] = {}
        occurrences: dict[Path, np.ndarray] = {}
        for _seq, path in parts:
            idx, redo = self._read_index(path, redo_values)
            rows = np.flatnonzero(np.isin(idx, dup_values))
            if rows.size:
                occurrences[path] = rows
                for r in rows.tolist():
                    last[int(idx[r])] = (path, r, bool(redo[r]))
        for i, (_path, _row, is_redo) in last.items():
            state[i] = _REDO if is_redo else _DONE
        removals: dict[Path, np.ndarray] = {}
        for path, rows in occurrences.items():
            idx, _ = self._read_index(path, redo_values)
            drop = [r for r in rows.tolist() if last[int(idx[r])][:2] != (path, r)]
            if drop:
                removals[path] = np.asarray(drop, dtype=np.int64)
        return removals

    def _rewrite_without(
        self,
        path: Path,
        redo_values: pa.Array,
        drop_rows: np.ndarray | None,
        redone: dict[str, int],
    ) -> None:
        table = pq.read_table(path)
        keep = np.ones(table.num_rows, dtype=np.bool_)
        if len(redo_values):
            is_redo = pc.is_in(table.column("status"), value_set=redo_values).fill_null(False)
            for item in pc.value_counts(table.column("status").filter(is_redo)).to_pylist():
                redone[item["values"]] = redone.get(item["values"], 0) + item["counts"]
            keep &= ~is_redo.to_numpy()
            if self._on_removed is not None and not keep.all():
                # Conformed: a part written before a column existed lacks it. Best effort: a
                # resume must never fail on what was spent.
                try:
                    self._on_removed(conform(table.filter(is_redo),
                                             RESULT_SCHEMA.remove_metadata()))
                except Exception as exc:  # noqa: BLE001
                    log.warning("%s: the rows sent again could not be priced: %s", path, exc)
        if drop_rows is not None:
            keep[drop_rows] = False
        if keep.all():
            return
        if not keep.any():
            path.unlink()
            fsync_dir(self.data_dir)
            return
        write_parquet_atomic(table.filter(pa.array(keep)), path, self.journal_dir)

    # ----------------------------------------------------------------------------------------
    # done set

    def is_done(self, input_index: int) -> bool:
        """Whether *input_index* has a row (present at open after redo removal, or appended)."""
        done = self._done
        return 0 <= input_index < len(done) and done[input_index] == 1

    # ----------------------------------------------------------------------------------------
    # appending

    def append_rows(self, rows: list[dict[str, Any]]) -> None:
        """Append result rows to the journal; they survive ``kill -9`` once this returns.

        All rows are encoded before anything is written, so a row that cannot be encoded
        (``TypeError``) leaves none of the batch behind. Keys outside ``RESULT_SCHEMA`` are
        dropped at compaction; instants (``*_at``) are float ``time.time()`` seconds; lone
        surrogates in text become U+FFFD. The rotation this may do is cheap (close one file);
        opening a segment happens at the first append after it.

        :param rows: result rows (dicts keyed by ``RESULT_SCHEMA`` names).
        :raises TypeError: a value orjson cannot encode.
        :raises RunStoreError: the store is closed.
        :raises OSError: the write failed (disk full, ...); the batch is not recorded.
        """
        if not rows:
            return
        data = encode_rows(rows)
        with self._lock:
            if self._closed:
                raise RunStoreError("append_rows() on a closed RunStore")
            if self._fd is None:
                self._open_segment()
            assert self._fd is not None
            try:
                write_all(self._fd, data)
                if self._fsync:
                    os.fdatasync(self._fd)
            except BaseException:
                # Take back a partial write so the next batch cannot glue onto half a line.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._seg_bytes)
                self._rotate()
                raise
            self._seg_rows += len(rows)
            self._seg_bytes += len(data)
            self.rows_appended += len(rows)
            self._mark_done(rows)
            if (
                self._seg_rows >= self._segment_rows
                or self._seg_bytes >= self._segment_bytes
                or time.monotonic() - self._seg_opened >= self._segment_age_s
            ):
                self._rotate()

    def append_row(self, row: dict[str, Any]) -> None:
        """:meth:`append_rows` for one row."""
        self.append_rows([row])

    def _mark_done(self, rows: list[dict[str, Any]]) -> None:
        done = self._done
        for row in rows:
            i: Any = row.get("input_index")
            if type(i) is not int:
                try:
                    i = operator.index(i)  # numpy integers; not floats, not None
                except TypeError:
                    continue
            if not 0 <= i < MAX_INPUT_INDEX:
                continue
            if i >= len(done):
                done.extend(bytes(max(i + 1 - len(done), len(done), 1024)))
            if done[i]:
                self._duplicate_appends += 1
                if self._duplicate_appends == 1:
                    log.warning(
                        "input_index %d was appended although it already has a row; "
                        "the last written row wins on resume",
                        i,
                    )
            else:
                done[i] = 1

    def _open_segment(self) -> None:
        self._seq = self._next_seq
        self._next_seq += 1
        path = self.journal_dir / _seg_name(self._seq)
        self._fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644
        )
        if self._fsync:
            fsync_dir(self.journal_dir)
        self._seg_rows = 0
        self._seg_bytes = 0
        self._seg_opened = time.monotonic()

    def _rotate(self) -> None:
        """Close the current segment (lock held); a non-empty one waits for compaction."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if self._seg_rows:
            self._closed_segments.append(self._seq)
        else:
            (self.journal_dir / _seg_name(self._seq)).unlink(missing_ok=True)

    def rotate(self) -> None:
        """Close the current segment now, so that the next compaction takes its rows."""
        with self._lock:
            self._rotate()

    # ----------------------------------------------------------------------------------------
    # compaction

    @property
    def closed_segments(self) -> int:
        """Closed journal segments waiting for compaction."""
        with self._lock:
            return len(self._closed_segments)

    def needs_compaction(self) -> bool:
        """Whether a closed segment waits for :meth:`compact_closed`.

        Also closes the current segment when it is older than ``segment_age_s``.
        """
        with self._lock:
            if (
                self._fd is not None
                and self._seg_rows
                and time.monotonic() - self._seg_opened >= self._segment_age_s
            ):
                self._rotate()
            return bool(self._closed_segments)

    def compact_closed(self) -> int:
        """Turn every closed segment into its Parquet part, then delete it. Thread-safe.

        Blocking (file I/O and Arrow work that mostly releases the GIL): run it in a worker
        thread. Concurrent calls are serialized.

        :return: the number of rows compacted.
        """
        total = 0
        with self._compact_lock:
            while True:
                with self._lock:
                    if not self._closed_segments:
                        return total
                    seq = self._closed_segments[0]
                seg = self.journal_dir / _seg_name(seq)
                total += self._compact_segment_file(seq, seg, recovering=False)
                seg.unlink()
                with self._lock:
                    self._closed_segments.popleft()
                # Arrow's allocator keeps freed blocks for reuse; between compactions that is
                # resident memory doing nothing.
                pa.default_memory_pool().release_unused()

    def _compact_segment_file(self, seq: int, seg: Path, *, recovering: bool) -> int:
        rows, torn = compact_segment(
            seg, self.data_dir / _part_name(seq), self.journal_dir, metadata=self._metadata
        )
        if torn:
            # Expected after kill -9 mid-write: those rows were never acknowledged.
            log.log(
                logging.INFO if recovering else logging.WARNING,
                "%s: dropped a torn last line (%d bytes)",
                seg.name,
                torn,
            )
        return rows

    # ----------------------------------------------------------------------------------------
    # async jobs

    def record_job(
        self,
        input_index: int,
        custom_id: str,
        job_id: str,
        submitted_at: float,
        ttl_s: float | None = None,
        expires_hint: float | None = None,
        **request: object,
    ) -> JobRecord:
        """Record an accepted async job in ``jobs.jsonl``; durable against ``kill -9`` on return.

        Call it before treating the submit as done. A later record for the same
        *input_index* supersedes this one.

        :param input_index: the request's position in the input.
        :param custom_id: the request's id.
        :param job_id: the gateway's job id.
        :param submitted_at: ``time.time()`` when the submit was answered.
        :param ttl_s: the result TTL asked for, if any.
        :param expires_hint: latest instant the result can be read, when known.
        :param request: ``attempts``, ``model_requested``, ``metadata``, ``request_kept`` (see
            :class:`~batchrunner.ledger.JobRecord`).
        :return: the record written.
        """
        rec = JobRecord(input_index, custom_id, job_id, submitted_at, ttl_s, expires_hint,
                        **request)  # type: ignore[arg-type]
        if self._jobs is None:
            raise RunStoreError("record_job() on a closed RunStore")
        self._jobs.record(rec)
        return rec

    def iter_outstanding_jobs(self) -> Iterator[JobRecord]:
        """Like :meth:`outstanding_jobs`, streaming (memory stays small with millions)."""
        if self._jobs is None:
            raise RunStoreError("outstanding_jobs() on a closed RunStore")
        return self._jobs.iter_latest(self.is_done)

    def outstanding_jobs(self) -> list[JobRecord]:
        """Recorded jobs whose request has no row yet (the last record per ``input_index``).

        A resume polls these instead of submitting their requests again. Rows removed at open
        by ``redo_statuses`` make their jobs outstanding again: whether to poll them (still
        within the TTL?) or submit anew is the caller's choice.
        """
        return list(self.iter_outstanding_jobs())

    # ----------------------------------------------------------------------------------------
    # reading

    def _snapshot(self) -> tuple[list[Path], list[tuple[Path, int | None]]]:
        """Parts, then segments with a byte limit (for the one being written); compact lock held."""
        with self._lock:
            segments: list[tuple[Path, int | None]] = [
                (self.journal_dir / _seg_name(seq), None) for seq in self._closed_segments
            ]
            if self._fd is not None:
                segments.append((self.journal_dir / _seg_name(self._seq), self._seg_bytes))
        parts = [p for _, p in _numbered(self.data_dir, _PART_RE)]
        return parts, segments

    def iter_batches(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Every row, part by part then segment by segment, as tables of ``RESULT_SCHEMA`` of at
        most :data:`READ_BATCH_ROWS` rows (a part or segment is never held whole).

        Compaction waits while this iterates, so a row is never seen twice or missed: consume
        the iterator promptly (or close it), never keep it half-read.

        :param columns: only these columns.
        """
        plain = RESULT_SCHEMA.remove_metadata()
        if columns is not None:
            plain = pa.schema([plain.field(c) for c in columns])
        with self._compact_lock:
            parts, segments = self._snapshot()
            for path in parts:
                with pq.ParquetFile(path) as pf:
                    for batch in pf.iter_batches(
                        batch_size=READ_BATCH_ROWS, columns=columns, use_threads=False
                    ):
                        # A part written before a column existed lacks it: nulls.
                        yield conform(pa.Table.from_batches([batch]), plain)
            for path, limit in segments:
                for buf in SegmentBlocks(path, limit):
                    yield conform(segment_table(buf, source=path.name), plain)

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows written so far (parts and journal) as one table. For tests and summaries:
        with millions of rows, select *columns* or use :meth:`iter_batches`.
        """
        tables = list(self.iter_batches(columns))
        if not tables:
            schema = RESULT_SCHEMA.remove_metadata()
            empty = schema.empty_table()
            return empty if columns is None else empty.select(columns)
        return pa.concat_tables(tables)

    def iter_rows(self, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """All rows as dicts (instants as timezone-aware ``datetime``)."""
        for table in self.iter_batches(columns):
            yield from table.to_pylist()

    # ----------------------------------------------------------------------------------------
    # closing

    def close(self, keep_lock: bool = False) -> None:
        """Close the current segment, compact everything, release the lock. Idempotent (a
        later call only releases the lock a first one kept).

        Afterwards ``data/`` holds every row and ``journal/`` is gone. If compaction fails, the
        segments stay in ``journal/`` and the next :meth:`open` recovers them.

        :param keep_lock: hold the directory's lock until a later ``close()``: the run still
            reads its rows and writes ``run.json``, which a resume must not start before.
        """
        with self._lock:
            already = self._closed
            if not already:
                self._closed = True
                self._rotate()
        if already:  # a second close (after keep_lock) lets the lock go
            if not keep_lock:
                self._release()
            return
        try:
            self.compact_closed()
            with contextlib.suppress(OSError):  # not empty: something is left to recover
                self.journal_dir.rmdir()
        finally:
            if keep_lock:
                self._close_jobs()
            else:
                self._release()
        if self._duplicate_appends:
            log.warning(
                "%d row(s) were appended for input_index values that already had a row",
                self._duplicate_appends,
            )

    def _close_jobs(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None

    def _release(self) -> None:
        self._close_jobs()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the flock
            self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
