"""Tests of the aiohttp-backed httpx transport against a real HTTP/1.1 server on 127.0.0.1.

The server (``rawserver.py``) misbehaves on purpose: it drops the connection before answering or
in the middle of a body, stalls, paces chunks, or compresses.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from rawserver import Server, serve_one

from batchrunner.transport import AiohttpTransport, TransportTimeouts, build_request

FAST = TransportTimeouts(connect_s=5.0, read_s=5.0)


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    t = AiohttpTransport(timeouts=FAST)
    try:
        yield t
    finally:
        await t.aclose()


async def _wait_for(predicate, timeout_s: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_post_round_trip_preserves_headers_and_body(
    server: Server, transport: AiohttpTransport
) -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"h\xc3\xa9"}]}'
    request = httpx.Request(
        "POST",
        server.url("/echo?a=1&b=x%20y"),
        headers=[
            ("x-api-key", "k"),
            ("X-Multi", "1"),
            ("x-multi", "2"),
            ("content-type", "application/json"),
        ],
        content=body,
    )
    response = await transport.handle_async_request(request)
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert response.headers.get_list("x-multi") == ["a", "b"]
    echoed = json.loads(await response.aread())
    assert echoed["method"] == "POST"
    assert echoed["target"] == "/echo?a=1&b=x%20y"
    assert echoed["body"].encode() == body
    # Exactly httpx's headers, in order and with all values: nothing added, nothing merged.
    sent = [(k.lower(), v) for k, v in echoed["headers"]]
    assert sent == [(k.decode().lower(), v.decode()) for k, v in request.headers.raw]
    assert response.is_closed and response.is_stream_consumed
    assert response.num_bytes_downloaded == len(response.content)


async def test_get_round_trip_without_body(server: Server, transport: AiohttpTransport) -> None:
    response = await transport.handle_async_request(httpx.Request("GET", server.url("/echo")))
    echoed = json.loads(await response.aread())
    assert echoed["method"] == "GET" and echoed["body"] == ""
    names = {k.lower() for k, _ in echoed["headers"]}
    assert names == {"host"}  # no User-Agent, Accept, Accept-Encoding or Content-Length added
    missing = await transport.handle_async_request(httpx.Request("GET", server.url("/missing")))
    assert missing.status_code == 404
    assert await missing.aread() == b"no"


async def test_streamed_request_body(server: Server, transport: AiohttpTransport) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for piece in (b"one ", b"two ", b"three"):
            yield piece

    response = await transport.handle_async_request(
        httpx.Request("POST", server.url("/echo"), content=parts())
    )
    echoed = json.loads(await response.aread())
    assert echoed["body"] == "one two three"
    assert [v for k, v in echoed["headers"] if k.lower() == "transfer-encoding"] == ["chunked"]


async def test_large_body_is_sent_whole(server: Server, transport: AiohttpTransport) -> None:
    body = b"x" * (3 * 2**20 // 2)  # a long-context prompt; aiohttp would warn above 1 MiB
    response = await transport.handle_async_request(
        httpx.Request("POST", server.url("/echo"), content=body)
    )
    echoed = json.loads(await response.aread())
    assert len(echoed["body"]) == len(body)


def test_build_request_matches_httpx() -> None:
    url = httpx.URL("http://127.0.0.1:8080/anthropic/v1/messages?beta=true")
    headers = [("content-type", "application/json"), ("X-Multi", "a"), ("x-multi", "b")]
    raw = httpx.Headers(headers).raw
    for method, content in [("POST", b'{"a":1}'), ("POST", b""), ("GET", b""), ("PUT", b"x")]:
        expected = httpx.Request(method, url, headers=headers, content=content)
        built = build_request(method, url, raw, content)
        assert built.method == expected.method
        assert built.url == expected.url
        assert built.headers.raw == expected.headers.raw
        assert built.content == expected.content
    given = build_request("POST", url, [(b"Host", b"example"), (b"Content-Length", b"1")], b"x")
    assert given.headers.raw == [(b"Host", b"example"), (b"Content-Length", b"1")]


async def test_build_request_round_trip(server: Server, transport: AiohttpTransport) -> None:
    request = build_request(
        "POST", httpx.URL(server.url("/echo")), [(b"x-api-key", b"k")], b"payload"
    )
    echoed = json.loads(await (await transport.handle_async_request(request)).aread())
    assert echoed["body"] == "payload"
    assert [k.lower() for k, _ in echoed["headers"]] == ["host", "x-api-key", "content-length"]


@pytest.mark.parametrize("how", ["aiter_bytes", "aiter_raw", "aiter_lines", "client"])
async def test_stream_chunks_are_seen_as_they_arrive(
    server: Server, transport: AiohttpTransport, how: str
) -> None:
    arrivals: list[float] = []
    data: list[bytes] = []
    if how == "client":
        async with (
            httpx.AsyncClient(transport=transport, timeout=5.0) as client,
            client.stream("POST", server.url("/chunks"), content=b"{}") as response,
        ):
            async for chunk in response.aiter_bytes():
                arrivals.append(time.perf_counter())
                data.append(chunk)
    else:
        response = await transport.handle_async_request(
            httpx.Request("POST", server.url("/chunks"), content=b"{}")
        )
        try:
            async for chunk in getattr(response, how)():
                arrivals.append(time.perf_counter())
                data.append(chunk.encode() if isinstance(chunk, str) else chunk)
        finally:
            await response.aclose()
    joined = b"".join(data) if how != "aiter_lines" else b"\n".join(data) + b"\n"
    assert joined.replace(b"\n", b"") == b"".join(b"data: %d" % i for i in range(5))
    firsts = [t for t, d in zip(arrivals, data, strict=True) if d.strip()]
    assert len(firsts) == 5, data  # one chunk per server write: nothing buffered until the end
    assert firsts == sorted(firsts)
    # The server spaces its writes 50 ms apart; the first must not wait for the last.
    assert firsts[-1] - firsts[0] > 0.1


async def test_connection_refused_is_connect_error(transport: AiohttpTransport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError) as info:
        await transport.handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{port}/"))
    assert info.value.__cause__ is not None
    assert info.value.request.url.port == port


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_drop_before_response_is_protocol_error(
    server: Server, transport: AiohttpTransport, method: str
) -> None:
    request = httpx.Request(
        method, server.url("/drop"), content=b"{}" if method == "POST" else None
    )
    async with asyncio.timeout(5):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await transport.handle_async_request(request)


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_drop_mid_stream_raises_from_iterator(
    server: Server, transport: AiohttpTransport, framing: str
) -> None:
    path = "/drop-mid?chunked" if framing == "chunked" else "/drop-mid"
    response = await transport.handle_async_request(httpx.Request("GET", server.url(path)))
    got = []
    async with asyncio.timeout(5):
        with pytest.raises(httpx.RemoteProtocolError) as info:
            async for chunk in response.aiter_bytes():
                got.append(chunk)
    assert b"".join(got) == b"partial"
    assert info.value.__cause__ is not None
    await response.aclose()
    # The non-streaming path fails the same way.
    response = await transport.handle_async_request(httpx.Request("GET", server.url(path)))
    async with asyncio.timeout(5):
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()


async def test_read_timeouts(server: Server) -> None:
    transport = AiohttpTransport(timeouts=TransportTimeouts(connect_s=5.0, read_s=0.2))
    try:
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(httpx.Request("GET", server.url("/stall-head")))
        response = await transport.handle_async_request(
            httpx.Request("GET", server.url("/stall-body"))
        )
        with pytest.raises(httpx.ReadTimeout):
            async for _ in response.aiter_raw():
                pass
        await response.aclose()
    finally:
        await transport.aclose()


async def test_read_timeout_counts_only_waits_for_the_network(server: Server) -> None:
    transport = AiohttpTransport(timeouts=TransportTimeouts(connect_s=5.0, read_s=0.2))
    try:
        response = await transport.handle_async_request(
            httpx.Request("POST", server.url("/chunks"), content=b"{}")
        )
        seen = []
        async for chunk in response.aiter_raw():
            seen.append(chunk)
            await asyncio.sleep(0.25)  # a slow reader: the data waits for it, not it for data
        assert len(b"".join(seen)) == len(b"".join(b"data: %d\n\n" % i for i in range(5)))
    finally:
        await transport.aclose()


async def test_outside_cancellation_is_not_a_timeout(server: Server) -> None:
    transport = AiohttpTransport(timeouts=TransportTimeouts(connect_s=5.0, read_s=0.2))
    try:
        task = asyncio.create_task(
            transport.handle_async_request(httpx.Request("GET", server.url("/stall-head")))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The watchdog and a later request are unaffected.
        ok = await transport.handle_async_request(httpx.Request("GET", server.url("/slow")))
        assert await ok.aread() == b"ok"
        assert not transport._waiting
    finally:
        await transport.aclose()


async def test_total_timeout(server: Server) -> None:
    transport = AiohttpTransport(timeouts=TransportTimeouts(read_s=5.0, total_s=0.3))
    try:
        response = await transport.handle_async_request(
            httpx.Request("GET", server.url("/stall-body"))
        )
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()
    finally:
        await transport.aclose()


async def test_client_timeout_extension_overrides_default(
    server: Server, transport: AiohttpTransport
) -> None:
    async with httpx.AsyncClient(
        transport=transport, timeout=httpx.Timeout(5.0, read=0.2)
    ) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url("/stall-head"))
        ok = await client.get(server.url("/slow"))
        assert ok.text == "ok"


async def test_gzip_is_decoded_once(server: Server, transport: AiohttpTransport) -> None:
    expected = b"hello " * 50
    response = await transport.handle_async_request(httpx.Request("GET", server.url("/gzip")))
    assert await response.aread() == expected
    response = await transport.handle_async_request(httpx.Request("GET", server.url("/gzip")))
    assert b"".join([c async for c in response.aiter_raw()]) == gzip.compress(expected)
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(server.url("/gzip"))).content == expected


async def test_async_client_over_transport(server: Server, transport: AiohttpTransport) -> None:
    async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
        response = await client.post(server.url("/echo"), json={"a": 1}, headers={"x-api-key": "k"})
        assert response.status_code == 200
        assert json.loads(response.json()["body"]) == {"a": 1}
        assert response.elapsed.total_seconds() >= 0


async def test_response_state_matches_httpx(server: Server, transport: AiohttpTransport) -> None:
    response = await transport.handle_async_request(httpx.Request("GET", server.url("/slow")))
    assert not response.is_closed
    assert await response.aread() == b"ok"
    assert await response.aread() == b"ok"
    assert [c async for c in response.aiter_bytes()] == [b"ok"]
    with pytest.raises(httpx.StreamConsumed):
        async for _ in response.aiter_raw():
            pass
    streamed = await transport.handle_async_request(httpx.Request("GET", server.url("/slow")))
    assert [c async for c in streamed.aiter_bytes()] == [b"ok"]
    assert streamed.is_closed and streamed.num_bytes_downloaded == 2
    with pytest.raises(httpx.StreamConsumed):
        await streamed.aread()


async def test_concurrent_requests_reuse_connections(
    server: Server, transport: AiohttpTransport
) -> None:
    async def one() -> bytes:
        response = await transport.handle_async_request(httpx.Request("GET", server.url("/slow")))
        return await response.aread()

    for _ in range(3):
        assert await asyncio.gather(*(one() for _ in range(10))) == [b"ok"] * 10
    assert len(server.requests) == 30
    assert server.accepted <= 10


async def test_limit_caps_connections(server: Server) -> None:
    transport = AiohttpTransport(limit=2, timeouts=FAST)
    try:

        async def one() -> int:
            response = await transport.handle_async_request(
                httpx.Request("GET", server.url("/slow"))
            )
            await response.aread()
            return response.status_code

        assert await asyncio.gather(*(one() for _ in range(8))) == [200] * 8
        assert server.accepted <= 2
    finally:
        await transport.aclose()


async def test_stream_left_early_is_drained_and_its_connection_reused(
    server: Server, transport: AiohttpTransport
) -> None:
    # An SSE reader returns at message_stop; the rest of the body arrives after aclose().
    response = await transport.handle_async_request(
        httpx.Request("POST", server.url("/chunks"), content=b"{}")
    )
    async for _ in response.aiter_raw():
        break
    await response.aclose()
    assert response.is_closed
    connector = transport.connector
    assert connector is not None
    assert await _wait_for(lambda: not transport._draining)
    again = await transport.handle_async_request(httpx.Request("GET", server.url("/slow")))
    assert await again.aread() == b"ok"
    assert server.accepted == 1  # the drained connection was reused, not closed


async def test_aclose_releases_connections(server: Server) -> None:
    transport = AiohttpTransport(timeouts=FAST)
    try:
        assert transport.connector is None  # nothing is created before the first request
        done = await transport.handle_async_request(httpx.Request("GET", server.url("/slow")))
        await done.aread()
        # A body that stalls after its first bytes is still draining when the transport closes.
        stalled = await transport.handle_async_request(
            httpx.Request("GET", server.url("/stall-body"))
        )
        async for _ in stalled.aiter_raw():
            break
        await stalled.aclose()
        assert transport._draining
        assert server.open_connections == 1
        connector = transport.connector
        assert connector is not None
    finally:
        await transport.aclose()
    assert connector.closed
    assert not transport._draining
    assert await _wait_for(lambda: server.open_connections == 0)
    with pytest.raises(RuntimeError):
        await transport.handle_async_request(httpx.Request("GET", server.url("/slow")))


def test_transport_is_made_anywhere_and_belongs_to_one_loop() -> None:
    transport = AiohttpTransport(timeouts=FAST)  # made outside any loop: the session is lazy

    def from_another_loop(url: str) -> None:
        async def attempt() -> None:
            await transport.handle_async_request(httpx.Request("GET", url))

        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(attempt())

    async def main() -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await serve_one(Server(port=0), reader, writer)
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/slow"
        try:
            response = await transport.handle_async_request(httpx.Request("GET", url))
            await response.aread()
            await asyncio.to_thread(from_another_loop, url)
            return response.status_code
        finally:
            await transport.aclose()
            srv.close()
            await srv.wait_closed()

    assert asyncio.run(main()) == 200
