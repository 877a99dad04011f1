"""The HTTP side of a request: one attempt at ``POST /anthropic/v1/messages``, sync or SSE.

By default requests go over :mod:`batchrunner.wire`, a lean HTTP/1.1 client made for this one
endpoint: httpx's ``AsyncClient`` costs more CPU than the request itself on these machines, and
even aiohttp's session as much as the rest of batchrunner (``docs/transport.md``). A user may
instead pass an ``httpx.AsyncClient`` or any ``httpx.AsyncBaseTransport`` (for proxies, custom
auth, or ``httpx.MockTransport`` in tests); those are spoken to through httpx types. An attempt
never raises for a gateway or network failure: it returns an :class:`Attempt` describing what
happened.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from batchrunner.redaction import Redactor, secret_header_values, url_secret_values
from batchrunner.schema import (
    ERROR_CONNECTION,
    ERROR_INVALID_RESPONSE,
    ERROR_STREAM_INCOMPLETE,
    ERROR_TIMEOUT,
)
from batchrunner.sse import SSEDecoder
from batchrunner.wire import (
    BODY,
    CONNECT,
    TIMEOUT,
    ResponseHeaders,
    WireError,
    WirePool,
    encode_headers,
    format_wire_error,
    local_limit_text,
    local_os_error,
    tls_refusal,
)

ANTHROPIC_VERSION = "2023-06-01"
MESSAGES_PATH = "/anthropic/v1/messages"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Longest silence between two bytes of one response. LLM responses can take minutes.
DEFAULT_READ_TIMEOUT_S = 600.0
#: Longest time for one attempt, from send to last byte.
DEFAULT_ATTEMPT_TIMEOUT_S = 900.0
#: Cap on the error text kept in a row, so a gateway's HTML error page cannot bloat the data.
MAX_ERROR_MESSAGE_CHARS = 2000


def messages_url(gateway: str) -> str:
    """The Messages endpoint of a gateway base URL (adds ``/anthropic/v1/messages`` if absent).

    :raises ValueError: the URL is not valid, not http(s) or has no host. The message never
        quotes the URL: it may hold a password or a key.
    """
    expected = "expected http(s)://host[:port][/path]"
    try:
        url = httpx.URL(gateway.strip())
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        # httpx's reason may quote a part of the URL ("Invalid port: 'ab'"): only its kind.
        reason = str(exc).split(":")[0].strip() or type(exc).__name__
        raise ValueError(f"the gateway URL is not valid ({reason}); {expected}") from None
    if url.scheme not in ("http", "https"):
        # "localhost:8080" parses as scheme "localhost": no scheme was written at all.
        got = f"{url.scheme}://" if url.scheme and "://" in gateway else "no scheme"
        raise ValueError(
            f"the gateway URL must start with http:// or https://, got {got}; {expected}"
        )
    if not url.host:
        raise ValueError(f"the gateway URL has no host; {expected}")
    path = url.path.rstrip("/")
    if not path.endswith("/v1/messages"):
        path = path + MESSAGES_PATH
    return str(url.copy_with(path=path))


def redact_url(url: str) -> str:
    """The URL without credentials or query string, safe to print and store."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(userinfo=b"", query=None))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Client timeouts in seconds (``None`` = no limit)."""

    connect_s: float | None = DEFAULT_CONNECT_TIMEOUT_S
    read_s: float | None = DEFAULT_READ_TIMEOUT_S
    attempt_s: float | None = DEFAULT_ATTEMPT_TIMEOUT_S


@dataclass(slots=True)
class Attempt:
    """What one HTTP attempt produced. Clock values are ``time.perf_counter()`` seconds."""

    sent: float
    sent_at: float
    done: float = 0.0
    first_byte: float | None = None
    first_token: float | None = None
    http_status: int | None = None
    headers: httpx.Headers | ResponseHeaders | None = None
    message: dict[str, Any] | None = None  # sync: the parsed body; stream: the assembled message
    #: A stream that failed after ``message_start``: the message as far as it came (model,
    #: usage as reported so far, partial text). The row keeps it: the input was processed.
    partial: dict[str, Any] | None = None
    parsed: Any = None  # the decoded JSON body of a non-stream response, whatever it is
    raw_body: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    transport_failure: bool = False
    #: No connection could be made (refused, unreachable, connect timeout): the gateway never
    #: saw this attempt. Not when this machine ran out of descriptors or memory to connect
    #: (``EMFILE``, ...): that is no sign of the gateway, and is retried as any failure.
    connect_failed: bool = False
    timed_out: bool = False
    token_times: list[float] = field(default_factory=list)  # stream: arrival of each content delta

    @property
    def ok(self) -> bool:
        return self.error_type is None and self.http_status is not None and self.http_status < 300


class GatewayClient:
    """Sends Messages requests to one gateway endpoint.

    :param url: full endpoint URL (see :func:`messages_url`).
    :param headers: headers sent with every request (auth, ``anthropic-version``, extras).
    :param transport: an httpx transport used directly (e.g.
        :class:`batchrunner.transport.AiohttpTransport`); default: our own
        :class:`~batchrunner.wire.WirePool`.
    :param client: an ``httpx.AsyncClient`` to send through instead (its pipeline is used).
    :param timeouts: connect/read/attempt timeouts.
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.url = httpx.URL(url)
        self.timeouts = timeouts or Timeouts()
        self._client = client
        self._transport = transport
        base: dict[str, str] = {}
        if client is not None:
            # Requests are built here and handed to client.send(), which (unlike
            # client.post()) leaves out the client's default headers: merged here, below ours,
            # as httpx merges them. Not its accept-encoding: a compressed stream would be read
            # undecoded, and decoding would blur the timings.
            base.update(
                (k.lower(), v)
                for k, v in client.headers.items()
                if k.lower() not in ("accept-encoding", "content-length", "host")
            )
        # identity: a request without accept-encoding accepts any coding (RFC 9110 12.5.3), and
        # bodies are read raw: a compressing gateway or proxy gave invalid_response rows with
        # binary text, and streams read as cut short and retried (each retry paid).
        base.update({"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION,
                     "accept-encoding": "identity"})
        base.update({k.lower(): v for k, v in headers.items()})
        #: Cuts the credentials this client sends (its headers, a caller's client's too, and
        #: those of the URL) out of the error text of each failed attempt: a gateway may quote
        #: them, and that text goes into rows, run.json and stderr.
        self.redact = Redactor(secret_header_values(base) + url_secret_values(url))
        t = self.timeouts
        # The pools are unbounded: the scheduler alone decides how many requests are in flight.
        self._wire: WirePool | None = None
        self._factory: RequestFactory | None = None
        if transport is None and client is None:
            self._wire = WirePool(
                self.url,
                list(base.items()),
                connect_s=t.connect_s,
                read_s=t.read_s,
                exchange_s=t.attempt_s,
            )
        else:
            # httpx transports read their timeouts from the request; AsyncClient sets them too.
            extensions = {
                "timeout": {
                    "connect": t.connect_s,
                    "read": t.read_s,
                    "write": t.read_s,
                    "pool": None,
                }
            }
            self._factory = RequestFactory(self.url, list(base.items()), extensions)

    async def open_ahead(self, n: int, within_s: float) -> int:
        """Open up to ``n`` connections ahead of the first requests (see
        :meth:`batchrunner.wire.WirePool.open_ahead`); with a caller's httpx client or transport,
        nothing (their pools are theirs). Returns how many were opened."""
        if self._wire is None:
            return 0
        return await self._wire.open_ahead(n, within_s)

    @property
    def can_probe(self) -> bool:
        """Whether :meth:`probe` works: with our own connections, not a caller's transport."""
        return self._wire is not None

    @property
    def connected_once(self) -> bool:
        """Whether a connection to the gateway was ever made (with our own connections)."""
        return self._wire is not None and self._wire.connected_once

    async def probe(self) -> str | None:
        """Try one new connection to the gateway: ``None`` if it could be made, else why not."""
        assert self._wire is not None, "probe needs our own connections (see can_probe)"
        error = await self._wire.probe()
        return None if error is None else self.redact(error)

    async def aclose(self) -> None:
        if self._wire is not None:
            await self._wire.aclose()

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _build(self, body: bytes, extra_headers: list[tuple[str, str]] | None) -> httpx.Request:
        assert self._factory is not None
        return self._factory.build(body, extra_headers)

    async def _open(self, request: httpx.Request) -> httpx.Response:
        if self._client is not None:
            return await self._client.send(request, stream=True)
        assert self._transport is not None
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def send(
        self,
        body: bytes,
        *,
        stream: bool,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> Attempt:
        """One attempt. Never raises for gateway or network failures.

        :param body: the JSON request body (with ``"stream": true`` already set for streams).
        :param stream: parse the response as Anthropic SSE.
        :param extra_headers: per-request headers (e.g. ``x-request-id``).
        """
        if self._wire is not None:
            attempt = await self._send_wire(self._wire, body, stream, extra_headers)
        else:
            attempt = await self._send_httpx(body, stream, extra_headers)
        if attempt.error_type is not None:
            attempt.error_type = self.redact(attempt.error_type)
            if attempt.error_message is not None:
                attempt.error_message = self.redact(attempt.error_message)
        return attempt

    async def _send_httpx(
        self, body: bytes, stream: bool, extra_headers: list[tuple[str, str]] | None
    ) -> Attempt:
        request = self._build(body, extra_headers)
        attempt = Attempt(sent=time.perf_counter(), sent_at=time.time())
        try:
            async with asyncio.timeout(self.timeouts.attempt_s):
                response = await self._open(request)
                attempt.first_byte = time.perf_counter()
                attempt.http_status = response.status_code
                attempt.headers = response.headers
                try:
                    if stream and _streams(response.status_code):
                        await _read_stream(response, attempt)
                    else:
                        raw = await response.aread()
                        try:
                            interpret_body(attempt, response.status_code, raw)
                        except Exception as exc:  # as on the wire path
                            attempt.message = None
                            _fail(attempt, ERROR_INVALID_RESPONSE,
                                  f"response could not be processed: {exc!r}")
                finally:
                    await response.aclose()
        except TimeoutError:
            attempt.timed_out = True
            _fail(
                attempt, ERROR_TIMEOUT, f"no complete response within {self.timeouts.attempt_s} s"
            )
        except httpx.TimeoutException as exc:
            attempt.timed_out = True
            attempt.connect_failed = isinstance(exc, httpx.ConnectTimeout)
            _fail(attempt, ERROR_TIMEOUT, f"{type(exc).__name__}: {exc}".rstrip(": "))
        except (httpx.TransportError, OSError) as exc:
            local = local_os_error(exc)  # out of descriptors or memory: not the gateway's doing
            attempt.connect_failed = (
                isinstance(exc, httpx.ConnectError) and local is None and tls_refusal(exc) is None
            )
            attempt.transport_failure = True
            text = local_limit_text(local) if local is not None else str(exc)
            _fail(attempt, ERROR_CONNECTION, f"{type(exc).__name__}: {text}".rstrip(": "))
        attempt.done = time.perf_counter()
        return attempt

    async def _send_wire(
        self,
        wire: WirePool,
        body: bytes,
        stream: bool,
        extra_headers: list[tuple[str, str]] | None,
    ) -> Attempt:
        attempt = Attempt(sent=time.perf_counter(), sent_at=time.time())
        sink = StreamSink(attempt) if stream else None
        try:
            extra = encode_headers(extra_headers) if extra_headers else b""
        except ValueError as exc:
            # Only values that came from a response can get here (a job id used in the next
            # poll's header); the run's own headers were checked when the client was made.
            _fail(attempt, ERROR_INVALID_RESPONSE, f"cannot send this request: {exc}")
            attempt.done = time.perf_counter()
            return attempt
        try:
            exchange = await wire.post(body, extra, sink)
        except WireError as exc:
            if sink is not None:
                sink.keep_partial()
            partial = exc.exchange
            if partial is not None:
                attempt.http_status = partial.status
                attempt.first_byte = partial.first_byte
                if partial.status is not None:
                    attempt.headers = ResponseHeaders(partial.headers)
            attempt.connect_failed = (
                exc.kind == CONNECT and not exc.local and not exc.tls
            ) or exc.timeout_phase == "connect"
            if exc.kind == TIMEOUT:
                attempt.timed_out = True
                _fail(attempt, ERROR_TIMEOUT, format_wire_error(exc))
            elif exc.kind == BODY:
                _fail(attempt, ERROR_INVALID_RESPONSE, str(exc))
            else:
                attempt.transport_failure = True
                _fail(attempt, ERROR_CONNECTION, format_wire_error(exc))
            attempt.done = time.perf_counter()
            return attempt
        attempt.first_byte = exchange.first_byte
        status = exchange.status
        attempt.http_status = status
        attempt.headers = ResponseHeaders(exchange.headers)
        attempt.done = exchange.done
        try:
            if sink is not None and _streams(status):
                sink.finish()
            elif exchange.encoding is None:  # the usual answer: nothing to decode
                interpret_body(attempt, status or 0, exchange.content)
            else:
                content, problem = decompressed(exchange.content,
                                                exchange.encoding.decode("latin-1"))
                if problem is None:
                    interpret_body(attempt, status or 0, content)
                elif _streams(status or 0):
                    _fail(attempt, ERROR_INVALID_RESPONSE, problem)
                else:  # an error answer is judged by its status (a 429 stays one)
                    _fail(attempt, f"http_{status}", f"HTTP {status}; {problem}")
        except Exception as exc:  # a response shape no check foresaw: its row, not the run's end
            attempt.message = None
            _fail(attempt, ERROR_INVALID_RESPONSE, f"response could not be processed: {exc!r}")
        return attempt


class RequestFactory:
    """Builds the ``httpx.Request`` of each attempt.

    ``httpx.Request(...)`` re-normalises every header on each call (~16 µs here, a tenth of a
    whole request's budget at 8k req/s). All requests of a run share method, URL and most
    headers, so the fast path copies a prepared header list and fills in the body. It relies on
    httpx internals, so it is checked once against the public constructor at start-up and
    replaced by it if the two disagree (a future httpx).
    """

    def __init__(
        self, url: httpx.URL, headers: list[tuple[str, str]], extensions: dict[str, Any]
    ) -> None:
        self.url = url
        self.headers = headers
        self.extensions = extensions
        self._template = httpx.Headers([*headers, ("host", _host_header(url))])
        self.fast = True
        probe_headers = [("x-request-id", "probe")]
        try:
            fast = self._fast(b"{}", probe_headers)
            slow = self._slow(b"{}", probe_headers)
            self.fast = _same_request(fast, slow)
        except Exception:  # any internal mismatch means: use the public API
            self.fast = False

    def build(self, body: bytes, extra_headers: list[tuple[str, str]] | None) -> httpx.Request:
        if self.fast:
            return self._fast(body, extra_headers)
        return self._slow(body, extra_headers)

    def _slow(self, body: bytes, extra_headers: list[tuple[str, str]] | None) -> httpx.Request:
        headers = self.headers if not extra_headers else self.headers + extra_headers
        return httpx.Request(
            "POST", self.url, headers=headers, content=body, extensions=self.extensions
        )

    def _fast(self, body: bytes, extra_headers: list[tuple[str, str]] | None) -> httpx.Request:
        request = httpx.Request.__new__(httpx.Request)
        request.method = "POST"
        request.url = self.url
        headers = self._template.copy()
        items = headers._list
        if extra_headers:
            for name, value in extra_headers:
                raw_name = name.encode("ascii")
                items.append((raw_name, raw_name.lower(), value.encode("utf-8")))
        items.append((b"content-length", b"content-length", str(len(body)).encode()))
        request.headers = headers
        request.extensions = self.extensions
        request.stream = httpx.ByteStream(body)
        request._content = body
        return request


def _host_header(url: httpx.URL) -> str:
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    if url.port is None or url.port == default_port:
        return url.host
    return f"{url.host}:{url.port}"


def _same_request(a: httpx.Request, b: httpx.Request) -> bool:
    return (
        a.method == b.method
        and a.url == b.url
        and sorted(a.headers.multi_items()) == sorted(b.headers.multi_items())
        and a.content == b.content
        and a.read() == b.read()
        and a.extensions == b.extensions
    )


def bifrost_headers(headers: httpx.Headers | ResponseHeaders) -> dict[str, str]:
    """The ``x-bifrost-*`` response headers, lower-cased (one scan instead of many look-ups)."""
    found: dict[str, str] = {}
    for name, value in headers.raw:
        if name[:10].lower() == b"x-bifrost-":
            found[name.decode("latin-1").lower()] = value.decode("latin-1")
    return found


def _streams(status: int) -> bool:
    """Whether an answer with this status carries the stream (any 2xx with a body: a gateway
    may answer 201; the SDK reads it)."""
    return 200 <= status < 300 and status != 204


#: Largest body a compressed answer may expand to (a small page can expand to gigabytes).
MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024


def decompressed(raw: bytes, encoding: str | None) -> tuple[bytes, str | None]:
    """A whole body as sent before its ``content-encoding`` (gzip or deflate, as httpx
    decodes them), or why it cannot be read. Bodies are asked for uncompressed, but a proxy in
    between may compress them anyway; the other clients decode those, so this one does too."""
    coding = encoding.strip().lower() if encoding else ""
    if not raw or coding in ("", "identity"):
        return raw, None
    if coding in ("gzip", "x-gzip", "deflate"):
        # gzip or zlib headers detected (32 + 15); a raw deflate stream as some servers send.
        for wbits in (47, -15):
            inflater = zlib.decompressobj(wbits)
            try:
                body = inflater.decompress(raw, MAX_DECOMPRESSED_BYTES)
            except zlib.error:
                continue
            if inflater.unconsumed_tail:
                return raw, (f"the answer came compressed ({coding}) and expands beyond "
                             f"{MAX_DECOMPRESSED_BYTES // 2**20} MB")
            return body, None
        return raw, f"the answer came compressed ({coding}) but does not decompress"
    return raw, (f"the answer came compressed (content-encoding: {encoding}), which is not "
                 "decoded here, though it was asked for uncompressed (accept-encoding: "
                 "identity): a proxy in between that compresses?")


def _fail(attempt: Attempt, error_type: str, message: str) -> None:
    attempt.error_type = error_type
    attempt.error_message = message[:MAX_ERROR_MESSAGE_CHARS]


def interpret_body(attempt: Attempt, status: int, raw: bytes) -> None:
    """Fill ``attempt`` from a whole (non-streamed) response body."""
    attempt.raw_body = raw
    try:
        # A byte order mark some servers put first is no JSON (orjson refuses it).
        parsed = orjson.loads(raw[3:] if raw[:3] == b"\xef\xbb\xbf" else raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    attempt.parsed = parsed
    if 200 <= status < 300:
        if isinstance(parsed, dict) and parsed.get("type") == "message":
            attempt.message = parsed
        elif is_job_stub(parsed):
            pass  # an async-job stub: a success the jobs layer interprets
        else:
            _fail(attempt, ERROR_INVALID_RESPONSE, _excerpt(raw, "expected an Anthropic Message"))
        return
    error_type, message = _error_from_envelope(parsed)
    _fail(attempt, error_type or f"http_{status}", message or _excerpt(raw, f"HTTP {status}"))


def is_job_stub(parsed: Any) -> bool:
    """The gateway's async-job stub ``{"id": …, "type": "", "role": "", "content": null, …}``."""
    job_id = parsed.get("id") if isinstance(parsed, dict) else None
    return (
        isinstance(job_id, str)
        and bool(job_id)
        and not parsed.get("type")
        # it goes back in a header of every poll
        and job_id.isprintable()
    )


def is_error_body(parsed: Any) -> bool:
    """Whether a decoded body is an Anthropic error body (``{"type": "error", "error": {...}}``;
    the ``type`` may be missing, as :func:`_error_from_envelope` reads it)."""
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)


def _error_from_envelope(parsed: Any) -> tuple[str | None, str | None]:
    """``(error.type, error.message)`` of an Anthropic error envelope; empty type → None."""
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict):
            etype = err.get("type") or None
            msg = err.get("message")
            return (str(etype) if etype else None, str(msg) if msg is not None else None)
    return None, None


def _excerpt(raw: bytes, prefix: str) -> str:
    text = raw[:500].decode("utf-8", "replace").strip()
    return f"{prefix}: {text}" if text else prefix


async def _read_stream(response: httpx.Response, attempt: Attempt) -> None:
    sink = StreamSink(attempt)
    try:
        async for chunk in response.aiter_raw():
            try:
                if sink(chunk, time.perf_counter()):
                    return
            except Exception as exc:  # the same outcome as on the wire path
                why = f"response body could not be processed: {exc!r}"
                _fail(attempt, ERROR_INVALID_RESPONSE, why)
                sink.keep_partial()
                return
    except BaseException:  # a dropped connection, a timeout: what came is still known
        sink.keep_partial()
        raise
    sink.finish()


class StreamSink:
    """Turns the body of a 200 SSE response into ``attempt``'s message, token times or error.

    Called with each body piece and its arrival time; returns True at ``message_stop`` or an
    ``error`` event, when the attempt has its answer.
    """

    __slots__ = ("assembler", "attempt", "decoder", "head")

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.decoder = SSEDecoder()
        self.assembler = StreamAssembler()
        #: The body's first bytes (to tell what came, if it was no stream at all).
        self.head: bytes | None = None

    def __call__(self, chunk: bytes, now: float) -> bool:
        attempt = self.attempt
        assembler = self.assembler
        head = self.head
        if head is None:
            self.head = chunk[:_HEAD_BYTES]
        elif len(head) < _HEAD_BYTES and not assembler.started:  # a first read of a few bytes
            self.head = head + chunk[: _HEAD_BYTES - len(head)]
        for event_type, data in self.decoder.feed(chunk):
            kind = assembler.add(event_type, data)
            if kind == StreamAssembler.CONTENT:
                if attempt.first_token is None:
                    attempt.first_token = now
                attempt.token_times.append(now)
            elif kind == StreamAssembler.ERROR:
                _fail(
                    attempt, assembler.error_type or "stream_error", assembler.error_message or ""
                )
                self.keep_partial()
                return True
            elif kind == StreamAssembler.STOP:
                # An ok row would pass off a partial answer, or one without model and usage.
                problem = (
                    f"the stream sent {assembler.lost}" if assembler.lost is not None
                    else assembler.invalid if assembler.invalid is not None
                    else None if assembler.has_start
                    else "the stream sent no message_start (no model, id or input usage)"
                )
                if problem is not None:
                    _fail(attempt, ERROR_INVALID_RESPONSE, problem)
                    self.keep_partial()
                    return True
                message = assembler.message()
                if assembler.bad_tool_input is not None:
                    # An ok row would hand the caller a string where the tool's arguments go
                    # (the SDK raises here); the text stays in the row's response.
                    _fail(attempt, ERROR_INVALID_RESPONSE, assembler.bad_tool_input)
                    attempt.partial = message
                    return True
                attempt.message = message
                return True
        return False

    def finish(self) -> None:
        """The body ended: without ``message_stop`` the attempt failed."""
        attempt = self.attempt
        if attempt.message is not None or attempt.error_type is not None:
            return
        pending = self.decoder.pending
        if self.assembler.started is False:
            if pending.lstrip().startswith(b"{"):
                # Not a stream at all but one JSON body (a job stub, a Message): read as one,
                # so that it is judged as what it is instead of as a truncated stream, retried.
                interpret_body(attempt, 200, pending)
                return
            problem = _not_a_stream(attempt.headers, self.head)
            if problem is not None:
                # A whole body, but no stream (a proxy's page, a compressed stream): read the
                # same again, each time paid for, so not retried as a cut stream would be.
                _fail(attempt, ERROR_INVALID_RESPONSE, problem)
                return
        if self.assembler.invalid:
            _fail(attempt, ERROR_INVALID_RESPONSE, self.assembler.invalid)
        else:
            attempt.transport_failure = True
            _fail(attempt, ERROR_STREAM_INCOMPLETE, "stream ended before message_stop")
        self.keep_partial()

    def keep_partial(self) -> None:
        """The stream failed: keep the message as far as it came, if it began (its usage says
        what the request was charged for so far)."""
        attempt = self.attempt
        if attempt.message is None and attempt.partial is None and self.assembler.began:
            try:
                attempt.partial = self.assembler.message()
            except Exception:  # a piece it cannot place: the row keeps its error, not a crash
                attempt.partial = None


_HEAD_BYTES = 200
#: How a stream (or its first line) may begin: a field, or a comment.
_SSE_STARTS = (b"event:", b"data:", b":", b"id:", b"retry:")


def _not_a_stream(headers: Any, head: bytes | None) -> str | None:
    """Why a whole 2xx body with no event in it is no event stream, or None when it may be
    one cut short (nothing came, or it begins as a stream does)."""
    encoding = headers.get("content-encoding") if headers is not None else None
    if encoding and encoding.strip().lower() != "identity":
        return (
            f"the stream came compressed (content-encoding: {encoding}) though it was asked for "
            "uncompressed (accept-encoding: identity): a proxy in between that compresses?"
        )
    kind = headers.get("content-type") if headers is not None else None
    if kind and kind.strip().lower().startswith("text/event-stream"):
        return None  # a stream by its own account, cut before its first event
    text = (head or b"").removeprefix(b"\xef\xbb\xbf").lstrip()
    if not text or text.startswith(_SSE_STARTS) or any(s.startswith(text) for s in _SSE_STARTS):
        return None
    return _excerpt(text, f"expected an event stream, got {kind or 'a body without content-type'}")


def _join_surrogates(text: str) -> str:
    """Surrogate halves that arrived in separate deltas, as the characters they make up; a
    half without its partner becomes U+FFFD (no JSON encoder takes it)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


#: A run of digits no 64-bit integer has: orjson would read it as a float (rounded).
_BIG_INTEGER = re.compile(rb"\d{20,}")


def _tool_input(text: str) -> Any:
    """A tool call's input from its joined ``partial_json``; integers beyond 64 bits (an id,
    an amount) kept exact, as the SDK keeps them, not rounded to floats."""
    data = text.encode()
    if _BIG_INTEGER.search(data):
        return json.loads(text)
    return orjson.loads(data)


#: Delta type -> the block field its parts are joined into, and the delta's value key.
_DELTA_FIELDS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "_partial_json",
}
_DELTA_VALUE = {
    "text": "text",
    "thinking": "thinking",
    "_partial_json": "partial_json",
}
#: Block fields that a content_block_start may open and deltas then extend.
_JOINED_FIELDS = ("text", "thinking")
#: A delta whose block was never started can only be placed for these (a Bifrost bug,
#: maximhq/bifrost#5169): the block is opened implicitly with the delta's type.
_IMPLICIT_BLOCKS = {"text_delta": "text", "thinking_delta": "thinking"}


#: Usage counts of the prompt side, which a stream's later usage may repeat but not lower.
_INPUT_COUNTS = frozenset(
    {"input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"}
)


def _all_zero(value: Any) -> bool:
    """A ``cache_creation`` object whose every count is 0 (or an empty or missing one)."""
    return not isinstance(value, dict) or not any(value.values())


def _short(value: Any) -> str:
    """A JSON value as it came, cut for an error message."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:40] + "…"


class StreamAssembler:
    """Rebuilds an Anthropic Message from SSE events (``message_start`` … ``message_stop``)."""

    OTHER, CONTENT, ERROR, STOP = 0, 1, 2, 3
    __slots__ = ("_blocks", "_msg", "_surrogates", "bad_tool_input", "error_message",
                 "error_type", "has_start", "invalid", "lost", "started")

    def __init__(self) -> None:
        #: Whether any event arrived.
        self.started = False
        self._msg: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.invalid: str | None = None
        #: Why part of the content could not be placed (the message would be incomplete).
        self.lost: str | None = None
        #: Whether ``message_start`` arrived (it carries the model, id and input usage).
        self.has_start = False
        #: Text came as UTF-16 surrogate halves (an emoji split across two deltas).
        self._surrogates = False
        #: Set by :meth:`message`: a tool call whose joined input is not JSON (kept as text).
        self.bad_tool_input: str | None = None

    def add(self, event_type: str | None, data: bytes) -> int:
        """Take one event; return what kind it was (``CONTENT`` for a content delta)."""
        self.started = True
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            if data.strip() in (b"", b"[DONE]"):  # a keep-alive, OpenAI's end marker: no content
                return self.OTHER
            # orjson refuses a lone surrogate escape ("\\ud83d"), which gateways that cut
            # UTF-16 text send for half an emoji; the halves are joined in message().
            try:
                payload = json.loads(data)
            except ValueError:
                self.invalid = _excerpt(data, "undecodable SSE data")
                return self.OTHER
            self._surrogates = True
        if not isinstance(payload, dict):
            return self.OTHER
        kind = event_type or payload.get("type")
        if kind == "content_block_delta":
            index = payload.get("index", 0)
            if type(index) is not int:  # ordering blocks by it must not meet "1" beside 0
                self.invalid = f"a content_block_delta with index {_short(index)}, not an integer"
                return self.OTHER
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                return self.CONTENT
            delta_type = delta.get("type")
            block = self._blocks.get(index)
            if block is None:
                implicit = _IMPLICIT_BLOCKS.get(delta_type)
                if implicit is None:
                    self.lost = f"a {delta_type} for content block {index}, which was never started"
                    return self.OTHER
                block = self._blocks[index] = {"type": implicit}
            if delta_type == "citations_delta":
                citations = block.get("citations")
                if not isinstance(citations, list):  # absent, or null as Bifrost writes it
                    citations = block["citations"] = []
                citations.append(delta.get("citation"))
                return self.OTHER
            if delta_type == "signature_delta":
                block["signature"] = delta.get("signature", "")  # the last one wins, as in the SDK
                return self.OTHER
            key = _DELTA_FIELDS.get(delta_type)
            if key is None:
                # A newer delta kind (compaction_delta: content, encrypted_content): its fields
                # are the block's, as the SDK sets them; no generated token to time.
                block.update((k, v) for k, v in delta.items() if k != "type")
                return self.OTHER
            # Parts are joined once at the end: += on str is quadratic on long outputs.
            value = delta.get(_DELTA_VALUE[key], "")
            block.setdefault(key, []).append(value)
            if not value:
                # An empty text (a converted opening chunk) or the empty opening fragment of a
                # tool call: no token, so neither TTFT nor an inter-token gap.
                return self.OTHER
            return self.CONTENT
        if kind == "message_start":
            msg = payload.get("message")
            self._msg = dict(msg) if isinstance(msg, dict) else {}
            self.has_start = True
            return self.OTHER
        if kind == "content_block_start":
            raw_block = payload.get("content_block")
            block = dict(raw_block) if isinstance(raw_block, dict) else {}
            opened_with = False
            for key in _JOINED_FIELDS:
                if isinstance(block.get(key), str):
                    opened_with = opened_with or bool(block[key])
                    block["_" + key] = block.pop(key)  # initial text; deltas follow as parts
            index = payload.get("index", len(self._blocks))
            if type(index) is not int:
                self.invalid = f"a content_block_start with index {_short(index)}, not an integer"
                return self.OTHER
            self._blocks[index] = block
            # A gateway may open a block with its first text (the API opens it empty): that
            # text is the first token, not the delta after it.
            return self.CONTENT if opened_with else self.OTHER
        if kind == "message_delta":
            msg = self._msg if self._msg is not None else {}
            self._msg = msg
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                delta = {}
            # Every field of the delta is the message's: stop_reason and stop_sequence (null
            # included), and container, stop_details and whatever newer ones the API adds, as
            # the SDK keeps them (a null does not erase them; usage is merged below).
            for key, value in delta.items():
                if key in ("stop_reason", "stop_sequence") or (
                        value is not None and key != "usage"):
                    msg[key] = value
            if "context_management" in payload:  # (beta) beside the delta
                msg["context_management"] = payload["context_management"]
            usage = payload.get("usage")
            if isinstance(usage, dict):
                # message_delta usage is cumulative; it updates what message_start said. But a
                # zero does not erase an input count message_start gave: the prompt cannot
                # shrink, and a gateway re-encoding usage writes 0 for fields it lacks (Bifrost's
                # count fields are not omitempty), which priced the row's input at nothing.
                merged = dict(msg.get("usage") or {})
                for key, value in usage.items():
                    if value is None or (
                        key in _INPUT_COUNTS and not value and merged.get(key)
                    ) or (
                        key == "cache_creation" and _all_zero(value)
                        and not _all_zero(merged.get(key))
                    ):
                        continue
                    merged[key] = value
                msg["usage"] = merged
            return self.OTHER
        if kind == "message_stop":
            return self.STOP
        if kind == "error":
            err = payload.get("error") or {}
            self.error_type = (err.get("type") or None) if isinstance(err, dict) else None
            self.error_message = str(err.get("message", "")) if isinstance(err, dict) else ""
            return self.ERROR
        return self.OTHER

    @property
    def began(self) -> bool:
        """Whether ``message_start`` (or a ``message_delta``) arrived."""
        return self._msg is not None

    def message(self) -> dict[str, Any]:
        msg = self._msg if self._msg is not None else {"type": "message"}
        content = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            for key in _JOINED_FIELDS:
                parts = block.get(key)
                initial = block.pop("_" + key, None)
                if isinstance(parts, list):
                    block[key] = (initial or "") + "".join(parts)
                elif initial is not None:
                    block[key] = initial
                if self._surrogates and isinstance(block.get(key), str):
                    block[key] = _join_surrogates(block[key])
            json_parts = block.pop("_partial_json", None)
            partial = "".join(json_parts) if json_parts is not None else None
            if partial is not None:
                try:
                    block["input"] = _tool_input(partial) if partial else {}
                except ValueError:  # orjson's JSONDecodeError too
                    block["input"] = partial
                    self.bad_tool_input = self.bad_tool_input or _excerpt(
                        partial.encode(), f"the tool input of content block {index} is not JSON")
            content.append(block)
        msg["content"] = content
        return msg
