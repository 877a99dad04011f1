"""``x-bf-async`` jobs over real sockets: submit, poll, TTL, key binding, failures."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from batchrunner.emulator import Emulator, EmulatorConfig, running_emulator
from batchrunner.emulator.jobs import MAX_TTL_S

from .helpers import MESSAGES, body, client, wait_for

STUB_KEYS = {"id", "type", "role", "content", "model"}


def submit(c: httpx.Client, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    return c.post(MESSAGES, json=body(**kw), headers={"x-bf-async": "true", **(headers or {})})


def poll(
    c: httpx.Client, job_id: str, headers: dict[str, str] | None = None, content: bytes = b""
) -> httpx.Response:
    return c.post(MESSAGES, content=content, headers={"x-bf-async-id": job_id, **(headers or {})})


def poll_until_done(
    c: httpx.Client, job_id: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    def done() -> httpx.Response | None:
        r = poll(c, job_id, headers)
        return r if r.status_code != 200 or r.json()["type"] == "message" else None

    r = wait_for(done, timeout_s=5)
    assert r is not None, "job did not finish"
    return r


def test_submit_returns_the_stub_then_the_message(emulator: Emulator) -> None:
    with client(emulator) as c:
        r = submit(c)
        assert r.status_code == 200
        stub = r.json()
        assert set(stub) == STUB_KEYS
        assert stub["type"] == stub["role"] == stub["model"] == "" and stub["content"] is None
        assert "x-bifrost-provider" not in r.headers  # async answers carry no x-bifrost-* headers
        done = poll_until_done(c, stub["id"], {"content-type": "application/json"})
    msg = done.json()
    assert msg["type"] == "message" and msg["id"].startswith("msg_") and msg["id"] != stub["id"]
    assert msg["usage"]["output_tokens"] == len(msg["content"][0]["text"].split())
    submit_truth = emulator.ground_truth()[0]
    assert submit_truth["kind"] == "async_submit" and submit_truth["job_id"] == stub["id"]
    job = submit_truth["job"]
    assert job["status"] == "completed" and job["http_status"] == 200
    assert job["created_at"] <= job["started_at"] <= job["completed_at"]
    assert job["expires_at"] == pytest.approx(job["completed_at"] + 3600)
    assert submit_truth["output_tokens"] == msg["usage"]["output_tokens"]
    assert submit_truth["response_id"] == msg["id"]  # the Message a poll will get


def test_pending_poll_is_the_stub_and_job_takes_the_sync_latency(make_emulator: Any) -> None:
    emu = make_emulator(ttft="fixed:0.2", token_delay="fixed:0.01", output_tokens="fixed:11")
    with client(emu) as c:
        job_id = submit(c).json()["id"]
        r = poll(c, job_id, content=b"{not json at all")  # body ignored on polls
        assert r.status_code == 200 and r.json() == {
            "id": job_id,
            "type": "",
            "role": "",
            "content": None,
            "model": "",
        }
        assert poll_until_done(c, job_id).json()["type"] == "message"
    job = emu.ground_truth()[0]["job"]
    assert job["completed_at"] - job["started_at"] >= 0.2 + 10 * 0.01 - 0.002
    polls = [e for e in emu.ground_truth() if e["kind"] == "async_poll"]
    assert polls[0]["job_status"] == "processing" and polls[-1]["job_status"] == "completed"


def test_any_non_empty_async_header_creates_a_job(emulator: Emulator) -> None:
    with client(emulator) as c:
        r = c.post(MESSAGES, json=body(), headers={"x-bf-async": "false"})
        assert set(r.json()) == STUB_KEYS
        r = c.post(MESSAGES, json=body(), headers={"x-bf-async": ""})
        assert r.json()["type"] == "message"  # empty header: a normal sync request


def test_async_with_stream_is_rejected_and_creates_nothing(emulator: Emulator) -> None:
    with client(emulator) as c:
        r = submit(c, stream=True)
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {"type": "", "message": "streaming is not supported for async requests"},
    }
    assert emulator.stats()["jobs"]["stored"] == 0


def test_unknown_job_is_404_or_400_on_older_gateways(make_emulator: Any) -> None:
    expected = {"type": "error", "error": {"type": "", "message": "job not found or expired"}}
    for status in (404, 400):
        emu = make_emulator(job_not_found_status=status)
        with client(emu) as c:
            r = poll(c, "1e89b165-d4fe-49e8-beb2-3e157f2df02f")
        assert r.status_code == status and r.json() == expected


@pytest.mark.parametrize(
    ("header", "ttl"),
    [("1", 1), ("600", 600), ("0", 3600), ("-5", 3600), ("abc", 3600), ("1.5", 3600)],
)
def test_ttl_header_parsing(emulator: Emulator, header: str, ttl: int) -> None:
    with client(emulator) as c:
        r = submit(c, {"x-bf-async-job-result-ttl": header})
        poll_until_done(c, r.json()["id"])
    assert emulator.ground_truth()[0]["job"]["ttl_s"] == ttl


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        ("1" + "0" * 30, 900),  # outside int64: the gateway's Atoi fails → the default
        (str(2**63), 900),
        ("9" * 400, 900),
        (str(2**63 - 1), MAX_TTL_S),  # inside int64: beyond Go's Duration, clamped
        (str(10**15), MAX_TTL_S),
    ],
)
def test_huge_ttl_header_falls_back_or_clamps_and_breaks_nothing(
    make_emulator: Any, header: str, ttl: int
) -> None:
    emu = make_emulator(job_result_ttl_s=900)
    with client(emu) as c:
        r = submit(c, {"x-bf-async-job-result-ttl": header})
        assert r.status_code == 200
        assert poll_until_done(c, r.json()["id"]).json()["type"] == "message"
        truth = c.get("/_emulator/ground-truth")
        assert truth.status_code == 200 and c.get("/_emulator/stats").status_code == 200
    job = truth.json()["entries"][0]["job"]
    assert job["ttl_s"] == ttl
    assert job["expires_at"] == pytest.approx(job["completed_at"] + ttl)


def test_full_job_store_refuses_new_jobs_and_forgets_the_oldest_finished(
    make_emulator: Any,
) -> None:
    emu = make_emulator(job_store_max=2, ttft="fixed:0.5")
    with client(emu) as c:
        first, second = (submit(c).json()["id"] for _ in range(2))
        # both still processing: nothing may be forgotten, so the store refuses the insert
        r = submit(c)
        assert r.status_code == 400 and r.json() == {
            "type": "error",
            "error": {"type": "", "message": "failed to create async job"},
        }
        assert poll(c, first).json()["id"] == first  # accepted jobs are kept
        poll_until_done(c, first)
        poll_until_done(c, second)
        third = submit(c)  # now the oldest finished job makes room
        assert third.status_code == 200
        assert poll(c, first).status_code == 404
        assert poll(c, second).json()["type"] == "message"
    jobs = emu.stats()["jobs"]
    assert (jobs["stored"], jobs["refused"], jobs["evicted"]) == (2, 1, 1)


def test_result_expires_ttl_after_completion(make_emulator: Any) -> None:
    emu = make_emulator(ttft="fixed:0.3")
    with client(emu) as c:
        job_id = submit(c, {"x-bf-async-job-result-ttl": "1"}).json()["id"]
        done = poll_until_done(c, job_id)
        assert done.json()["type"] == "message"
        job = emu.ground_truth()[0]["job"]
        # the TTL counts from completion (not from submission)
        assert job["expires_at"] == pytest.approx(job["completed_at"] + 1)
        assert job["completed_at"] - job["created_at"] >= 0.29
        assert poll(c, job_id).status_code == 200  # still readable just after completion
        time.sleep(max(0.0, job["expires_at"] - time.time()) + 0.05)
        r = poll(c, job_id)
    assert r.status_code == 404 and r.json()["error"]["message"] == "job not found or expired"
    assert emu.stats()["jobs"]["expired"] == 1


def test_job_is_bound_to_its_virtual_key(make_emulator: Any) -> None:
    emu = make_emulator(virtual_keys=("sk-bf-alice", "sk-bf-bob"))
    alice = {"x-bf-vk": "sk-bf-alice"}
    with client(emu) as c:
        job_id = submit(c, alice).json()["id"]
        assert poll_until_done(c, job_id, alice).json()["type"] == "message"
        # the same key in another header form also reads it
        assert poll(c, job_id, {"authorization": "Bearer sk-bf-alice"}).json()["type"] == "message"
        assert poll(c, job_id, {"x-api-key": "sk-bf-alice"}).json()["type"] == "message"
        for other in ({"x-bf-vk": "sk-bf-bob"}, {}, {"x-bf-vk": "sk-bf-mallory"}):
            r = poll(c, job_id, other)
            assert (
                r.status_code == 404 and r.json()["error"]["message"] == "job not found or expired"
            )


def test_job_without_key_is_readable_by_anyone(emulator: Emulator) -> None:
    with client(emulator) as c:
        job_id = submit(c).json()["id"]
        assert poll_until_done(c, job_id, {"x-bf-vk": "sk-bf-anyone"}).json()["type"] == "message"


def test_submit_with_unknown_key_fails_and_missing_key_fails_the_job(make_emulator: Any) -> None:
    emu = make_emulator(virtual_keys=("sk-bf-alice",))
    with client(emu) as c:
        r = submit(c, {"x-bf-vk": "sk-bf-mallory"})
        assert r.status_code == 400 and r.json()["error"]["message"] == "failed to create async job"
        # without a key the job is created; governance runs inside it and fails it with 401
        job_id = submit(c).json()["id"]
        r = poll_until_done(c, job_id)
    assert r.status_code == 401 and r.json()["error"]["type"] == "virtual_key_required"


@pytest.mark.parametrize("status", [529, 429, 500, 402])
def test_failed_job_serves_its_stored_error_with_its_status(
    make_emulator: Any, status: int
) -> None:
    emu = make_emulator(fault_job=1.0, job_failure_status=status)
    with client(emu) as c:
        job_id = submit(c).json()["id"]
        r = poll_until_done(c, job_id)
        again = poll(c, job_id)  # served again on every poll until expiry
    assert r.status_code == again.status_code == status
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"]
    assert emu.ground_truth()[0]["job"]["status"] == "failed"
    assert emu.stats()["faults"]["job_failure"] == 1


def test_jobs_fail_over_to_fallbacks_and_fail_when_none_works(make_emulator: Any) -> None:
    emu = make_emulator(fail_models=("claude-test", "openai/gpt-4o"), fail_model_status=503)
    with client(emu) as c:
        ok = poll_until_done(c, submit(c, fallbacks=["openai/gpt-4o", "claude-haiku"]).json()["id"])
        bad = poll_until_done(c, submit(c, fallbacks=["openai/gpt-4o"]).json()["id"])
    assert ok.json()["model"] == "claude-haiku"
    assert bad.status_code == 503


def test_jobs_are_lost_on_restart(make_emulator: Any) -> None:
    emu = make_emulator(ttft="fixed:5")
    with client(emu) as c:
        job_id = submit(c).json()["id"]
    emu.stop()  # a job still processing: its timer is cancelled with the loop
    with running_emulator(EmulatorConfig(), port=emu.port) as emu2, client(emu2) as c:
        assert emu2.base_url == emu.base_url  # same address, fresh state
        assert poll(c, job_id).status_code == 404
