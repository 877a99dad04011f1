"""A gateway that cannot be connected to for a while: requests wait for it, spending no retries
(batchrunner/outage.py), over real sockets, and the pure waiting logic with a scripted probe."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from batchrunner.emulator import EmulatorConfig, running_emulator
from batchrunner.emulator.config import Dist
from batchrunner.outage import GatewayOutage

from .conftest import read_rows, run_cli
from .test_run_cli import resume_hint, start_run, wait_for_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_gateway_restart_is_waited_out_without_spending_retries(requests_file, tmp_path):
    # Before: with --max-retries 1 every request in flight or started during the ~1.5 s
    # outage spent its retry within a second and ended as an error row (hundreds of them at
    # higher rates, and 20 in a row stopped the run).
    requests, out = requests_file(300), tmp_path / "out"
    config = EmulatorConfig(ttft=Dist("fixed", 0.02))
    with running_emulator(config) as emu:
        port = int(emu.base_url.rsplit(":", 1)[1])
        proc = start_run(
            str(requests), "--gateway", emu.base_url, "-c", "4", "--max-retries", "1",
            "--out", str(out),
        )  # fmt: skip
        wait_for_rows(out, 20, proc)
    time.sleep(1.5)  # the gateway is down: refused connections
    with running_emulator(config, port=port):
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    down = "The gateway cannot be connected to (ConnectError: cannot connect to 127.0.0.1:"
    assert down in stderr
    assert "The gateway takes connections again after " in stderr
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(300))
    assert set(rows["status"]) == {"ok"}
    # The waiting requests tried every 0.25 s: more attempts than --max-retries allows.
    assert rows["attempts"].max() > 2


def test_a_gateway_never_reached_stops_the_run_and_a_resume_sends_the_waiting(
    requests_file, tmp_path
):
    requests, out = requests_file(12), tmp_path / "out"
    port = free_port()  # nothing listens there (yet)
    gateway = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    first = run_cli(
        "run", str(requests), "--gateway", gateway, "-c", "4", "--max-outage", "1",
        "--out", str(out),
    )  # fmt: skip
    assert time.monotonic() - started < 30
    assert first.returncode == 3, first.stderr
    assert "aborted: the gateway has been unreachable for 1 s (ConnectError" in first.stderr
    assert "4 requests waiting for it end as cancelled, which a resume sends again" in first.stderr
    assert "check --gateway" in first.stderr
    rows = read_rows(out)
    assert set(rows["status"]) == {"cancelled"} and len(rows) == 4
    assert rows["error_message"].str.startswith("never reached the gateway (ConnectError").all()
    hint = resume_hint(first.stderr)
    assert "--retry-failed" not in hint  # cancelled rows are sent again by a plain resume
    with running_emulator(EmulatorConfig(), port=port):
        done = run_cli(*hint)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(12)) and set(rows["status"]) == {"ok"}


def test_max_outage_zero_spends_retries_as_before(requests_file, tmp_path):
    out = tmp_path / "out"
    gateway = f"http://127.0.0.1:{free_port()}"
    result = run_cli(
        "run", str(requests_file(30)), "--gateway", gateway, "-c", "1", "--max-retries", "0",
        "--max-outage", "0", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 3
    assert "20 requests in a row (after retries) could not reach the gateway" in result.stderr
    rows = read_rows(out)
    assert set(rows["error_type"]) == {"connection_error"} and len(rows) == 20


def scripted(answers: list[str | None]):
    """A probe that gives these answers in turn (the last one from then on)."""
    calls = []

    async def probe() -> str | None:
        calls.append(time.monotonic())
        return answers[min(len(calls), len(answers)) - 1]

    return probe, calls


async def test_waiters_go_on_together_once_a_probe_connects():
    probe, calls = scripted(["refused", "refused", None])
    seen: list[tuple] = []
    outage = GatewayOutage(
        probe, 60.0, probe_interval_s=0.01,
        on_down=lambda e: seen.append(("down", e)),
        on_up=lambda s, n: seen.append(("up", n)),
    )  # fmt: skip
    results = await asyncio.wait_for(
        asyncio.gather(*(outage.hold("refused at first") for _ in range(5))), timeout=10
    )
    assert results == [True] * 5 and len(calls) == 3
    assert seen == [("down", "refused at first"), ("up", 5)]
    assert not outage.down and outage.waiting == 0 and outage.outages == 1
    # The next failure is a new outage, with a probe of its own.
    probe2, calls2 = scripted([None])
    outage._probe = probe2
    assert await asyncio.wait_for(outage.hold("again"), timeout=10) is True
    assert outage.outages == 2 and len(calls2) == 1


@pytest.mark.parametrize(("reached", "limit"), [(True, 0.05), (False, 60.0)])
async def test_an_outage_past_its_limit_gives_up_and_later_failures_do_not_wait(reached, limit):
    # A gateway never reached in this session gets the short limit, whatever --max-outage says.
    probe, calls = scripted(["still refused"])
    messages: list[str] = []
    outage = GatewayOutage(
        probe, limit, reached=lambda: reached, probe_interval_s=0.01,
        never_reached_limit_s=0.05, on_give_up=messages.append,
    )  # fmt: skip
    results = await asyncio.wait_for(
        asyncio.gather(outage.hold("refused"), outage.hold("refused")), timeout=10
    )
    assert results == [False, False] and outage.gave_up
    assert len(messages) == 1 and "(still refused); 2 requests waiting for it end" in messages[0]
    assert ("check --gateway" in messages[0]) is not reached
    probes = len(calls)
    assert await outage.hold("refused") is False and len(calls) == probes


async def test_a_probe_that_raises_counts_as_unreachable():
    calls = []

    async def broken() -> str | None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("boom")
        return None

    outage = GatewayOutage(broken, 60.0, probe_interval_s=0.01)
    assert await asyncio.wait_for(outage.hold("refused"), timeout=10) is True
    assert len(calls) == 3


async def test_closing_releases_the_waiters_and_stops_probing():
    probe, calls = scripted(["refused"])
    outage = GatewayOutage(probe, 60.0, probe_interval_s=0.01)
    waiter = asyncio.ensure_future(outage.hold("refused"))
    await asyncio.sleep(0.05)
    await outage.aclose()
    assert await asyncio.wait_for(waiter, timeout=5) is False
    probes = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == probes
