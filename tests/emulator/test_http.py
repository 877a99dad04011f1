"""HTTP/1.1 handling over raw sockets, validation, and the ``/_emulator`` endpoints."""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any

import httpx
import orjson
import pytest

from batchrunner.emulator import Emulator

from .helpers import MESSAGES, body, client, raw_exchange, read_socket, wait_for


def post_bytes(payload: bytes, *, headers: bytes = b"", version: bytes = b"1.1") -> bytes:
    return (
        b"POST %s HTTP/%s\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n%s\r\n%s"
        % (
            MESSAGES.encode(),
            version,
            len(payload),
            headers,
            payload,
        )
    )


def test_health(emulator: Emulator) -> None:
    with client(emulator) as c:
        r = c.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_pipelined_requests_are_answered_in_order(emulator: Emulator) -> None:
    reqs = b"".join(post_bytes(orjson.dumps(body(max_tokens=n))) for n in (1, 2, 3, 4, 5))
    data = raw_exchange(
        emulator, reqs + b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n", read_until=b'{"status":"ok"}'
    )
    assert data.count(b"HTTP/1.1 200 OK") == 6
    tokens = [int(n) for n in re.findall(rb'"output_tokens":(\d+)', data)]
    assert tokens == [1, 2, 3, 4, 5]


def test_byte_by_byte_request_and_keep_alive(emulator: Emulator) -> None:
    req = post_bytes(orjson.dumps(body(max_tokens=2)))
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(req)):
            s.sendall(req[i : i + 1])
        first = read_socket(s, b'"output_tokens":2', 5)
        s.sendall(req)  # same connection, second request
        second = read_socket(s, b'"output_tokens":2', 5)
    assert first.startswith(b"HTTP/1.1 200 OK") and second.startswith(b"HTTP/1.1 200 OK")


def test_chunked_request_body_and_expect_continue(emulator: Emulator) -> None:
    payload = orjson.dumps(body(max_tokens=3))
    head = (
        b"POST %s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n"
        % MESSAGES.encode()
    )
    chunks = (
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:10], payload[10:])) + b"0\r\n\r\n"
    )
    data = raw_exchange(emulator, head + chunks, read_until=b'"output_tokens":3')
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")


def test_http10_stream_is_close_delimited(emulator: Emulator) -> None:
    data = raw_exchange(emulator, post_bytes(orjson.dumps(body(stream=True)), version=b"1.0"))
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and rest.rstrip().endswith(
        b'{"type":"message_stop"}'
    )


def test_garbage_gets_400_and_close(emulator: Emulator) -> None:
    data = raw_exchange(emulator, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")


def test_unknown_route_and_method(emulator: Emulator) -> None:
    with client(emulator) as c:
        assert c.get("/nope").status_code == 404
        r = c.get(MESSAGES)
    assert r.status_code == 405 and r.json()["type"] == "error"


def test_invalid_json(emulator: Emulator) -> None:
    with client(emulator) as c:
        for content in (b"{not json", b"[1, 2]", b""):
            r = c.post(MESSAGES, content=content)
            assert r.status_code == 400
            assert r.json() == {"type": "error", "error": {"type": "", "message": "Invalid JSON"}}


@pytest.mark.parametrize(
    "bad",
    [
        {"max_tokens": 5, "messages": []},
        {"model": "m", "messages": []},
        {"model": "m", "max_tokens": 5},
        {"model": 3, "max_tokens": 5, "messages": []},
        {"model": "m", "max_tokens": "5", "messages": []},
        {"model": "m", "max_tokens": True, "messages": []},
        {"model": "m", "max_tokens": 5, "messages": "hi"},
        {"model": "m", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]},
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]},
        {"model": "m", "max_tokens": 5, "messages": [], "stream": "yes"},
    ],
)
def test_validation_errors(emulator: Emulator, bad: dict[str, Any]) -> None:
    with client(emulator) as c:
        r = c.post(MESSAGES, json=bad)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_bad_fallbacks(emulator: Emulator) -> None:
    with client(emulator) as c:
        r = c.post(MESSAGES, json=body(fallbacks="openai/gpt-4o"))
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(
        "failed to parse fallbacks"
    )


def test_stream_event_sequence(emulator: Emulator) -> None:
    with client(emulator) as c:
        r = c.post(MESSAGES, json=body(stream=True, max_tokens=4))
    assert r.headers["content-type"] == "text/event-stream"
    assert (
        r.headers["x-bifrost-provider"] == "anthropic"
        and "x-bifrost-upstream-latency-ms" not in r.headers
    )
    blocks = r.text.split("\n\n")
    assert blocks[-1] == "" and "[DONE]" not in r.text
    events = [(b.split("\n")[0][7:], orjson.loads(b.split("\n")[1][6:])) for b in blocks[:-1]]
    names = [n for n, _ in events]
    assert names == ["message_start", "ping", "content_block_start"] + [
        "content_block_delta"
    ] * 4 + [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(n == d["type"] for n, d in events)
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4
    assert events[0][1]["message"]["usage"]["input_tokens"] == delta["usage"]["input_tokens"]


def test_stream_without_ping(make_emulator: Any) -> None:
    emu = make_emulator(stream_ping=False)
    with client(emu) as c:
        r = c.post(MESSAGES, json=body(stream=True))
    assert "event: ping" not in r.text


def test_request_id_header_and_ground_truth_since(emulator: Emulator) -> None:
    with client(emulator) as c:
        for i in range(3):
            c.post(MESSAGES, json=body(), headers={"x-request-id": f"run-{i}"})
        page = c.get("/_emulator/ground-truth", params={"since": 1}).json()
        assert [e["request_id"] for e in page["entries"]] == ["run-1", "run-2"]
        assert page["next"] == 3 and page["dropped"] == 0
        c.post(MESSAGES, json=body(), headers={"x-request-id": "run-3"})
        assert [
            e["request_id"]
            for e in c.get("/_emulator/ground-truth", params={"since": 3}).json()["entries"]
        ] == ["run-3"]
        assert c.get("/_emulator/ground-truth", params={"since": 4}).json() == {
            "next": 4,
            "dropped": 0,
            "entries": [],
        }
        limited = c.get("/_emulator/ground-truth", params={"limit": 2}).json()
        assert len(limited["entries"]) == 2 and limited["next"] == 2
        stats = c.get("/_emulator/stats").json()
        assert stats["requests"] == 4 and stats["by_kind"] == {"sync": 4}
        assert c.post("/_emulator/reset").json() == {"ok": True}
        assert c.get("/_emulator/stats").json()["requests"] == 0
        assert c.get("/_emulator/ground-truth").json()["entries"] == []
    assert emulator.ground_truth_page(since=0)["next"] == 4  # sequence numbers keep counting


def test_ground_truth_timestamps_and_fields(make_emulator: Any) -> None:
    emu = make_emulator(ttft="fixed:0.05", token_delay="fixed:0.002", output_tokens="fixed:10")
    t0 = time.time()
    with client(emu) as c:
        c.post(MESSAGES, json=body(stream=True))
        c.post(MESSAGES, json=body())
    stream, sync = emu.ground_truth()
    for e in (stream, sync):
        assert t0 <= e["received_at"] <= e["started_at"] <= e["first_byte_at"] <= e["done_at"]
        assert e["ttft_s"] == 0.05 and e["token_delays_s"] == [0.002] * 9
        assert e["done_at"] - e["started_at"] >= 0.05 + 9 * 0.002 - 0.002
    assert stream["first_token_at"] - stream["started_at"] >= 0.049
    assert stream["first_byte_at"] < stream["first_token_at"]  # headers and message_start go first


def test_config_endpoint_changes_live_fields(emulator: Emulator) -> None:
    with client(emulator) as c:
        assert c.get("/_emulator/config").json()["fault_500"] == 0.0
        r = c.post("/_emulator/config", json={"fault_500": 1.0})
        assert r.status_code == 200 and r.json()["fault_500"] == 1.0
        assert c.post(MESSAGES, json=body()).status_code == 500
        assert c.post("/_emulator/config", json={"slots": 3}).status_code == 400  # not live
        assert c.post("/_emulator/config", json={"fault_500": 2}).status_code == 400
        assert c.post("/_emulator/config", json={"nope": 1}).status_code == 400
    assert emulator.config.fault_500 == 1.0


def test_config_from_get_posts_back_unchanged(emulator: Emulator) -> None:
    awkward = {
        "ttft": "lognormal:0.0123456789,0.3333333333333333",
        "token_delay": "uniform:0.000123456789,0.000987654321",
        "output_tokens": "normal:31.41592653589793,2.718281828459045",
        "prefill_s_per_token": 1.23456789e-7,
        "seed": 2**64 - 1,
    }
    with client(emulator) as c:
        assert c.post("/_emulator/config", json=awkward).status_code == 200
        before = c.get("/_emulator/config").json()
        first = c.post(MESSAGES, json=body()).json()
        r = c.post("/_emulator/config", json=before)  # fixed fields (slots…) too, unchanged
        assert r.status_code == 200 and r.json() == before
        assert c.get("/_emulator/config").json() == before
        second = c.post(MESSAGES, json=body()).json()
        assert c.post("/_emulator/config", json={**before, "slots": 3}).status_code == 400
    assert first["usage"] == second["usage"] and first["content"] == second["content"]
    a, b = emulator.ground_truth()
    assert (a["ttft_s"], a["token_delays_s"]) == (b["ttft_s"], b["token_delays_s"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", 2**127), ("seed", 2**64), ("seed", -(2**64)), ("retry_after_s", 10**30)],
)
def test_config_rejects_integers_past_64_bits(emulator: Emulator, field: str, value: int) -> None:
    with client(emulator) as c:
        r = c.post("/_emulator/config", json={field: value})
        assert r.status_code == 400 and field in r.json()["error"]["message"]
        assert c.get("/_emulator/config").status_code == 200
        assert c.post(MESSAGES, json=body()).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_half_closed_client_gets_its_answers_then_a_close(make_emulator: Any, stream: bool) -> None:
    emu = make_emulator(ttft="fixed:0.1", token_delay="fixed:0.005", output_tokens="fixed:5")
    reqs = post_bytes(orjson.dumps(body(max_tokens=3))) + post_bytes(
        orjson.dumps(body(stream=stream))
    )
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as s:
        s.sendall(reqs)
        s.shutdown(socket.SHUT_WR)  # nothing more to send; still reading
        data = read_socket(s, None, 5)  # until the emulator closes
    assert data.count(b"HTTP/1.1 200 OK") == 2 and b'"output_tokens":3' in data
    assert (b"event: message_stop" in data) if stream else (b'"output_tokens":5' in data)
    assert wait_for(lambda: emu.stats()["connections"] == 0)
    assert emu.stats()["by_outcome"] == {"ok": 2}


def test_half_close_with_nothing_complete_closes_at_once(make_emulator: Any) -> None:
    emu = make_emulator(fault_stall=1.0)
    for payload in (post_bytes(orjson.dumps(body()))[:-5], post_bytes(orjson.dumps(body()))):
        # a partial request can never be answered, and a stall answers nothing anyway
        with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            t0 = time.monotonic()
            assert read_socket(s, None, 5) == b"" and time.monotonic() - t0 < 2
    assert wait_for(lambda: emu.stats()["by_outcome"] == {"stalled": 1})


def test_ground_truth_off_and_cap(make_emulator: Any) -> None:
    off = make_emulator(ground_truth=False)
    capped = make_emulator(ground_truth_max=3)
    for emu in (off, capped):
        with client(emu) as c:
            for _ in range(5):
                c.post(MESSAGES, json=body())
    assert off.ground_truth() == [] and off.stats()["requests"] == 5
    page = capped.ground_truth_page()
    assert [e["seq"] for e in page["entries"]] == [2, 3, 4] and page["dropped"] == 2


def test_slots_queue_in_fifo_order(make_emulator: Any) -> None:
    emu = make_emulator(slots=2, ttft="fixed:0.1", output_tokens="fixed:1")
    socks = [socket.create_connection(("127.0.0.1", emu.port), timeout=5) for _ in range(6)]
    try:
        for i, s in enumerate(socks):
            s.sendall(post_bytes(orjson.dumps(body()), headers=b"x-request-id: %d\r\n" % i))
            assert wait_for(lambda i=i: emu.stats()["in_flight"] == i + 1)  # arrival order = i
        replies = [read_socket(s, b'"output_tokens":1', 5) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(r.startswith(b"HTTP/1.1 200 OK") for r in replies)
    stats = emu.stats()
    assert stats["active_max"] == 2 and stats["queued_max"] == 4 and stats["in_flight_max"] == 6
    truth = {e["request_id"]: e for e in emu.ground_truth()}
    starts = [truth[str(i)]["started_at"] for i in range(6)]
    assert starts == sorted(starts)  # FIFO
    assert starts[4] - starts[0] >= 0.19  # the third pair waited for two earlier rounds


def test_in_flight_high_water_mark(make_emulator: Any) -> None:
    emu = make_emulator(ttft="fixed:0.2")

    def call() -> None:
        with client(emu) as c:
            c.post(MESSAGES, json=body())

    threads = [threading.Thread(target=call) for _ in range(4)]
    for th in threads:
        th.start()
    assert wait_for(lambda: emu.stats()["in_flight"] == 4)
    for th in threads:
        th.join(10)
    stats = emu.stats()
    assert stats["in_flight"] == 0 and stats["in_flight_max"] == 4


def test_client_disconnect_mid_stream_is_recorded(make_emulator: Any) -> None:
    emu = make_emulator(ttft="fixed:0", token_delay="fixed:0.05", output_tokens="fixed:40")
    with client(emu) as c, c.stream("POST", MESSAGES, json=body(stream=True)) as r:
        for line in r.iter_lines():
            if "content_block_delta" in line:
                break
    assert wait_for(lambda: emu.stats()["by_outcome"].get("client_closed") == 1)
    assert emu.stats()["in_flight"] == 0


def test_count_tokens(emulator: Emulator) -> None:
    with client(emulator) as c:
        r = c.post(
            MESSAGES + "/count_tokens",
            json={"model": "m", "messages": [{"role": "user", "content": "x" * 40}]},
        )
    assert r.status_code == 200 and r.json() == {"input_tokens": 10}


def test_many_concurrent_connections(emulator: Emulator) -> None:
    async def run() -> list[int]:
        import asyncio

        async with httpx.AsyncClient(
            base_url=emulator.base_url, limits=httpx.Limits(max_connections=20)
        ) as c:
            rs = await asyncio.gather(
                *(c.post(MESSAGES, json=body(stream=i % 2 == 0)) for i in range(100))
            )
        return [r.status_code for r in rs]

    import asyncio

    assert set(asyncio.run(run())) == {200}
    assert emulator.stats()["requests"] == 100
