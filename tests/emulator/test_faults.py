"""Every injected fault over real sockets, the per-key rate limit and the fault sequence."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import orjson
import pytest

from batchrunner.emulator import running_emulator
from batchrunner.emulator.config import EmulatorConfig

from .helpers import MESSAGES, body, client, wait_for


def test_drop_closes_the_connection_before_any_byte(make_emulator: Any) -> None:
    emu = make_emulator(fault_drop=1.0)
    with client(emu) as c, pytest.raises(httpx.RemoteProtocolError):
        c.post(MESSAGES, json=body())
    [truth] = emu.ground_truth()
    assert (
        truth["fault"] == "drop" and truth["outcome"] == "dropped" and truth["http_status"] is None
    )
    assert emu.stats()["by_outcome"] == {"dropped": 1}


def test_drop_applies_to_polls_too(make_emulator: Any) -> None:
    emu = make_emulator(fault_drop=1.0)
    with client(emu) as c, pytest.raises(httpx.RemoteProtocolError):
        c.post(MESSAGES, headers={"x-bf-async-id": "nope"})
    assert emu.ground_truth()[0]["kind"] == "async_poll"


def test_stall_outlasts_the_client_timeout(make_emulator: Any) -> None:
    emu = make_emulator(fault_stall=1.0)
    with client(emu, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        c.post(MESSAGES, json=body())
    # the client gave up; the emulator records the stall once the connection is gone
    assert wait_for(lambda: emu.stats()["by_outcome"].get("stalled") == 1)
    assert emu.ground_truth()[0]["fault"] == "stall"


def test_stall_ends_after_stall_s_with_a_closed_connection(make_emulator: Any) -> None:
    emu = make_emulator(fault_stall=1.0, stall_s=0.2)
    t0 = time.monotonic()
    with client(emu) as c, pytest.raises(httpx.RemoteProtocolError):
        c.post(MESSAGES, json=body())
    assert time.monotonic() - t0 >= 0.19


def test_stopping_the_emulator_ends_stalled_requests() -> None:
    errors: list[BaseException] = []
    cfg = EmulatorConfig(fault_stall=1.0)
    with running_emulator(cfg) as emu:
        host, port = "127.0.0.1", emu.port

        def stalled_call() -> None:
            try:
                with httpx.Client(timeout=30) as c:
                    c.post(f"http://{host}:{port}{MESSAGES}", json=body())
            except BaseException as exc:  # the stop must end the call with an error
                errors.append(exc)

        th = threading.Thread(target=stalled_call)
        th.start()
        assert wait_for(lambda: emu.stats()["in_flight"] == 1)
        t0 = time.monotonic()
    th.join(10)
    assert not th.is_alive() and time.monotonic() - t0 < 5
    assert errors and isinstance(errors[0], httpx.TransportError)


def test_429_carries_retry_after(make_emulator: Any) -> None:
    emu = make_emulator(fault_429=1.0, retry_after_s=7)
    with client(emu) as c:
        r = c.post(MESSAGES, json=body())
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert emu.stats()["faults"] == {"http_429": 1}


@pytest.mark.parametrize(
    ("field", "status", "etype"),
    [("fault_500", 500, "api_error"), ("fault_529", 529, "overloaded_error")],
)
def test_status_faults(make_emulator: Any, field: str, status: int, etype: str) -> None:
    emu = make_emulator(**{field: 1.0})
    with client(emu) as c:
        r = c.post(MESSAGES, json=body())
        s = c.post(MESSAGES, json=body(stream=True))  # before the first byte: a JSON error, not SSE
    for resp in (r, s):
        assert resp.status_code == status and resp.headers["content-type"] == "application/json"
        assert resp.json()["error"]["type"] == etype


def test_status_faults_do_not_hit_async_submits(make_emulator: Any) -> None:
    emu = make_emulator(fault_500=1.0, fault_429=0.0)
    with client(emu) as c:
        r = c.post(MESSAGES, json=body(), headers={"x-bf-async": "1"})
    assert r.status_code == 200 and r.json()["type"] == ""


def test_mid_stream_error_frame_ends_the_stream(make_emulator: Any) -> None:
    emu = make_emulator(fault_midstream=1.0, output_tokens="fixed:30", token_delay="fixed:0.001")
    with client(emu) as c:
        r = c.post(MESSAGES, json=body(stream=True))
        again = c.post(MESSAGES, json=body())  # the connection stays usable
    assert r.status_code == 200 and again.status_code == 200
    events = [blk.split("\n") for blk in r.text.strip().split("\n\n")]
    names = [e[0].removeprefix("event: ") for e in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-1] == "error" and "message_stop" not in names
    assert set(names[3:-1]) <= {"content_block_delta"}
    err = orjson.loads(events[-1][1].removeprefix("data: "))
    assert err == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    truth = emu.ground_truth()[0]
    assert truth["error_after_tokens"] == len(names) - 4


def test_per_key_rate_limit(make_emulator: Any) -> None:
    emu = make_emulator(rate_limit_rps=2.0)
    with client(emu) as c:
        a = [
            c.post(MESSAGES, json=body(), headers={"x-bf-vk": "sk-bf-a"}).status_code
            for _ in range(4)
        ]
        b = c.post(MESSAGES, json=body(), headers={"x-bf-vk": "sk-bf-b"})
        limited = c.post(MESSAGES, json=body(), headers={"x-bf-vk": "sk-bf-a"})
    assert a == [200, 200, 429, 429]  # burst = rps = 2
    assert b.status_code == 200  # another key has its own bucket
    # as Bifrost's governance: no retry-after (the provider's own 429s carry one)
    assert limited.status_code == 429 and "retry-after" not in limited.headers
    assert emu.stats()["faults"]["key_rate_limit"] == 3


def test_rate_limit_refills(make_emulator: Any) -> None:
    emu = make_emulator(rate_limit_rps=20.0, rate_limit_burst=1)
    with client(emu) as c:
        assert c.post(MESSAGES, json=body()).status_code == 200
        assert c.post(MESSAGES, json=body()).status_code == 429
        time.sleep(0.1)
        assert c.post(MESSAGES, json=body()).status_code == 200


def test_virtual_keys(make_emulator: Any) -> None:
    emu = make_emulator(virtual_keys=("sk-bf-good",))
    with client(emu) as c:
        ok = [
            c.post(MESSAGES, json=body(), headers=h).status_code
            for h in (
                {"x-bf-vk": "sk-bf-good"},
                {"authorization": "Bearer sk-bf-good"},
                {"x-api-key": "sk-bf-good"},
            )
        ]
        missing = c.post(MESSAGES, json=body(), headers={"x-api-key": "not-a-virtual-key"})
        unknown = c.post(MESSAGES, json=body(), headers={"authorization": "Bearer sk-bf-bad"})
    assert ok == [200, 200, 200]
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "virtual_key_required"
    assert unknown.status_code == 401 and unknown.json()["error"]["type"] == "virtual_key_not_found"
    emu.config.require_virtual_key = False  # live change: anonymous requests now pass
    with client(emu) as c:
        assert c.post(MESSAGES, json=body()).status_code == 200


def test_every_model_failing_is_an_error(make_emulator: Any) -> None:
    emu = make_emulator(fail_models=("claude-test", "gpt-4o"), fail_model_status=529)
    with client(emu) as c:
        r = c.post(MESSAGES, json=body(fallbacks=["openai/gpt-4o"]))
        ok = c.post(MESSAGES, json=body(model="anthropic/claude-other"))
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    assert ok.status_code == 200 and "x-bifrost-fallback-index" not in ok.headers
    assert ok.headers["x-bifrost-provider"] == "anthropic" and ok.json()["model"] == "claude-other"


def test_fault_rates_change_live_and_follow_the_seed(make_emulator: Any) -> None:
    def outcomes(emu: Any) -> list[int]:
        with client(emu) as c:
            return [c.post(MESSAGES, json=body()).status_code for _ in range(40)]

    a = make_emulator(seed=11, fault_500=0.3, fault_529=0.3)
    b = make_emulator(seed=11, fault_500=0.3, fault_529=0.3)
    first = outcomes(a)
    assert first == outcomes(b)  # same seed, same arrival order: same faults
    assert {200, 500, 529} <= set(first)
    a.config.fault_500 = 0.0
    a.config.fault_529 = 0.0
    assert set(outcomes(a)) == {200}
    with pytest.raises(ValueError):
        a.config.fault_500 = 1.5


def test_connection_errors_do_not_disturb_other_connections(make_emulator: Any) -> None:
    emu = make_emulator(fault_drop=0.5, seed=1)
    codes: list[int | None] = []
    with client(emu) as c:
        for _ in range(20):
            try:
                codes.append(c.post(MESSAGES, json=body()).status_code)
            except httpx.RemoteProtocolError:
                codes.append(None)
    assert None in codes and 200 in codes
    stats = emu.stats()
    assert (
        stats["by_outcome"]["dropped"] + stats["by_outcome"]["ok"] == 20 and stats["in_flight"] == 0
    )


def test_raw_drop_is_seen_as_eof(make_emulator: Any) -> None:
    emu = make_emulator(fault_drop=1.0)
    payload = orjson.dumps(body())
    req = b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
        MESSAGES.encode(),
        len(payload),
        payload,
    )
    with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as s:
        s.sendall(req)
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
    assert data == b""
