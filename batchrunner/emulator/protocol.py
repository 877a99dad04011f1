"""A minimal, fast HTTP/1.1 server connection: ``asyncio.Protocol`` + the ``httptools`` parser.

It parses requests (keep-alive, pipelining, partial reads, chunked request bodies,
``Expect: 100-continue``), hands each complete request to the application one at a time per
connection (HTTP/1.1 requires answers in request order), and exposes small write/close helpers.
It knows nothing about the Anthropic API; :mod:`batchrunner.emulator.gateway` does.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Protocol

import httptools

from batchrunner.emulator import wire

#: Largest request body accepted (larger ones get 413 and the connection is closed).
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Pipelined requests queued per connection before reading pauses.
MAX_PIPELINE = 64

_BAD_REQUEST = wire.json_response(
    400, wire.error_body("invalid_request_error", "malformed HTTP request"), close=True
)
_TOO_LARGE = wire.json_response(
    413, wire.error_body("request_too_large", "request body too large"), close=True
)
_INTERNAL = wire.json_response(
    500, wire.error_body("api_error", "emulator internal error"), close=True
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Application(Protocol):
    """What a connection needs from the application."""

    def handle(self, conn: HttpConnection, req: Request) -> None: ...

    def connection_opened(self, conn: HttpConnection) -> None: ...

    def connection_closed(self, conn: HttpConnection) -> None: ...


class Request:
    """One parsed request. ``headers`` maps lower-cased names to raw values (last one wins).

    ``on_lost`` may be set by the application: it is called if the client goes away while the
    request is being served. ``close_on_eof`` (set by the application) means a client EOF ends
    the request as if the client had gone, instead of waiting for its answer (e.g. a stall,
    which would send nothing anyway).
    """

    __slots__ = (
        "body",
        "close_on_eof",
        "headers",
        "http11",
        "keep_alive",
        "method",
        "on_lost",
        "path",
        "query",
        "received_at",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        http11: bool,
        received_at: float,
    ) -> None:
        self.method = method
        path, _, query = url.partition(b"?")
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = http11
        self.received_at = received_at
        self.on_lost: Any = None
        self.close_on_eof = False


class HttpConnection(asyncio.Protocol):
    """One client connection.

    :param app: receives each request through ``handle(conn, req)`` and must end every request
        with exactly one :meth:`finish` (after its last write) or :meth:`abort`.
    """

    __slots__ = (
        "_body",
        "_body_len",
        "_dispatching",
        "_eof",
        "_headers",
        "_paused",
        "_t0",
        "_url",
        "active",
        "app",
        "closed",
        "parser",
        "pending",
        "transport",
    )

    def __init__(self, app: Application) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Request] = deque()
        self.active: Request | None = None
        self.closed = False
        self._dispatching = False
        self._eof = False
        self._paused = False
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        self._t0 = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.app.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_BAD_REQUEST)
        except httptools.HttpParserError:
            self._fail(_BAD_REQUEST)

    def eof_received(self) -> bool:
        # The client shut its write side (shutdown(SHUT_WR), or a full close: TCP cannot tell
        # them apart). Requests already received in full are still answered, as the gateway's
        # fasthttp server does (it reads nothing while serving); returning True keeps the
        # transport open for writing, and finish() closes once the last one is answered. A
        # partial request can never complete: close.
        req = self.active
        if req is None or req.close_on_eof or self.closed:
            return False  # asyncio closes the transport; connection_lost ends ``req``
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pending.clear()
        req, self.active = self.active, None
        if req is not None and req.on_lost is not None:
            cb, req.on_lost = req.on_lost, None
            cb()
        self.app.connection_closed(self)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_len = 0
        self._t0 = time.time()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if (
            self._headers.get(b"expect", b"").lower() == b"100-continue"
            and self.transport is not None
        ):
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > MAX_BODY_BYTES:
            raise httptools.HttpParserError("body too large")  # turned into 413 below
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.closed:
            return
        p = self.parser
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self.pending.append(
            Request(
                p.get_method(),
                self._url,
                self._headers,
                body,
                p.should_keep_alive(),
                p.get_http_version() == "1.1",
                self._t0,
            )
        )
        if len(self.pending) > MAX_PIPELINE and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._dispatch()

    # -- serving ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        # A loop, not recursion: an instantly answered request calls finish() from inside
        # handle(), and a long pipeline must not grow the stack.
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self.active is None and self.pending and not self.closed:
                req = self.active = self.pending.popleft()
                if (
                    self._paused
                    and len(self.pending) <= MAX_PIPELINE // 2
                    and self.transport is not None
                ):
                    self._paused = False
                    self.transport.resume_reading()
                try:
                    self.app.handle(self, req)
                except Exception as exc:  # a bug: answer 500, close, and report it on the loop
                    if self.active is req and not self.closed:
                        self.write(_INTERNAL)
                        self.close()
                    asyncio.get_running_loop().call_exception_handler(
                        {
                            "message": "emulator: unhandled error while serving a request",
                            "exception": exc,
                        }
                    )
        finally:
            self._dispatching = False

    def write(self, data: bytes) -> None:
        """Send bytes (ignored once the connection is closed)."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def finish(self, req: Request, keep_alive: bool = True) -> None:
        """The response to ``req`` is complete; serve the next pipelined request or close.

        :param keep_alive: ``False`` closes the connection after the buffered bytes are sent.
        """
        if self.active is not req:
            return
        req.on_lost = None
        self.active = None
        if not (keep_alive and req.keep_alive):
            self.close()
            return
        if self.pending:
            self._dispatch()
        elif self._eof:
            self.close()  # the client sends nothing more: its last answer is out

    def close(self) -> None:
        """Close after flushing what was written."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.pending.clear()
            self.transport.close()

    def abort(self) -> None:
        """Close at once without flushing (a dropped connection)."""
        if self.transport is not None and not self.transport.is_closing():
            self.closed = True
            self.pending.clear()
            self.transport.abort()

    def _fail(self, response: bytes) -> None:
        if self._body_len > MAX_BODY_BYTES:
            response = _TOO_LARGE
        if self.active is None:
            self.write(response)
            self.close()
        else:
            # Answers must stay in order: let the current request finish, then close.
            self.pending.clear()
            req = self.active
            req.keep_alive = False
