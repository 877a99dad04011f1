"""Row journal segments and their conversion into Parquet parts, plus crash-safe file helpers.

A journal segment is a file of result rows, one ``orjson`` object per line, appended with one
``os.write`` per batch. It is the durable record of a row until the segment has been turned
into a Parquet part. This module holds the pieces that know the byte formats: encoding rows,
reading the complete lines of a segment (a line torn by ``kill -9`` is dropped), converting
them into an Arrow table of :data:`~batchrunner.schema.RESULT_SCHEMA` (instants become
``timestamp[us, UTC]``), and writing files so that a reader or a crash never sees half of one
(temp file, fsync, ``os.replace``, fsync of the directory).

Conversion has a fast path and a forgiving one. The fast path hands the whole segment to
Arrow's C++ JSON reader with an explicit schema: about five times faster than
``orjson.loads`` + ``pa.Table.from_pylist`` on 50k rows, and it releases the GIL, so the event
loop keeps running while a worker thread compacts. When the fast path refuses the bytes (a
corrupt line, a value of the wrong JSON type), the forgiving path parses line by line, skips
lines that are not JSON objects, and coerces values of the wrong type (a ``dict`` in a text
column becomes JSON text, ``1.0`` in an integer column becomes ``1``, anything unusable becomes
null), logging counts but never row contents.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from batchrunner.schema import INSTANT_COLUMNS, RESULT_SCHEMA

log = logging.getLogger(__name__)

#: orjson options for journal lines. APPEND_NEWLINE frames the line in the same call; numpy
#: scalars (np.float64, np.int64) are accepted because callers compute statistics with numpy.
JOURNAL_DUMPS_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY

#: Parquet codec of the parts: on response text, zstd writes as fast as snappy and is ~2x smaller.
PARQUET_COMPRESSION = "zstd"

# Arrow JSON block size for the fast path. Blocks are parsed in parallel; a line longer than a
# block makes the reader fail, and then we retry with one block holding everything.
_JSON_BLOCK_SIZE = 4 << 20
# Rows decoded at once on the forgiving path, to bound the Python objects alive at one time.
_SLOW_CHUNK_ROWS = 4096

# The schema the JSON reader parses into: instants are still float seconds in the journal.
_JOURNAL_SCHEMA = pa.schema(
    [pa.field(f.name, pa.float64()) if f.name in INSTANT_COLUMNS else f for f in RESULT_SCHEMA]
)
# Conversion allocates from the system allocator: measured on 1M rows, Arrow's default
# mimalloc pool kept ~40 MB more resident after each compaction (and peaked ~40 MB higher).
_POOL = pa.system_memory_pool()
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)
_INT_BOUNDS = {pa.int32(): (-(2**31), 2**31 - 1), pa.int64(): (-(2**63), 2**63 - 1)}
_MAX_TS_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z, the largest pandas-safe value


# --------------------------------------------------------------------------------------------
# files


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of *data* to *fd* (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    """Make the entries of directory *path* (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush the contents of the file at *path* to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write *obj* as indented JSON to *path* so that readers see the old file or the new one.

    The text goes to a temporary file beside *path*, is fsynced, then renamed over *path*, and
    the directory is fsynced. Paths become strings and sets sorted lists.

    :param path: the destination file; its directory must exist.
    :param obj: any value orjson can encode (dicts, lists, str, numbers, datetimes, ...).
    :raises TypeError: *obj* holds a value that cannot be encoded.
    """
    path = Path(path)
    data = orjson.dumps(
        obj,
        default=_json_default,
        option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY,
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; run.json is meant to be shared
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_parquet_atomic(table: pa.Table, path: Path, tmp_dir: Path) -> None:
    """Write *table* to *path* as a complete Parquet file, never visible half-written.

    The file is written under *tmp_dir* (same file system, outside the data directory so no
    reader ever lists it), fsynced, renamed to *path*, and *path*'s directory is fsynced: when
    this returns, the part survives a crash or a power loss.
    """
    _publish(path, tmp_dir, lambda tmp: pq.write_table(table, tmp, compression=PARQUET_COMPRESSION))


def _publish(path: Path, tmp_dir: Path, write: Callable[[Path], object]) -> bool:
    """Have *write* make a file under *tmp_dir*, then make it durable as *path*.

    :return: False (and nothing published) when *write* left no file.
    """
    tmp = tmp_dir / f"{path.name}.tmp"  # stale *.tmp files are removed when a store opens
    try:
        write(tmp)
        if not tmp.exists():
            return False
        fsync_file(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return True


#: Journal bytes converted per step of a compaction (one Parquet row group, ~1,000 rows):
#: memory stays near a small multiple of this instead of growing with the segment. Measured on
#: a 32 MB segment, the conversion's resident peak: 4 MB blocks +54-60 MB, 2 MB +42 MB, 1 MB
#: +21 MB, for 25 % more CPU than 4 MB blocks.
COMPACT_BLOCK_BYTES = 1 << 20


class SegmentBlocks:
    """The complete lines of a journal segment, about *block_bytes* at a time, as buffers.

    Iterate once; afterwards :attr:`torn` is the length of an unfinished last line (0 if the
    segment ends with a newline), which is not part of any block.

    :param limit: read at most this many bytes (a snapshot of a segment still being written).
    """

    def __init__(
        self, path: Path, limit: int | None = None, block_bytes: int = COMPACT_BLOCK_BYTES
    ) -> None:
        self.path = path
        self.torn = 0
        self._limit = limit
        self._block_bytes = block_bytes

    def __iter__(self) -> Iterator[pa.Buffer]:
        left = self._limit
        carry = b""
        with self.path.open("rb") as f:
            while True:
                want = self._block_bytes if left is None else min(self._block_bytes, left)
                chunk = f.read(want) if want > 0 else b""
                if left is not None:
                    left -= len(chunk)
                if not chunk:
                    break
                data = carry + chunk if carry else chunk
                end = data.rfind(b"\n") + 1
                carry = data[end:]
                if end:  # else one line longer than a block: read on until it ends
                    yield pa.py_buffer(data).slice(0, end)
        self.torn = len(carry)


def convert_segment(
    seg: Path,
    out: Path,
    *,
    metadata: Mapping[bytes, bytes] | None = None,
    block_bytes: int = COMPACT_BLOCK_BYTES,
) -> tuple[int, int]:
    """Write the complete lines of segment *seg* as the Parquet file *out*, block by block.

    Each block of whole lines becomes one row group, so memory does not grow with the segment.
    Nothing is made durable here (see :func:`compact_segment`); a segment without a complete
    line leaves no file.

    :return: ``(rows written, bytes of a torn last line that were dropped)``.
    """
    schema = RESULT_SCHEMA.with_metadata(metadata or RESULT_SCHEMA.metadata)
    writer: pq.ParquetWriter | None = None
    rows = 0
    blocks = SegmentBlocks(seg, block_bytes=block_bytes)
    try:
        for buf in blocks:
            table = segment_table(buf, metadata=metadata, source=seg.name)
            if table.num_rows == 0:
                continue
            if writer is None:
                writer = pq.ParquetWriter(out, schema, compression=PARQUET_COMPRESSION)
            writer.write_table(table)
            rows += table.num_rows
        if writer is not None:
            writer.close()
            writer = None
    except BaseException:
        if writer is not None:
            writer.close()
        out.unlink(missing_ok=True)
        raise
    return rows, blocks.torn


def compact_segment(
    seg: Path,
    path: Path,
    tmp_dir: Path,
    *,
    metadata: Mapping[bytes, bytes] | None = None,
    block_bytes: int = COMPACT_BLOCK_BYTES,
) -> tuple[int, int]:
    """Convert segment *seg* into the Parquet part *path*, never visible half-written.

    The part is written under *tmp_dir* by :func:`convert_segment`, fsynced, renamed to *path*,
    and *path*'s directory is fsynced: when this returns, the part survives a crash or a power
    loss. A segment without a complete line writes no part.

    :return: ``(rows written, bytes of a torn last line that were dropped)``.
    """
    counts = (0, 0)

    def write(tmp: Path) -> None:
        nonlocal counts
        counts = convert_segment(seg, tmp, metadata=metadata, block_bytes=block_bytes)

    _publish(path, tmp_dir, write)
    return counts


# --------------------------------------------------------------------------------------------
# segments → Arrow


def segment_table(
    buf: pa.Buffer, *, metadata: Mapping[bytes, bytes] | None = None, source: str = "segment"
) -> pa.Table:
    """Convert complete journal lines into a table of ``RESULT_SCHEMA`` (with *metadata*).

    :param buf: whole lines, each one JSON object (as :class:`SegmentBlocks` gives them).
    :param metadata: the schema metadata to give the table.
    :param source: a name for log messages (the segment file).
    """
    schema = RESULT_SCHEMA.with_metadata(metadata or RESULT_SCHEMA.metadata)
    if buf.size == 0:
        return schema.empty_table()
    try:
        raw = _read_json_fast(buf)
        columns = [
            _instants_from_seconds(raw.column(name))
            if name in INSTANT_COLUMNS
            else raw.column(name)
            for name in RESULT_SCHEMA.names
        ]
        return pa.Table.from_arrays(columns, schema=schema)
    except _ARROW_ERRORS:
        # Arrow's messages may quote values; they stay out of the log.
        log.info("%s: fast conversion refused the rows; converting line by line", source)
    return _table_line_by_line(buf, schema, source)


def _read_json_fast(buf: pa.Buffer) -> pa.Table:
    parse = pa_json.ParseOptions(
        explicit_schema=_JOURNAL_SCHEMA, unexpected_field_behavior="ignore"
    )
    try:
        return pa_json.read_json(
            pa.BufferReader(buf),
            # One thread: compaction runs at low priority beside the event loop (background.py).
            read_options=pa_json.ReadOptions(use_threads=False, block_size=_JSON_BLOCK_SIZE),
            parse_options=parse,
            memory_pool=_POOL,
        )
    except pa.ArrowInvalid:
        if buf.size <= _JSON_BLOCK_SIZE:
            raise
    # Perhaps one line was longer than a block ("straddling object"): one block for all.
    return pa_json.read_json(
        pa.BufferReader(buf),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=buf.size + 1),
        parse_options=parse,
        memory_pool=_POOL,
    )


def _instants_from_seconds(seconds: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    # float seconds -> int64 microseconds (rounded, not truncated: 0.1234565 s must not lose a µs)
    micros = pc.round(pc.multiply(seconds, 1e6, memory_pool=_POOL), memory_pool=_POOL)
    micros = pc.cast(micros, pa.int64(), memory_pool=_POOL)
    return pc.cast(micros, pa.timestamp("us", tz="UTC"), memory_pool=_POOL)


def _table_line_by_line(buf: pa.Buffer, schema: pa.Schema, source: str) -> pa.Table:
    batches = []
    bad_lines = 0
    coerced: dict[str, int] = {}
    chunk: list[dict[str, Any]] = []
    for line in memoryview(buf).tobytes().split(b"\n"):
        if not line:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad_lines += 1
            continue
        if not isinstance(obj, dict):
            bad_lines += 1
            continue
        chunk.append(obj)
        if len(chunk) >= _SLOW_CHUNK_ROWS:
            batches.append(_batch_from_dicts(chunk, schema, coerced))
            chunk = []
    if chunk:
        batches.append(_batch_from_dicts(chunk, schema, coerced))
    if bad_lines:
        log.warning("%s: skipped %d line(s) that were not JSON objects", source, bad_lines)
    for name, count in coerced.items():
        log.warning(
            "%s: column %s: %d value(s) of an unusable type were stored as null",
            source,
            name,
            count,
        )
    return pa.Table.from_batches(batches, schema=schema)


def _batch_from_dicts(
    rows: list[dict[str, Any]], schema: pa.Schema, coerced: dict[str, int]
) -> pa.RecordBatch:
    arrays = []
    for field in RESULT_SCHEMA:
        values = [r.get(field.name) for r in rows]
        try:
            if field.name in INSTANT_COLUMNS:
                arr = _instants_from_seconds(pa.array(values, type=pa.float64()))
            else:
                arr = pa.array(values, type=field.type)
        except (*_ARROW_ERRORS, TypeError, ValueError, OverflowError):
            fixed = [_coerce(v, field.type) for v in values]
            nulled = sum(
                1 for old, new in zip(values, fixed, strict=True) if old is not None and new is None
            )
            if nulled:
                coerced[field.name] = coerced.get(field.name, 0) + nulled
            arr = pa.array(fixed, type=field.type)
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _coerce(value: Any, typ: pa.DataType) -> Any:
    """A value of the right Python type for *typ*, or None; *value* itself when already fine."""
    if value is None:
        return None
    if pa.types.is_string(typ):
        if isinstance(value, str):
            return value
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    if pa.types.is_timestamp(typ):
        return _coerce_instant(value)
    if pa.types.is_integer(typ):
        lo, hi = _INT_BOUNDS[typ]
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value if lo <= value <= hi else None
        if isinstance(value, float) and value.is_integer() and lo <= value <= hi:
            return int(value)
        if isinstance(value, str):
            try:
                number = int(value)
            except ValueError:
                return None
            return number if lo <= number <= hi else None
        return None
    if pa.types.is_floating(typ):
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return None
        return None
    return None


def _coerce_instant(value: Any) -> dt.datetime | None:
    # Instants are float seconds in memory; tolerate ISO text (what orjson makes of a datetime).
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None
        micros = round(value * 1e6)
        if not 0 <= micros <= _MAX_TS_US:
            return None
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return None


def encode_rows(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Journal lines for *rows*.

    Text with lone surrogates (which a lenient JSON decoder can produce from a gateway's
    ``\\ud800``) gets U+FFFD in their place rather than failing the batch.

    :raises TypeError: a value of a type orjson cannot encode (naming its column).
    """
    dumps = orjson.dumps
    opt = JOURNAL_DUMPS_OPTIONS
    rows = rows if isinstance(rows, list) else list(rows)
    try:
        return b"".join([dumps(r, option=opt) for r in rows])
    except TypeError:
        return b"".join([_encode_scrubbed(r) for r in rows])


def _encode_scrubbed(row: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(row, option=JOURNAL_DUMPS_OPTIONS)
    except TypeError:
        pass
    fixed = {}
    for key, value in row.items():
        if isinstance(value, str):
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        try:
            orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as exc:  # orjson's message names the type, never the value
            raise TypeError(f"result column {key!r}: {exc}") from None
        fixed[key] = value
    return orjson.dumps(fixed, option=JOURNAL_DUMPS_OPTIONS)
