"""Bytes on the wire: HTTP/1.1 response heads, Anthropic JSON bodies, SSE frames.

Everything that is the same for every response is encoded once at import (status lines, the
``ping``/``content_block_*``/``message_stop`` frames, one ``text_delta`` frame per filler word),
so serving a request is mostly joining ready-made bytes. Shapes follow
``specs/bifrost-anthropic-protocol.md``: the Anthropic error envelope
``{"type":"error","error":{"type":…,"message":…}}`` everywhere, usage with
``cache_creation`` always present, and the async stub with empty strings and ``content: null``.
"""

from __future__ import annotations

import itertools
import secrets
from http import HTTPStatus
from typing import Any

import orjson

from batchrunner.emulator.model import WORDS, Plan, Usage

#: Anthropic ``error.type`` for an HTTP status (used for failed jobs and failing models).
ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_MESSAGE_BY_TYPE = {
    "rate_limit_error": "Number of requests has exceeded your rate limit (emulated).",
    "api_error": "Internal server error (emulated).",
    "overloaded_error": "Overloaded",
}


def error_type_for(status: int) -> str:
    """Anthropic error type for ``status`` (``api_error`` when there is no better one)."""
    return ERROR_TYPE_BY_STATUS.get(status, "api_error")


def message_for(etype: str) -> str:
    """A plausible message for an injected error of type ``etype``."""
    return _MESSAGE_BY_TYPE.get(etype, f"{etype} (emulated)")


def _reason(status: int) -> bytes:
    if status == 529:
        return b"Overloaded"
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


_STATUS_LINE = {s: b"HTTP/1.1 %d %s\r\n" % (s, _reason(s)) for s in range(100, 600)}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``."""
    return _STATUS_LINE.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status


_CONTROL = bytes(range(0x20)) + b"\x7f"


def header_value(s: str) -> bytes:
    """A string made safe for a header value (no control characters, latin-1)."""
    return s.encode("latin-1", "replace").translate(None, _CONTROL)


def json_response(
    status: int, body: bytes, extra_headers: bytes = b"", close: bool = False
) -> bytes:
    """A complete JSON response (head and body).

    :param extra_headers: ready ``name: value\\r\\n`` lines.
    :param close: add ``connection: close``.
    """
    return b"".join(
        (
            _STATUS_LINE.get(status) or status_line(status),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            extra_headers,
            b"connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )


def stream_head(extra_headers: bytes = b"", chunked: bool = True) -> bytes:
    """Head of an SSE response (chunked on HTTP/1.1, else close-delimited)."""
    return b"".join(
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n",
            b"connection: keep-alive\r\ntransfer-encoding: chunked\r\n"
            if chunked
            else b"connection: close\r\n",
            extra_headers,
            b"\r\n",
        )
    )


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def error_body(etype: str, message: str) -> bytes:
    """The Anthropic error envelope."""
    return orjson.dumps({"type": "error", "error": {"type": etype, "message": message}})


def async_stub(job_id: str) -> bytes:
    """The body of an async submit, and of a poll while the job is pending or processing."""
    return b'{"id":"%s","type":"","role":"","content":null,"model":""}' % job_id.encode()


_MSG_PREFIX = "msg_01" + secrets.token_hex(6)
_msg_counter = itertools.count(1)


def new_message_id() -> str:
    """A fresh ``msg_…`` id (unique in this process, random across processes)."""
    return f"{_MSG_PREFIX}{next(_msg_counter):010d}"


def usage_dict(u: Usage) -> dict[str, Any]:
    """Anthropic usage object, fields in the gateway's order; ``speed`` and ``inference_geo``
    only when the request set them (Anthropic reports where inference ran and at which speed)."""
    d: dict[str, Any] = {
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_creation_5m_input_tokens,
            "ephemeral_1h_input_tokens": u.cache_creation_1h_input_tokens,
        },
        "output_tokens": u.output_tokens,
        "service_tier": u.service_tier,
    }
    if u.speed is not None:
        d["speed"] = u.speed
    if u.inference_geo is not None:
        d["inference_geo"] = u.inference_geo
    return d


#: Fields of the full usage object that ``message_delta`` does not repeat (Anthropic's
#: ``MessageDeltaUsage`` has the cumulative counts only; the rest came in ``message_start``).
_NOT_IN_DELTA = ("cache_creation", "service_tier", "speed", "inference_geo")


def message_body(msg_id: str, model: str, text: str, stop_reason: str, usage: Usage) -> bytes:
    """A complete Anthropic Message."""
    return orjson.dumps(
        {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": text}],
            "model": model,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage_dict(u=usage),
        }
    )


# -- SSE ---------------------------------------------------------------------------------------


def sse(event: str, data: Any) -> bytes:
    """One ``event: <type>\\ndata: <json>\\n\\n`` frame."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


PING = sse("ping", {"type": "ping"})
CONTENT_BLOCK_START = sse(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
CONTENT_BLOCK_STOP = sse("content_block_stop", {"type": "content_block_stop", "index": 0})
MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})


def _delta(text: str) -> bytes:
    return sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


#: ``text_delta`` frame of each filler word: first token (no leading space) and later tokens.
DELTA_FIRST: tuple[bytes, ...] = tuple(_delta(w) for w in WORDS)
DELTA_NEXT: tuple[bytes, ...] = tuple(_delta(" " + w) for w in WORDS)


_JOINED: dict[tuple[int, int], bytes] = {}


def joined_deltas(plan: Plan) -> bytes:
    """All ``text_delta`` frames of a plan's output as one byte string (cached: outputs repeat)."""
    key = (plan.word_offset, plan.usage.output_tokens)
    b = _JOINED.get(key)
    if b is None:
        b = b"".join(delta_frames(plan.word_indexes()))
        if len(_JOINED) >= 20_000:
            _JOINED.clear()
        _JOINED[key] = b
    return b


def delta_frames(word_indexes: list[int]) -> list[bytes]:
    """The ``text_delta`` frames of a whole output, one per token."""
    if not word_indexes:
        return []
    nxt = DELTA_NEXT
    return [DELTA_FIRST[word_indexes[0]], *[nxt[i] for i in word_indexes[1:]]]


def message_start(msg_id: str, model: str, usage: Usage) -> bytes:
    """``message_start``: the message shell with input-side usage (output_tokens 1)."""
    u = usage_dict(usage)
    u["output_tokens"] = 1
    return sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": u,
            },
        },
    )


def message_delta(stop_reason: str, usage: Usage) -> bytes:
    """``message_delta``: stop reason and the cumulative usage."""
    u = usage_dict(usage)
    for key in _NOT_IN_DELTA:
        u.pop(key, None)
    return sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": u,
        },
    )


def error_event(etype: str, message: str) -> bytes:
    """The ``error`` frame that ends a stream after it started."""
    return sse("error", {"type": "error", "error": {"type": etype, "message": message}})
