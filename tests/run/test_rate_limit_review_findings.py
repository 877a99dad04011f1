"""Defects of the 429 handling found in a second review (each test failed before its fix; an
xfail one is open)."""

from __future__ import annotations

import orjson
import pytest

from batchrunner.config import RunConfig
from batchrunner.emulator.config import Dist
from batchrunner.runner import EXIT_ABORTED, run_sync

from .conftest import read_rows

MODEL = "claude-sonnet-4-5"
OTHER = "claude-haiku-4-5"


def _write(path, models, n):
    path.write_bytes(b"".join(
        orjson.dumps({"custom_id": f"r{i}", "params": {
            "model": models[i % len(models)], "max_tokens": 8,
            "messages": [{"role": "user", "content": f"q{i}"}]}}) + b"\n"
        for i in range(n)))
    return path


def test_429s_answered_after_the_waiting_ended_are_counted(make_emulator, tmp_path):
    # One model answers every request 429; --max-rate-limit-wait 2 gives up on it. Requests of
    # it still in flight then come back 429 too: they are attempts answered 429 (their rows
    # count them), but run.json and the summary left them out (71 of the emulator's 72).
    requests = _write(tmp_path / "set.jsonl", [OTHER, MODEL], 60)
    out = tmp_path / "out"
    with make_emulator(fail_models=(MODEL,), fail_model_status=429) as emu:
        result = run_sync(RunConfig(requests=requests, gateway=emu.base_url, out=out,
                                    concurrency=16, max_rate_limit_wait_s=2), quiet=True)
        answered_429 = emu.stats()["faults"]["model_failure"]
    assert result.exit_code == EXIT_ABORTED, result.message
    rows = read_rows(out)
    limited_rows = rows[rows["model_requested"] == MODEL]
    assert limited_rows["attempts"].sum() == answered_429  # every 429 is some row's attempt
    assert result.summary["rate_limited"]["attempts"] == answered_429
    info = orjson.loads((out / "run.json").read_bytes())
    assert info["sessions"][-1]["rate_limited"]["attempts"] == answered_429


@pytest.mark.xfail(strict=True, reason="open: a closed loop's workers wait at a limited "
                   "model's gate, so the other models starve (see review2 report)")
def test_one_models_limit_does_not_starve_another_models_requests(make_emulator, tmp_path):
    # ratelimit.py: "one model's limit must not slow the others". MODEL answers every request
    # 429 (its limit ran out), OTHER is served at once. With -c 4 each worker soon holds a
    # request of MODEL that waits at its gate, and no request of OTHER is sent any more until
    # --max-rate-limit-wait gives up on MODEL and stops the run: 4 of OTHER's 20 requests
    # were served, in the first milliseconds, then none for 3 s.
    requests = _write(tmp_path / "set.jsonl", [OTHER, MODEL], 40)
    out = tmp_path / "out"
    with make_emulator(fail_models=(MODEL,), fail_model_status=429,
                       ttft=Dist("fixed", 0.01)) as emu:
        result = run_sync(RunConfig(requests=requests, gateway=emu.base_url, out=out,
                                    concurrency=4, max_rate_limit_wait_s=3), quiet=True)
    assert result.exit_code == EXIT_ABORTED, result.message
    rows = read_rows(out)
    served = rows[(rows["model_requested"] == OTHER) & (rows["status"] == "ok")]
    assert len(served) == 20
