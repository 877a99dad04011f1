"""Request and result records and the Arrow schema of a result row (a contract: see README
"Output columns").

A request set is read into :class:`RequestRecord` objects. Every request ends as exactly one
result row: a plain ``dict`` keyed by names in :data:`RESULT_SCHEMA` (a column a row does not
set is null; the store fills it in). In memory, instants
(columns ending in ``_at``) are float seconds since the epoch (``time.time()``); the sink turns
them into ``timestamp[us, UTC]``. Durations end in ``_s`` and are float seconds from
``time.perf_counter()`` differences. Missing values are ``None``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

#: Version of the column set, in each part's Parquet metadata. 2 added the usage columns
#: ``web_search_requests`` … ``inference_geo``; parts of version 1 lack them (read as nulls).
SCHEMA_VERSION = "2"


class Status(enum.StrEnum):
    """Final outcome of one request (column ``status``)."""

    OK = "ok"
    ERROR = "error"  # the gateway answered with an error, or the response was unusable
    TIMEOUT = "timeout"  # our own deadline passed (connect, read, or total)
    EXPIRED = "expired"  # async job result no longer readable (TTL passed, or job lost)
    CANCELLED = "cancelled"  # the run was stopped while the request was in flight


class Mode(enum.StrEnum):
    """How requests are sent (column ``mode``)."""

    SYNC = "sync"
    STREAM = "stream"
    ASYNC = "async"


# Our own error_type names, used when the gateway gives no Anthropic ``error.type``.
ERROR_TIMEOUT = "timeout"
ERROR_CONNECTION = "connection_error"
ERROR_INVALID_RESPONSE = "invalid_response"
#: Sync or stream mode got an async-job stub (an ``x-bf-async`` header was sent anyway).
ERROR_UNEXPECTED_JOB_STUB = "unexpected_job_stub"
ERROR_STREAM_INCOMPLETE = "stream_incomplete"
ERROR_JOB_EXPIRED = "job_expired"
ERROR_JOB_NOT_FOUND = "job_not_found"
ERROR_CANCELLED = "cancelled"
ERROR_HTTP = "http_error"  # non-2xx whose body carried no usable error.type


@dataclass(slots=True)
class RequestRecord:
    """One validated request of a set.

    :param input_index: 0-based position in the input (the resume key).
    :param custom_id: the user's id, or ``str(input_index)`` when the input has none.
    :param params: the Anthropic Messages body (``model``, ``max_tokens``, ``messages``, ...).
    :param metadata: free-form tags from the input, copied to the row as JSON text.
    :param location: where it came from, for messages (``file.jsonl:12`` or
        ``file.parquet#row 11``).
    :param body: ``params`` already encoded as JSON (without ``stream``), when the reader did it:
        it checks that the row can be sent before anything is, and saves encoding it again.
    :param metadata_json: ``metadata`` encoded the same way.
    """

    input_index: int
    custom_id: str
    params: dict[str, Any]
    metadata: dict[str, Any] | None = None
    location: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    metadata_json: str | None = None


_TS = pa.timestamp("us", tz="UTC")

#: Columns of a result row, in order. Nullable unless noted in the README.
RESULT_SCHEMA = pa.schema(
    [
        # identity
        pa.field("run_id", pa.string()),
        pa.field("custom_id", pa.string()),
        pa.field("input_index", pa.int64()),
        pa.field("metadata", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("model_requested", pa.string()),
        pa.field("model", pa.string()),
        # outcome
        pa.field("status", pa.string()),
        pa.field("http_status", pa.int32()),
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("attempts", pa.int32()),
        pa.field("stop_reason", pa.string()),
        # timing
        pa.field("scheduled_at", _TS),
        pa.field("sent_at", _TS),
        pa.field("completed_at", _TS),
        pa.field("queue_wait_s", pa.float64()),
        pa.field("ttfb_s", pa.float64()),
        pa.field("ttft_s", pa.float64()),
        pa.field("latency_s", pa.float64()),
        pa.field("total_s", pa.float64()),
        pa.field("itl_mean_s", pa.float64()),
        pa.field("itl_p50_s", pa.float64()),
        pa.field("itl_p99_s", pa.float64()),
        pa.field("itl_max_s", pa.float64()),
        pa.field("tpot_s", pa.float64()),
        pa.field("content_deltas", pa.int32()),
        # async jobs
        pa.field("job_id", pa.string()),
        pa.field("submitted_at", _TS),
        pa.field("job_done_at", _TS),
        pa.field("polls", pa.int32()),
        pa.field("ttl_s", pa.float64()),
        pa.field("expires_at", _TS),
        # usage
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("cache_creation_input_tokens", pa.int64()),
        pa.field("cache_read_input_tokens", pa.int64()),
        pa.field("cache_creation_5m_input_tokens", pa.int64()),
        pa.field("cache_creation_1h_input_tokens", pa.int64()),
        # usage beyond tokens (usage.server_tool_use.*, service_tier, speed, inference_geo);
        # null when the response did not say (and in parts written before these columns)
        pa.field("web_search_requests", pa.int64()),
        pa.field("web_fetch_requests", pa.int64()),
        pa.field("service_tier", pa.string()),
        pa.field("speed", pa.string()),
        pa.field("inference_geo", pa.string()),
        # JSON list: the usage of failed attempts that were not the row's last (billed too).
        pa.field("retried_usage", pa.string()),
        # gateway headers (x-bifrost-*), all optional
        pa.field("response_id", pa.string()),
        pa.field("bifrost_provider", pa.string()),
        pa.field("bifrost_resolved_model", pa.string()),
        pa.field("bifrost_fallback_index", pa.int32()),
        pa.field("bifrost_upstream_latency_ms", pa.float64()),
        pa.field("bifrost_cost_usd", pa.float64()),
        # payload
        pa.field("response_text", pa.string()),
        pa.field("response_json", pa.string()),
    ],
    metadata={"batchrunner.schema_version": SCHEMA_VERSION},
)

RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)
INSTANT_COLUMNS: frozenset[str] = frozenset(n for n in RESULT_COLUMNS if n.endswith("_at"))


def empty_row() -> dict[str, Any]:
    """A result row with every column present and ``None``."""
    return dict.fromkeys(RESULT_COLUMNS)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """*table* with exactly the columns of *schema*, in its order and types; a column the table
    lacks (a part written before the column existed) is all nulls.

    :param table: rows read from a part or a journal segment.
    :param schema: the columns wanted (a subset of :data:`RESULT_SCHEMA`, or all of it).
    """
    if table.schema.names == schema.names:
        return table.cast(schema)
    n = table.num_rows
    names = set(table.column_names)
    arrays = [table.column(f.name).cast(f.type) if f.name in names else pa.nulls(n, f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
