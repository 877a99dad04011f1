"""Pure pieces with injected time: TTL parsing, the job store, the rate limiter, slots, the log."""

from __future__ import annotations

from typing import Any

import pytest

from batchrunner.emulator.faults import RateLimiter
from batchrunner.emulator.groundtruth import GroundTruth
from batchrunner.emulator.jobs import COMPLETED, FAILED, JobStore, parse_ttl
from batchrunner.emulator.slots import Slots


@pytest.mark.parametrize(
    ("raw", "ttl"),
    [
        (None, 900),
        (b"", 900),
        (b"60", 60),
        (b" 60 ", 60),
        (b"+60", 60),
        (b"0", 3600),
        (b"-1", 900),
        (b"1e3", 900),
        (b"x", 900),
    ],
)
def test_parse_ttl(raw: bytes | None, ttl: int) -> None:
    assert parse_ttl(raw, 900) == ttl


def test_job_expires_exactly_ttl_after_completion() -> None:
    store = JobStore(10)
    job = store.create("sk-bf-a", ttl_s=5, request_id="r", now=100.0)
    assert store.get(job.id, "sk-bf-a", now=10_000.0) is job  # pending jobs never expire
    store.finish(job, COMPLETED, 200, b"{}", now=200.0)
    assert job.expires_at == 205.0
    assert store.get(job.id, "sk-bf-a", now=204.999) is job
    assert store.get(job.id, "sk-bf-b", now=204.999) is None  # other key
    assert store.get(job.id, None, now=204.999) is None  # no key
    assert store.get(job.id, "sk-bf-a", now=205.0) is None  # gone at expires_at
    assert store.counts()["expired"] == 1 and job.body == b""


def test_job_store_sweeps_and_evicts_finished_jobs_first() -> None:
    store = JobStore(3)
    jobs = [store.create(None, 1, str(i), now=float(i)) for i in range(3)]
    store.finish(jobs[1], FAILED, 529, b"e", now=1.0)
    store.create(None, 1, "3", now=3.0)  # over the cap: the finished one goes
    assert jobs[1].id not in {j.id for j in store.all()} and len(store) == 3
    store.finish(jobs[0], COMPLETED, 200, b"m", now=5.0)
    assert store.sweep(now=6.0) == 1 and len(store) == 2


def test_rate_limiter_refills_with_injected_time() -> None:
    rl = RateLimiter()
    assert [rl.check("k", 0.0, 2.0, 0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert rl.check("k", 0.4, 2.0, 0) == pytest.approx(0.1)  # 0.8 tokens now
    assert rl.check("k", 0.5, 2.0, 0) == 0.0
    assert rl.check("other", 0.5, 2.0, 0) == 0.0
    assert rl.check("k", 0.5, 0.0, 0) == 0.0  # rps 0 = no limit


def test_slots_fifo_and_marks() -> None:
    slots = Slots(2)
    order: list[int] = []
    for i in range(5):
        slots.acquire(lambda i=i: order.append(i))
    assert order == [0, 1] and slots.queued == 3
    slots.release()
    slots.release()
    assert order == [0, 1, 2, 3] and slots.active == 2
    assert (slots.active_max, slots.queued_max) == (2, 3)
    unlimited = Slots(0)
    assert all(unlimited.acquire(lambda: None) for _ in range(100))


class _E:
    def __init__(self, n: int) -> None:
        self.seq = -1
        self.n = n

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "n": self.n}


def test_ground_truth_since_cap_and_reset() -> None:
    gt = GroundTruth(3)
    for i in range(5):
        gt.begin()
        gt.end("sync", "ok", 200, None)
        gt.add(_E(i))
    page = gt.read()
    assert (
        [e["n"] for e in page["entries"]] == [2, 3, 4]
        and page["dropped"] == 2
        and page["next"] == 5
    )
    assert gt.read(since=4)["entries"] == [{"seq": 4, "n": 4}]
    assert gt.read(since=9) == {"next": 5, "dropped": 2, "entries": []}
    assert gt.in_flight == 0 and gt.in_flight_max == 1 and gt.by_status["200"] == 5
    gt.reset()
    gt.add(_E(5))
    assert gt.read() == {"next": 6, "dropped": 0, "entries": [{"seq": 5, "n": 5}]}
