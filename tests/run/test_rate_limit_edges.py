"""Edge cases of the 429 handling (batchrunner.ratelimit) found in review: a wake dropped, a
retry-after outlasting --max-rate-limit-wait, requests over a limit of their own, and a limit
shared by every request."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import time

import orjson

from batchrunner.emulator.config import Dist
from batchrunner.ratelimit import PRESSURE, WALL_AFTER_S, RateLimits

from .conftest import read_rows

MODEL = "claude-sonnet-4-5"
OTHER = "claude-haiku-4-5"


def _line(i: int, **params) -> bytes:
    body = {"model": MODEL, "max_tokens": 8,
            "messages": [{"role": "user", "content": f"q{i}"}], **params}
    return orjson.dumps({"custom_id": f"r{i}", "params": body}) + b"\n"


def test_a_429_that_moves_the_pause_later_keeps_the_waiters_wake():
    # A waiter queued at a paused model, then a 429 that moves the reopening later, from a
    # request that does not come back (its retries spent): the wake was dropped, not armed
    # again, and the waiter waited for ever (a run hung).
    async def main():
        limits = RateLimits(math.inf, lambda: 4)
        for _ in range(PRESSURE):  # slowed down: a window of 2
            gate = limits.on_limited(MODEL, 0.0, "e")
        gate.limited_since = time.monotonic() - WALL_AFTER_S  # no success for a while
        limits.on_limited(MODEL, gate.cut_at + 1e-6, "e")  # a burst: a pause
        gate.in_flight = 2  # the window is full: the next one waits
        waiter = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        assert gate._wake is not None
        gate.in_flight = 0  # (the two in flight ended while paused)
        limits.on_limited(MODEL, gate.cut_at + 1e-6, "e")  # a third burst: a longer pause
        assert await asyncio.wait_for(waiter, 5.0) is True

    asyncio.run(main())


def test_a_first_retry_after_longer_than_the_wait_does_not_outlast_it(make_emulator, tmp_path):
    # Every request is answered 429 with retry-after: 6. With --max-rate-limit-wait 1 the run
    # must stop about 1 s after the first 429 (a later 429's pause is cut to what is left of
    # the wait: "the 429 that ends it comes on time"); the first 429's pause was not cut, so
    # the run waited the whole 6 s (up to --max-retry-after, 120 s by default) before it.
    requests = tmp_path / "set.jsonl"
    requests.write_bytes(b"".join(_line(i) for i in range(4)))
    emu = make_emulator(fault_429=1.0, retry_after_s=6)
    done = subprocess.run(
        [sys.executable, "-m", "batchrunner", "run", str(requests), "--gateway",
         emu.base_url, "--out", str(tmp_path / "out"), "-c", "2",
         "--max-rate-limit-wait", "1"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "--max-rate-limit-wait 1)" in done.stderr
    waited = int(re.search(r"rate-limited every request for \S+ for (\d+) s", done.stderr)[1])
    assert waited <= 3, done.stderr  # the waiting ended at the limit, not at the retry-after


def test_requests_over_their_own_limit_end_as_errors_and_do_not_hold_the_run(
    make_emulator, tmp_path
):
    # 4 requests of 200 are over a limit of their own (the emulator fails their model with
    # 429; the 196 others are served by a fallback: they succeed). Each of their 429s paused
    # the model (the 196 others took ~25 s instead of 1.3 s), and once the others were done,
    # nothing told them from a limit that ran out: they waited --max-rate-limit-wait (900 s).
    # Now they spend their retries and end as error rows.
    requests = tmp_path / "set.jsonl"
    # Early in the set: their 429s meet the others' successes (a request whose 429s all come
    # after the rest of its model is done cannot be told from a limit that ran out).
    requests.write_bytes(b"".join(
        _line(i) if i % 10 == 0 and i < 40 else _line(i, fallbacks=[OTHER]) for i in range(200)))
    out = tmp_path / "out"
    emu = make_emulator(fail_models=(MODEL,), fail_model_status=429, ttft=Dist("fixed", 0.05))
    done = subprocess.run(
        [sys.executable, "-m", "batchrunner", "run", str(requests), "--gateway", emu.base_url,
         "--out", str(out), "-c", "8", "--max-error-rate", "1"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    over_limit = (rows["input_index"] % 10 == 0) & (rows["input_index"] < 40)
    served = rows[~over_limit]
    assert set(served["status"]) == {"ok"} and len(served) == 196
    over = rows[over_limit]
    assert set(over["status"]) == {"error"} and set(over["http_status"]) == {429}
    assert (over["attempts"] > 5).all()  # 429s waited out first, then the 4 retries


def test_a_shared_rate_limit_ends_no_request_as_an_error(make_emulator, tmp_path):
    # A key limited to 10 requests/s (a strict bucket: burst 1), no request larger than any
    # limit. Every 429 is the shared limit's, yet a request re-queued behind others saw some of
    # them succeed between its 429s, counted them as its own ("alone"), and after 8 spent its
    # retries: with --max-retries 1 some rows ended rate_limited errors. (It also ran at ~1
    # request/s, a tenth of the limit: every success was followed by a pause.)
    requests = tmp_path / "set.jsonl"
    requests.write_bytes(b"".join(_line(i) for i in range(40)))
    out = tmp_path / "out"
    emu = make_emulator(rate_limit_rps=10, rate_limit_burst=1, ttft=Dist("fixed", 0.01))
    done = subprocess.run(
        [sys.executable, "-m", "batchrunner", "run", str(requests), "--gateway", emu.base_url,
         "--out", str(out), "-c", "16", "--max-retries", "1", "--max-error-rate", "1"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert len(rows) == 40
    assert set(rows["status"]) == {"ok"}, rows["error_type"].value_counts().to_dict()
