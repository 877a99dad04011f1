"""A gateway that rate-limits (HTTP 429 without retry-after, as Bifrost's governance does):
the run slows down instead of turning requests into error rows."""

from __future__ import annotations

import asyncio
import math
import re
import signal
import time

import orjson
import pytest

from batchrunner.config import RunConfig
from batchrunner.emulator.config import Dist
from batchrunner.ratelimit import BASE_PAUSE_S, PRESSURE, WALL_AFTER_S, ModelGate, RateLimits
from batchrunner.retry import RetryPolicy
from batchrunner.runner import EXIT_ABORTED, EXIT_OK, run_sync

from .conftest import read_rows, run_cli, write_requests
from .test_run_cli import start_run

MODEL = "claude-sonnet-4-5"


def run(requests, gateway, out, **kw):
    return run_sync(RunConfig(requests=requests, gateway=gateway, out=out, **kw), quiet=True)


def test_a_rate_limited_run_ends_with_every_request_ok_and_no_retry_spent(
    make_emulator, requests_file, tmp_path
):
    # 100 requests/s per key, 16 workers of ~10 ms each (~1,600/s wanted): without slowing
    # down, with one retry each, most requests ended as rate_limited error rows.
    with make_emulator(rate_limit_rps=100, rate_limit_burst=10, ttft=Dist("fixed", 0.01)) as emu:
        result = run(requests_file(120), emu.base_url, tmp_path / "out", concurrency=16,
                     retry=RetryPolicy(max_retries=1))
        stats = emu.stats()
    rows = read_rows(tmp_path / "out")
    assert result.exit_code == EXIT_OK, result.message
    assert len(rows) == 120 and set(rows["status"]) == {"ok"}
    limited = stats["faults"]["key_rate_limit"]
    assert limited > 0  # the limit was met...
    # ...and every 429 is an attempt of some row, sent again without using up its one retry
    assert (rows["attempts"] - 1).sum() == limited
    assert rows["attempts"].max() > 2
    info = orjson.loads((tmp_path / "out" / "run.json").read_bytes())
    described = info["sessions"][-1]["rate_limited"]
    assert described["attempts"] == limited
    assert described["models"][MODEL]["attempts"] == limited
    assert 1 <= described["models"][MODEL]["fewest_in_flight"] < 16
    assert described["gave_up_on"] is None
    assert result.summary["rate_limited"]["attempts"] == limited


def test_the_run_says_it_slows_down_and_the_summary_counts_the_429s(make_emulator, tmp_path):
    requests = write_requests(tmp_path / "set.jsonl", 40)
    with make_emulator(rate_limit_rps=50, rate_limit_burst=5) as emu:
        done = run_cli("run", str(requests), "--gateway", emu.base_url, "--out",
                       str(tmp_path / "out"), "-c", "8")
        limited = emu.stats()["faults"]["key_rate_limit"]
    assert done.returncode == 0, done.stderr
    assert limited > 0
    assert (f"The gateway rate-limits requests for {MODEL} (HTTP 429 rate_limited: rate limit "
            "exceeded for this virtual key (emulated)): slowing them down") in done.stderr
    assert "sent again without using up a retry" in done.stderr
    assert (f"limited    {limited} attempt{'s' if limited > 1 else ''} answered 429 (rate "
            "limited), waited out without using up retries, this session "
            f"({MODEL} down to ") in done.stdout
    assert "requests   40  (ok 40)" in done.stdout


def test_a_model_rate_limited_too_long_stops_the_run_and_a_resume_sends_the_rest(
    make_emulator, tmp_path
):
    # One model's limit never resets (here: every request of it is answered 429) while the
    # other model is served: after --max-rate-limit-wait the run stops; the waiting requests
    # end as cancelled, and a resume sends them.
    other = "claude-haiku-4-5"
    requests = tmp_path / "set.jsonl"
    lines = [
        {"custom_id": f"r{i}", "params": {"model": other if i < 6 else MODEL, "max_tokens": 8,
                                          "messages": [{"role": "user", "content": f"q{i}"}]}}
        for i in range(10)
    ]
    requests.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    out = tmp_path / "out"
    with make_emulator(fail_models=(MODEL,), fail_model_status=429) as emu:
        done = run_cli("run", str(requests), "--gateway", emu.base_url, "--out", str(out),
                       "-c", "2", "--max-rate-limit-wait", "1")
        assert done.returncode == EXIT_ABORTED, done.stderr
        # After 1 s at least; when exactly depends on the jittered waits of its requests.
        assert re.search(rf"the gateway has rate-limited every request for {MODEL} for \d+ s "
                         r"\(HTTP 429 rate_limit_error", done.stderr), done.stderr
        assert "--max-rate-limit-wait 1)" in done.stderr
        rows = read_rows(out).sort_values("input_index")
        assert rows["input_index"].is_unique
        served = rows[rows["input_index"] < 6]
        assert len(served) == 6  # the other model was served
        assert set(served["status"]) == {"ok"} and (served["attempts"] == 1).all()
        waiting = rows[rows["input_index"] >= 6]
        assert len(waiting) >= 1 and set(waiting["status"]) == {"cancelled"}
        assert waiting["error_message"].str.contains(
            f"the gateway rate-limited every request for {MODEL} for too long (HTTP 429; "
            "--max-rate-limit-wait)", regex=False).all()
        info = orjson.loads((out / "run.json").read_bytes())
        assert info["sessions"][-1]["rate_limited"]["gave_up_on"] == MODEL

        # The limit lifted: a plain resume sends the cancelled rows, and only those.
        emu.config.fail_models = ()
        before = emu.stats()["requests"]
        again = run_cli("run", str(requests), "--gateway", emu.base_url, "--out", str(out))
        sent = emu.stats()["requests"] - before
    assert again.returncode == 0, again.stderr
    rows = read_rows(out)
    assert sent == 4  # the rate-limited model's four requests, nothing else again
    assert sorted(rows["input_index"]) == list(range(10)) and set(rows["status"]) == {"ok"}


def test_ctrl_c_does_not_wait_out_a_429s_retry_after(make_emulator, tmp_path):
    # Every answer a 429 asking for 60 s: the first Ctrl-C must end the waiting at once (the
    # rows cancelled, for a resume). It sat out the 30 s drain, and the rows then blamed it.
    # Its message said it waited "up to 30 s for 3 requests in flight": only requests queued
    # at a model's gate were counted as waiting, not those resting after their 429.
    requests = write_requests(tmp_path / "set.jsonl", 6)
    out = tmp_path / "out"
    with make_emulator(fault_429=1.0, retry_after_s=60) as emu:
        proc = start_run(str(requests), "--gateway", emu.base_url, "--out", str(out), "-c", "3")
        deadline = time.monotonic() + 20
        while emu.stats()["requests"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the three 429s are in: their requests rest
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=45)
        sent = emu.stats()["requests"]
    assert proc.returncode == 3, stderr
    assert ("the 3 requests waiting for the gateway end as cancelled, not sent; nothing is in "
            "flight.") in stderr, stderr
    assert sent == 3
    rows = read_rows(out)
    assert len(rows) == 3 and set(rows["status"]) == {"cancelled"}
    assert rows["error_message"].str.startswith("not retried: the run stopped before the "
                                                "retry").all()
    assert not rows["error_message"].str.contains("--drain-timeout", regex=False).any()


def test_a_stop_ends_every_retrys_back_off(make_emulator, requests_file, tmp_path):
    # Any failure's back-off (here 529s, up to 60 s each) ends at a stop (--duration): the rows
    # sat out the drain and then blamed it ("still unanswered 5 s after the sending stopped").
    with make_emulator(fault_529=1.0) as emu:
        result = run(requests_file(4), emu.base_url, tmp_path / "out", concurrency=4,
                     duration_s=0.5, drain_timeout_s=5.0,
                     retry=RetryPolicy(max_retries=3, backoff_base_s=60, backoff_max_s=60))
        sent = emu.stats()["requests"]
    rows = read_rows(tmp_path / "out")
    assert result.status == "incomplete" and sent == 4
    assert len(rows) == 4 and set(rows["status"]) == {"cancelled"}
    assert rows["error_message"].str.startswith(
        "not retried: the run stopped before the retry (attempt failed with overloaded_error").all()


def test_max_rate_limit_wait_0_retries_429s_like_any_failure(make_emulator, tmp_path):
    requests = write_requests(tmp_path / "set.jsonl", 3)
    with make_emulator(fail_models=(MODEL,), fail_model_status=429) as emu:
        done = run_cli("run", str(requests), "--gateway", emu.base_url, "--out",
                       str(tmp_path / "out"), "--max-rate-limit-wait", "0", "--max-retries", "1",
                       "--max-error-rate", "1")
        sent = emu.stats()["requests"]
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path / "out")
    assert set(rows["status"]) == {"error"} and set(rows["http_status"]) == {429}
    assert (rows["attempts"] == 2).all() and sent == 6
    assert "slowing them down" not in done.stderr


# -- the pace itself (no gateway: the gates' arithmetic and waiting) ------------------------


def _limits(in_flight: int = 16, limit_s: float = math.inf, **kw) -> RateLimits:
    return RateLimits(limit_s, lambda: in_flight, **kw)


def _pressure(limits: RateLimits, sent: float = 0.0) -> ModelGate:
    """PRESSURE 429s of one burst (sent at *sent*): the model is slowed down at the last."""
    for _ in range(PRESSURE):
        gate = limits.on_limited(MODEL, sent, "HTTP 429 rate_limited: x")
    return gate


def test_a_sporadic_429_slows_nothing_down():
    async def main():
        slowed = []
        limits = _limits(16, on_slowed=lambda model, error: slowed.append(model))
        assert not limits.active and limits.gate(MODEL) is None
        gate = limits.on_limited(MODEL, 0.0, "e")
        assert limits.active and not gate.slowed and slowed == []
        for _ in range(40):  # a 429 in every ten answers: under the pressure
            for _ in range(9):
                gate.on_success()
            limits.on_limited(MODEL, time.perf_counter(), "e")
        assert not gate.slowed and gate.closed_until == 0 and slowed == []
        assert await gate.acquire()  # at once
        gate.release()
        assert limits.describe()["models"][MODEL] == {"attempts": 41, "waited_out": 0,
                                                      "fewest_in_flight": None}

    asyncio.run(main())


def test_sustained_429s_halve_the_requests_in_flight_once_per_burst():
    async def main():
        slowed = []
        limits = _limits(16, on_slowed=lambda model, error: slowed.append((model, error)))
        gate = _pressure(limits)
        assert gate.slowed and gate.window == 8  # half the session's 16 in flight
        assert slowed == [(MODEL, "HTTP 429 rate_limited: x")]
        assert gate.closed_until == 0  # no pause: successes may still come between 429s
        gate.in_flight = 6
        limits.on_limited(MODEL, gate.cut_at - 1.0, "e")  # sent before the cut: same burst
        assert gate.window == 8
        limits.on_limited(MODEL, gate.cut_at + 1e-6, "e")  # a new burst
        assert gate.window == 3 and gate.closed_until == 0  # its own 6 in flight, halved
        gate.on_success()
        assert gate.window == pytest.approx(3 + 1 / 3) and gate.limited_for() == 0
        gate.in_flight = 0
        _pressure(limits, gate.cut_at + 1e-6)
        assert gate.window == 1  # never below one
        assert len(slowed) == 1  # said once
        assert limits.describe()["models"][MODEL]["fewest_in_flight"] == 1

    asyncio.run(main())


def test_a_model_with_no_success_for_a_while_pauses_longer_at_each_burst():
    async def main():
        limits = _limits(16)
        gate = _pressure(limits)
        loop = asyncio.get_running_loop()
        gate.limited_since = time.monotonic() - WALL_AFTER_S  # only 429s for a second
        limits.on_limited(MODEL, gate.cut_at + 1e-6, "e")
        assert gate.pauses == 1
        assert gate.closed_until == pytest.approx(loop.time() + BASE_PAUSE_S, abs=0.05)
        limits.on_limited(MODEL, gate.cut_at + 1e-6, "e")
        assert gate.closed_until == pytest.approx(loop.time() + 2 * BASE_PAUSE_S, abs=0.05)
        gate.on_success()
        assert gate.pauses == 0
        gate.closed_until = 0.0  # as if the pause had passed
        _pressure(limits, gate.cut_at + 1e-6)
        assert gate.closed_until == 0.0  # a success came: no pause at the next burst
        # Never past --max-rate-limit-wait: the 429 that ends the waiting comes on time
        short = _limits(16, limit_s=1.2)
        gate = _pressure(short)
        gate.limited_since = time.monotonic() - 1.0
        gate.pauses = 10  # 256 s, were it not cut
        short.on_limited(MODEL, gate.cut_at + 1e-6, "e")
        assert gate.closed_until == pytest.approx(loop.time() + 0.2, abs=0.05)

    asyncio.run(main())


def test_waiters_go_oldest_first_as_the_window_has_room():
    async def main():
        limits = _limits(4)
        gate = _pressure(limits)  # window 2, no pause
        order = []

        async def one(i):
            assert await gate.acquire()
            order.append(i)
            await asyncio.sleep(0.01 * (i + 1))
            gate.release()

        await asyncio.gather(*(one(i) for i in range(5)))
        assert order == [0, 1, 2, 3, 4]
        assert gate.in_flight == 0

    asyncio.run(main())


def test_a_pause_holds_sends_until_it_ends():
    async def main():
        limits = _limits(4)
        gate = _pressure(limits)
        gate.limited_since = time.monotonic() - WALL_AFTER_S
        limits.on_limited(MODEL, gate.cut_at + 1e-6, "e")  # no success for a second: paused
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await gate.acquire()
        assert loop.time() - started >= BASE_PAUSE_S - 0.01
        gate.release()
        assert gate.in_flight == 0

    asyncio.run(main())


def test_an_admitted_waiter_cancelled_before_sending_gives_its_room_back():
    async def main():
        limits = _limits(2)
        gate = _pressure(limits)  # window 1
        gate.closed_until = asyncio.get_running_loop().time() + 0.05
        waiting = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        assert gate.waiting == 1
        await asyncio.sleep(0.1)  # admitted when the pause ended...
        assert waiting.done() and waiting.result() is True and gate.in_flight == 1
        gate.release()
        second = asyncio.ensure_future(gate.acquire())
        third = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        assert second.done() and not third.done()
        second.cancel()  # already admitted: cancelling the caller must not keep its room
        gate.release()
        assert await third

    asyncio.run(main())


def test_a_model_limited_past_the_limit_ends_the_waiting_and_names_the_model():
    async def main():
        said = []
        limits = _limits(4, limit_s=0.05, on_give_up=said.append)
        gate = _pressure(limits)
        gate.closed_until = asyncio.get_running_loop().time() + 10
        waiter = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0.06)
        other = limits.on_limited("claude-haiku-4-5", 0.0, "e")
        assert not limits.ended  # the other model was only just limited
        limits.on_limited(MODEL, 0.0, "HTTP 429 rate_limited: x")
        assert limits.ended and limits.gave_up_on == MODEL
        assert await waiter is False
        assert await other.acquire() is False
        assert said == [
            f"the gateway has rate-limited every request for {MODEL} for 0 s (HTTP 429 "
            "rate_limited: x; --max-rate-limit-wait 0.05); the requests waiting for a rate "
            "limit end as cancelled, which a resume sends again once the limit has reset"]
        assert limits.describe()["gave_up_on"] == MODEL

    asyncio.run(main())


def test_one_models_limit_does_not_slow_another():
    async def main():
        limits = _limits(4)
        _pressure(limits)
        assert limits.gate("claude-haiku-4-5") is None  # never limited: sent as before
        assert isinstance(limits.gate(MODEL), ModelGate)

    asyncio.run(main())
