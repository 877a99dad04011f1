"""Readers of request files (JSONL, gzipped JSONL, Parquet) into batches of raw rows.

Each reader streams: JSONL line by line, Parquet by record batches, so memory is bounded by one
batch whatever the file size. A reader only finds rows, their index, their location and their
``custom_id``; turning a row into a Messages body is a separate, later step (:meth:`body`), so
that rows a resumed run skips cost no more than their id (or nothing, when the caller knows
their ids otherwise: ``batches(skip=...)`` leaves them unparsed). File-level problems raise
:class:`FormatError` with a one-line message naming the file; row-level problems are carried on
the row (``RawRow.error``) or raised as :class:`~batchrunner.bodycheck.RowError` by ``body``.
"""

from __future__ import annotations

import datetime
import gzip
import math
import os
import re
import shlex
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrunner.bodycheck import RowError, json_type

#: Rows per batch handed to the pipeline, and the JSONL bytes after which a batch is cut short.
BATCH_ROWS = 1024
BATCH_BYTES = 1 << 20
#: ``raw`` text of a reject is cut to this many characters.
RAW_LIMIT = 10_000

_BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
_WRAPPER_KEYS = frozenset({"custom_id", "params", "metadata"})


class FormatError(Exception):
    """The file as a whole cannot be read; the message names the file."""


@dataclass(slots=True)
class RawRow:
    """One data row of a file, before its body is built.

    :param index: 0-based index among the file's data rows.
    :param location: ``path:line`` or ``path#row N``.
    :param given_id: the input's ``custom_id`` as found (``None`` when absent).
    :param error: a reason when the row is already known to be unusable.
    :param data: reader-specific content (the parsed line, or the row's column values).
    """

    index: int
    location: str
    given_id: Any
    error: str | None
    data: Any


#: The Parquet prompt layout's text column unless ``--prompt-column`` names another.
DEFAULT_PROMPT_COLUMN = "prompt"


def open_source(
    path: str | os.PathLike[str], prompt_column: str, metadata_columns: tuple[str, ...]
) -> JsonlSource | ParquetSource:
    """The reader for ``path``, chosen by its extension, after checking the file can be read.

    :raises FormatError: missing or unreadable file, unknown extension, unusable Parquet.
    """
    display = os.fspath(path)
    name = display.lower()
    if name.endswith(JSONL_SUFFIXES):
        kind = "jsonl"
    elif name.endswith(PARQUET_SUFFIXES):
        kind = "parquet"
    else:
        raise FormatError(
            f"{display}: unknown file type; expected one of "
            f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}"
        )
    p = Path(display)
    try:
        if p.is_dir():
            raise FormatError(f"{display}: is a directory, not a request file")
        if p.exists() and not p.is_file():
            # Opening a pipe blocks until it has a writer, and what was read to check it
            # would be gone: every reader opens the file again.
            raise FormatError(
                f"{display}: not a regular file (a pipe or device); batchrunner reads its input "
                "more than once: save it to a file first"
            )
        with p.open("rb"):
            pass
    except FileNotFoundError:
        raise FormatError(f"{display}: no such file") from None
    except OSError as exc:
        raise FormatError(f"{display}: cannot read: {exc.strerror or exc}") from None
    if kind == "jsonl":
        # Silently ignored, these would leave a user's tags or prompts out of every row.
        if metadata_columns:
            raise FormatError(
                f"{display}: --metadata-column is for Parquet input; in JSONL, give each line "
                'a "metadata" object'
            )
        if prompt_column != DEFAULT_PROMPT_COLUMN:
            raise FormatError(
                f"{display}: --prompt-column is for Parquet input; JSONL lines hold the "
                'Messages body (or {"custom_id": ..., "params": ...})'
            )
        source = JsonlSource(p, display)
        source.check_encoding()
        return source
    return ParquetSource(p, display, prompt_column, metadata_columns)


def _wide_encoding(head: bytes) -> str | None:
    """The UTF-16/32 encoding that the first bytes of a text file show, by its byte order mark
    or by where its NUL bytes are (UTF-8 JSON never holds one); None for anything else."""
    if head[:4] in (b"\xff\xfe\0\0", b"\0\0\xfe\xff"):
        return "UTF-32"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16"
    if b"\0" not in head:
        return None
    if len(head) == 4 and head.count(b"\0") == 3:
        return "UTF-32LE" if head[0] else "UTF-32BE"
    return "UTF-16LE" if head[1:2] == b"\0" else "UTF-16BE"


def truncate(text: str) -> str:
    return text if len(text) <= RAW_LIMIT else text[:RAW_LIMIT]


# --------------------------------------------------------------------------- JSONL


class JsonlSource:
    """JSON Lines, optionally gzipped; each non-blank line is one request.

    Blank (whitespace-only) lines are skipped and take no index, so ``input_index`` counts data
    lines while locations keep the physical 1-based line number. A UTF-8 byte order mark at the
    start and CRLF line ends are accepted.
    """

    def __init__(self, path: Path, display: str) -> None:
        self.path = path
        self.display = display
        self._gzip = display.lower().endswith(".gz")

    def _open(self) -> Any:
        return gzip.open(self.path, "rb") if self._gzip else self.path.open("rb")

    def check_encoding(self) -> None:
        """Refuse a UTF-16 or UTF-32 file (Windows tools save "Unicode" text so): every line
        would be a reject, each with a reason about bytes.

        :raises FormatError: naming the encoding and how to convert it.
        """
        try:
            with self._open() as f:
                head = f.read(4)
        except (OSError, EOFError, zlib.error):
            return  # said when the file is read
        if head[:2] == b"\x1f\x8b" and not self._gzip:
            raise FormatError(f"{self.display}: the file is gzip-compressed; rename it to "
                              f"{self.display}.gz so that it is read as such")
        wide = _wide_encoding(head)
        if wide is None:
            return
        name = shlex.quote(self.display)
        convert = f"iconv -f {wide} -t UTF-8"
        how = (f"gunzip -c {name} | {convert} | gzip > fixed.jsonl.gz" if self._gzip
               else f"{convert} {name} > fixed.jsonl")
        raise FormatError(f"{self.display}: the file is {wide}, not UTF-8; JSONL must be UTF-8: "
                          f"convert it, e.g. {how}")

    def count(self) -> int:
        """Number of non-blank lines, scanning 1 MiB blocks (no parsing)."""
        try:
            with self._open() as f:
                return _count_nonblank_lines(f)
        except (OSError, EOFError, zlib.error) as exc:
            raise FormatError(f"{self.display}: cannot read: {exc}") from None

    def batches(
        self, batch_rows: int = BATCH_ROWS, skip: Callable[[int], bool] | None = None
    ) -> Iterator[list[RawRow]]:
        """Rows in file order, in lists of at most ``batch_rows`` rows or ~1 MiB of text.

        :param skip: ``skip(index)`` true: the row is left out unread (not even parsed).
        """
        display = self.display
        index = 0
        batch: list[RawRow] = []
        size = 0
        try:
            with self._open() as f:
                for line_no, line in enumerate(f, start=1):
                    if line_no == 1 and line.startswith(_BOM):
                        line = line[3:]
                    if not line or line.isspace():
                        continue
                    if skip is not None and skip(index):
                        index += 1
                        continue
                    batch.append(_parse_line(line, index, f"{display}:{line_no}"))
                    index += 1
                    size += len(line)
                    if len(batch) >= batch_rows or size >= BATCH_BYTES:
                        yield batch
                        batch, size = [], 0
        except (OSError, EOFError, zlib.error) as exc:
            raise FormatError(f"{display}: cannot read: {exc}") from None
        if batch:
            yield batch

    def body(self, row: RawRow) -> tuple[Any, dict[str, Any] | None]:
        """The row's (undecoded-yet-unchecked) Messages body and metadata.

        :raises RowError: the line is neither a bare body nor the Message Batches shape.
        """
        obj: dict[str, Any] = row.data[1]
        if "params" not in obj and obj and set(obj) <= _WRAPPER_KEYS:
            # Nothing of a Messages body: the Message Batches shape with params left out (as a
            # bare body it would read "missing model", which misleads).
            raise RowError("missing params (the Message Batches shape is {\"custom_id\": …, "
                           "\"params\": {…}, \"metadata\": {…}})")
        if "params" not in obj:
            # A bare Messages body. Its own ``metadata`` is Anthropic's field and stays in it;
            # a ``custom_id`` cannot be a Messages field, so it was taken as the row's id.
            obj.pop("custom_id", None)
            return obj, None
        if not _WRAPPER_KEYS.issuperset(obj):
            unknown = sorted(set(obj) - _WRAPPER_KEYS)
            raise RowError(
                f"unknown field {unknown[0]!r} beside params "
                "(the Message Batches shape allows custom_id, params, metadata)"
            )
        metadata = obj.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise RowError(f"metadata must be a JSON object, got {json_type(metadata)}")
        return obj["params"], metadata

    def raw_text(self, row: RawRow) -> str:
        line: bytes = row.data[0]
        return truncate(line.decode("utf-8", "replace").rstrip("\r\n"))


def _parse_line(line: bytes, index: int, location: str) -> RawRow:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return RawRow(index, location, None, _invalid_json(line, exc), (line, None))
    if not isinstance(obj, dict):
        return RawRow(
            index, location, None, f"not a JSON object (got {json_type(obj)})", (line, None)
        )
    return RawRow(index, location, obj.get("custom_id"), None, (line, obj))


def _invalid_json(line: bytes, exc: orjson.JSONDecodeError) -> str:
    """Why a line is not JSON. Bytes that are not UTF-8 are located and shown: orjson calls
    them "surrogates not allowed" at column 1, wherever they are."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        shown = line[bad.start : bad.start + 4].hex(" ")
        return f"not valid UTF-8: byte {bad.start + 1} of the line is {shown[:2]} (bytes {shown})"
    hint = "" if line.endswith(b"\n") else " (last line has no newline: truncated file?)"
    return f"invalid JSON: {exc}{hint}"


# A blank line can only start right after a newline, with whitespace or another newline.
_BLANK_START = re.compile(rb"\n[\n\r \t\x0b\x0c]")


def _count_nonblank_lines(f: Any) -> int:
    # Same notion of "blank" as JsonlSource.batches (bytes.isspace). Lines are counted with
    # bytes.count; the per-line slow path runs only for blocks where _BLANK_START matches.
    count = 0
    open_line_has_text = False  # the unfinished line carried over from the previous block
    start = f.read(len(_BOM))
    block = b"" if start == _BOM else start
    while True:
        if not block:
            block = f.read(_BLOCK)
            if not block:
                break
        first_nl = block.find(b"\n")
        if first_nl < 0:
            open_line_has_text = open_line_has_text or not block.isspace()
            block = b""
            continue
        head = block[:first_nl]
        if open_line_has_text or (head and not head.isspace()):
            count += 1
        last_nl = block.rfind(b"\n")
        inner = block.count(b"\n", first_nl, last_nl + 1) - 1  # lines between the two
        if inner > 0:
            if _BLANK_START.search(block, first_nl, last_nl + 1):
                lines = block[first_nl + 1 : last_nl].split(b"\n")
                count += sum(1 for line in lines if line and not line.isspace())
            else:
                count += inner
        tail = block[last_nl + 1 :]
        open_line_has_text = bool(tail) and not tail.isspace()
        block = b""
    return count + open_line_has_text


# --------------------------------------------------------------------------- Parquet


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or getattr(pa.types, "is_string_view", lambda _t: False)(t)
    )


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


class ParquetSource:
    """A Parquet file in one of two layouts, chosen from its columns.

    * Message Batches layout: a ``params`` column (struct, or JSON text), optional ``custom_id``
      (text or integer) and ``metadata`` (struct, map, or JSON text).
    * Prompt layout (no ``params``): a text prompt column becomes one user message; optional
      ``system``, ``model``, ``max_tokens``, ``custom_id`` and ``metadata`` columns.

    In both, the columns named in ``metadata_columns`` are added to the row's metadata.
    """

    def __init__(
        self, path: Path, display: str, prompt_column: str, metadata_columns: tuple[str, ...]
    ) -> None:
        self.path = path
        self.display = display
        try:
            with pq.ParquetFile(path) as pf:
                schema = pf.schema_arrow
                self.num_rows = pf.metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(
                f"{display}: not a readable Parquet file ({_first_line(exc)})"
            ) from None
        types = {f.name: f.type for f in schema}
        if len(types) < len(schema.names):
            twice = next(n for n in schema.names if schema.names.count(n) > 1)
            raise FormatError(
                f"{display}: column {twice!r} appears more than once: which one to read is "
                "ambiguous; rename or drop the extra one"
            )
        if "params" in types:
            if prompt_column != DEFAULT_PROMPT_COLUMN:
                raise FormatError(
                    f"{display}: --prompt-column {prompt_column!r} is for files without a "
                    "'params' column; this one has params (the Message Batches layout), which "
                    "hold the whole request"
                )
            self.layout = "batches"
            self._check(types, "params", text=True, binary=True, struct=True)
        elif prompt_column in types:
            self.layout = "prompt"
            self.prompt_column = prompt_column
            self._check(types, prompt_column, text=True)
            for name in ("system", "model"):
                if name in types:
                    self._check(types, name, text=True)
            if "max_tokens" in types:
                self._check(types, "max_tokens", integer=True, whole_floats=True)
        else:
            found = ", ".join(types) or "none"
            raise FormatError(
                f"{display}: no usable columns: need 'params' (Message Batches layout) or the "
                f"prompt column {prompt_column!r} (see --prompt-column); columns are: {found}"
            )
        if "custom_id" in types:
            self._check(types, "custom_id", text=True, integer=True, whole_floats=True)
        if "metadata" in types:
            self._check(types, "metadata", text=True, binary=True, struct=True, map_=True)
        missing = [c for c in metadata_columns if c not in types]
        if missing:
            raise FormatError(f"{display}: metadata column {missing[0]!r} not found")
        self.metadata_columns = tuple(c for c in metadata_columns if c != "metadata")
        if self.layout == "prompt":
            wanted = [prompt_column, "custom_id", "metadata", "system", "model", "max_tokens"]
        else:
            wanted = ["custom_id", "params", "metadata"]
        wanted += self.metadata_columns
        self.columns = list(dict.fromkeys(c for c in wanted if c in types))
        #: Columns neither sent nor kept (an expected answer, a typo such as ``meta``): said,
        #: never silently dropped, since ``--metadata-column`` would keep them in the rows.
        self.unused_columns = [c for c in types if c not in self.columns]

    def _check(
        self,
        types: dict[str, pa.DataType],
        name: str,
        *,
        text: bool = False,
        binary: bool = False,
        struct: bool = False,
        map_: bool = False,
        integer: bool = False,
        whole_floats: bool = False,
    ) -> None:
        """:param whole_floats: a float column is taken as integers (pandas writes an integer
            column with a missing value as float64); a cell that is not whole is then the
            row's reject."""
        t = shown = types[name]
        if isinstance(t, pa.BaseExtensionType):
            # Parquet's JSON logical type (DuckDB's JSON columns) reads as extension<arrow.json>
            # over plain text; its cells come back as the text.
            t = t.storage_type
        ok = (
            pa.types.is_null(t)
            or (text and _is_text(t))
            or (binary and _is_bytes(t))
            or (struct and pa.types.is_struct(t))
            or (map_ and pa.types.is_map(t))
            or (integer and pa.types.is_integer(t))
            or (whole_floats and pa.types.is_floating(t))
        )
        if not ok:
            kinds = [
                k
                for k, on in (
                    ("text", text),
                    ("binary JSON", binary),
                    ("struct", struct),
                    ("map", map_),
                    ("integer", integer),
                )
                if on
            ]
            raise FormatError(
                f"{self.display}: column {name!r} has type {shown}; expected "
                + (f"{', '.join(kinds[:-1])} or {kinds[-1]}" if len(kinds) > 1 else kinds[0])
            )

    def count(self) -> int:
        return int(self.num_rows)

    def batches(
        self, batch_rows: int = BATCH_ROWS, skip: Callable[[int], bool] | None = None
    ) -> Iterator[list[RawRow]]:
        """Rows in file order, in lists of at most ``batch_rows`` rows.

        :param skip: ``skip(index)`` true: the row is left out undecoded.
        """
        display = self.display
        columns = self.columns
        index = 0
        try:
            # A buffered stream and no reader threads: memory stays near one row group's
            # pages, and no pyarrow thread pool competes with the run's event loop. No
            # pre-buffering: its cache kept every row group read so far (a 300,000-row input
            # held 100 MB of Arrow memory by its end, and a run's RSS grew with it).
            with pq.ParquetFile(self.path, buffer_size=_BLOCK, pre_buffer=False) as pf:
                batches = pf.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False)
                # Arrow batches are decoded to Python a slice at a time: ``to_pylist`` of a
                # whole batch of nested params is milliseconds in one go.
                slices = (
                    whole.slice(start, batch_rows)
                    for whole in batches
                    for start in range(0, whole.num_rows, batch_rows)
                )
                for record_batch in slices:
                    indices = range(index, index + record_batch.num_rows)
                    index += record_batch.num_rows
                    if skip is not None:
                        kept = [j for j, i in enumerate(indices) if not skip(i)]
                        if len(kept) < len(indices):
                            record_batch = record_batch.take(pa.array(kept, type=pa.int64()))
                            indices = [indices[j] for j in kept]  # type: ignore[assignment]
                    errors: dict[int, str] = {}
                    values = [_column_values(record_batch.column(c), c, errors) for c in columns]
                    ids = values[columns.index("custom_id")] if "custom_id" in columns else None
                    rows = []
                    for j, row_values in enumerate(zip(*values, strict=True)):
                        given = ids[j] if ids is not None else None
                        i = indices[j]
                        rows.append(
                            RawRow(
                                i,
                                f"{display}#row {i}",
                                given,
                                errors.get(j),
                                dict(zip(columns, row_values, strict=True)),
                            )
                        )
                    if rows:
                        yield rows
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(f"{display}: cannot read Parquet: {_first_line(exc)}") from None

    def body(self, row: RawRow) -> tuple[Any, dict[str, Any] | None]:
        """The row's Messages body and metadata.

        :raises RowError: a JSON text cell does not decode, or a prompt is missing.
        """
        data: dict[str, Any] = row.data
        if self.layout == "batches":
            params = _cell_object(data.get("params"), "params", required=True)
        else:
            prompt = data[self.prompt_column]
            if not isinstance(prompt, str) or not prompt:
                what = "null" if prompt is None else "empty"
                raise RowError(f"prompt column {self.prompt_column!r} is {what}")
            params = {
                name: data[name]
                for name in ("model", "max_tokens", "system")
                if data.get(name) is not None
            }
            params["messages"] = [{"role": "user", "content": prompt}]
        metadata = _cell_object(data.get("metadata"), "metadata", required=False)
        for name in self.metadata_columns:
            metadata = metadata if metadata is not None else {}
            metadata[name] = _jsonable(data[name], name)
        return params, metadata

    def raw_text(self, row: RawRow) -> str:
        text = orjson.dumps(row.data, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return truncate(text)


def _column_values(column: pa.Array, name: str, errors: dict[int, str]) -> list[Any]:
    """A column's cells as Python values; maps as dicts (JSON objects, wherever they are
    nested: as pairs they were sent as arrays). A cell that cannot become one (text that is not
    UTF-8, a timestamp beyond year 9999, a map with a key twice or a key that is not text) is
    None, with its reason in *errors* under its position, so that only its row is rejected."""
    if name in _WHOLE_NUMBER_COLUMNS and pa.types.is_floating(column.type):
        return [_whole(v) for v in column.to_pylist()]
    column = _float32_as_written(column)
    try:
        values = column.to_pylist()
    except (ValueError, OverflowError, pa.ArrowException):  # UnicodeDecodeError is a ValueError
        values = []
        for j in range(len(column)):
            try:
                values.append(column[j].as_py())
            except (ValueError, OverflowError, pa.ArrowException) as exc:
                values.append(None)
                errors.setdefault(j, f"column {name!r}: {_cell_error(exc)}")
    if _needs_conversion(column.type):
        # By hand, only where needed: pyarrow's maps_as_pydicts needs pyarrow 20, and
        # decoding every column with it took twice as long.
        for j, value in enumerate(values):
            try:
                values[j] = _as_json_values(value, column.type)
            except _NotJson as exc:
                values[j] = None
                errors.setdefault(j, f"column {name!r}: {exc}")
    return values


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_narrow_float(t: pa.DataType) -> bool:
    return pa.types.is_float32(t) or pa.types.is_float16(t)


def _float32_as_written(column: pa.Array) -> pa.Array:
    """*column* with every 32-bit float, wherever it is nested, as the float64 of its shortest
    decimal (0.7, not 0.699999988079071): Arrow prints floats that way, so two casts do it in
    C. A type that cannot be cast so is left as it is (:func:`_as_json_values` then converts
    its values one by one)."""
    as_text = _with_float32_as(column.type, pa.string())
    if as_text == column.type or isinstance(column.type, pa.BaseExtensionType):
        return column
    try:
        return pc.cast(pc.cast(column, as_text), _with_float32_as(column.type, pa.float64()))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return column


def _with_float32_as(t: pa.DataType, new: pa.DataType) -> pa.DataType:
    """Type *t* with every 32-bit float in it replaced by *new*."""
    if pa.types.is_float32(t):
        return new
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_with_float32_as(t.field(i).type, new))
                          for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_with_float32_as(t.key_type, new)),
                       t.item_field.with_type(_with_float32_as(t.item_type, new)))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        field = t.value_field.with_type(_with_float32_as(t.value_type, new))
        if pa.types.is_fixed_size_list(t):
            return pa.list_(field, t.list_size)
        return pa.large_list(field) if pa.types.is_large_list(t) else pa.list_(field)
    return t


def _shortest(value: float, code: str) -> float:
    """The shortest decimal that reads back as *value* in the ``struct`` format *code* (``f``:
    32 bits, ``e``: 16). NaN and infinities come back as they are, for the checks that reject
    them."""
    if not math.isfinite(value):
        return value
    for digits in range(1, 18):
        text = f"{value:.{digits}g}"
        try:
            if struct.unpack(code, struct.pack(code, float(text)))[0] == value:
                return float(text)
        except OverflowError:  # 65504 as "7e+04" is beyond 16 bits: more digits, then
            continue
    return value


def _needs_conversion(t: pa.DataType) -> bool:
    """Whether cells of type *t*, anywhere inside, are not yet the JSON they stand for: maps
    (pairs, not objects) and 32- or 16-bit floats (their exact binary value has more digits than
    the number that was written: 0.7 came out as 0.699999988079071)."""
    if isinstance(t, pa.BaseExtensionType):
        return _needs_conversion(t.storage_type)
    if pa.types.is_map(t) or _is_narrow_float(t):
        return True
    if pa.types.is_struct(t):
        return any(_needs_conversion(t.field(i).type) for i in range(t.num_fields))
    if _is_list(t):
        return _needs_conversion(t.value_type)
    return False


def _as_json_values(value: Any, t: pa.DataType) -> Any:
    """*value* (from ``to_pylist``) with every map of type *t* a dict and every narrow float
    the shortest decimal that reads back as the same float (what was written).

    :raises _NotJson: a map key that is not text, or one given twice.
    """
    if value is None:
        return None
    if isinstance(t, pa.BaseExtensionType):
        return _as_json_values(value, t.storage_type)
    if _is_narrow_float(t):
        return _shortest(value, "f" if pa.types.is_float32(t) else "e")
    if pa.types.is_map(t):
        out: dict[str, Any] = {}
        for key, item in value:
            if not isinstance(key, str):
                raise _NotJson("a map key that is not text")
            if key in out:
                raise _NotJson(f"a map with the key {key!r} twice")
            out[key] = _as_json_values(item, t.item_type)
        return out
    if pa.types.is_struct(t):
        return {t.field(i).name: _as_json_values(value.get(t.field(i).name), t.field(i).type)
                for i in range(t.num_fields)}
    if _is_list(t):
        return [_as_json_values(item, t.value_type) for item in value]
    return value


#: Integer columns that may come as floats (see ``whole_floats``).
_WHOLE_NUMBER_COLUMNS = frozenset({"max_tokens", "custom_id"})


def _whole(value: float | None) -> float | int | None:
    """A float cell of an integer column: its integer when whole (NaN is pandas' null)."""
    if value is None or math.isnan(value):
        return None
    return int(value) if value.is_integer() and abs(value) < 2**63 else value


def _cell_error(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 (byte {exc.start} of the value is {exc.object[exc.start]:02x})"
    if isinstance(exc, OverflowError):
        return f"a date or time outside the years 1-9999 ({_first_line(exc)})"
    return _first_line(exc)


def _cell_object(value: Any, name: str, *, required: bool) -> Any:
    """A struct, map or JSON-text cell as a dict; struct nulls (absent fields) are dropped."""
    if value is None:
        if required:
            raise RowError(f"{name} is null")
        return None
    if isinstance(value, str | bytes):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise RowError(f"{name}: invalid JSON: {exc}") from None
        if name == "metadata" and value is None:
            return None
        if not isinstance(value, dict):
            raise RowError(f"{name} must be a JSON object, got {json_type(value)}")
        return value
    # A struct (Parquet gives every field of the column's type, None where the row had none)
    # or a map.
    if name == "metadata":  # never sent: a NaN there is null, as in a --metadata-column
        return _drop_none(value, nan=None)
    try:
        return _drop_none(value)
    except _NotJson as exc:
        raise RowError(f"{name} holds {exc}, which JSON cannot hold") from None


class _NotJson(ValueError):
    pass


_RAISE = object()


def _drop_none(value: Any, nan: Any = _RAISE) -> Any:
    """*value* without struct nulls (recursively).

    :param nan: what a NaN or infinite number becomes; by default it raises :class:`_NotJson`
        (orjson would send it as null, and JSON text with NaN is a reject too).
    """
    if isinstance(value, dict):
        return {k: _drop_none(v, nan) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v, nan) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        if nan is _RAISE:
            raise _NotJson(repr(value))
        return nan
    return value


def _jsonable(value: Any, column: str) -> Any:
    """A ``--metadata-column`` cell as JSON can hold it: dates and times in ISO 8601 (as
    orjson writes those of a metadata struct), decimals as their text.

    :raises RowError: binary values, which have no JSON form (as in a metadata struct).
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v, column) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, column) for v in value]
    if isinstance(value, bytes | bytearray):
        raise RowError(f"metadata column {column!r} holds a binary value, which JSON cannot "
                       "hold (cast it to text)")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)  # decimals, durations


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
