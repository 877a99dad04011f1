"""Signals outside the run session's drain-then-cancel window: while the results are being
written, before the session starts, and in a script or notebook that uses the library."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import orjson
import pytest
from click.testing import CliRunner

import batchrunner.runner as runner_module
from batchrunner.cli import main
from batchrunner.config import RunConfig
from batchrunner.emulator.config import Dist
from batchrunner.runner import EXIT_OK, run_sync

from .conftest import read_rows

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("handle_signals", [True, False], ids=["cli", "library"])
def test_signals_while_the_results_are_written_do_not_cut_them(
    make_emulator, requests_file, tmp_path, monkeypatch, handle_signals
):
    real_summarize = runner_module.summarize_batches

    def summarize_under_signals(*args, **kwargs):
        # On the compaction thread, once sending is over: the loop is free to take them.
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        return real_summarize(*args, **kwargs)

    monkeypatch.setattr(runner_module, "summarize_batches", summarize_under_signals)
    stderr = io.StringIO()
    out = tmp_path / "out"
    with make_emulator() as emu:
        config = RunConfig(requests=requests_file(20), gateway=emu.base_url, out=out)
        result = run_sync(config, handle_signals=handle_signals, stderr=stderr, progress=False)
    assert (result.status, result.exit_code) == ("finished", EXIT_OK)
    assert stderr.getvalue().count("sending is over; writing the results and run.json") == 2
    info = orjson.loads((out / "run.json").read_bytes())
    assert info["status"] == "finished" and info["summary"]["requests"] == 20
    # the handlers given back are the ones before the run (pytest's), not asyncio's defaults
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_starting_stops_with_a_message_and_exit_3(
    requests_file, tmp_path, monkeypatch, sig
):
    def count_under_signal(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(0.3)
        raise AssertionError("the signal did not stop the start")

    monkeypatch.setattr(runner_module, "count_requests", count_under_signal)
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(requests_file(5)), "--out", str(out)])
    said = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert result.exit_code == 3, result.output
    assert f"{said}: stopped while starting, before sending anything." in result.stderr
    assert "Aborted!" not in result.output and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is previous_sigterm


SCRIPT = """
import batchrunner
try:
    batchrunner.run({requests!r}, gateway={gateway!r}, out={out!r}, concurrency=3)
except KeyboardInterrupt:
    print("KeyboardInterrupt reached the caller")
"""
NOTEBOOK = """
import asyncio
import batchrunner

async def cell():  # a notebook cell: the thread already runs a loop
    try:
        batchrunner.run({requests!r}, gateway={gateway!r}, out={out!r}, concurrency=3)
    except KeyboardInterrupt:
        print("KeyboardInterrupt reached the caller")

asyncio.new_event_loop().run_until_complete(cell())
"""
# Under asyncio.run(), a first Ctrl-C only cancels the main task, which waits for the run: it
# went unnoticed (the run carried on to its end, and a second Ctrl-C then lost its result).
ASYNCIO_RUN = NOTEBOOK.replace(
    "asyncio.new_event_loop().run_until_complete(cell())", "asyncio.run(cell())"
)


@pytest.mark.parametrize(
    "body", [SCRIPT, NOTEBOOK, ASYNCIO_RUN], ids=["script", "notebook", "asyncio-run"]
)
def test_ctrl_c_in_a_library_caller_closes_the_run_then_raises(
    make_emulator, requests_file, tmp_path, body
):
    requests, out = requests_file(200), tmp_path / "out"
    with make_emulator(ttft=Dist("fixed", 0.05)) as emu:
        code = textwrap.dedent(body).format(
            requests=str(requests), gateway=emu.base_url, out=str(out)
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 30
        while emu.stats()["in_flight"] < 3 or not list(out.glob("journal/seg-*.jsonl")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    if body is ASYNCIO_RUN:  # then asyncio.run() ends the program as Ctrl-C does
        assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in stderr, stderr
    else:
        assert proc.returncode == 0, stderr
    assert stdout.strip() == "KeyboardInterrupt reached the caller"
    info = orjson.loads((out / "run.json").read_bytes())
    assert info["status"] == "interrupted"
    assert info["sessions"][-1]["message"] == "cancelled (KeyboardInterrupt or task cancel)"
    rows = read_rows(out)
    # the requests in flight became rows too; the rest is for a resume. (Rarely none was in
    # flight: the signal came between a request's end and the next send, seen once in CI.)
    assert (rows["status"] == "cancelled").sum() <= 3
    assert set(rows["status"]) <= {"ok", "cancelled"} and len(rows) < 200
    assert sorted(rows["input_index"]) == list(range(len(rows)))  # no gap: nothing lost
    assert info["summary"]["requests"] == len(rows)


def test_a_signal_after_the_last_row_leaves_the_run_finished(
    make_emulator, requests_file, tmp_path, monkeypatch
):
    from batchrunner.feed import RecordFeed

    real_aclose = RecordFeed.aclose

    async def aclose_under_signal(self):
        os.kill(os.getpid(), signal.SIGINT)  # every request has its row by now
        await asyncio.sleep(0.1)
        await real_aclose(self)

    monkeypatch.setattr(RecordFeed, "aclose", aclose_under_signal)
    with make_emulator() as emu:
        config = RunConfig(requests=requests_file(10), gateway=emu.base_url, out=tmp_path / "o")
        result = run_sync(config, handle_signals=True, quiet=True)
    assert (result.status, result.exit_code) == ("finished", EXIT_OK)


def test_handle_signals_off_the_main_thread_is_a_plain_run(make_emulator, requests_file, tmp_path):
    results = []
    with make_emulator() as emu:
        config = RunConfig(requests=requests_file(5), gateway=emu.base_url, out=tmp_path / "o")
        thread = threading.Thread(
            target=lambda: results.append(run_sync(config, handle_signals=True, quiet=True))
        )
        thread.start()
        thread.join(timeout=60)
    assert [r.status for r in results] == ["finished"]


NOTEBOOK_SLOW_FINISH = """
import asyncio, os, signal, time
import batchrunner
import batchrunner.runner as runner

real = runner.summarize_batches

def slow(*args, **kwargs):  # the notebook's interrupt while the results are written
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
    return real(*args, **kwargs)

runner.summarize_batches = slow

async def cell():
    try:
        batchrunner.run({requests!r}, gateway={gateway!r}, out={out!r})
    except KeyboardInterrupt:
        print("KeyboardInterrupt reached the caller")

asyncio.new_event_loop().run_until_complete(cell())
"""


def test_a_notebook_interrupt_while_the_results_are_written_lets_them_finish(
    make_emulator, requests_file, tmp_path
):
    out = tmp_path / "out"
    with make_emulator() as emu:
        code = NOTEBOOK_SLOW_FINISH.format(
            requests=str(requests_file(20)), gateway=emu.base_url, out=str(out)
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "KeyboardInterrupt reached the caller"
    info = orjson.loads((out / "run.json").read_bytes())
    assert info["status"] == "finished" and info["summary"]["requests"] == 20


def test_an_internal_error_closes_the_session_in_run_json(
    make_emulator, requests_file, tmp_path, monkeypatch
):
    def broken_summary(*args, **kwargs):
        raise RuntimeError("summary failed with key sk-ant-secret-123456")

    monkeypatch.setattr(runner_module, "summarize_batches", broken_summary)
    out = tmp_path / "out"
    with make_emulator() as emu:
        config = RunConfig(
            requests=requests_file(20), gateway=emu.base_url, out=out,
            api_key="sk-ant-secret-123456",
        )  # fmt: skip
        with pytest.raises(RuntimeError):
            run_sync(config, quiet=True)
        text = (out / "run.json").read_text()
        assert "sk-ant-secret" not in text
        session = orjson.loads(text)["sessions"][-1]
        assert session["status"] == "aborted"
        assert session["message"].startswith("internal error: RuntimeError: summary failed")
        monkeypatch.undo()
        result = run_sync(config, quiet=True)  # the rows written before the error are kept
    assert (result.status, result.summary["requests"]) == ("finished", 20)
    assert [s["status"] for s in orjson.loads((out / "run.json").read_bytes())["sessions"]] == [
        "aborted",
        "finished",
    ]


def test_a_cancellation_as_run_json_is_first_written_closes_the_session(
    make_emulator, requests_file, tmp_path, monkeypatch
):
    real_write = runner_module.write_json_atomic
    writes = []

    async def main(config):
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def write_then_cancel(path, obj):
            real_write(path, obj)
            writes.append(obj["sessions"][-1]["status"])
            if len(writes) == 1:  # the session's first write: it says "running"
                loop.call_soon_threadsafe(task.cancel)
                time.sleep(0.05)  # the cancellation reaches the run while this still runs

        monkeypatch.setattr(runner_module, "write_json_atomic", write_then_cancel)
        await runner_module.run_session(config, quiet=True)

    out = tmp_path / "out"
    with make_emulator() as emu:
        config = RunConfig(requests=requests_file(20), gateway=emu.base_url, out=out)
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(main(config))
        info = orjson.loads((out / "run.json").read_bytes())
        assert writes == ["running", "interrupted"]
        assert (info["status"], info["sessions"][-1]["status"]) == ("interrupted", "interrupted")
        monkeypatch.undo()
        result = run_sync(config, quiet=True)
    assert (result.status, result.summary["requests"]) == ("finished", 20)


def test_an_internal_error_in_the_cli_names_no_secret_and_says_how_to_go_on(
    requests_file, tmp_path, monkeypatch
):
    def broken_summary(*args, **kwargs):
        raise RuntimeError("bad header x-bf-vk: vk-secret-98765")

    monkeypatch.setattr(runner_module, "summarize_batches", broken_summary)
    monkeypatch.delenv("BATCHRUNNER_GATEWAY", raising=False)
    out = tmp_path / "out"
    args = ["run", str(requests_file(5)), "--out", str(out), "--virtual-key", "vk-secret-98765"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "Internal error: RuntimeError: bad header x-bf-vk:" in result.output
    assert "vk-secret" not in result.output and "vk-secret" not in (out / "run.json").read_text()
    assert "add --resume" in result.output


#: The console script as pip generates it from [project.scripts] (the installed one may be
#: older), and ``python -m``.
ENTRY_POINTS = {
    "script": [sys.executable, "-c", "import sys; from batchrunner.entry import main; main()"],
    "module": [sys.executable, "-m", "batchrunner"],
}


def test_the_console_script_is_the_guarded_entry_point():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["batchrunner"] == "batchrunner.entry:main"


def _interrupt_when_imported(argv: list[str], module: str) -> tuple[int, str]:
    """Start the command, send Ctrl-C as soon as ``module`` is imported (read from Python's
    import-time log, so that the signal lands while the rest still imports, whatever the
    machine's speed), and return the exit code and stderr without the log."""
    env = {k: v for k, v in os.environ.items() if k != "BATCHRUNNER_GATEWAY"}
    with subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
    ) as proc:  # fmt: skip
        for line in proc.stderr:
            if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module:
                proc.send_signal(signal.SIGINT)
                break
        else:
            raise AssertionError(f"{module} was never imported")
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    return proc.returncode, "".join(
        line + "\n" for line in rest.splitlines() if not line.startswith("import time:")
    )


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
# Several instants, each a new process: after click, in the commands' imports, late in them.
@pytest.mark.parametrize("module", ["click", "batchrunner.cli.signals", "httpx", "numpy"])
def test_ctrl_c_while_the_commands_import_is_one_line_and_exit_3(
    requests_file, tmp_path, entry, module
):
    out = tmp_path / "out"
    code, stderr = _interrupt_when_imported(
        [*ENTRY_POINTS[entry], "run", str(requests_file(3)), "--out", str(out)], module
    )
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip() == "Ctrl-C: stopped while starting, before sending anything."
    assert code == 3
    assert not out.exists()


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_ctrl_c_while_another_command_imports_is_one_line_and_exit_130(
    requests_file, entry
):
    code, stderr = _interrupt_when_imported(
        [*ENTRY_POINTS[entry], "validate", str(requests_file(3))], "click"
    )
    assert "Traceback" not in stderr, stderr
    assert stderr.strip() == "Ctrl-C: stopped while starting."
    assert code == 130


def test_a_ctrl_c_during_the_imports_is_held_until_they_are_done():
    # Some extension modules crash the interpreter when KeyboardInterrupt is raised inside
    # their import (orjson 3.13: a segfault in 6 of ~300 Ctrl-Cs at start-up): it is held back
    # and delivered once the imports are done, still inside the guard that turns it into a line.
    script = (
        "import os, signal, sys\n"
        "from batchrunner.entry import _sigint_held\n"
        "try:\n"
        "    with _sigint_held():\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        print('imports finished', flush=True)\n"
        "    print('not reached', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted after', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines() == ["imports finished", "interrupted after"], done.stderr


def _run_on_a_terminal(tmp_path, make_emulator, requests_file, ignore_hup: bool):
    """``batchrunner run`` with a pseudo-terminal as its controlling terminal and stdio, which
    is closed (a hang-up: SIGHUP, then EIO on every write) once a few rows are done."""
    import fcntl
    import pty
    import termios

    out = tmp_path / "out"
    emu = make_emulator(ttft=Dist("fixed", 0.02))
    master, slave = pty.openpty()

    def own_terminal() -> None:  # a session of its own, with the pty as its terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if ignore_hup:  # as nohup does
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    cmd = [sys.executable, "-m", "batchrunner", "run", str(requests_file(300)), "--gateway",
           emu.base_url, "--out", str(out), "-c", "2"]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=own_terminal)
    os.close(slave)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # read the terminal until the progress line shows
            try:
                if b"req/s" in os.read(master, 4096):
                    break
            except OSError:
                break
        time.sleep(0.3)
        os.close(master)  # the terminal is gone
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, out


def test_a_hang_up_drains_and_closes_the_run_like_sigterm(make_emulator, requests_file,
                                                          tmp_path):
    # SIGHUP killed the run like kill -9 (its in-flight requests lost, run.json left
    # "running"); and a terminal gone away made the progress line's write abort the run.
    code, out = _run_on_a_terminal(tmp_path, make_emulator, requests_file, ignore_hup=False)
    info = orjson.loads((out / "run.json").read_bytes())
    session = info["sessions"][-1]
    assert (code, session["status"], session["message"]) == (3, "interrupted",
                                                              "stopped by SIGHUP"), session
    rows = read_rows(out)
    assert 0 < len(rows) < 300 and set(rows["status"]) == {"ok"}  # in flight: let finish
    assert rows["input_index"].is_unique


def test_a_run_that_ignores_hang_ups_goes_on_without_its_terminal(make_emulator, requests_file,
                                                                   tmp_path):
    code, out = _run_on_a_terminal(tmp_path, make_emulator, requests_file, ignore_hup=True)
    info = orjson.loads((out / "run.json").read_bytes())
    assert (code, info["sessions"][-1]["status"]) == (0, "finished"), info["sessions"][-1]
    assert len(read_rows(out)) == 300


@pytest.mark.parametrize("command", ["run", "bench"])
def test_output_to_a_closed_pipe_does_not_stop_the_run(make_emulator, requests_file, tmp_path,
                                                       command):
    # "batchrunner run … 2>&1 | head -1": the first message after the reader left raised
    # BrokenPipeError; the run ended with exit code 1 and no run.json.
    out = tmp_path / "out"
    emu = make_emulator(ttft=Dist("fixed", 0.005))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    args = ([str(requests_file(20))] if command == "run" else ["-c", "2", "--stage-duration",
                                                              "0.5"])
    try:
        done = subprocess.run([sys.executable, "-m", "batchrunner", command, *args, "--gateway",
                               emu.base_url, "--out", str(out)],
                              stdout=write, stderr=write, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished"


def test_a_run_started_with_sigint_ignored_keeps_ignoring_it(make_emulator, requests_file,
                                                            tmp_path):
    # A script's background job (SIGINT ignored, as a non-interactive shell starts it) ignored
    # Ctrl-C while it started, then stopped on it once it was sending.
    out = tmp_path / "out"
    emu = make_emulator(ttft=Dist("fixed", 0.02))
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrunner", "run", str(requests_file(200)), "--gateway",
         emu.base_url, "--out", str(out), "-c", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 30
        while not list(out.glob("journal/seg-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # sending by now
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
