"""Sending one SSE response: the exact Anthropic event sequence, token by token on timers.

Headers, ``message_start``, ``ping`` and ``content_block_start`` go out at once; then one
``text_delta`` per token at ``ttft`` and each ``token_delay`` after it (tokens already due when
a timer fires late are sent together, so lag never accumulates); then ``content_block_stop``,
``message_delta`` (stop reason and usage) and ``message_stop``. No ``[DONE]``. An injected
mid-stream fault replaces token *k* with one ``error`` event and ends the stream. With zero
delays the whole stream is a single write. Chunked encoding on HTTP/1.1, close-delimited on 1.0.
"""

from __future__ import annotations

import asyncio
import time

from batchrunner.emulator import groundtruth as G
from batchrunner.emulator import wire
from batchrunner.emulator.exchange import Exchange
from batchrunner.emulator.model import Plan

#: The error event of the mid-stream fault (what Anthropic sends when it overloads mid-answer).
MIDSTREAM_ERROR = wire.error_event("overloaded_error", "Overloaded")
# Timers may fire this much early (uvloop rounds to milliseconds); such a token is due.
_EARLY_S = 0.0005
_TAIL_CACHE: dict[tuple[str, int, int, int, int], bytes] = {}


def start(
    ex: Exchange,
    loop: asyncio.AbstractEventLoop,
    headers: bytes,
    ping: bool,
    error_after: int | None,
) -> None:
    """Begin streaming ``ex.plan``.

    :param ex: the request, with ``plan`` and ``msg_id`` set.
    :param loop: the loop whose timers pace the tokens.
    :param headers: extra response header lines (``x-bifrost-*``).
    :param ping: send a ``ping`` event after ``message_start``.
    :param error_after: tokens delivered before the injected ``error`` event, or ``None``.
    """
    plan = ex.plan
    assert plan is not None
    http11 = ex.req.http11
    ex.error_after = error_after
    ex.status = 200
    head = wire.stream_head(headers, http11)
    first = wire.message_start(ex.msg_id, ex.model or "", plan.usage)
    if ping:
        first += wire.PING
    first += wire.CONTENT_BLOCK_START
    if plan.duration_s <= 0.0:
        # Nothing to wait for: the whole stream in one write.
        if error_after is None:
            payload = b"".join((first, wire.joined_deltas(plan), _tail(plan)))
        else:
            frames = wire.delta_frames(plan.word_indexes())[:error_after]
            payload = b"".join((first, *frames, MIDSTREAM_ERROR))
        ex.first_byte_at = now = time.time()
        ex.first_token_at = now if (error_after is None or error_after > 0) else None
        ex.conn.write(head + (wire.chunk(payload) + wire.LAST_CHUNK if http11 else payload))
        _end(ex)
        return
    ex.first_byte_at = time.time()
    ex.conn.write(head + (wire.chunk(first) if http11 else first))
    ex.frames = wire.delta_frames(plan.word_indexes())
    ex.i = 0
    ex.next_t = loop.time() + plan.ttft_s
    ex.timer = loop.call_at(ex.next_t, _tick, ex, loop)


def _tail(plan: Plan) -> bytes:
    # content_block_stop + message_delta + message_stop: the same for equal usage, so cached.
    u = plan.usage
    key = (
        plan.stop_reason,
        u.input_tokens,
        u.output_tokens,
        u.cache_creation_input_tokens,
        u.cache_read_input_tokens,
    )
    tail = _TAIL_CACHE.get(key)
    if tail is None:
        tail = wire.CONTENT_BLOCK_STOP + wire.message_delta(plan.stop_reason, u) + wire.MESSAGE_STOP
        if len(_TAIL_CACHE) > 4096:
            _TAIL_CACHE.clear()
        _TAIL_CACHE[key] = tail
    return tail


def _tick(ex: Exchange, loop: asyncio.AbstractEventLoop) -> None:
    ex.timer = None
    if ex.over:
        return
    plan, frames = ex.plan, ex.frames
    assert plan is not None and frames is not None
    delays = plan.token_delays_s
    n = len(frames)
    k = ex.error_after
    now = loop.time() + _EARLY_S
    i = ex.i
    parts: list[bytes] = []
    end = False
    while True:
        if k is not None and i == k:
            parts.append(MIDSTREAM_ERROR)
            end = True
            break
        parts.append(frames[i])
        if i == 0:
            ex.first_token_at = time.time()
        i += 1
        if i >= n:
            parts.append(_tail(plan))
            end = True
            break
        ex.next_t += delays[i - 1]
        if ex.next_t > now:
            break
    ex.i = i
    data = b"".join(parts)
    if ex.req.http11:
        data = wire.chunk(data) + (wire.LAST_CHUNK if end else b"")
    ex.conn.write(data)
    if end:
        _end(ex)
    else:
        ex.timer = loop.call_at(ex.next_t, _tick, ex, loop)


def _end(ex: Exchange) -> None:
    ex.done_at = time.time()
    conn, req = ex.conn, ex.req
    ex.end(G.STREAM_ERROR if ex.error_after is not None else G.OK)
    conn.finish(req, keep_alive=req.http11)
