from __future__ import annotations

import asyncio
import io

from batchrunner.progress import LiveStats, ProgressDisplay


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def row(status="ok", latency=0.1, tokens=10, error_type=None):
    return {
        "status": status,
        "latency_s": latency,
        "output_tokens": tokens,
        "error_type": error_type,
    }


def test_line_shows_counts_rate_errors_in_flight_latency_and_eta():
    stats = LiveStats(total=100, already_done=10)
    for _ in range(8):
        stats.record(row(latency=0.2))
    stats.record(row("error", latency=0.05, error_type="api_error"))
    stats.record(row("timeout", latency=None, error_type="timeout"))
    stats.in_flight = 3
    line = stats.line()
    assert line.startswith("20/100 (20.0%)")
    assert "errors 2" in line and "in flight 3" in line
    assert "p50 200 ms" in line and "ETA" in line
    assert stats.errors_by_type == {"api_error": 1, "timeout": 1}


def test_stalled_requests_show_how_long_nothing_finished_instead_of_an_eta():
    # All sent, 3 in flight that a stalled gateway holds: an ETA from the average rate read
    # 0:00 for up to the 600 s read timeout.
    stats = LiveStats(total=10)
    for _ in range(7):
        stats.record(row())
    stats.in_flight = 3
    assert "ETA" in stats.line() and "none finished" not in stats.line()
    stats.last_done -= 75.0
    line = stats.line()
    assert "none finished for 1:15" in line and "ETA" not in line
    stats.in_flight = 0  # nothing in flight: nothing is stalled
    assert "none finished" not in stats.line()


async def test_display_draws_on_a_terminal_and_clears_at_the_end():
    stream = FakeTTY()
    stats = LiveStats(total=5)
    stats.record(row())
    display = ProgressDisplay(stats, stream)
    task = asyncio.create_task(display.run())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    out = stream.getvalue()
    assert "\r1/5 (20.0%)" in out
    assert out.endswith("\r")  # the line was wiped, so the summary starts clean


async def test_display_is_silent_when_not_a_terminal():
    stream = io.StringIO()
    display = ProgressDisplay(LiveStats(total=1), stream)
    await display.run()
    assert stream.getvalue() == ""


def test_a_run_with_a_spending_limit_shows_its_spend_against_it():
    stats = LiveStats(total=100)
    stats.record(row())
    assert "$" not in stats.line()
    stats.spent_usd, stats.cost_limit_usd = 12.3456, 25.0
    assert " | $12.35 of $25.00 | " in stats.line()
    stats.spent_usd, stats.cost_limit_usd = 0.00123, 0.002
    assert " | $0.001230 of $0.002000 | " in stats.line()


def test_a_session_with_max_requests_shows_its_own_end_and_eta(monkeypatch):
    # --max-requests 20 of 60: "16/60 (26.7%) | 10.0 req/s | ... | ETA 0:04", the ETA of all
    # 60 though the session stops at 20 (4 left: 0:00).
    import batchrunner.progress as progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    stats = LiveStats(total=60, session_limit=20)
    for _ in range(16):
        stats.record(row())
    stats.sent, stats.in_flight = 18, 2  # what --max-requests counts: the sends
    clock[0] += 1.6  # 10 requests a second
    line = stats.line()
    assert line.startswith("16/60 (26.7%), this session 18/20 sent | 10.0 req/s"), line
    assert line.endswith("ETA 0:00"), line
    # An input whose size is not known (a pipe) still has an end: the session's.
    unknown = LiveStats(total=None, session_limit=300)
    unknown.record(row())
    unknown.sent = 1
    clock[0] += 1.0
    assert unknown.line() == "1, this session 1/300 sent | 1.0 req/s | errors 0 | in flight 0 " \
                             "| p50 100 ms | ETA 4:59"
    # Rows of jobs an async resume found (not sent by this session) do not count as its sends.
    resumed = LiveStats(total=100, session_limit=20)
    for _ in range(30):
        resumed.record(row())
    resumed.sent = 5
    clock[0] += 1.0
    assert ", this session 5/20 sent |" in resumed.line()


def test_a_rate_limited_session_shows_its_429s_and_those_waiting_for_the_limit():
    async def main():
        from batchrunner.ratelimit import RateLimits

        stats = LiveStats(total=10)
        stats.rate_limits = limits = RateLimits(900.0, lambda: 4)
        stats.in_flight = 3
        assert "429s" not in stats.line()  # nothing before a first 429
        gate = limits.on_limited("claude-sonnet-4-5", 0.0, "HTTP 429 rate_limited: x")
        gate.closed_until = asyncio.get_running_loop().time() + 30  # paused
        waiters = [asyncio.ensure_future(gate.acquire()) for _ in range(2)]
        await asyncio.sleep(0)
        stats.last_done -= 10  # nothing finished for 10 s: waiting, not stalled
        line = stats.line()
        assert "in flight 3 | 429s 1, 2 waiting for the rate limit" in line
        assert "none finished for 0:10 (rate-limited)" in line
        limits.end()
        assert [await w for w in waiters] == [False, False]
        assert "429s 1 |" in stats.line()

    asyncio.run(main())
