"""A lean HTTP/1.1 client for one endpoint: how batchrunner talks to a gateway by default.

aiohttp's ``ClientSession`` spends ~70 µs of CPU per request on these machines (tracing hooks,
cookies, redirects, per-request timers, header multidicts), as much as all the rest batchrunner
does for a request; a load tester built on it measures itself at high rates. This client does
only what a Messages gateway needs: it writes a prepared ``POST`` (request line and fixed
headers encoded once per run) on a pooled keep-alive connection, and parses the response with
httptools (llhttp, the parser of Node.js and uvicorn) inside the protocol callback, where the
arrival time of each piece is read once. Content-Length, chunked and close-delimited bodies,
``Connection: close``, 1xx responses and TLS are handled; proxies, redirects, compression and
HTTP/2 are not: callers who need them pass an httpx client or transport to
:class:`batchrunner.client.GatewayClient` instead. Timeouts (connect, read silence, whole
exchange) are enforced by one watchdog task per pool rather than a timer per request.
"""

from __future__ import annotations

import asyncio
import errno
import select
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httptools
import httpx

__all__ = ["Exchange", "ResponseHeaders", "WireError", "WirePool"]

#: A stream sink gets each body piece of a 200 response with its arrival time; it returns True
#: once it has what it needs (the exchange is then answered; the rest is read and discarded).
Sink = Callable[[bytes, float], bool]

CONNECT, TIMEOUT, DISCONNECT, PROTOCOL = "connect", "timeout", "disconnect", "protocol"
#: The response arrived, but the sink could not make sense of its body.
BODY = "body"

# After a sink has its answer, this much more of a body is read to reuse the connection.
_DISCARD_MAX_BYTES = 256 * 1024
#: Most of an error answer's body kept (the rest is read and dropped).
ERROR_BODY_MAX_BYTES = 1024 * 1024
#: Largest whole 2xx body read (a Message is well under 10 MB); beyond, the exchange fails.
BODY_MAX_BYTES = 512 * 1024 * 1024
#: poll() event for "the peer closed its end" (Linux); elsewhere idle connections go unchecked.
_POLLRDHUP: int | None = getattr(select, "POLLRDHUP", None)
# The watchdog wakes every 1/20 of the shortest timeout, within these bounds: a timeout then
# fires at most 5 % (or 1 s) late, and a pool of thousands of exchanges is scanned at most
# once a second with the default minutes-long timeouts.
_WATCH_PERIOD_MAX_S = 1.0
_WATCH_PERIOD_MIN_S = 0.005
_WATCH_FRACTION = 1 / 20


#: Errors of connecting that say this machine ran out of something (descriptors, memory), not
#: that the server cannot be reached.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Ends the message of such a failure (and tells it apart from the gateway's).
LOCAL_LIMIT_NOTE = "a limit of this machine, not of the gateway"


class WireError(Exception):
    """A failed exchange; ``kind`` is ``connect``, ``timeout``, ``disconnect``, ``protocol`` (not
    valid HTTP) or ``body`` (the stream sink refused the body).

    ``timeout_phase`` says which limit a timeout hit: ``connect``, ``read`` or ``exchange``;
    ``exchange`` is the exchange as far as it got (status and headers may have arrived).
    ``local`` marks a ``connect`` failure of this machine (out of file descriptors or memory,
    :data:`LOCAL_ERRNOS`): the server may well be reachable. ``tls`` marks one of the TLS
    handshake that no waiting fixes (see :func:`tls_refusal`).
    """

    def __init__(
        self,
        kind: str,
        message: str,
        timeout_phase: str | None = None,
        exchange: Exchange | None = None,
        *,
        local: bool = False,
        tls: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.timeout_phase = timeout_phase
        self.exchange = exchange
        self.local = local
        self.tls = tls


_TLS_CUT_SHORT = (ssl_module.SSLEOFError, ssl_module.SSLZeroReturnError, ssl_module.SSLSyscallError)


def tls_refusal(exc: BaseException) -> ssl_module.SSLError | None:
    """The TLS error behind ``exc`` that says the address or its certificate is wrong (a plain
    HTTP server behind https://, a certificate that does not verify), if any: not an outage to
    wait out. A handshake cut short (EOF, reset) is left out: a restarting server does that."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; a cycle must not loop for ever
        if seen is None:
            return None
        if isinstance(seen, ssl_module.SSLError) and not isinstance(seen, _TLS_CUT_SHORT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def local_os_error(exc: BaseException) -> OSError | None:
    """The error of this machine's limits (:data:`LOCAL_ERRNOS`) behind ``exc``, if any: itself
    or one it was raised from (httpx and aiohttp wrap the socket's error)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; a cycle must not loop for ever
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in LOCAL_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def local_limit_text(exc: OSError) -> str:
    """What ran out and what to do about it, for a row's error message."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if exc.errno == errno.EMFILE:
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            limit = "" if soft == resource.RLIM_INFINITY else f": this process may open {soft:,}"
        except (ImportError, OSError, ValueError):
            limit = ""
        what = f"too many open files ({code}{limit}); raise ulimit -n or lower -c"
    elif exc.errno == errno.ENFILE:
        what = (
            f"too many open files in the system ({code}); lower -c, or raise the system's limit "
            "(fs.file-max)"
        )
    else:
        what = f"out of memory for a connection ({code}); lower -c or free memory"
    return f"{what} ({LOCAL_LIMIT_NOTE})"


class ResponseHeaders(Mapping[str, str]):
    """Response headers as received (``raw``), looked up case-insensitively.

    Repeated headers are joined with ``", "`` on lookup, as ``httpx.Headers`` does. The lookup
    table is built on first use: most responses are only scanned once through ``raw``.
    """

    __slots__ = ("_map", "raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._map: dict[str, str] | None = None

    def _lookup(self) -> dict[str, str]:
        found = self._map
        if found is None:
            found = {}
            for name, value in self.raw:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                found[key] = f"{found[key]}, {text}" if key in found else text
            self._map = found
        return found

    def __getitem__(self, name: str) -> str:
        return self._lookup()[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._lookup().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup()

    def __iter__(self) -> Iterator[str]:
        return iter(self._lookup())

    def __len__(self) -> int:
        return len(self._lookup())

    def __repr__(self) -> str:
        return f"ResponseHeaders({self.raw!r})"


class Exchange:
    """One request and its response. Times are ``time.perf_counter()`` seconds."""

    __slots__ = (
        "answered",
        "body",
        "buffered",
        "discarded",
        "done",
        "encoding",
        "error",
        "first_byte",
        "future",
        "headers",
        "sink",
        "started",
        "status",
    )

    def __init__(self, future: asyncio.Future[None], sink: Sink | None, started: float) -> None:
        self.future = future
        self.sink = sink
        self.started = started
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.first_byte: float | None = None
        self.done = 0.0
        self.error: WireError | None = None
        self.answered = False
        self.buffered = 0  # bytes of the body received for ``body`` (some maybe not kept)
        #: The response's ``content-encoding``, if it had one (seen as the headers stream by:
        #: a lookup in ``headers`` builds a table, a few µs on every response).
        self.encoding: bytes | None = None
        self.discarded = 0

    @property
    def content(self) -> bytes:
        """The buffered body (empty for a body that went to a sink)."""
        body = self.body
        return body[0] if len(body) == 1 else b"".join(body)


def _be_lenient(parser: httptools.HttpResponseParser) -> None:
    """Accept what RFC 9112 tells a client to accept, or allows it to: folded header lines
    (§5.2: MUST), line ends without CR (§2.2), and Content-Length beside chunked (§6.3: the
    chunking wins). Refused, each was a connection error, retried: the answer paid again."""
    parser.set_dangerous_leniencies(
        lenient_headers=True, lenient_optional_cr_before_lf=True, lenient_chunked_length=True
    )


class _Connection(asyncio.Protocol):
    """One keep-alive connection; runs at most one exchange at a time."""

    def __init__(self, pool: WirePool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        _be_lenient(self.parser)
        self.exchange: Exchange | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_io = 0.0
        self.now = 0.0
        self.framed = False  # the current response has Content-Length or chunked framing
        self.informational = False  # the current response is a 1xx
        #: The current response's status line was read (the parser keeps the last status).
        self.status_read = False
        self._hangup: Any = None  # a select.poll of the socket for the peer's close

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if _POLLRDHUP is not None and sock is not None:
            try:
                hangup = select.poll()
                hangup.register(sock.fileno(), _POLLRDHUP)
            except (OSError, ValueError, AttributeError):
                return
            self._hangup = hangup

    def peer_closed(self) -> bool:
        """Whether the server's close (FIN or reset) already came, though the loop has not
        read it yet: it comes with the last answer of a server that closes without saying
        so, and a request written on such a connection fails (a retry spent, for nothing).
        One poll(0), ~0.5 µs, before each reuse; readable data (a TLS ticket) does not count.
        """
        hangup = self._hangup
        return hangup is not None and bool(hangup.poll(0))

    def data_received(self, data: bytes) -> None:
        self.now = self.last_io = time.perf_counter()
        exchange = self.exchange
        if exchange is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted for reuse
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(PROTOCOL, "the server switched protocols (not HTTP/1.1)")
        except httptools.HttpParserError as exc:
            status = self.parser.get_status_code() if self.status_read else 0
            if 200 <= status < 300:
                # The gateway answered, so the request was probably charged for: sent again,
                # the same malformed answer would be bought again. Not a connection failure.
                if exchange.status is None:
                    exchange.status = status
                    exchange.first_byte = self.now
                self._fail(BODY, f"invalid HTTP response from the server after its status "
                                 f"line (HTTP {status}): {exc}")
            else:
                self._fail(PROTOCOL, f"invalid HTTP response from the server: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._hangup = None  # its descriptor number may soon be another socket's
        exchange = self.exchange
        if exchange is not None:
            if (
                exc is None
                and exchange.status is not None
                and not self.framed
                and not self.informational
            ):
                # A body delimited by the end of the connection ends here (an orderly close;
                # a reset is a cut, not an end).
                self.on_message_complete()
            else:
                why = f" ({exc})" if exc else ""
                if exchange.status is None:
                    message = f"Server disconnected without sending a response{why}."
                else:
                    message = f"Server disconnected before the end of the response{why}."
                self._fail(DISCONNECT, message)
        self.pool._forget(self)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.exchange is None:
            self.close()  # a second response nobody asked for: do not reuse this connection
        self.framed = False
        self.informational = False
        self.status_read = False

    def on_status(self, _reason: bytes) -> None:
        self.status_read = True

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.headers.append((name, value))
            lower = name.lower()
            if lower == b"content-length":
                self.framed = True
            elif lower == b"transfer-encoding":
                # Framed only when the last coding is chunked; otherwise the body runs to the
                # close of the connection (RFC 9112 §6.3).
                self.framed = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif lower == b"content-encoding":
                exchange.encoding = value

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        status = self.parser.get_status_code()
        if status < 200:
            self.informational = True  # 100 Continue and the like: the real answer follows
            exchange.headers = []
            exchange.encoding = None
            return
        if status == 204 or status == 304:
            self.framed = True  # no body by definition
        exchange.status = status
        exchange.first_byte = self.now
        if not 200 <= status < 300 or status == 204:
            exchange.sink = None  # error bodies are buffered and interpreted whole

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        if exchange.answered:
            exchange.discarded += len(body)
            if exchange.discarded > _DISCARD_MAX_BYTES:
                self.close()
            return
        sink = exchange.sink
        if sink is None:
            # Bounded: a runaway proxy's page, buffered whole within --timeout, could take the
            # process's memory and the rows in flight with it.
            before = exchange.buffered
            size = exchange.buffered = before + len(body)
            if size > ERROR_BODY_MAX_BYTES and not 200 <= (exchange.status or 0) < 300:
                # An error page's start says what it can (rows keep 2,000 characters).
                if before < ERROR_BODY_MAX_BYTES:
                    exchange.body.append(body[: ERROR_BODY_MAX_BYTES - before])
                return
            if size > BODY_MAX_BYTES:
                self._fail(BODY, f"the answer ran past {BODY_MAX_BYTES // 2**20} MB; not read "
                                 "further")
                return
            exchange.body.append(body)
            return
        try:
            finished = sink(body, self.now)
        except Exception as exc:  # a sink bug must fail this request, not the event loop
            self._fail(BODY, f"response body could not be processed: {exc!r}")
            return
        if finished:
            exchange.done = self.now
            self._answer(exchange)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        if not exchange.answered:
            exchange.done = self.now
            self._answer(exchange)
        keep = not self.closed and self.parser.should_keep_alive()
        self.pool._release(self, keep)

    # used by the pool

    def start(self, exchange: Exchange, tail: bytes, body: bytes) -> None:
        """Send the pool's fixed head, this request's own header lines (``tail``) and body."""
        self.exchange = exchange
        # The read timeout counts from here: a slow connect before it has its own limit, and
        # counted in, it had failed answers already on their way (a retry paid twice).
        self.last_io = time.perf_counter()
        transport = self.transport
        assert transport is not None
        try:
            head = self.pool._head
            if len(body) < 65536:
                transport.write(b"".join((head, tail, body)))  # one copy, one write
            else:
                transport.writelines((head + tail, body))  # no copy of a long prompt
        except (RuntimeError, OSError) as exc:  # the transport closed under us
            self._fail(DISCONNECT, f"Server disconnected before the request was sent ({exc}).")

    def expire(self, now: float) -> None:
        """Called by the watchdog: fail the exchange if it waited too long."""
        exchange = self.exchange
        if exchange is None:
            return
        pool = self.pool
        if pool.exchange_s is not None and now - exchange.started > pool.exchange_s:
            self._fail(TIMEOUT, f"no complete response within {pool.exchange_s:g} s", "exchange")
        elif pool.read_s is not None and now - self.last_io > pool.read_s:
            self._fail(TIMEOUT, f"no response data for {pool.read_s:g} s", "read")

    def _answer(self, exchange: Exchange) -> None:
        exchange.answered = True
        if not exchange.future.done():
            exchange.future.set_result(None)

    def _fail(self, kind: str, message: str, timeout_phase: str | None = None) -> None:
        exchange = self.exchange
        self.exchange = None
        if exchange is not None and not exchange.answered:
            exchange.error = WireError(kind, message, timeout_phase, exchange)
            exchange.done = time.perf_counter()
            self._answer(exchange)
        self.close()  # whatever was half-read makes this connection unusable

    def close(self) -> None:
        self._hangup = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()  # no graceful wait for a connection we give up on
        self.pool._forget(self)


class WirePool:
    """Keep-alive connections to one ``POST`` endpoint, and the exchanges sent over them.

    :param url: the endpoint (``http`` or ``https``).
    :param headers: headers sent with every request, in order (``Host``, unless given here,
        and ``Content-Length`` are added here). Names and values must not contain CR or LF.
    :param connect_s: TCP (and TLS) connection set-up limit.
    :param read_s: longest silence while waiting for response data (LLM calls can think for
        minutes before the first byte).
    :param exchange_s: longest whole exchange, from send to the end of the answer.
    :param keepalive_s: an idle connection older than this is closed instead of reused.
    :param ssl: for ``https``: ``True`` (system CAs), ``False`` (no verification) or a context.
    :raises ValueError: the URL is not http(s), or a header contains CR/LF.
    """

    def __init__(
        self,
        url: str | httpx.URL,
        headers: Sequence[tuple[str, str]],
        *,
        connect_s: float | None = 10.0,
        read_s: float | None = 600.0,
        exchange_s: float | None = None,
        keepalive_s: float = 30.0,
        ssl: ssl_module.SSLContext | bool = True,
    ) -> None:
        parsed = httpx.URL(url) if isinstance(url, str) else url
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"expected an http(s) URL with a host, got {str(url)!r}")
        self.host = parsed.host
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._ssl: ssl_module.SSLContext | None = None
        if parsed.scheme == "https":
            if isinstance(ssl, ssl_module.SSLContext):
                self._ssl = ssl
            else:
                self._ssl = ssl_module.create_default_context()
                if ssl is False:
                    self._ssl.check_hostname = False
                    self._ssl.verify_mode = ssl_module.CERT_NONE
        self.connect_s = connect_s
        self.read_s = read_s
        self.exchange_s = exchange_s
        self.keepalive_s = keepalive_s
        target = parsed.raw_path or b"/"
        lines = [b"POST " + target + b" HTTP/1.1"]
        if not any(name.lower() == "host" for name, _ in headers):  # else the caller's (-H)
            lines.append(b"host: " + parsed.netloc)
        lines += [encode_header(name, value) for name, value in headers]
        self._head = b"\r\n".join(lines) + b"\r\n"
        self._idle: deque[_Connection] = deque()
        self._busy: set[_Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._opening: set[asyncio.Task[_Connection]] = set()  # connects of open_ahead
        #: Of those, the ones no request waits for yet (a dict: an ordered set).
        self._unclaimed: dict[asyncio.Task[_Connection], None] = {}
        limits = [s for s in (read_s, exchange_s) if s is not None]
        period = min(limits) * _WATCH_FRACTION if limits else _WATCH_PERIOD_MAX_S
        self._watch_period = max(_WATCH_PERIOD_MIN_S, min(_WATCH_PERIOD_MAX_S, period))
        self._closed = False
        #: Whether a connection was ever made (a gateway that was reachable, unlike a typo).
        self.connected_once = False

    async def post(
        self, body: bytes, extra_headers: bytes = b"", sink: Sink | None = None
    ) -> Exchange:
        """Send ``body`` and wait for the answer.

        :param body: the request body.
        :param extra_headers: more header lines for this request, already encoded by
            :func:`encode_header` (each ending in CRLF).
        :param sink: for a streamed response, receives each body piece of a 200 response as it
            arrives (see :data:`Sink`); other responses are buffered in the exchange.
        :return: the answered exchange (status, raw headers, buffered body, times).
        :raises WireError: connecting, sending or receiving failed, or a timeout hit.
        """
        if self._closed:
            raise RuntimeError("WirePool is closed")
        tail = extra_headers + b"content-length: %d\r\n\r\n" % len(body)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        conn = self._take_idle(started)
        if conn is None and self._unclaimed:
            conn = await self._join_opening()
        if conn is None:
            conn = await self._connect()
            if self._closed or conn.closed:
                conn.close()
                why = "the client was closed" if self._closed else "the server closed at once"
                raise WireError(
                    DISCONNECT, f"Server disconnected without sending a response ({why})."
                )
        exchange = Exchange(loop.create_future(), sink, started)
        self._busy.add(conn)
        if self._watchdog is None:
            self._watchdog = loop.create_task(self._watch())
        conn.start(exchange, tail, body)
        try:
            await exchange.future
        except asyncio.CancelledError:
            if conn.exchange is exchange:
                conn._fail(DISCONNECT, "cancelled")
            raise
        # No silent resend when a reused connection drops: the gateway may have read the
        # request (an LLM call costs money); the caller's retry policy decides, and counts it.
        if exchange.error is not None:
            raise exchange.error
        return exchange

    async def open_ahead(self, n: int, within_s: float) -> int:
        """Have ``n`` idle connections ready before they are needed (opening only those
        missing).

        For an open-loop schedule: a send that must connect first starts late by the TCP (and
        TLS) set-up, and the first sends of a run would all pay it at once, while the loop is
        still cold (measured at 10,000 sends/s: a median of ~100 of the first 500 sends over
        1 ms late, against ~3 with connections opened ahead). Waits at most ``within_s``; a
        connect still under way then goes on (within ``connect_s``) and joins the idle
        connections when done, so that a slow handshake is not thrown away. A connection that
        fails is left for the requests to meet and record. :meth:`aclose` ends them all.

        :return: how many connections opened within ``within_s``.
        """
        ready = sum(1 for c in self._idle if not c.closed)
        if n <= ready or within_s <= 0 or self._closed:
            return 0
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._connect()) for _ in range(n - ready)]
        for task in tasks:
            self._opening.add(task)
            self._unclaimed[task] = None
            task.add_done_callback(self._adopt)
        done, _ = await asyncio.wait(tasks, timeout=within_s)
        return sum(1 for t in done if not t.cancelled() and t.exception() is None)

    def _adopt(self, task: asyncio.Task[_Connection]) -> None:
        """A connection opened ahead joins the idle ones (or is closed if the pool was)."""
        self._opening.discard(task)
        self._unclaimed.pop(task, None)
        if task.cancelled() or task.exception() is not None:
            return  # the requests will meet the failure themselves
        conn = task.result()
        if self._closed or conn.closed:
            conn.close()
            return
        conn.idle_since = time.perf_counter()
        self._idle.append(conn)

    async def _join_opening(self) -> _Connection | None:
        """Wait for a connect opened ahead that is still under way (a slow TLS handshake)
        rather than open one more: beside those, the requests' own connects had made up to
        twice as many connections as requests in flight, for a moment."""
        if not self._unclaimed:
            return None
        task = next(iter(self._unclaimed))
        del self._unclaimed[task]
        await asyncio.wait((task,))
        failed = None if task.cancelled() else task.exception()
        if isinstance(failed, WireError):
            # The same endpoint's failure: connecting again would pay the connect limit twice.
            raise WireError(failed.kind, str(failed), failed.timeout_phase, local=failed.local,
                            tls=failed.tls)
        # Its connection joined the idle ones first (_adopt ran before this wait ended).
        return self._take_idle(time.perf_counter())

    def _take_idle(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn.peer_closed():
                conn.close()
                continue
            if now - conn.idle_since > self.keepalive_s:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise WireError(
                TIMEOUT,
                f"could not connect to {self.host}:{self.port} within {self.connect_s:g} s",
                "connect",
            ) from None
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
            if exc.errno in LOCAL_ERRNOS:  # no socket could even be made: not the server's doing
                raise WireError(
                    CONNECT,
                    f"cannot connect to {self.host}:{self.port}: {local_limit_text(exc)}",
                    local=True,
                ) from None
            raise WireError(
                CONNECT,
                f"cannot connect to {self.host}:{self.port}: {exc}",
                tls=tls_refusal(exc) is not None,
            ) from None
        self.connected_once = True
        return conn

    async def probe(self) -> str | None:
        """Whether a new connection can be made now: ``None``, or the error text of why not."""
        try:
            conn = await self._connect()
        except WireError as exc:
            return format_wire_error(exc)
        conn.close()
        return None

    def _release(self, conn: _Connection, keep: bool) -> None:
        self._busy.discard(conn)
        if not keep or self._closed or self.keepalive_s <= 0:
            conn.close()
            return
        now = conn.now
        conn.idle_since = now
        idle = self._idle
        # Oldest at the left: drop the ones past keep-alive as new ones come back.
        while idle and now - idle[0].idle_since > self.keepalive_s:
            idle.popleft().close()
        idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)

    async def _watch(self) -> None:
        try:
            while self._busy:  # runs only while exchanges are out; the next one restarts it
                await asyncio.sleep(self._watch_period)
                now = time.perf_counter()
                for conn in list(self._busy):
                    conn.expire(now)
        finally:
            if self._watchdog is asyncio.current_task():
                self._watchdog = None

    @property
    def open_connections(self) -> int:
        """Connections currently open (idle and busy)."""
        return len(self._busy) + sum(1 for c in self._idle if not c.closed)

    async def aclose(self) -> None:
        """Close every connection; exchanges still out fail with ``disconnect``."""
        self._closed = True
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        opening = list(self._opening)
        self._unclaimed.clear()
        for task in opening:
            task.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        for conn in [*self._busy, *self._idle]:
            conn._fail(DISCONNECT, "the client was closed")
        self._idle.clear()
        self._busy.clear()


def encode_header(name: str, value: str) -> bytes:
    """One ``name: value`` header line without its CRLF; refuses CR/LF (header injection).

    Values are sent as UTF-8, as httpx and aiohttp do.
    """
    line = f"{name}: {value}".encode()
    if b"\r" in line or b"\n" in line or not name or ":" in name:
        raise ValueError(f"invalid header {name!r}: names and values must not contain CR or LF")
    return line


def encode_headers(headers: Sequence[tuple[str, str]]) -> bytes:
    """Header lines for :meth:`WirePool.post`'s ``extra_headers`` (each ending in CRLF)."""
    return b"".join(encode_header(name, value) + b"\r\n" for name, value in headers)


def format_wire_error(error: WireError) -> str:
    """The error text stored in a row, named like httpx's exceptions for the same failures."""
    prefix = {
        CONNECT: "ConnectError",
        DISCONNECT: "RemoteProtocolError",
        PROTOCOL: "RemoteProtocolError",
        TIMEOUT: {"connect": "ConnectTimeout", "read": "ReadTimeout"}.get(
            error.timeout_phase or "", "Timeout"
        ),
    }[error.kind]
    return f"{prefix}: {error}"
