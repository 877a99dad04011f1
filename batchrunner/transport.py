"""An httpx transport that sends over aiohttp: httpx stays the API, aiohttp does the work.

``httpx.AsyncClient``'s own connection pool (httpcore) costs about 1.5 ms of CPU per request at
64 concurrent requests and serves waiters unfairly (p99 ~0.8 s against a local server), so a
load tester built on it would measure itself. :class:`AiohttpTransport` keeps httpx's types at
the edges (it takes an :class:`httpx.Request` and returns an :class:`httpx.Response` whose body
streams chunk by chunk as the bytes arrive) while aiohttp's C-accelerated client does the I/O.
It is deliberately lean: no redirects, cookies or proxies, no content decoding (httpx decodes
``Content-Encoding`` itself, once), no headers beyond httpx's own, cheap fast paths for
``aread()`` and chunk iteration, and a read timeout enforced by one watchdog task instead of a
timer re-armed on every socket read. Every aiohttp or socket error surfaces as the matching httpx
exception, both when sending and while iterating the body. :func:`build_request` makes the same
requests as ``httpx.Request(..., content=...)`` in less than half the time. Figures:
``docs/transport.md``.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import aiohttp
import httpx
from aiohttp import client_exceptions as aioexc
from multidict import CIMultiDict, istr

__all__ = [
    "DEFAULT_TIMEOUTS",
    "AiohttpTransport",
    "TransportTimeouts",
    "build_request",
]


@dataclass(frozen=True, slots=True)
class TransportTimeouts:
    """Timeouts of :class:`AiohttpTransport`, in seconds; ``None`` disables one.

    :param connect_s: TCP (and TLS) connection set-up.
    :param read_s: longest wait for response data: for the headers (counted from the send) and
        then for each next piece of the body while the reader waits for one. LLM calls can
        think for minutes before the first byte, so the default is long.
    :param total_s: the whole exchange, from sending to the last body byte; off by default
        because a long stream is legitimate.
    :param pool_s: waiting for a free connection when ``limit`` is reached, plus connecting.
    """

    connect_s: float | None = 10.0
    read_s: float | None = 600.0
    total_s: float | None = None
    pool_s: float | None = None


DEFAULT_TIMEOUTS = TransportTimeouts()

# aiohttp would add Accept, Accept-Encoding, User-Agent and a default Content-Type; the request
# must go out with exactly the headers httpx built, so all of them are skipped.
_SKIP_AUTO_HEADERS: CIMultiDict[None] = CIMultiDict(
    (istr(name), None) for name in ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
)


_HTTP10 = aiohttp.HttpVersion10

# An abandoned response body is drained for reuse of its connection only this far.
_DRAIN_MAX_BYTES = 256 * 1024
_DRAIN_MAX_S = 2.0


# aiohttp warns (ResourceWarning) about bytes bodies over 1 MiB "locking the event loop"; a
# long-context prompt is that big, and handing it to the socket is a memory copy, not a stall.
_LARGE_BODY = 2**20


def _large_payload(body: bytes) -> aiohttp.payload.BytesPayload:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return aiohttp.payload.BytesPayload(body)


class _LeanRequest(aiohttp.ClientRequest):
    """A ``ClientRequest`` that adds no automatic headers.

    Setting the skip set here, instead of passing ``skip_auto_headers``, avoids the two
    ``CIMultiDict`` copies aiohttp makes per request for that option; ``send()`` and the body
    payload still consult the set, so no default ``Content-Type`` is added either.
    """

    def update_auto_headers(self, skip_auto_headers: Any) -> None:
        self._skip_auto_headers = _SKIP_AUTO_HEADERS


def _map_exception(exc: BaseException, request: httpx.Request, phase: str) -> httpx.HTTPError:
    """Translate an aiohttp or socket error into the httpx exception a caller expects.

    ``phase`` is ``"request"`` (until the response headers are in) or ``"body"``.
    """
    message = str(exc) or type(exc).__name__
    cls: type[httpx.HTTPError]
    if isinstance(exc, TimeoutError):  # aiohttp's timeout errors subclass it
        if isinstance(exc, aioexc.ConnectionTimeoutError):
            cls = httpx.ConnectTimeout  # includes waiting for a slot when ``limit`` is reached
        else:
            cls = httpx.ReadTimeout  # sock_read between reads, or the bare total-timeout error
            if type(exc) is TimeoutError and not str(exc):
                message = "total timeout exceeded"
    elif isinstance(exc, aioexc.ClientConnectorError):
        cls = httpx.ConnectError
    elif isinstance(exc, aioexc.ServerDisconnectedError):
        cls = httpx.RemoteProtocolError
        if phase == "request":
            message = f"Server disconnected without sending a response ({message})."
    elif isinstance(exc, (aioexc.ClientPayloadError, aioexc.ClientResponseError)):
        # A body cut short (Content-Length or chunk framing incomplete), or a malformed status
        # line or header block: httpx (h11) reports both as protocol errors.
        cls = httpx.RemoteProtocolError
    elif isinstance(exc, aioexc.NonHttpUrlClientError):
        cls = httpx.UnsupportedProtocol
    elif isinstance(exc, aioexc.InvalidURL):
        cls = httpx.LocalProtocolError
    elif isinstance(exc, (aioexc.ClientConnectionError, OSError)):
        # aiohttp says "Can not write request body" when sending fails; anything else broke
        # while waiting for or reading the response.
        cls = httpx.WriteError if "write" in message.lower() else httpx.ReadError
    else:
        cls = httpx.TransportError
    return cls(message, request=request)


class _Watch:
    """The read timeout of one exchange, enforced by its transport's watchdog.

    aiohttp's own ``sock_read`` timeout cancels and re-arms a timer on every socket read
    (~2.7 µs each here): per request for JSON, per event for a paced SSE stream. Instead, a
    reader marks when it starts waiting (``begin``) and stops (``end``), and one watchdog task
    per transport, waking a few times per timeout period, expires the waits that ran too long:
    before the headers by cancelling the sending task, in the body by closing the response.
    """

    __slots__ = ("expired", "limit", "owner", "response", "since", "task")

    def __init__(self, owner: AiohttpTransport, limit: float) -> None:
        self.owner = owner
        self.limit = limit
        self.since = 0.0
        self.expired = False
        self.task: asyncio.Task[Any] | None = None
        self.response: aiohttp.ClientResponse | None = None

    def begin(self) -> None:
        owner = self.owner
        self.since = owner._now()
        owner._waiting.add(self)
        if owner._watchdog is None:
            owner._start_watchdog()

    def end(self) -> None:
        self.owner._waiting.discard(self)

    def expire(self) -> None:
        self.expired = True
        self.owner._waiting.discard(self)
        if self.response is not None:
            self.response.close()  # wakes the reader with a connection error, reported as timeout
        elif self.task is not None:
            self.task.cancel()  # still sending or waiting for headers

    def error(self, request: httpx.Request) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(f"no response data for {self.limit:g} s", request=request)


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one aiohttp response, yielded chunk by chunk as it arrives."""

    __slots__ = ("owner", "plain", "request", "response", "watch")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        request: httpx.Request,
        owner: AiohttpTransport,
        watch: _Watch | None,
    ) -> None:
        self.response = response
        self.request = request
        self.owner = owner
        self.watch = watch
        #: no Content-Encoding: the bytes on the wire are the content.
        self.plain = "Content-Encoding" not in response.headers

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives; errors come out as httpx exceptions."""
        content = self.response.content
        watch = self.watch
        try:
            # readany() returns whatever is buffered at once, and waits only when nothing is:
            # a small body that came with the headers is one call, an SSE event is seen the
            # moment its bytes are read from the socket.
            if watch is None:
                chunk = await content.readany()
                while chunk:
                    yield chunk
                    chunk = await content.readany()
            else:
                while True:
                    watch.begin()
                    try:
                        chunk = await content.readany()
                    finally:
                        watch.end()
                    if not chunk:
                        break
                    yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise self.fail(exc) from exc

    async def read_all(self) -> bytes:
        """Read the whole remaining body in one call (the non-streaming fast path)."""
        content = self.response.content
        try:
            if content.is_eof():
                # The parser already saw the end of the body (a small reply usually arrives with
                # its headers): take the buffer without a wait.
                return content.read_nowait()
            watch = self.watch
            if watch is None:
                return await content.read()
            parts: list[bytes] = []
            while True:
                watch.begin()
                try:
                    part = await content.readany()
                finally:
                    watch.end()
                if not part:
                    return b"".join(parts)
                parts.append(part)
        except (aiohttp.ClientError, OSError) as exc:
            raise self.fail(exc) from exc

    def fail(self, exc: BaseException) -> httpx.HTTPError:
        """Drop the connection after a body error and return the httpx error to raise."""
        self.response.close()
        if self.watch is not None and self.watch.expired:
            return self.watch.error(self.request)
        return _map_exception(exc, self.request, "body")

    async def aclose(self) -> None:
        content = self.response.content
        if content.is_eof() or content.exception() is not None:
            self.close_now()
        else:
            # Left before its end, typically an SSE reader returning at ``message_stop`` while
            # the terminating chunk is still in flight. Closing would cost a new connection for
            # the next request; waiting here would add that wait to the caller's timings. So the
            # rest is drained in the background (bounded) and the connection then reused.
            self.owner._drain_later(self.response)

    def close_now(self) -> None:
        # release() hands a fully read connection back to the pool; one with unread bytes (a
        # stream abandoned midway) is closed instead, so a half-read body is never reused.
        response = self.response
        if response.content.is_eof():
            response.release()
        else:
            response.close()


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what is left of an abandoned body, within bounds, then free its connection."""
    content = response.content
    left = _DRAIN_MAX_BYTES
    try:
        async with asyncio.timeout(_DRAIN_MAX_S):
            while left > 0:
                chunk = await content.readany()
                if not chunk:
                    break
                left -= len(chunk)
    except (aiohttp.ClientError, OSError):
        pass  # TimeoutError included: the connection is closed below instead of reused
    finally:
        if content.is_eof() and content.exception() is None:
            response.release()
        else:
            response.close()


class _Response(httpx.Response):
    """An ``httpx.Response`` whose reads skip httpx's generic streaming pipeline when they can.

    ``httpx.Response.aread`` runs three nested async generators, a decoder lookup and two
    context managers per body (~13 µs, as much as aiohttp's whole read), and ``aiter_bytes``
    pays its share of that on every chunk. When the body is ours and has no
    ``Content-Encoding`` there is nothing to decode, so ``aread`` reads it in one call and
    ``aiter_raw``/``aiter_bytes`` (hence ``aiter_text``/``aiter_lines``) read it with one
    generator; state ends up exactly as httpx leaves it (``content``, ``is_stream_consumed``,
    ``is_closed``, ``num_bytes_downloaded``). Anything else — an encoded body, a ``chunk_size``,
    a stream already started, or a stream wrapped by ``httpx.AsyncClient`` — takes httpx's path.
    """

    def _ours(self) -> _ResponseStream | None:
        stream = self.stream
        if type(stream) is _ResponseStream and not self.is_stream_consumed and not self.is_closed:
            return stream
        return None

    async def aread(self) -> bytes:
        stream = self._ours()
        if stream is None or not stream.plain or hasattr(self, "_content"):
            return await super().aread()
        self.is_stream_consumed = True
        body = await stream.read_all()
        self._content = body
        self._num_bytes_downloaded = len(body)
        self.is_closed = True
        stream.close_now()
        return body

    def aiter_raw(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        stream = self._ours()
        if stream is None or chunk_size is not None:
            return super().aiter_raw(chunk_size)
        return self._iter_chunks(stream)

    def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        stream = self._ours()
        if (
            stream is None
            or chunk_size is not None
            or not stream.plain
            or hasattr(self, "_content")
        ):
            return super().aiter_bytes(chunk_size)
        return self._iter_chunks(stream)

    async def _iter_chunks(self, stream: _ResponseStream) -> AsyncIterator[bytes]:
        # The loop of _ResponseStream.chunks(), inlined: a second async generator level would
        # cost about a microsecond per chunk, i.e. per event of a paced SSE stream.
        if self.is_stream_consumed:
            raise httpx.StreamConsumed()
        if self.is_closed:
            raise httpx.StreamClosed()
        self.is_stream_consumed = True
        self._num_bytes_downloaded = 0
        content = stream.response.content
        watch = stream.watch
        try:
            if watch is None:
                chunk = await content.readany()
                while chunk:
                    self._num_bytes_downloaded += len(chunk)
                    yield chunk
                    chunk = await content.readany()
            else:
                while True:
                    watch.begin()
                    try:
                        chunk = await content.readany()
                    finally:
                        watch.end()
                    if not chunk:
                        break
                    self._num_bytes_downloaded += len(chunk)
                    yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise stream.fail(exc) from exc
        self.is_closed = True
        stream.close_now()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` that sends requests with aiohttp.

    Use it directly (``await transport.handle_async_request(request)``, the fastest path; build
    the requests with :func:`build_request`) or under a client
    (``httpx.AsyncClient(transport=AiohttpTransport())``, convenient but ~3x the CPU per
    request). The aiohttp session is created on first use inside the running event loop and
    belongs to that loop: use one transport per loop, and ``aclose()`` it there.

    :param limit: maximum number of open connections; ``0`` means unlimited, so that the caller's
        scheduler alone decides concurrency.
    :param timeouts: default timeouts. A request's own ``timeout`` extension (set by
        ``httpx.AsyncClient``) overrides connect, read and pool for that request.
    :param keepalive_s: how long an idle connection is kept for reuse; ``0`` closes every
        connection after its response.
    :param read_bufsize: aiohttp's per-connection read buffer size in bytes.
    :param ssl: TLS verification: ``True`` (default, system CAs), ``False`` (no verification,
        e.g. a gateway with a self-signed certificate), or an :class:`ssl.SSLContext`.
    """

    def __init__(
        self,
        *,
        limit: int = 0,
        timeouts: TransportTimeouts = DEFAULT_TIMEOUTS,
        keepalive_s: float = 30.0,
        read_bufsize: int = 2**16,
        ssl: SSLContext | bool = True,
    ) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self.timeouts = timeouts
        self.keepalive_s = keepalive_s
        self.read_bufsize = read_bufsize
        self.ssl = ssl
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._send: Any = None
        self._closed = False
        self._client_timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}
        self._waiting: set[_Watch] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._watch_period = 1.0
        self._now: Any = None
        self._draining: dict[asyncio.Task[None], aiohttp.ClientResponse] = {}
        self._urls: dict[Any, str] = {}

    @property
    def connector(self) -> aiohttp.BaseConnector | None:
        """The aiohttp connector, once the session exists (for inspection and tests)."""
        return None if self._session is None else self._session.connector

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("AiohttpTransport is closed")
        loop = asyncio.get_running_loop()
        if self._session is not None:
            # aiohttp binds a session and its sockets to one loop; a finished loop's session
            # can no longer be used or even closed. Say so instead of failing obscurely.
            raise RuntimeError(
                "this AiohttpTransport belongs to another event loop (each batchrunner.run() "
                "or asyncio.run() has its own); create one transport per loop"
            )
        self._loop = loop
        self._now = loop.time
        if self.keepalive_s > 0:
            connector = aiohttp.TCPConnector(
                limit=self.limit, ssl=self.ssl, keepalive_timeout=self.keepalive_s
            )
        else:
            connector = aiohttp.TCPConnector(limit=self.limit, ssl=self.ssl, force_close=True)
        t = self.timeouts
        self._session = aiohttp.ClientSession(
            connector=connector,
            # No sock_read: the read timeout is ours (see _Watch), at a fraction of the cost.
            timeout=aiohttp.ClientTimeout(
                total=t.total_s, connect=t.pool_s, sock_connect=t.connect_s
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            # httpx decodes Content-Encoding itself; decoding here as well would break it.
            auto_decompress=False,
            request_class=_LeanRequest,
            read_bufsize=self.read_bufsize,
            trust_env=False,
        )
        # ``_request`` is what ``session.request()`` wraps in a context manager; calling it
        # directly saves that object on every request.
        self._send = getattr(self._session, "_request", self._session.request)
        return self._session

    def _client_timeout(self, ext: dict[str, float | None]) -> aiohttp.ClientTimeout:
        key = (ext.get("connect"), ext.get("pool"))
        timeout = self._client_timeouts.get(key)
        if timeout is None:
            connect, pool = key
            timeout = aiohttp.ClientTimeout(
                total=self.timeouts.total_s,
                # httpx's pool timeout covers only the wait for a slot; aiohttp's ``connect``
                # covers the wait plus connecting, so it gets both budgets.
                connect=None if pool is None else pool + (connect or 0.0),
                sock_connect=connect,
            )
            if len(self._client_timeouts) < 64:
                self._client_timeouts[key] = timeout
        return timeout

    def _url(self, url: httpx.URL) -> str:
        # Composing httpx.URL's string costs a few µs; requests to one endpoint share a URL, so
        # cache by its (hashable, immutable) parse result.
        key = getattr(url, "_uri_reference", url)
        text = self._urls.get(key)
        if text is None:
            text = str(url)
            if len(self._urls) < 256:
                self._urls[key] = text
        return text

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its response once the headers are in.

        The body is not read: iterate the response or ``await response.aread()``, then close it.

        :param request: the request to send; its method, URL, headers (all values, in order)
            and body go out unchanged.
        :return: a streaming :class:`httpx.Response`.
        :raises httpx.TransportError: a subclass matching the failure (``ConnectError``,
            ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``, ...).
        """
        if self._session is None or self._loop is not asyncio.get_running_loop():
            self._open()
        send = self._send

        # Names go out in lower case (as HTTP/2 sends them; HTTP/1.1 names are case-insensitive):
        # aiohttp keeps every value of a repeated header only when all its spellings are equal.
        try:
            headers = [
                (name.decode().lower(), value.decode()) for name, value in request.headers.raw
            ]
        except UnicodeDecodeError:
            # aiohttp writes header text as UTF-8; bytes that are not UTF-8 cannot round-trip,
            # so they go out as their Latin-1 reading.
            headers = [
                (n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in request.headers.raw
            ]
        chunked = False
        for name, _ in headers:
            if name == "transfer-encoding":
                chunked = True
        if chunked:
            # A streamed body: aiohttp adds the header and the chunk framing itself.
            headers = [h for h in headers if h[0] != "transfer-encoding"]

        data: Any
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            stream = request.stream
            # An in-memory body (``httpx.Request(..., stream=httpx.ByteStream(b))``) is sent as
            # bytes; anything else is streamed.
            data = (request.read() or None) if isinstance(stream, httpx.ByteStream) else stream
        if type(data) is bytes and len(data) > _LARGE_BODY:
            data = _large_payload(data)

        ext = request.extensions.get("timeout")
        read_s = ext.get("read") if ext else self.timeouts.read_s
        watch: _Watch | None = None
        if read_s is not None:
            watch = _Watch(self, read_s)
            if read_s < self._watch_period * 4:
                self._watch_period = max(read_s / 4, 0.01)
            watch.task = asyncio.current_task()
            watch.begin()
        try:
            if ext:
                response = await send(
                    request.method,
                    self._url(request.url),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    timeout=self._client_timeout(ext),
                )
            else:
                response = await send(
                    request.method,
                    self._url(request.url),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                )
        except asyncio.CancelledError:
            # Our watchdog cancelled the wait for the headers: report a timeout, unless someone
            # else cancelled this task too (then their cancellation wins).
            if (
                watch is not None
                and watch.expired
                and watch.task is not None
                and watch.task.uncancel() == 0
            ):
                raise watch.error(request) from None
            raise
        except (aiohttp.ClientError, OSError) as exc:
            raise _map_exception(exc, request, "request") from exc
        finally:
            if watch is not None:
                watch.end()
        if watch is not None:
            watch.task = None
            watch.response = response

        return _Response(
            response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response, request, self, watch),
            request=request,
            extensions={
                "http_version": b"HTTP/1.0" if response.version == _HTTP10 else b"HTTP/1.1"
            },
        )

    def _start_watchdog(self) -> None:
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_reads())

    async def _watch_reads(self) -> None:
        try:
            # Runs only while someone waits; the next wait starts it again.
            while self._waiting:
                await asyncio.sleep(self._watch_period)
                now = self._now()
                for watch in [w for w in self._waiting if now - w.since > w.limit]:
                    watch.expire()
        finally:
            self._watchdog = None

    def _drain_later(self, response: aiohttp.ClientResponse) -> None:
        if self._session is None:
            response.close()
            return
        task = asyncio.get_running_loop().create_task(_drain(response))
        self._draining[task] = response
        task.add_done_callback(self._drained)

    def _drained(self, task: asyncio.Task[None]) -> None:
        self._draining.pop(task, None)

    async def aclose(self) -> None:
        """Close every connection and the aiohttp session; the transport cannot be reused."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        self._waiting.clear()
        draining, self._draining = self._draining, {}
        for task in draining:
            task.cancel()
        if draining:
            await asyncio.gather(*draining, return_exceptions=True)
            for response in draining.values():
                response.close()  # a task cancelled before its first step never ran its finally
        session, self._session, self._send = self._session, None, None
        if session is not None:
            await session.close()


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_DERIVED = frozenset({b"host", b"content-length", b"transfer-encoding"})


def build_request(
    method: str,
    url: httpx.URL,
    headers: Sequence[tuple[bytes, bytes]] = (),
    content: bytes = b"",
    *,
    extensions: dict[str, Any] | None = None,
) -> httpx.Request:
    """Build the request ``httpx.Request(method, url, headers=headers, content=content)`` builds.

    Same method, URL, headers (in httpx's order) and body, in ~5.6 µs instead of ~13 µs (~31 µs
    when the URL is a string), with public httpx API only: the body is handed over as an
    ``httpx.ByteStream``, which skips httpx's content encoding and its second normalisation of
    every header.

    :param method: upper-case HTTP method.
    :param url: a pre-parsed :class:`httpx.URL`; parse it once per endpoint, not per request.
    :param headers: raw ``(name, value)`` byte pairs, e.g. ``httpx.Headers(...).raw`` computed
        once. ``Host`` and ``Content-Length`` are derived here unless present.
    :param content: the request body.
    :param extensions: httpx request extensions (e.g. ``{"timeout": {...}}``).
    :return: a request whose ``content`` is already available.
    """
    # httpx's order: Host first, then the caller's headers, then Content-Length of a body (or
    # Content-Length: 0 right after Host for a body method without one).
    present = {name.lower() for name, _ in headers if name.lower() in _DERIVED}
    head: list[tuple[bytes, bytes]] = []
    tail: list[tuple[bytes, bytes]] = []
    if b"host" not in present:
        head.append((b"Host", url.netloc))
    if b"content-length" not in present and b"transfer-encoding" not in present:
        if content:
            tail.append((b"Content-Length", b"%d" % len(content)))
        elif method in _BODY_METHODS:
            head.append((b"Content-Length", b"0"))
    request = httpx.Request(
        method,
        url,
        headers=[*head, *headers, *tail],
        stream=httpx.ByteStream(content),
        extensions=extensions,
    )
    request.read()  # in memory: makes ``request.content`` available, as httpx's own path does
    return request
