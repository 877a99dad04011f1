"""Request sets in, validated :class:`~batchrunner.schema.RequestRecord` objects out.

This is the input layer of a run: :func:`iter_requests` streams a JSONL (optionally gzipped) or
Parquet file with bounded memory, fills defaults from :class:`SourceOptions`, checks every
request (:mod:`batchrunner.bodycheck`), rejects duplicate ``custom_id`` values
(:mod:`batchrunner.dedupe`) and reports each unusable row, with its location and reason, to a
callback instead of failing the run (or raises :class:`InputError` at the first one in strict
mode). ``input_index`` is the 0-based position among the file's data rows; rejected rows keep
theirs, so it is stable across runs of the same file and serves as the resume key.
:func:`validate_file` runs the same checks and summarises them; :func:`count_requests` counts
rows without parsing them, for progress totals.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from batchrunner.bodycheck import RowError, json_type, normalize_params
from batchrunner.dedupe import DuplicateDetector
from batchrunner.formats import (
    BATCH_ROWS,
    FormatError,
    JsonlSource,
    ParquetSource,
    RawRow,
    open_source,
)
from batchrunner.redaction import cut_credentials_from_line
from batchrunner.schema import RequestRecord

__all__ = [
    "InputError",
    "Reject",
    "SourceOptions",
    "ValidationReport",
    "count_requests",
    "iter_requests",
    "validate_file",
]

#: The Message Batches rule for ``custom_id``.
CUSTOM_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class SourceOptions:
    """How to read a request set.

    :param model: ``model`` for requests that have none.
    :param max_tokens: ``max_tokens`` for requests that have none.
    :param system: ``system`` prompt for requests that have none.
    :param model_override: replaces the ``model`` of every request.
    :param prompt_column: Parquet prompt layout: the text column that becomes the user message.
    :param metadata_columns: Parquet: further columns copied into each row's ``metadata``.
    :param strict: raise :class:`InputError` at the first invalid row instead of rejecting it.
    """

    model: str | None = None
    max_tokens: int | None = None
    system: str | None = None
    model_override: str | None = None
    prompt_column: str = "prompt"
    metadata_columns: tuple[str, ...] = ()
    strict: bool = False

    def __post_init__(self) -> None:
        mt = self.max_tokens
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt <= 0):
            raise ValueError(f"--max-tokens must be a positive integer, got {mt!r}")
        for name in ("model", "model_override"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                option = "--" + name.replace("_", "-")
                raise ValueError(f"{option} must be a non-empty string, got {value!r}")
        # Accept any iterable of names (a list from click) but store a hashable tuple.
        object.__setattr__(self, "metadata_columns", tuple(self.metadata_columns))


class InputError(Exception):
    """The request set cannot be used. The message is for the user: one line naming the file
    (and, for a row in strict mode, its line or row and the reason).

    :param message: the user-facing text.
    :param reject: in strict mode, the row that stopped the read.
    """

    def __init__(self, message: str, reject: Reject | None = None) -> None:
        super().__init__(message)
        self.reject = reject


@dataclass
class Reject:
    """An input row that was skipped, as written to ``rejects.jsonl``.

    :param location: ``path:line`` (JSONL, 1-based physical line) or ``path#row N`` (Parquet,
        0-based row).
    :param input_index: the row's 0-based index among data rows.
    :param custom_id: the row's id when one could be read (given, or the default
        ``str(input_index)``), else ``None``.
    :param reason: why the row was rejected.
    :param raw: the line text (Parquet: the row as JSON), cut to its first 10,000 characters.
    """

    location: str
    input_index: int
    custom_id: str | None
    reason: str
    raw: str

    def to_dict(self) -> dict[str, Any]:
        """The ``rejects.jsonl`` object."""
        return asdict(self)


@dataclass
class ValidationReport:
    """What :func:`validate_file` found.

    :param path: the file, as given.
    :param ok: requests that would be sent.
    :param rejected: rows that would be rejected (duplicates included).
    :param duplicates: rejected rows whose ``custom_id`` repeats an earlier row's.
    :param models: requests per ``model`` among the valid ones.
    :param stream_removed: valid requests whose ``stream`` field was removed.
    :param rejects: the first rejects, in file order.
    :param stopped_early: strict mode stopped at the first reject.
    :param unused_columns: Parquet columns neither sent nor kept in the rows.
    """

    path: str
    ok: int = 0
    rejected: int = 0
    duplicates: int = 0
    models: dict[str, int] = field(default_factory=dict)
    stream_removed: int = 0
    rejects: list[Reject] = field(default_factory=list)
    stopped_early: bool = False
    unused_columns: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Data rows read."""
        return self.ok + self.rejected

    @property
    def valid(self) -> bool:
        """Every row read is a usable request."""
        return self.rejected == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``batchrunner validate --json``)."""
        out = asdict(self)
        out["total"] = self.total
        out["valid"] = self.valid
        return out


def unused_columns(path: str | os.PathLike[str], options: SourceOptions) -> list[str]:
    """The input's Parquet columns that are neither sent nor kept in the rows ([] for JSONL).

    :raises InputError: the file cannot be read.
    """
    return list(getattr(_open(path, options), "unused_columns", []))


def unused_columns_note(columns: list[str]) -> str:
    """One line naming *columns*, and how to keep one."""
    return (f"note: column{'s' if len(columns) > 1 else ''} not used: {', '.join(columns)} "
            "(--metadata-column NAME keeps one in each row's metadata)")


def count_requests(
    path: str | os.PathLike[str], options: SourceOptions | None = None
) -> int:
    """Number of data rows, without parsing them: non-blank lines of a JSONL file (read in
    binary blocks), ``num_rows`` from a Parquet footer. Rows that will be rejected count too,
    so this is the range of ``input_index``.

    :param path: the request file.
    :param options: how the file will be read; a Parquet file is checked for the columns they
        name (``prompt_column``, ``metadata_columns``), so pass the run's own.
    :raises InputError: the file is missing, unreadable, of an unknown type, or lacks the
        columns ``options`` name.
    """
    source = _open(path, options or SourceOptions())
    try:
        return source.count()
    except FormatError as exc:
        raise InputError(str(exc)) from None


def iter_requests(
    path: str | os.PathLike[str],
    options: SourceOptions,
    on_reject: Callable[[Reject], None] | None = None,
    skip: Callable[[int], bool] | None = None,
    batch_rows: int = BATCH_ROWS,
    seen: DuplicateDetector | None = None,
) -> Iterator[RequestRecord]:
    """Stream the valid requests of a file, in file order.

    The file is opened and checked when this is called (so a missing file fails here, not at
    the first ``next``); rows are read lazily, ``batch_rows`` rows at a time (a small batch
    spreads the work for a reader that shares its thread with latency-sensitive work).

    Each body is completed with the defaults of ``options`` (never replacing a value the row
    has, except ``model_override``) and its ``stream`` field is dropped: the run's mode decides
    streaming. A row without ``custom_id`` gets ``str(input_index)``. Every well-formed id is
    remembered, whether its row is valid or not and skipped or not, and a later row with the
    same id is rejected as a duplicate: a resumed run sees the same duplicates as the first.

    :param path: a ``.jsonl``/``.ndjson`` (optionally ``.gz``) or ``.parquet`` file.
    :param options: defaults and layout options.
    :param on_reject: called with each invalid row, in file order; rows are skipped either way.
    :param skip: ``skip(input_index)`` true means the row is not yielded, checked or rejected
        (it was finished by an earlier run); only its id is read, for duplicate detection.
    :param batch_rows: rows read (and checked) at a time.
    :param seen: the ids of the rows ``skip`` leaves out, already added (a resume takes them
        from its result rows): those rows are then not parsed at all, which makes skipping ~8
        times cheaper (0.8 µs a row instead of 6.6: a resume's first request waits for the
        rows before it, and with scattered rows to redo each read runs while requests are in
        flight). Every skipped row's id must be in it: a later row repeating one is rejected
        only then.
    :return: an iterator of :class:`~batchrunner.schema.RequestRecord`.
    :raises InputError: the file cannot be read (at call time, or mid-file for a corrupt
        file), or, with ``options.strict``, at the first invalid row (``exc.reject`` holds it).
    """
    source = _open(path, options)
    return _generate(source, options, on_reject, skip, None, batch_rows, seen)


def validate_file(
    path: str | os.PathLike[str], options: SourceOptions, *, max_rejects: int = 20
) -> ValidationReport:
    """Run every check of :func:`iter_requests` over a file and summarise.

    With ``options.strict`` the read stops at the first invalid row (``stopped_early``).

    :param path: the request file.
    :param options: as for :func:`iter_requests`.
    :param max_rejects: how many rejects to keep in the report (all are counted).
    :raises InputError: the file cannot be read.
    """
    report = ValidationReport(path=os.fspath(path))
    stats = _Stats()

    def on_reject(reject: Reject) -> None:
        report.rejected += 1
        if len(report.rejects) < max_rejects:
            report.rejects.append(reject)
        if options.strict:
            raise _Stop

    source = _open(path, options)
    report.unused_columns = list(getattr(source, "unused_columns", []))
    models: Counter[str] = Counter()
    try:
        for record in _generate(source, replace(options, strict=False), on_reject, None, stats):
            report.ok += 1
            models[record.params["model"]] += 1
    except _Stop:
        report.stopped_early = True
    report.models = dict(models.most_common())
    report.duplicates = stats.duplicates
    report.stream_removed = stats.stream_removed
    return report


# --------------------------------------------------------------------------- internals


class _Stop(Exception):
    pass


@dataclass
class _Stats:
    duplicates: int = 0
    stream_removed: int = 0


def _open(path: str | os.PathLike[str], options: SourceOptions) -> JsonlSource | ParquetSource:
    try:
        return open_source(path, options.prompt_column, options.metadata_columns)
    except FormatError as exc:
        raise InputError(str(exc)) from None


def _custom_id(given: Any) -> tuple[str | None, str | None]:
    """(id, None) when ``given`` is a usable id, else (id text or None, reason)."""
    if isinstance(given, int) and not isinstance(given, bool):
        given = str(given)  # integer ids (common in Parquet) are used as their decimal text
    if isinstance(given, float) and given.is_integer() and abs(given) >= 2**63:
        # JSON integers too large for 64 bits arrive as floats.
        return None, (f"custom_id must be a string or an integer of at most 64 bits, got "
                      f"{given!r}")
    if not isinstance(given, str):
        return None, f"custom_id must be a string, got {json_type(given)}"
    if CUSTOM_ID_PATTERN.fullmatch(given) is None:
        shown = given if len(given) <= 80 else given[:79] + "…"
        return given, (
            f"custom_id {shown!r} is invalid: use 1-64 characters of letters, digits, '_' or '-'"
        )
    return given, None


def _identify(
    batch: list[RawRow], detector: DuplicateDetector
) -> list[tuple[str | None, str | None, bool]]:
    """Per row: its id (or ``None``), a reason if it is already unusable, and whether that
    reason is a duplicate id."""
    out: list[tuple[str | None, str | None, bool]] = []
    keys: list[str] = []
    positions: list[int] = []
    for k, row in enumerate(batch):
        cid: str | None
        if row.error is not None:
            cid, error = None, row.error
        elif row.given_id is None:
            cid, error = str(row.index), None
        else:
            cid, error = _custom_id(row.given_id)
        if error is None and cid is not None:
            # Only well-formed ids take part: an id rejected for its form cannot clash.
            keys.append(cid)
            positions.append(k)
        out.append((cid, error, False))
    for k, repeated in zip(positions, detector.add(keys).tolist(), strict=True):
        if repeated:
            cid = out[k][0]
            if batch[k].given_id is None:
                reason = (
                    f"duplicate custom_id {cid!r}: this row has none, so its id is its row "
                    "index, and an earlier row has that custom_id; give every row a custom_id, "
                    "or none"
                )
            else:
                reason = (
                    f"duplicate custom_id {cid!r}: an earlier row has the same id (a row "
                    "without custom_id has its 0-based row index as id)"
                )
            out[k] = (cid, reason, True)
    return out


def _encode(params: dict[str, Any], metadata: Any) -> tuple[bytes, str | None]:
    """The body and metadata as JSON, encoded once here: what decodes may still not encode
    (nesting deeper than ~250 levels, Parquet decimals or binary, maps with non-text keys), and
    a row that fails only once sent would have been paid for and then lost.

    :raises RowError: naming which part cannot be encoded and why.
    """
    try:
        body = orjson.dumps(params)
    except orjson.JSONEncodeError as exc:
        raise RowError(f"params cannot be sent as JSON: {_why_not_json(exc)}") from None
    if metadata is None:
        return body, None
    try:
        return body, orjson.dumps(metadata).decode()
    except orjson.JSONEncodeError as exc:
        raise RowError(f"metadata cannot be stored as JSON: {_why_not_json(exc)}") from None


def _why_not_json(exc: orjson.JSONEncodeError) -> str:
    text = str(exc)
    if "recursion" in text.lower():
        return "nested too deeply (JSON here allows about 250 levels)"
    if "Dict key must be str" in text:
        return "a map key is not text"
    return text.replace("Type is not JSON serializable", "a value of a type JSON lacks")


def _generate(
    source: JsonlSource | ParquetSource,
    options: SourceOptions,
    on_reject: Callable[[Reject], None] | None,
    skip: Callable[[int], bool] | None,
    stats: _Stats | None,
    batch_rows: int = BATCH_ROWS,
    seen: DuplicateDetector | None = None,
) -> Iterator[RequestRecord]:
    detector = seen if seen is not None else DuplicateDetector()
    # With the skipped rows' ids known, the reader leaves those rows out unparsed.
    unread = skip if seen is not None else None

    def reject(row: RawRow, custom_id: str | None, reason: str) -> None:
        # A line may carry its own credentials (a headers object): rejects.jsonl and
        # validate --json keep the line, not them.
        raw = cut_credentials_from_line(source.raw_text(row))
        item = Reject(row.location, row.index, custom_id, reason, raw)
        if options.strict:
            raise InputError(f"{row.location}: {reason}", reject=item)
        if on_reject is not None:
            on_reject(item)

    try:
        for batch in source.batches(batch_rows, unread):
            for row, (cid, error, duplicate) in zip(batch, _identify(batch, detector), strict=True):
                if skip is not None and skip(row.index):
                    continue
                if error is not None or cid is None:
                    if duplicate and stats is not None:
                        stats.duplicates += 1
                    reject(row, cid, error or "no custom_id")
                    continue
                try:
                    params, metadata = source.body(row)
                    params, stream_removed = normalize_params(
                        params,
                        model=options.model,
                        max_tokens=options.max_tokens,
                        system=options.system,
                        model_override=options.model_override,
                    )
                    body, metadata_json = _encode(params, metadata)
                except RowError as exc:
                    reject(row, cid, str(exc))
                    continue
                if stream_removed and stats is not None:
                    stats.stream_removed += 1
                yield RequestRecord(
                    input_index=row.index,
                    custom_id=cid,
                    params=params,
                    metadata=metadata,
                    location=row.location,
                    body=body,
                    metadata_json=metadata_json,
                )
    except FormatError as exc:
        raise InputError(str(exc)) from None
