"""Pure pieces with injected time: TTL parsing, the job store, the rate limiter, slots, the log."""

from __future__ import annotations

from typing import Any

import pytest

from batchrunner.emulator.faults import RateLimiter
from batchrunner.emulator.groundtruth import GroundTruth
from batchrunner.emulator.jobs import (
    COMPLETED,
    FAILED,
    MAX_TTL_S,
    JobStore,
    JobStoreFull,
    parse_ttl,
)
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
        (b"%d" % (2**63 - 1), MAX_TTL_S),  # int64, but past Go's time.Duration: clamped
        (b"%d" % MAX_TTL_S, MAX_TTL_S),
        (b"%d" % 2**63, 900),  # outside int64: Atoi fails, so the default
        (b"1" + b"0" * 30, 900),
        (b"-" + b"9" * 400, 900),
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


class _NoScan(dict[str, Any]):
    """A job table that fails the test if anything walks over every stored job."""

    def values(self) -> Any:
        raise AssertionError("scanned every stored job")

    def __iter__(self) -> Any:
        raise AssertionError("scanned every stored job")


def test_job_store_evicts_and_sweeps_without_scanning() -> None:
    store = JobStore(1000)
    jobs = [store.create(None, 60, str(i), now=float(i)) for i in range(1000)]
    for j in reversed(jobs[500:]):  # finish order differs from creation order
        store.finish(j, COMPLETED, 200, b"m", now=2000.0 - j.seq)
    store._jobs = _NoScan(store._jobs)
    for _ in range(400):
        store.create(None, 60, "new", now=3000.0)
    # the oldest finished jobs by creation went first (as before); unfinished ones all stay
    kept = {j.id for j in jobs if j.id in store._jobs}
    assert kept == {j.id for j in jobs[:500] + jobs[900:]} and store.evicted == 400
    # job k expires at 2000 - k + 60: at 1110 the sweep takes jobs 950..999, nothing else
    assert store.sweep(now=1110.0) == 50 and len(store) == 950


def test_job_store_full_of_unfinished_jobs_refuses_and_stays_bounded() -> None:
    store = JobStore(3)
    pending = [store.create(None, 1, str(i), now=0.0) for i in range(3)]
    with pytest.raises(JobStoreFull):
        store.create(None, 1, "x", now=0.0)
    assert len(store) == 3 and store.counts()["refused"] == 1 and store.counts()["evicted"] == 0
    store.finish(pending[2], COMPLETED, 200, b"m", now=1.0)
    store.create(None, 1, "y", now=1.0)  # the finished one makes room
    assert pending[2].id not in {j.id for j in store.all()} and len(store) == 3


def test_job_store_heaps_stay_bounded_by_the_store() -> None:
    store = JobStore(10_000_000)
    for i in range(20_000):
        job = store.create(None, 1, str(i), now=float(i))
        store.finish(job, COMPLETED, 200, b"m", now=float(i))
        assert store.get(job.id, None, now=i + 1.0) is None  # read after expiry: forgotten
    assert len(store) == 0 and store.expired == 20_000
    assert len(store._by_age) + len(store._by_expiry) <= 1024 + 2
    assert store.counts()["stored"] == 0


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
