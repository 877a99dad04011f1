"""A raw HTTP/1.1 test server on 127.0.0.1 that misbehaves on purpose, for the client tests.

A few lines of plain ``asyncio`` (not the project's emulator), so that each route can drop the
connection before answering or mid-body, stall, pace chunks, compress, or send bytes no valid
server would. It records what it received and how many connections it accepted, which is how
the tests check headers on the wire and connection reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest


@dataclass
class Server:
    """What the test server saw; ``url(path)`` addresses it."""

    port: int
    accepted: int = 0
    open_connections: int = 0
    requests: list[dict[str, object]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, list[tuple[bytes, bytes]], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].decode().split(" ", 2)
    headers = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines[1:]]
    lower = {k.lower(): v for k, v in headers}
    if b"content-length" in lower:
        body = await reader.readexactly(int(lower[b"content-length"]))
    elif lower.get(b"transfer-encoding", b"").lower() == b"chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(data[:-2])
        body = b"".join(parts)
    else:
        body = b""
    return method, target, headers, body  # type: ignore[return-value]


def _response(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        *(f"{k}: {v}" for k, v in headers),
        f"content-length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _until_closed(reader: asyncio.StreamReader, timeout_s: float = 3.0) -> None:
    """Stall: send nothing until the client closes the connection (or ``timeout_s`` passes)."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(timeout_s):
            await reader.read()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve_one(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Serve keep-alive requests on one connection until the client leaves or a route drops it."""
    served = 0  # requests answered on this connection
    while True:
        try:
            method, target, headers, body = await _read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        path, _, query = target.partition("?")
        server.requests.append(
            {"method": method, "target": target, "headers": headers, "body": body}
        )
        served += 1
        if path == "/second-drops" and served > 1:
            writer.close()  # the request was read, no answer: the keep-alive race, for sure
            return
        if path == "/second-drops":
            path = "/slow"
        if path == "/echo":
            payload = {
                "method": method,
                "target": target,
                "headers": [[k.decode(), v.decode()] for k, v in headers],
                "body": body.decode(),
            }
            extra = [("content-type", "application/json"), ("x-multi", "a"), ("X-Multi", "b")]
            writer.write(_response("200 OK", extra, json.dumps(payload).encode()))
        elif path == "/chunks":
            # Five chunks, 50 ms apart, each its own write.
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            for i in range(5):
                writer.write(_chunk(b"data: %d\n\n" % i))
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
        elif path == "/drop":
            writer.close()  # read the request, answer nothing
            return
        elif path == "/drop-mid":
            if query == "chunked":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + _chunk(b"partial")
                )
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
            return
        elif path == "/stall-head":
            await _until_closed(reader)
            return
        elif path == "/stall-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nfirst")
            await writer.drain()
            await _until_closed(reader)
            return
        elif path == "/gzip":
            writer.write(
                _response("200 OK", [("content-encoding", "gzip")], gzip.compress(b"hello " * 50))
            )
        elif path == "/close-delimited":
            # No Content-Length, no chunking: the body ends when the connection does.
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
            await writer.drain()
            writer.close()
            return
        elif path == "/te-identity":
            # A transfer coding other than chunked: the body still ends at the close.
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nwhole body")
            await writer.drain()
            writer.close()
            return
        elif path == "/close-delimited-reset":
            # Part of a close-delimited body, then a reset (not an orderly close): a cut.
            writer.write(b"HTTP/1.1 200 OK\r\n\r\npart of the bo")
            await writer.drain()
            await asyncio.sleep(0.05)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        elif path == "/close":
            writer.write(_response("200 OK", [("connection", "close")], b"bye"))
            await writer.drain()
            writer.close()
            return
        elif path == "/close-unsaid":
            # Closes after answering without saying so (no "connection: close"): the end of the
            # connection comes with the answer, before the client could reuse it.
            writer.write(_response("200 OK", [], b"said nothing"))
            await writer.drain()
            writer.close()
            return
        elif path == "/raw":
            writer.write(body)  # the request's body is the whole answer, as malformed as it is
        elif path == "/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(_response("200 OK", [], b"after continue"))
        elif path == "/no-content":
            writer.write(b"HTTP/1.1 204 No Content\r\nx-kind: empty\r\n\r\n")
        elif path == "/garbage":
            writer.write(b"HELLO THERE\r\n\r\n")
            await writer.drain()
            await _until_closed(reader)
            return
        elif path == "/extra-bytes":
            # A valid answer followed by bytes nobody asked for.
            writer.write(_response("200 OK", [], b"ok") + b"HTTP/1.1 200 OK\r\n")
        elif path == "/script":
            # The request body says what to answer: {"status", "headers", and either "body" or
            # "chunks" (chunked, one write each), optionally "truncate" (close before the end)}.
            script = json.loads(body)
            head = [
                f"HTTP/1.1 {script['status']} X",
                *(f"{k}: {v}" for k, v in script.get("headers", [])),
            ]
            if script.get("gzip"):  # the whole answer compressed, as a proxy might
                data = gzip.compress(("".join(script.get("chunks", [])) or
                                      script.get("body", "")).encode())
                writer.write(_response(f"{script['status']} X",
                                       [*script.get("headers", []), ("content-encoding", "gzip")],
                                       data))
            elif "chunks" in script:
                writer.write(
                    ("\r\n".join([*head, "transfer-encoding: chunked"]) + "\r\n\r\n").encode()
                )
                for piece in script["chunks"]:
                    writer.write(_chunk(piece.encode()))
                    await writer.drain()
                if script.get("truncate"):
                    writer.close()
                    return
                writer.write(b"0\r\n\r\n")
            else:
                data = script.get("body", "").encode()
                if script.get("truncate"):
                    writer.write(
                        (
                            "\r\n".join([*head, f"content-length: {len(data) + 10}"]) + "\r\n\r\n"
                        ).encode()
                        + data
                    )
                    await writer.drain()
                    writer.close()
                    return
                writer.write(_response(f"{script['status']} X", script.get("headers", []), data))
        elif path == "/slow":
            await asyncio.sleep(0.05)
            writer.write(_response("200 OK", [], b"ok"))
        else:
            writer.write(_response("404 Not Found", [], b"no"))
        await writer.drain()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(port=0)
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.accepted += 1
        state.open_connections += 1
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await serve_one(state, reader, writer)
        except asyncio.CancelledError:
            pass  # teardown cancels stalled handlers; Python 3.11's stream callback would log it
        finally:
            state.open_connections -= 1
            handlers.discard(task)
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = srv.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        srv.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await srv.wait_closed()
