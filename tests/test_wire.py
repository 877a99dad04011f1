"""Tests of the lean HTTP/1.1 client (:mod:`batchrunner.wire`) against real servers on 127.0.0.1.

The raw server of ``rawserver.py`` misbehaves on purpose (drops, stalls, garbage, 1xx, close-
delimited bodies); a TLS test runs a real TLS server with a certificate made by ``openssl``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rawserver import Server

from batchrunner.wire import (
    BODY,
    CONNECT,
    DISCONNECT,
    PROTOCOL,
    TIMEOUT,
    ResponseHeaders,
    WireError,
    WirePool,
    encode_headers,
    format_wire_error,
)

HEADERS = [("content-type", "application/json"), ("x-api-key", "k")]


@pytest.fixture
async def make_pool() -> AsyncIterator:  # type: ignore[type-arg]
    pools: list[WirePool] = []

    def make(url: str, **kwargs: object) -> WirePool:
        kwargs.setdefault("connect_s", 5.0)
        kwargs.setdefault("read_s", 5.0)
        pool = WirePool(url, HEADERS, **kwargs)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.aclose()


async def test_post_round_trip_headers_and_body_on_the_wire(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/echo?a=1"))
    body = '{"model":"m","messages":[{"role":"user","content":"hé"}]}'.encode()
    exchange = await pool.post(body, encode_headers([("x-request-id", "r-1")]))
    assert exchange.status == 200
    echoed = json.loads(exchange.content)
    assert echoed["method"] == "POST" and echoed["target"] == "/echo?a=1"
    assert echoed["body"].encode() == body
    sent = [(k.lower(), v) for k, v in echoed["headers"]]
    assert sent == [
        ("host", f"127.0.0.1:{server.port}"),
        ("content-type", "application/json"),
        ("x-api-key", "k"),
        ("x-request-id", "r-1"),
        ("content-length", str(len(body))),
    ]
    headers = ResponseHeaders(exchange.headers)
    assert headers["Content-Type"] == "application/json"
    assert headers.get("x-multi") == "a, b"  # repeated headers joined, as httpx does
    assert "X-MULTI" in headers and headers.get("absent") is None
    assert exchange.first_byte is not None
    assert exchange.started <= exchange.first_byte <= exchange.done


async def test_a_host_header_given_replaces_the_url_s(server: Server) -> None:
    # -H 'Host: ...' (a gateway behind an address): sent once, as given; two Host lines are
    # a 400 for most servers.
    pool = WirePool(server.url("/echo"), [("Host", "bifrost.internal"), *HEADERS])
    try:
        exchange = await pool.post(b"{}")
    finally:
        await pool.aclose()
    sent = [(k.lower(), v) for k, v in json.loads(exchange.content)["headers"]]
    assert [v for k, v in sent if k == "host"] == ["bifrost.internal"]


async def test_keep_alive_reuses_one_connection(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/echo"))
    for _ in range(20):
        assert (await pool.post(b"{}")).status == 200
    assert server.accepted == 1
    # Concurrent exchanges each get a connection, and all go back to the pool.
    results = await asyncio.gather(*(pool.post(b"{}") for _ in range(8)))
    assert [r.status for r in results] == [200] * 8
    assert server.accepted <= 8
    assert pool.open_connections == server.accepted


async def test_sink_sees_chunks_as_they_arrive_and_may_answer_early(
    server: Server, make_pool
) -> None:
    pool = make_pool(server.url("/chunks"))
    seen: list[tuple[bytes, float]] = []

    def sink(chunk: bytes, now: float) -> bool:
        seen.append((chunk, now))
        return b"data: 3" in chunk  # answered before the body's end

    exchange = await pool.post(b"{}", sink=sink)
    assert exchange.status == 200 and exchange.content == b""  # the body went to the sink
    assert [c for c, _ in seen] == [b"data: %d\n\n" % i for i in range(4)]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(seen)]
    assert all(gap > 0.03 for gap in gaps)  # the server paces chunks 50 ms apart
    assert exchange.done == seen[-1][1]
    # The rest of the body is read in the background; then the connection is reused.
    await asyncio.sleep(0.3)
    again = await pool.post(b"{}", sink=lambda chunk, now: False)
    assert again.status == 200
    assert server.accepted == 1


async def test_sink_is_not_used_for_error_statuses(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/missing"))
    calls: list[bytes] = []
    exchange = await pool.post(b"{}", sink=lambda chunk, now: calls.append(chunk) or False)
    assert exchange.status == 404 and exchange.content == b"no" and calls == []


async def test_failing_sink_fails_the_request_not_the_loop(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/chunks"))

    def sink(chunk: bytes, now: float) -> bool:
        raise KeyError("bug")

    with pytest.raises(WireError) as err:
        await pool.post(b"{}", sink=sink)
    assert err.value.kind == BODY and "KeyError" in str(err.value)
    assert (await make_pool(server.url("/echo")).post(b"{}")).status == 200


async def test_close_delimited_body_completes_at_eof(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/close-delimited"))
    exchange = await pool.post(b"{}")
    assert exchange.status == 200 and exchange.content == b"until the end"
    assert pool.open_connections == 0


async def test_other_transfer_coding_body_ends_at_close(server: Server, make_pool) -> None:
    exchange = await make_pool(server.url("/te-identity")).post(b"{}")
    assert exchange.status == 200 and exchange.content == b"whole body"


async def test_close_delimited_body_cut_by_a_reset_is_a_disconnect(
    server: Server, make_pool
) -> None:
    with pytest.raises(WireError) as err:
        await make_pool(server.url("/close-delimited-reset")).post(b"{}")
    assert err.value.kind == DISCONNECT and "before the end" in str(err.value)


async def test_aclose_while_connecting_sends_nothing(server: Server) -> None:
    pool = WirePool(server.url("/echo"), HEADERS, read_s=5.0)
    task = asyncio.create_task(pool.post(b"{}"))
    await asyncio.sleep(0)  # the post is inside create_connection
    await pool.aclose()
    with pytest.raises(WireError) as err:
        await asyncio.wait_for(task, timeout=5)
    assert err.value.kind == DISCONNECT and "closed" in str(err.value)
    await asyncio.sleep(0.05)
    assert server.requests == [] and pool.open_connections == 0
    assert pool._watchdog is None


async def test_connection_close_is_honoured(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/close"))
    for _ in range(3):
        assert (await pool.post(b"{}")).content == b"bye"
    assert server.accepted == 3


async def test_informational_response_is_skipped(server: Server, make_pool) -> None:
    exchange = await make_pool(server.url("/continue")).post(b"{}")
    assert exchange.status == 200 and exchange.content == b"after continue"


async def test_no_content_response(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/no-content"))
    exchange = await pool.post(b"{}")
    assert exchange.status == 204 and exchange.content == b""
    assert ResponseHeaders(exchange.headers)["x-kind"] == "empty"
    assert (await pool.post(b"{}")).status == 204
    assert server.accepted == 1


async def test_drop_before_response(server: Server, make_pool) -> None:
    with pytest.raises(WireError) as err:
        await make_pool(server.url("/drop")).post(b"{}")
    assert err.value.kind == DISCONNECT
    assert "without sending a response" in str(err.value)
    assert format_wire_error(err.value).startswith("RemoteProtocolError: ")
    assert len(server.requests) == 1  # never sent twice behind the caller's back


async def test_drop_of_reused_connection_is_not_resent(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/second-drops"))
    assert (await pool.post(b"{}")).content == b"ok"
    with pytest.raises(WireError) as err:
        await pool.post(b"{}")  # on the same, reused connection
    assert err.value.kind == DISCONNECT
    assert server.accepted == 1
    assert [r["target"] for r in server.requests] == ["/second-drops"] * 2


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_drop_mid_body_keeps_status(server: Server, make_pool, framing: str) -> None:
    query = "?chunked" if framing == "chunked" else ""
    with pytest.raises(WireError) as err:
        await make_pool(server.url("/drop-mid" + query)).post(b"{}")
    assert err.value.kind == DISCONNECT
    assert "before the end of the response" in str(err.value)
    assert err.value.exchange is not None and err.value.exchange.status == 200


async def test_invalid_response_is_protocol_error(server: Server, make_pool) -> None:
    with pytest.raises(WireError) as err:
        await make_pool(server.url("/garbage")).post(b"{}")
    assert err.value.kind == PROTOCOL and "invalid HTTP response" in str(err.value)


async def test_unsolicited_bytes_close_the_connection(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/extra-bytes"))
    assert (await pool.post(b"{}")).content == b"ok"
    assert (await pool.post(b"{}")).content == b"ok"
    assert server.accepted == 2  # the connection that carried junk was not reused


@pytest.mark.parametrize("path", ["/stall-head", "/stall-body"])
async def test_read_timeout(server: Server, make_pool, path: str) -> None:
    pool = make_pool(server.url(path), read_s=0.2)
    t0 = time.perf_counter()
    with pytest.raises(WireError) as err:
        await pool.post(b"{}")
    waited = time.perf_counter() - t0
    assert err.value.kind == TIMEOUT and err.value.timeout_phase == "read"
    assert format_wire_error(err.value) == "ReadTimeout: no response data for 0.2 s"
    assert 0.2 <= waited < 2.0
    if path == "/stall-body":
        assert err.value.exchange is not None and err.value.exchange.status == 200


async def test_exchange_timeout_while_data_keeps_coming(server: Server, make_pool) -> None:
    # /chunks sends a chunk every 50 ms for 250 ms: never silent, but longer than allowed.
    pool = make_pool(server.url("/chunks"), read_s=5.0, exchange_s=0.12)
    with pytest.raises(WireError) as err:
        await pool.post(b"{}", sink=lambda chunk, now: False)
    assert err.value.kind == TIMEOUT and err.value.timeout_phase == "exchange"


async def test_connection_refused(make_pool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(WireError) as err:
        await make_pool(f"http://127.0.0.1:{port}/x").post(b"{}")
    assert err.value.kind == CONNECT and f"127.0.0.1:{port}" in str(err.value)
    assert format_wire_error(err.value).startswith("ConnectError: ")


async def test_connections_opened_ahead_serve_the_next_requests(
    server: Server, make_pool
) -> None:
    pool = make_pool(server.url("/echo"))
    assert await pool.open_ahead(6, within_s=5.0) == 6
    assert server.accepted == 6 and pool.open_connections == 6
    results = await asyncio.gather(*(pool.post(b"{}") for _ in range(6)))
    assert [r.status for r in results] == [200] * 6
    assert server.accepted == 6  # no connect on the way of the first requests


async def test_opening_ahead_never_raises_and_is_bounded_in_time(make_pool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = make_pool(f"http://127.0.0.1:{port}/x")
    assert await pool.open_ahead(4, within_s=5.0) == 0  # refused: left for the requests
    with pytest.raises(WireError) as err:
        await pool.post(b"{}")
    assert err.value.kind == CONNECT
    # A listener that never accepts (backlog full) cannot hold the start up past within_s.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        stuck = make_pool(f"http://127.0.0.1:{full.getsockname()[1]}/x", connect_s=30.0)
        t = time.perf_counter()
        await stuck.open_ahead(64, within_s=0.3)
        assert time.perf_counter() - t < 3.0
        await stuck.aclose()  # ends the connects still under way


async def test_opening_ahead_tops_up_and_leaves_nothing_open_when_cancelled(
    server: Server, make_pool
) -> None:
    pool = make_pool(server.url("/echo"))
    assert await pool.open_ahead(4, within_s=5.0) == 4
    assert await pool.open_ahead(6, within_s=5.0) == 2  # only the missing ones (bench stages)
    assert server.accepted == 6
    # Cancelled at once (a library caller's wait_for, a failing task group): the connects
    # still join the pool, so closing it closes every one of them.
    other = make_pool(server.url("/echo"))
    task = asyncio.ensure_future(other.open_ahead(5, within_s=5.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while other.open_connections < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert other.open_connections == 5
    await other.aclose()
    while server.open_connections > 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert server.open_connections == 6  # only the first pool's


async def test_requests_wait_for_slow_connects_opened_ahead_instead_of_doubling_them(
    server: Server, make_pool
) -> None:
    # A slow handshake (TLS far away): connects opened ahead still under way when the wait
    # for them ended went on in the background while each request opened its own, twice as
    # many connections as requests for a moment.
    pool = make_pool(server.url("/echo"))
    connect = pool._connect

    async def slow_connect():
        await asyncio.sleep(0.3)
        return await connect()

    pool._connect = slow_connect
    assert await pool.open_ahead(4, within_s=0.05) == 0  # all four still connecting
    results = await asyncio.gather(*(pool.post(b"{}") for _ in range(4)))
    assert [r.status for r in results] == [200] * 4
    assert server.accepted == 4 and pool.open_connections == 4


async def test_a_request_waiting_for_a_connect_opened_ahead_meets_its_failure_once(
    make_pool,
) -> None:
    # It waited for the failed connect, then connected again: the first requests paid the
    # connect limit twice (19 s with --connect-timeout 10) before the outage logic saw them.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = make_pool(f"http://127.0.0.1:{port}/x")
    connect = pool._connect
    calls = []

    async def slow_refused():
        calls.append(1)
        await asyncio.sleep(0.2)
        return await connect()

    pool._connect = slow_refused
    assert await pool.open_ahead(1, within_s=0.01) == 0
    with pytest.raises(WireError) as err:
        await pool.post(b"{}")
    assert err.value.kind == CONNECT and len(calls) == 1


async def test_a_connection_the_server_closed_is_not_reused_before_the_close_is_read(
    server: Server, make_pool
) -> None:
    # The server's FIN came with its answer; the next request, sent before the loop read the
    # close, went out on the dead connection: every second request failed (a retry spent).
    pool = make_pool(server.url("/close-unsaid"))
    for _ in range(10):
        result = await pool.post(b"{}")
        assert result.status == 200 and bytes(result.content) == b"said nothing"
    assert server.accepted == 10 and len(server.requests) == 10


async def test_the_read_timeout_counts_from_the_request_not_from_before_the_connect(
    server: Server, make_pool
) -> None:
    # A slow connect (TLS far away) used up the read timeout: "no response data for 0.3 s"
    # 0.05 s after the request was written, and a retry paid for the answer twice.
    pool = make_pool(server.url("/slow"), read_s=0.3)
    connect = pool._connect

    async def slow_connect():
        await asyncio.sleep(0.4)
        return await connect()

    pool._connect = slow_connect
    result = await pool.post(b"{}")  # /slow answers 0.05 s after the request
    assert result.status == 200


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: one\r\n two\r\n\r\nok",  # folded
    b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",  # no CR
    b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",  # both framings: chunked wins
])
async def test_answers_a_client_must_or_may_accept_are_read(
    server: Server, make_pool, answer
) -> None:
    # Each was a connection error, retried: the answer paid for again (httpx reads them).
    pool = make_pool(server.url("/raw"))
    result = await pool.post(answer)
    assert result.status == 200 and bytes(result.content) == b"ok"
    assert (await pool.post(answer)).status == 200  # and the connection is reused
    assert server.accepted == 1


async def test_a_malformed_answer_after_a_2xx_status_is_no_connection_failure(
    server: Server, make_pool
) -> None:
    # The gateway answered (and may have charged): a connection error here was retried, and
    # the same malformed answer bought again. A malformed error answer stays a protocol error.
    pool = make_pool(server.url("/raw"))
    with pytest.raises(WireError) as err:
        await pool.post(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok")
    assert err.value.kind == BODY and err.value.exchange.status == 200
    assert "after its status line (HTTP 200): Duplicate Content-Length" in str(err.value)
    with pytest.raises(WireError) as err:
        await pool.post(b"HTTP/1.1 503 No\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok")
    assert err.value.kind == PROTOCOL
    # On a connection that answered a 200 before, a next answer broken before its status
    # (the parser keeps the last status) is no 2xx answer either (review).
    reused = make_pool(server.url("/raw"))
    assert (await reused.post(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).status == 200
    with pytest.raises(WireError) as err:
        await reused.post(b"HTTP/2 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno")
    assert err.value.kind == PROTOCOL and server.accepted == 3


async def test_answer_bodies_are_buffered_within_bounds(
    server: Server, make_pool, monkeypatch
) -> None:
    # A runaway proxy's 300 MB error page was kept whole (440 MB peak) only to be cut to
    # 2,000 characters: an error page keeps its start; a 2xx body past the limit fails.
    import batchrunner.wire

    monkeypatch.setattr(batchrunner.wire, "ERROR_BODY_MAX_BYTES", 1000)
    monkeypatch.setattr(batchrunner.wire, "BODY_MAX_BYTES", 50_000)
    pool = make_pool(server.url("/raw"))
    page = b"<p>busy</p>" * 10_000
    head = b"HTTP/1.1 503 Busy\r\ncontent-length: %d\r\n\r\n" % len(page)
    result = await pool.post(head + page)
    assert result.status == 503 and bytes(result.content) == page[:1000]
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(page)
    with pytest.raises(WireError) as err:
        await pool.post(ok + page)
    assert err.value.kind == BODY and "ran past" in str(err.value)
    small = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert bytes((await pool.post(small)).content) == b"ok"


async def test_keepalive_expiry_opens_a_new_connection(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/echo"), keepalive_s=0.05)
    await pool.post(b"{}")
    await asyncio.sleep(0.1)
    await pool.post(b"{}")
    assert server.accepted == 2


async def test_cancelled_exchange_drops_its_connection(server: Server, make_pool) -> None:
    pool = make_pool(server.url("/stall-head"))
    task = asyncio.create_task(pool.post(b"{}"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.open_connections == 0
    assert (await make_pool(server.url("/echo")).post(b"{}")).status == 200


async def test_aclose_fails_exchanges_in_flight(server: Server) -> None:
    pool = WirePool(server.url("/stall-head"), HEADERS)
    task = asyncio.create_task(pool.post(b"{}"))
    await asyncio.sleep(0.1)
    await pool.aclose()
    with pytest.raises(WireError) as err:
        await task
    assert err.value.kind == DISCONNECT
    with pytest.raises(RuntimeError, match="closed"):
        await pool.post(b"{}")


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError, match="x-api-key"):
        WirePool("http://127.0.0.1:1/x", [("x-api-key", "secret\r\nx-evil: 1")])
    with pytest.raises(ValueError):
        encode_headers([("x-request-id", "a\nb")])
    with pytest.raises(ValueError, match="http"):
        WirePool("ftp://127.0.0.1/x", [])


def test_header_error_does_not_echo_the_value() -> None:
    with pytest.raises(ValueError) as err:
        WirePool("http://127.0.0.1:1/x", [("x-api-key", "sk-secret-value\n")])
    assert "sk-secret-value" not in str(err.value)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecure")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"
    trusting = ssl.create_default_context(cafile=str(cert))
    pools = [WirePool(url, HEADERS, ssl=trusting), WirePool(url, HEADERS, ssl=False)]
    strict = WirePool(url, HEADERS)  # system CAs do not know this certificate
    try:
        for pool in pools:
            assert (await pool.post(b"")).content == b"secure"
        with pytest.raises(WireError) as err:
            await strict.post(b"")
        assert err.value.kind == CONNECT and "CERTIFICATE" in str(err.value).upper()
    finally:
        for pool in [*pools, strict]:
            await pool.aclose()
        srv.close()
        await srv.wait_closed()
