"""A gateway that cannot be connected to for a while: requests wait for it, spending no retries
(batchrunner/outage.py), over real sockets, and the pure waiting logic with a scripted probe."""

from __future__ import annotations

import asyncio
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
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


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 30) -> str:
    """Read the run's stderr until a line holds *text*; the lines read so far."""
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            line = proc.stderr.readline()
            seen.append(line)
            if text in line:
                return "".join(seen)
            if not line:
                break
    # Not left running (its pipes, collected in a later test, failed that one too), and what
    # it said besides stderr is the clue.
    if proc.poll() is None:
        proc.kill()
    stdout, rest = proc.communicate(timeout=30)
    raise AssertionError(f"no {text!r} in {''.join(seen) + rest!r} (exit code "
                         f"{proc.returncode}; stdout {stdout!r})")


def run_until_the_gateway_goes(
    config: EmulatorConfig, out: Path, rows: int, *args: str
) -> tuple[subprocess.Popen, int]:
    """Start ``batchrunner run *args --gateway EMULATOR --out out``, wait for ``rows`` finished
    rows, then stop the emulator (its port refuses connections): the process and that port, for
    ``running_emulator(config, port=port)`` to bring the gateway back."""
    with running_emulator(config) as emu:
        port = int(emu.base_url.rsplit(":", 1)[1])
        proc = start_run(*args, "--gateway", emu.base_url, "--out", str(out))
        wait_for_rows(out, rows, proc)
    return proc, port


def test_a_gateway_restart_is_waited_out_without_spending_retries(requests_file, tmp_path):
    # Before: with --max-retries 1 every request in flight or started during the ~1.5 s
    # outage spent its retry within a second and ended as an error row (hundreds of them at
    # higher rates, and 20 in a row stopped the run).
    requests, out = requests_file(300), tmp_path / "out"
    config = EmulatorConfig(ttft=Dist("fixed", 0.02))
    proc, port = run_until_the_gateway_goes(
        config, out, 20, str(requests), "-c", "4", "--max-retries", "1"
    )
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
    # Requests met the refused gateway and went again once it was back. (More than 2 attempts
    # came only from also meeting a connection the gateway had closed, which reuse now checks
    # for: the waits themselves spend no retry, as the scripted tests below show.)
    assert rows["attempts"].max() >= 2


def test_a_flapping_gateway_is_told_of_five_times_then_counted(requests_file, tmp_path):
    requests, out = requests_file(1200), tmp_path / "out"
    config = EmulatorConfig(ttft=Dist("fixed", 0.01))
    proc, port = run_until_the_gateway_goes(config, out, 10, str(requests), "-c", "2")
    for _ in range(8):  # down 0.4 s, up 0.4 s
        time.sleep(0.4)
        with running_emulator(config, port=port):
            time.sleep(0.4)
    with running_emulator(config, port=port):
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    outages = orjson.loads((out / "run.json").read_bytes())["sessions"][-1]["gateway_outages"]
    assert outages >= 6, stderr
    assert stderr.count("The gateway cannot be connected to (") == 4
    assert stderr.count("The gateway takes connections again after") == 4
    assert "The gateway cannot be connected to again (5 times now): further outages" in stderr
    assert set(read_rows(out)["status"]) == {"ok"}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_gateway_never_reached_stops_the_run_and_a_resume_sends_the_waiting(
    requests_file, tmp_path, mode
):
    requests, out = requests_file(12), tmp_path / "out"
    port = free_port()  # nothing listens there (yet)
    gateway = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    first = run_cli(
        "run", str(requests), "--gateway", gateway, "--mode", mode, "-c", "4",
        "--max-outage", "1", "--out", str(out),
    )  # fmt: skip
    assert time.monotonic() - started < 30
    assert first.returncode == 3, first.stderr
    assert re.search(
        r"aborted: the gateway has been unreachable for 1\.\d s \(ConnectError", first.stderr
    ), first.stderr
    assert "4 requests waiting for it end as cancelled, which a resume sends again" in first.stderr
    assert "check --gateway" in first.stderr
    rows = read_rows(out)
    assert set(rows["status"]) == {"cancelled"} and len(rows) == 4
    # Never sent: no sent_at and no send lag (rates and the schedule check leave them out).
    assert rows["sent_at"].isna().all() and rows["queue_wait_s"].isna().all()
    assert rows["error_message"].str.startswith(
        "not sent: the gateway could not be connected to (ConnectError"
    ).all()
    # Nothing went out: no sending time, so no rate (it counted 4 rows over the wait).
    summary = orjson.loads((out / "run.json").read_bytes())["summary"]
    assert summary["requests"] == 4 and summary["requests_per_s"] is None
    report = run_cli("report", str(out), "--json")
    overall = orjson.loads(report.stdout)["runs"][0]["overall"]
    assert (overall["requests"], overall["sent"]) == (4, 0)
    assert overall["throughput"]["requests_per_s"] is None
    hint = resume_hint(first.stderr)
    assert "--retry-failed" not in hint  # cancelled rows are sent again by a plain resume
    with running_emulator(EmulatorConfig(), port=port):
        done = run_cli(*hint)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert sorted(rows["input_index"]) == list(range(12)) and set(rows["status"]) == {"ok"}
    summary = orjson.loads((out / "run.json").read_bytes())["summary"]
    assert summary["requests_per_s"] == pytest.approx(12 / summary["wall_s"])


def test_ctrl_c_while_requests_wait_for_the_gateway_ends_them_at_once(requests_file, tmp_path):
    # Before, the waiting went on through the whole drain (here 60 s), and requests were sent
    # after the stop if the gateway came back meanwhile.
    requests, out = requests_file(200), tmp_path / "out"
    config = EmulatorConfig(ttft=Dist("fixed", 0.02))
    proc, _ = run_until_the_gateway_goes(
        config, out, 10, str(requests), "-c", "4", "--drain-timeout", "60"
    )
    before = wait_for_line(proc, "The gateway cannot be connected to")
    time.sleep(1.5)  # past the retry back-off (at most 0.5 s): the 4 workers' requests wait
    stopped = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=90)
    stderr = before + stderr
    assert time.monotonic() - stopped < 30, stderr  # not the 60 s drain
    assert proc.returncode == 3, stderr
    # Not "waiting up to 60 s for 4 in flight": they end at once.
    assert (
        "Stopping (Ctrl-C): no new requests; the 4 requests waiting for the gateway end as "
        "cancelled, not sent; nothing is in flight." in stderr
    )
    rows = read_rows(out)
    waited = rows[rows["status"] == "cancelled"]
    assert len(waited) == 4, stderr
    assert waited["error_message"].str.startswith(
        "not sent: the run stopped before the gateway could be connected to (ConnectError"
    ).all()
    assert set(rows["status"]) == {"ok", "cancelled"}


def test_an_async_submit_that_waited_keeps_its_resubmits(requests_file, tmp_path):
    # The gateway comes up once the run found it down: each submit waits once. Its job then
    # fails upstream with a retryable 529: --max-retries 1 still allows one resubmit (before,
    # the wait used it up and the job ended as an error after one submit).
    requests, out = requests_file(3), tmp_path / "out"
    port = free_port()
    proc = start_run(
        str(requests), "--gateway", f"http://127.0.0.1:{port}", "--mode", "async",
        "--max-retries", "1", "-c", "3", "--out", str(out),
    )  # fmt: skip
    before = wait_for_line(proc, "The gateway cannot be connected to")
    time.sleep(0.3)  # the three submits, started together, all failed to connect by now
    config = EmulatorConfig(fault_job=1.0, job_failure_status=529)
    with running_emulator(config, port=port) as emu:
        _, stderr = proc.communicate(timeout=60)
        stderr = before + stderr
        submits = [t for t in emu.ground_truth() if t["kind"] == "async_submit"]
    assert proc.returncode == 0, stderr
    rows = read_rows(out)
    assert set(rows["status"]) == {"error"} and set(rows["http_status"]) == {529}
    assert len(submits) == 6  # two submits per request
    assert set(rows["attempts"]) == {3}  # the wait, the submit, the resubmit


def test_a_tls_handshake_refused_is_not_waited_for_as_an_outage(requests_file, tmp_path):
    # https:// to a plain-HTTP gateway: waiting fixes nothing (before: held 10 s, then the run
    # stopped with cancelled rows, "unreachable"). It fails as a connection error at once.
    out = tmp_path / "out"
    with running_emulator(EmulatorConfig()) as emu:
        wrong = emu.base_url.replace("http://", "https://")
        result = run_cli(
            "run", str(requests_file(3)), "--gateway", wrong, "-c", "1", "--max-retries", "0",
            "--out", str(out),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "cannot be connected to" not in result.stderr
    rows = read_rows(out)
    assert set(rows["error_type"]) == {"connection_error"} and len(rows) == 3
    assert rows["error_message"].str.contains("WRONG_VERSION_NUMBER").all()


def test_polls_wait_for_the_gateway_too_and_the_jobs_stay_for_collect(requests_file, tmp_path):
    # The gateway goes away while its jobs run. Before, polls backed off silently for many
    # minutes; now they wait as requests do, and after --max-outage the run stops with the
    # jobs kept for collect.
    requests, out = requests_file(4), tmp_path / "out"
    with running_emulator(EmulatorConfig(ttft=Dist("fixed", 30.0))) as emu:
        proc = start_run(
            str(requests), "--gateway", emu.base_url, "--mode", "async", "-c", "4",
            "--max-outage", "2", "--out", str(out),
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(read_jobs(out)) < 4:
            time.sleep(0.05)
        assert len(read_jobs(out)) == 4
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, stderr
    assert "The gateway cannot be connected to (ConnectError" in stderr
    assert "aborted: the gateway has been unreachable for 2." in stderr
    assert "4 jobs outstanding; collect them with `batchrunner collect" in stderr
    assert not (out / "data").exists() or read_rows(out).empty


def read_jobs(out) -> list[bytes]:
    try:
        return [line for line in (out / "jobs.jsonl").read_bytes().splitlines() if line]
    except FileNotFoundError:
        return []


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
        on_down=lambda e, limit: seen.append(("down", e, limit)),
        on_up=lambda s, n: seen.append(("up", n)),
    )  # fmt: skip
    results = await asyncio.wait_for(
        asyncio.gather(*(outage.hold("refused at first") for _ in range(5))), timeout=10
    )
    assert results == [True] * 5 and len(calls) == 3
    assert seen == [("down", "refused at first", 60.0), ("up", 5)]
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


async def test_waiters_are_woken_oldest_first_in_batches():
    # Thousands of open-loop sends waiting must not all reconnect in one loop turn.
    probe, _ = scripted([None])
    outage = GatewayOutage(probe, 60.0, probe_interval_s=0.01, release_batch=100)
    order: list[int] = []

    async def waiter(i: int) -> None:
        assert await outage.hold("refused")
        order.append(i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(250)]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert order == list(range(250))


async def test_a_stop_ends_the_waiting_at_once_and_nothing_waits_after_it():
    probe, calls = scripted(["refused"])
    outage = GatewayOutage(probe, 60.0, probe_interval_s=0.01)
    waiters = [asyncio.ensure_future(outage.hold("refused")) for _ in range(3)]
    await asyncio.sleep(0.05)
    outage.release()
    assert await asyncio.wait_for(asyncio.gather(*waiters), timeout=5) == [False] * 3
    assert not outage.gave_up and await outage.hold("refused") is False
    probes = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == probes  # the probe stopped too


async def test_a_probe_that_hangs_is_cut_at_the_limit():
    # A gateway whose connects hang (connect timeout 10 s) still gives up at --max-outage.
    async def hangs() -> str | None:
        await asyncio.sleep(60)
        return None

    outage = GatewayOutage(hangs, 0.2, probe_interval_s=0.01)
    assert await asyncio.wait_for(outage.hold("timed out"), timeout=5) is False
    assert outage.gave_up


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



_FD_LIMITED_SENDS = """
import asyncio, os, resource, sys
import httpx, orjson
from batchrunner.client import GatewayClient, messages_url
from batchrunner.transport import AiohttpTransport

BODY = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8,
                     "messages": [{"role": "user", "content": "hi"}]})

async def main(url, path):
    http = httpx.AsyncClient() if path == "httpx-client" else None
    transport = AiohttpTransport() if path == "aiohttp-transport" else None
    async with GatewayClient(url, {}, transport=transport, client=http) as client:
        # Room for a few connections, far fewer than the sends: the rest fail with EMFILE.
        # Soft and hard alike, in this process only.
        limit = len(os.listdir("/proc/self/fd")) + 8
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        attempts = await asyncio.gather(*(client.send(BODY, stream=False) for _ in range(60)))
    for closer in (transport, http):
        if closer is not None:
            await closer.aclose()
    for a in attempts:
        print(orjson.dumps([a.ok, a.connect_failed, a.transport_failure, a.error_type,
                            a.error_message]).decode())

asyncio.run(main(messages_url(sys.argv[1]), sys.argv[2]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
@pytest.mark.parametrize("path", ["wire", "aiohttp-transport", "httpx-client"])
def test_running_out_of_file_descriptors_is_not_blamed_on_the_gateway(tmp_path, path):
    # Before: EMFILE while connecting was a connect failure: the run waited for a gateway that
    # was fine ("The gateway cannot be connected to"), and the rows blamed it. Now such an
    # attempt is an ordinary failure (retried as any, never held) that names the local cause.
    script = tmp_path / "limited.py"
    script.write_text(_FD_LIMITED_SENDS)
    # Each answer takes a while, so the connections that opened are held while the rest try.
    with running_emulator(EmulatorConfig(ttft=Dist("fixed", 0.05))) as emu:
        done = subprocess.run(
            [sys.executable, str(script), emu.base_url, path],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        reached = emu.stats()["requests"]
    assert done.returncode == 0 and done.stderr == "", done.stderr
    attempts = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert len(attempts) == 60
    failed = [a for a in attempts if not a[0]]
    assert failed and reached == 60 - len(failed) > 0, (reached, done.stdout)
    for _, connect_failed, transport_failure, error_type, message in failed:
        assert not connect_failed and transport_failure and error_type == "connection_error"
        assert "too many open files (EMFILE: this process may open " in message, message
        assert message.endswith(
            "); raise ulimit -n or lower -c (a limit of this machine, not of the gateway)"
        ), message


def test_the_closing_summary_names_an_outage_as_the_cause_of_a_missed_schedule(
    requests_file, tmp_path
):
    # An open loop whose gateway went away for a second: the requests in flight waited for it,
    # filled the cap (-c 5), and the sends due meanwhile waited: the schedule was not kept,
    # and the outage, not the client, is why.
    requests, out = requests_file(200), tmp_path / "out"
    config = EmulatorConfig(ttft=Dist("fixed", 0.01))
    proc, port = run_until_the_gateway_goes(
        config, out, 10, str(requests), "--rate", "50", "-c", "5"
    )
    proc_err = wait_for_line(proc, "The gateway cannot be connected to")
    time.sleep(1.0)  # the gateway stays down: sends fall behind their schedule
    with running_emulator(config, port=port):
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, proc_err + stderr
    outages = orjson.loads((out / "run.json").read_bytes())["sessions"][-1]["gateway_outages"]
    assert outages >= 1
    summary = stdout + stderr
    assert "schedule   NOT KEPT: --rate 50/s" in summary
    times = "once" if outages == 1 else f"{outages} times"
    waits = orjson.loads((out / "run.json").read_bytes())["sessions"][-1]["cap_waits"]
    assert waits >= 1  # the 5 in flight waited for the gateway; the next send waited for them
    waited = "once" if waits == 1 else f"{waits} times"
    # Before: "likely cause: the client's CPU, or the in-flight cap ..." alone.
    assert (f"likely cause: the gateway could not be connected to {times} during the --rate "
            "session: requests waited for it; otherwise requests in flight reached the cap "
            f"(-c 5) {waited}") in summary
    report = run_cli("report", str(out))
    assert (f"likely cause: the gateway could not be connected to {times} during the --rate "
            "session: requests waited for it; otherwise requests in flight reached the cap "
            f"(5, -c 5) {waited}") in report.stdout


@pytest.mark.parametrize("command", [
    ["run", "{requests}", "--rate", "50", "--duration", "1"],
    ["bench", "--rate", "50", "--stage-duration", "1"],
])
def test_a_gateway_never_reached_before_the_sending_ends_is_no_finished_run(
    requests_file, tmp_path, command
):
    # --duration (or a bench stage) ended before the outage could give up (10 s): every
    # request ended cancelled, never sent, and the command said finished, exit 0 (a CI gate
    # on a bench with a wrong port passed).
    requests = requests_file(100)
    args = [a.replace("{requests}", str(requests)) for a in command]
    done = run_cli(*args, "--gateway", f"http://127.0.0.1:{free_port()}", "--out",
                   str(tmp_path / "out"))
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert ("aborted: the gateway could not be connected to before the sending ended: nothing "
            "was sent; check --gateway") in done.stdout + done.stderr
