"""A tiny fixed-response HTTP/1.1 server for client benchmarks.

It answers every request with the same canned Anthropic Messages reply, either a 600-byte JSON
``message`` (``--mode json``) or a ``text/event-stream`` with ``--events`` ``content_block_delta``
events framed like the real API (``--mode sse``). It is a bare ``asyncio.Protocol`` on uvloop
with no framework, so that the server costs far less CPU per request than any Python client and
never becomes the bottleneck of a client benchmark. Keep-alive and pipelining are supported;
request bodies are read by ``Content-Length`` (chunked request bodies are not supported).

Usage::

    python benchmarks/_fixed_server.py --port 0 --mode json|sse [--events 50]
                                       [--sse-write burst|event|paced] [--gap-ms 5]

The first line on stdout is the bound port. Run it pinned to its own core
(``taskset -c 1 python benchmarks/_fixed_server.py ...``) and stop it with SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys


def _json_body(size: int = 600) -> bytes:
    """The non-streaming reply, its text padded so the body is exactly ``size`` bytes."""
    msg = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": ""}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 40,
        },
    }
    base = len(json.dumps(msg, separators=(",", ":")).encode())
    msg["content"][0]["text"] = "x" * max(0, size - base)
    return json.dumps(msg, separators=(",", ":")).encode()


def _sse_events(n_deltas: int) -> list[bytes]:
    def ev(name: str, data: dict[str, object]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    start = {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1},
        },
    }
    events = [
        ev("message_start", start),
        ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    for i in range(n_deltas):
        events.append(
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": f"token {i:05d} lorem ipsum"},
                },
            )
        )
    events.append(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n_deltas},
            },
        )
    )
    events.append(ev("message_stop", {"type": "message_stop"}))
    return events


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Replies:
    def __init__(self, mode: str, n_events: int, sse_write: str, gap_s: float = 0.0) -> None:
        self.mode = mode
        self.gap_s = gap_s
        body = _json_body()
        self.json = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"request-id: req_fixed\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"request-id: req_fixed\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        events = _sse_events(n_events)
        if sse_write == "burst":
            # Everything in one write: the client sees as few reads as the kernel allows.
            self.sse_parts = [head + b"".join(_chunk(e) for e in events) + b"0\r\n\r\n"]
        elif gap_s:
            # Paced: the headers at once, then each event one gap after the previous one.
            self.sse_parts = [head, *(_chunk(e) for e in events), b"0\r\n\r\n"]
        else:
            # One write per event, yielding to the loop in between.
            parts = [_chunk(e) for e in events]
            parts[0] = head + parts[0]
            parts.append(b"0\r\n\r\n")
            self.sse_parts = parts


class _FixedProtocol(asyncio.Protocol):
    def __init__(self, replies: _Replies) -> None:
        self.replies = replies
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.need = -1  # bytes still expected for the current request, -1 = reading headers
        self.busy = False  # an event-by-event SSE reply is being written
        self.pending = 0  # complete requests queued behind it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        done = 0
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower()
                i = head.find(b"\r\ncontent-length:")
                length = 0
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    length = int(head[i + 17 : j if j >= 0 else len(head)])
                buf = buf[end + 4 :]
                self.need = length
            if len(buf) < self.need:
                break
            buf = buf[self.need :]
            self.need = -1
            done += 1
        self.buf = buf
        if done:
            self._reply(done)

    def _reply(self, n: int) -> None:
        transport = self.transport
        assert transport is not None
        if self.replies.mode == "json":
            transport.write(self.replies.json * n)
        elif len(self.replies.sse_parts) == 1:
            transport.write(self.replies.sse_parts[0] * n)
        else:
            self.pending += n
            if not self.busy:
                self.busy = True
                asyncio.get_running_loop().create_task(self._write_events())

    async def _write_events(self) -> None:
        transport = self.transport
        assert transport is not None
        parts, gap = self.replies.sse_parts, self.replies.gap_s
        last = len(parts) - 1
        while self.pending and not transport.is_closing():
            self.pending -= 1
            for i, part in enumerate(parts):
                transport.write(part)
                if i < last:
                    # "event": yield to the loop between writes; "paced": wait like a model
                    # producing tokens, so the first event comes one gap after the headers.
                    await asyncio.sleep(gap)
        self.busy = False


async def serve(
    port: int,
    mode: str,
    events: int,
    sse_write: str,
    host: str = "127.0.0.1",
    gap_s: float = 0.0,
) -> None:
    replies = _Replies(mode, events, sse_write, gap_s if sse_write == "paced" else 0.0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _FixedProtocol(replies), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"{bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mode", choices=["json", "sse"], default="json")
    parser.add_argument("--events", type=int, default=50, help="content_block_delta events (sse)")
    parser.add_argument(
        "--sse-write",
        choices=["burst", "event", "paced"],
        default="burst",
        help="sse: one write per response; one write per event with a loop yield between; "
        "or one event every --gap-ms",
    )
    parser.add_argument("--gap-ms", type=float, default=5.0, help="event spacing for paced")
    args = parser.parse_args(argv)
    coro = serve(args.port, args.mode, args.events, args.sse_write, args.host, args.gap_ms / 1e3)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
