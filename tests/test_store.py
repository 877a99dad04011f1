"""The run store: durable appends, compaction into Parquet parts, resume, crashes, jobs, lock."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrunner.journal import (
    SegmentBlocks,
    compact_segment,
    encode_rows,
    segment_table,
    write_json_atomic,
)
from batchrunner.schema import INSTANT_COLUMNS, RESULT_SCHEMA, empty_row
from batchrunner.store import (
    RETRY_FAILED_STATUSES,
    JobRecord,
    RunDirectoryInUseError,
    RunStore,
    RunStoreError,
)

T0 = 1_767_225_600.123456  # 2026-01-01T00:00:00.123456Z


def row(i: int, status: str = "ok", **extra: Any) -> dict[str, Any]:
    r = empty_row()
    r.update(
        run_id="run-test",
        custom_id=f"req-{i}",
        input_index=i,
        status=status,
        mode="sync",
        http_status=200,
        attempts=1,
        sent_at=T0 + i,
        latency_s=0.25,
        output_tokens=i,
    )
    r.update(extra)
    return r


def parts(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "data").iterdir())


def segments(run_dir: Path) -> list[str]:
    journal = run_dir / "journal"
    return sorted(p.name for p in journal.iterdir()) if journal.exists() else []


def indices(run_dir: Path) -> list[int]:
    return sorted(
        pq.read_table(run_dir / "data", columns=["input_index"])["input_index"].to_pylist()
    )


def ts(seconds: float) -> dt.datetime:
    micros = round(seconds * 1e6)
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)


# ------------------------------------------------------------------------------------------------
# round trip and compaction


def full_row() -> dict[str, Any]:
    r = {}
    for i, field in enumerate(RESULT_SCHEMA):
        if field.name in INSTANT_COLUMNS:
            r[field.name] = T0 + i + 0.0000004  # rounds to the microsecond
        elif pa.types.is_string(field.type):
            r[field.name] = f'{field.name} ünïcødé ✓ 🚀 "quoted"\nnew line\ttab \\ {i}'
        elif pa.types.is_integer(field.type):
            r[field.name] = 2_000_000_000 + i if field.type == pa.int32() else 2**53 + i
        else:
            r[field.name] = 0.1 + i / 3
    r["input_index"] = 7
    return r


def check_full(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name, value in want.items():
        if name in INSTANT_COLUMNS:
            assert got[name] == ts(value), name
        else:
            assert got[name] == value, name


def test_round_trip_every_column_type(tmp_path: Path) -> None:
    full = full_row()
    nulls = empty_row() | {"input_index": 8}
    run_dir = tmp_path / "run"
    with RunStore.open(run_dir) as store:
        store.append_rows([full, nulls])
        live = list(store.iter_rows())  # read back from the journal, before any compaction
    assert len(live) == 2
    check_full(live[0], full)
    table = pq.read_table(run_dir / "data")
    assert table.schema.equals(RESULT_SCHEMA, check_metadata=False)
    assert table.schema.field("sent_at").type == pa.timestamp("us", tz="UTC")
    got = sorted(table.to_pylist(), key=lambda r: r["input_index"])
    check_full(got[0], full)
    assert got[1] == nulls
    frame = pd.read_parquet(run_dir / "data")
    assert str(frame["completed_at"].dtype) == "datetime64[us, UTC]"
    assert frame.loc[frame["input_index"] == 7, "response_text"].item() == full["response_text"]


def test_instants_round_to_the_microsecond(tmp_path: Path) -> None:
    values = [T0, 1.0000005, 1.0000015, 0.0, 1e9 + 0.9999996]
    rows = [row(i, sent_at=v) for i, v in enumerate(values)]
    with RunStore.open(tmp_path / "r") as store:
        store.append_rows(rows)
    got = pq.read_table(tmp_path / "r" / "data").sort_by("input_index")["sent_at"].cast(pa.int64())
    assert got.to_pylist() == [round(v * 1e6) for v in values]


def test_segments_rotate_and_compact_into_parts_of_the_same_number(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    store = RunStore.open(run_dir, segment_rows=10)
    assert parts(run_dir) == ["part-000000.parquet"]  # the empty part: a valid dataset at once
    assert not store.needs_compaction()
    for start in range(0, 35, 5):
        store.append_rows([row(i) for i in range(start, start + 5)])
    assert segments(run_dir) == [f"seg-00000{n}.jsonl" for n in (1, 2, 3, 4)]
    assert store.needs_compaction()
    assert store.compact_closed() == 30
    assert not store.needs_compaction()
    assert segments(run_dir) == ["seg-000004.jsonl"]
    assert parts(run_dir) == [f"part-00000{n}.parquet" for n in range(4)]
    assert indices(run_dir) == list(range(30))
    assert store.read_table(["input_index"])["input_index"].to_pylist() == list(range(35))
    store.close()
    store.close()  # idempotent
    assert not (run_dir / "journal").exists()
    assert indices(run_dir) == list(range(35))
    # The runner reads its summary after close().
    assert store.read_table(["input_index", "status"]).num_rows == 35
    with pytest.raises(RunStoreError):
        store.append_rows([row(99)])


def test_age_rotation(tmp_path: Path) -> None:
    with RunStore.open(tmp_path / "r", segment_age_s=0.05) as store:
        store.append_rows([row(0)])
        assert not store.needs_compaction()
        time.sleep(0.08)
        assert store.needs_compaction()
        assert store.compact_closed() == 1


def test_byte_rotation(tmp_path: Path) -> None:
    with RunStore.open(tmp_path / "r", segment_bytes=2000) as store:
        store.append_rows([row(0, response_text="x" * 3000)])
        assert store.needs_compaction()


def test_compaction_in_a_thread_while_appending(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    store = RunStore.open(run_dir, segment_rows=700)
    stop = threading.Event()
    compacted = []

    def compactor() -> None:
        while not stop.is_set():
            if store.needs_compaction():
                compacted.append(store.compact_closed())
            else:
                time.sleep(0.001)

    worker = threading.Thread(target=compactor)
    worker.start()
    try:
        for start in range(0, 20_000, 50):
            store.append_rows([row(i) for i in range(start, start + 50)])
    finally:
        stop.set()
        worker.join()
    assert sum(compacted) > 0
    store.close()
    assert indices(run_dir) == list(range(20_000))


def test_file_metadata_lands_in_each_part(tmp_path: Path) -> None:
    with RunStore.open(tmp_path / "r", file_metadata={"batchrunner.run_id": "abc"}) as store:
        store.append_rows([row(0)])
    for name in parts(tmp_path / "r"):
        meta = pq.read_schema(tmp_path / "r" / "data" / name).metadata
        assert meta[b"batchrunner.run_id"] == b"abc"
        assert (
            meta[b"batchrunner.schema_version"]
            == RESULT_SCHEMA.metadata[b"batchrunner.schema_version"]
        )


def test_unencodable_row_writes_nothing(tmp_path: Path) -> None:
    with RunStore.open(tmp_path / "r") as store:
        with pytest.raises(TypeError, match="'metadata'"):
            store.append_rows([row(0), row(1, metadata=object())])
        assert not store.is_done(0)
        assert store.read_table().num_rows == 0


def test_lone_surrogates_become_replacement_characters(tmp_path: Path) -> None:
    with RunStore.open(tmp_path / "r") as store:
        store.append_rows([row(0, response_text="a\ud800b"), row(1, response_text="ok ✓")])
    texts = pq.read_table(tmp_path / "r" / "data").sort_by("input_index")["response_text"]
    assert texts.to_pylist() == ["a\ufffdb", "ok ✓"]


def test_fsync_mode(tmp_path: Path) -> None:
    with RunStore.open(tmp_path / "r", fsync=True, segment_rows=2) as store:
        store.append_rows([row(0), row(1)])
        store.append_rows([row(2)])
        store.record_job(3, "req-3", "job-3", T0)
        assert [j.job_id for j in store.outstanding_jobs()] == ["job-3"]
    assert indices(tmp_path / "r") == [0, 1, 2]


def test_values_of_the_wrong_type_are_coerced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    odd = row(
        1,
        metadata={"tag": "a"},  # a dict where JSON text belongs
        custom_id=12,
        attempts=2.0,
        http_status="oops",
        sent_at=dt.datetime(2026, 1, 1, 0, 0, 1, 500, tzinfo=dt.UTC),  # orjson writes ISO text
        latency_s=None,
    )
    with caplog.at_level(logging.WARNING), RunStore.open(tmp_path / "r") as store:
        store.append_rows([row(0), odd])
    got = pq.read_table(tmp_path / "r" / "data").sort_by("input_index").to_pylist()
    assert got[0]["metadata"] is None and got[0]["attempts"] == 1
    assert got[1]["metadata"] == '{"tag":"a"}'
    assert got[1]["custom_id"] == "12"
    assert got[1]["attempts"] == 2
    assert got[1]["http_status"] is None
    assert got[1]["sent_at"] == dt.datetime(2026, 1, 1, 0, 0, 1, 500, tzinfo=dt.UTC)
    assert "http_status" in caplog.text
    assert "oops" not in caplog.text  # row contents never reach the log


# ------------------------------------------------------------------------------------------------
# resume


def test_reopen_gives_done_indices(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunStore.open(run_dir, segment_rows=7) as store:
        store.append_rows([row(i) for i in range(0, 50, 3)])
        assert store.is_done(3) and not store.is_done(4)
    with RunStore.open(run_dir, create=False) as store:
        assert store.done_count == 17
        assert [i for i in range(60) if store.is_done(i)] == list(range(0, 50, 3))
        assert not store.is_done(10**9) and not store.is_done(-1)
        store.append_rows([row(i) for i in range(1, 50, 3)])
        assert store.is_done(1)
        assert store.rows_appended == 17
    assert indices(run_dir) == sorted([*range(0, 50, 3), *range(1, 50, 3)])


def test_open_missing_directory_without_create(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RunStore.open(tmp_path / "nope", create=False)


def test_redo_statuses_remove_rows(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    statuses = ["ok", "cancelled", "error", "timeout", "expired"]
    with RunStore.open(run_dir, segment_rows=10) as store:
        for start in range(0, 50, 10):
            store.append_rows([row(i, statuses[i % 5]) for i in range(start, start + 10)])
        store.append_rows([row(i, "cancelled") for i in range(50, 60)])  # a part of only redo rows
    assert len(parts(run_dir)) == 7

    with RunStore.open(run_dir) as store:  # a plain resume redoes the cancelled rows
        assert store.redone == {"cancelled": 20}
        assert store.done_count == 40
        assert not store.is_done(1) and store.is_done(2) and not store.is_done(55)
    assert len(indices(run_dir)) == 40
    assert "part-000006.parquet" not in parts(run_dir)  # emptied parts are deleted

    with RunStore.open(run_dir, redo_statuses=RETRY_FAILED_STATUSES) as store:
        assert store.redone == {"error": 10, "timeout": 10, "expired": 10}
        assert store.done_count == 10
    assert indices(run_dir) == list(range(0, 50, 5))
    assert set(pd.read_parquet(run_dir / "data")["status"]) == {"ok"}

    with RunStore.open(run_dir, redo_statuses=frozenset()) as store:
        assert store.redone == {} and store.done_count == 10


def write_segment(run_dir: Path, seq: int, rows: list[dict[str, Any]], tail: bytes = b"") -> None:
    journal = run_dir / "journal"
    journal.mkdir(exist_ok=True)
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows) + tail
    (journal / f"seg-{seq:06d}.jsonl").write_bytes(data)


def test_torn_last_journal_line_is_dropped(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    RunStore.open(run_dir).close()
    write_segment(run_dir, 3, [row(0), row(1), row(2)], tail=orjson.dumps(row(3))[:40])
    with RunStore.open(run_dir) as store:
        assert store.done_count == 3 and not store.is_done(3)
        assert "part-000003.parquet" in parts(run_dir)
        store.append_rows([row(3)])
    assert indices(run_dir) == [0, 1, 2, 3]


def test_garbage_lines_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    RunStore.open(run_dir).close()
    journal = run_dir / "journal"
    journal.mkdir()
    good = orjson.dumps(row(0)) + b"\n"
    (journal / "seg-000002.jsonl").write_bytes(
        good + b"\x00\x00\x00\n[1,2]\n" + orjson.dumps(row(1)) + b"\n"
    )
    with caplog.at_level(logging.WARNING), RunStore.open(run_dir) as store:
        assert store.done_count == 2
    assert "skipped 2 line(s)" in caplog.text


def test_crash_between_part_rename_and_segment_delete(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    store = RunStore.open(run_dir, segment_rows=5)
    store.append_rows([row(i) for i in range(5)])
    seg = run_dir / "journal" / "seg-000001.jsonl"
    saved = tmp_path / "saved.jsonl"
    shutil.copy(seg, saved)
    assert store.compact_closed() == 5
    store.close()
    # As if the process died after renaming part-000001 and before deleting its segment.
    (run_dir / "journal").mkdir()
    shutil.copy(saved, seg)
    with RunStore.open(run_dir) as store:
        assert store.done_count == 5
    assert indices(run_dir) == list(range(5))


def test_duplicate_rows_keep_the_last_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    RunStore.open(run_dir).close()
    write_segment(run_dir, 1, [row(0), row(1, response_text="first"), row(2)])
    write_segment(run_dir, 2, [row(1, response_text="second"), row(3), row(3, "cancelled")])
    write_segment(run_dir, 3, [row(2, "cancelled"), row(2, response_text="third")])
    with caplog.at_level(logging.WARNING), RunStore.open(run_dir) as store:
        assert store.done_count == 3
        assert [store.is_done(i) for i in range(4)] == [True, True, True, False]
    assert "more than one row" in caplog.text
    table = pq.read_table(run_dir / "data").sort_by("input_index")
    assert table["input_index"].to_pylist() == [0, 1, 2]
    assert table["response_text"].to_pylist() == [None, "second", "third"]


def test_numpy_values_are_accepted(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    with RunStore.open(tmp_path / "r") as store:
        store.append_rows([row(0, latency_s=np.float64(0.5), input_index=np.int64(4))])
        assert store.is_done(4)
    assert indices(tmp_path / "r") == [4]


# ------------------------------------------------------------------------------------------------
# readers and live reading


def test_data_dir_reads_with_every_engine(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    store = RunStore.open(run_dir, segment_rows=4)
    data = run_dir / "data"
    assert pd.read_parquet(data).shape == (0, len(RESULT_SCHEMA))  # before any row
    store.append_rows([row(i) for i in range(8)])  # fills and closes a segment
    store.append_rows([row(i) for i in range(8, 10)])  # stays in the journal for now
    store.compact_closed()
    engines = {
        "pyarrow": lambda: pq.read_table(data).num_rows,
        "pandas": lambda: len(pd.read_parquet(data)),
    }
    try:
        import duckdb

        glob = str(data / "*.parquet")
        engines["duckdb"] = lambda: duckdb.sql(
            f"select count(*) from read_parquet('{glob}')"
        ).fetchall()[0][0]
    except ImportError:
        pass
    try:
        import polars as pl

        engines["polars"] = lambda: pl.read_parquet(data / "*.parquet").height
    except ImportError:
        pass
    assert {name: count() for name, count in engines.items()} == dict.fromkeys(engines, 8)
    store.close()
    assert {name: count() for name, count in engines.items()} == dict.fromkeys(engines, 10)


def test_reading_while_a_writer_is_live(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    store = RunStore.open(run_dir, segment_rows=300)
    done = threading.Event()

    def writer() -> None:
        for start in range(0, 30_000, 100):
            store.append_rows([row(i) for i in range(start, start + 100)])
            if store.needs_compaction():
                store.compact_closed()
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = []
    try:
        while not done.is_set() and len(seen) < 200:
            frame = pd.read_parquet(run_dir / "data", columns=["input_index"])
            assert frame["input_index"].is_unique
            seen.append(len(frame))
            pq.read_table(run_dir / "data")
    finally:
        thread.join()
    store.close()
    assert seen == sorted(seen)  # rows only ever appear
    assert len(indices(run_dir)) == 30_000


# ------------------------------------------------------------------------------------------------
# kill -9


CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from batchrunner.schema import empty_row
    from batchrunner.store import RunStore

    store = RunStore.open(Path(sys.argv[1]), segment_rows=400)

    def compactor():
        while True:
            if store.needs_compaction():
                store.compact_closed()
            else:
                time.sleep(0.001)

    threading.Thread(target=compactor, daemon=True).start()
    print("ready", flush=True)
    i, deadline = 0, time.monotonic() + 10
    while i < 200_000 and time.monotonic() < deadline:
        batch = []
        while len(batch) < 25:
            if not store.is_done(i):
                r = empty_row()
                r.update(input_index=i, custom_id=f"req-{i}", status="ok", sent_at=time.time(),
                         response_text="r\u00e9sultat " * 20)
                batch.append(r)
            i += 1
        store.append_rows(batch)
        print(i, flush=True)  # every index below i has a durable row
    """
)


def run_and_kill(run_dir: Path, after_s: float) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(run_dir)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + after_s
        while time.monotonic() < deadline:  # the dataset stays readable while the writer runs
            pq.read_table(run_dir / "data", columns=["input_index"])
            pd.read_parquet(run_dir / "data", columns=["status"])
    finally:
        child.send_signal(signal.SIGKILL)
        out = child.communicate(timeout=30)[0]
    assert child.returncode == -signal.SIGKILL
    reported = [int(line) for line in out.split(b"\n")[:-1]]  # a last line without \n is torn
    assert reported, "the child appended nothing before it was killed"
    return reported[-1]


def test_kill_9_loses_nothing_acknowledged_and_resume_adds_no_duplicates(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run_and_kill(run_dir, 0.4)
    # The dead writer's lock is gone; its segments are recovered now.
    with RunStore.open(run_dir) as store:
        assert all(store.is_done(i) for i in range(first))
        assert store.done_count <= first + 25  # at most the batch in flight beyond the report
    got = indices(run_dir)
    assert len(got) == len(set(got))

    second = run_and_kill(run_dir, 0.4)  # resumes: only indices without a row are appended
    assert second > first
    with RunStore.open(run_dir) as store:
        assert all(store.is_done(i) for i in range(second))
    got = indices(run_dir)
    assert len(got) == len(set(got))
    assert got[:second] == list(range(second))
    assert len(pd.read_parquet(run_dir / "data")) == len(got)


# ------------------------------------------------------------------------------------------------
# jobs, lock, json


def test_compact_segment_block_by_block_equals_whole(tmp_path: Path) -> None:
    rows = [row(i, response_text="x" * (i % 7) * 50) for i in range(300)]
    rows[150]["response_text"] = "long " * 2000  # one line longer than a block
    data = encode_rows(rows)
    seg = tmp_path / "seg"
    seg.write_bytes(data + b'{"input_index": 999, "status": "o')  # torn by a crash
    part = tmp_path / "part.parquet"
    written, torn = compact_segment(seg, part, tmp_path, block_bytes=4096)
    assert (written, torn) == (300, len(b'{"input_index": 999, "status": "o'))
    whole = segment_table(pa.py_buffer(data))
    got = pq.read_table(part)
    assert got.equals(whole)
    assert pq.ParquetFile(part).num_row_groups > 1  # converted in steps, not all at once
    assert not list(tmp_path.glob("*.tmp"))


def test_segment_blocks_are_whole_lines_within_a_snapshot_limit(tmp_path: Path) -> None:
    lines = [b'{"input_index": %d, "pad": "%s"}\n' % (i, b"y" * (i * 37 % 300)) for i in range(200)]
    lines[50] = b'{"input_index": 50, "pad": "%s"}\n' % (b"z" * 5000)  # longer than a block
    data = b"".join(lines)
    seg = tmp_path / "seg"
    seg.write_bytes(data + b'{"input_index": 2')
    blocks = SegmentBlocks(seg, block_bytes=1024)
    got = [bytes(buf) for buf in blocks]
    assert all(b.endswith(b"\n") for b in got) and len(got) > 10
    assert b"".join(got) == data and blocks.torn == len(b'{"input_index": 2')
    # A snapshot of a segment being written: only the bytes up to the limit count.
    limit = len(b"".join(lines[:120])) + 10
    snapshot = SegmentBlocks(seg, limit, block_bytes=1024)
    assert b"".join(bytes(buf) for buf in snapshot) == b"".join(lines[:120])
    assert snapshot.torn == 10


def test_iter_batches_hands_out_parts_in_bounded_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("batchrunner.store.READ_BATCH_ROWS", 64)
    run_dir = tmp_path / "run"
    with RunStore.open(run_dir, segment_rows=500) as store:
        store.append_rows([row(i) for i in range(1_200)])
        store.compact_closed()
        tables = list(store.iter_batches(["input_index", "status"]))
    assert max(t.num_rows for t in tables) <= 500  # parts in pieces; the open segment too
    assert max(t.num_rows for t in tables[:2]) <= 64
    got = sorted(i for t in tables for i in t.column("input_index").to_pylist())
    assert got == list(range(1_200))
    assert all(t.column_names == ["input_index", "status"] for t in tables)


def test_compact_segment_without_a_complete_line_writes_nothing(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    seg.write_bytes(b'{"input_index": 1')
    assert compact_segment(seg, tmp_path / "part.parquet", tmp_path) == (0, 17)
    assert not (tmp_path / "part.parquet").exists()


def test_job_ledger(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunStore.open(run_dir) as store:
        assert store.outstanding_jobs() == []
        assert not (run_dir / "jobs.jsonl").exists()  # made by the first job only
        store.record_job(0, "req-0", "job-a", T0, 3600.0, None)
        store.record_job(1, "req-1", "job-b", T0 + 1, 3600.0, T0 + 7200)
        store.record_job(2, "req-2", "job-c", T0 + 2, None)
        store.append_rows([row(0)])
        assert [j.job_id for j in store.outstanding_jobs()] == ["job-b", "job-c"]
        store.record_job(2, "req-2", "job-c2", T0 + 3, 60.0)  # resubmitted: supersedes job-c
    with (run_dir / "jobs.jsonl").open("ab") as f:
        f.write(b'{"input_index": 5, "custom_id": "req-5", "job_')  # torn by a crash
    with RunStore.open(run_dir) as store:
        jobs = store.outstanding_jobs()
        assert jobs == [
            JobRecord(1, "req-1", "job-b", T0 + 1, 3600.0, T0 + 7200),
            JobRecord(2, "req-2", "job-c2", T0 + 3, 60.0, None),
        ]
        store.record_job(6, "req-6", "job-f", T0 + 4)  # not glued onto the torn line
        assert [j.input_index for j in store.iter_outstanding_jobs()] == [1, 2, 6]
    lines = (run_dir / "jobs.jsonl").read_bytes().splitlines()
    assert len(lines) == 5 and all(orjson.loads(line)["job_id"] for line in lines)


def test_a_job_record_cut_short_by_a_full_disk_is_taken_back(tmp_path: Path,
                                                              monkeypatch) -> None:
    # Half a record stayed; the next one, written once space was back, was glued onto it and
    # unreadable: a resume would have submitted (and paid for) that job again.
    import errno

    import batchrunner.ledger as ledger_module

    real = ledger_module.write_all

    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    run_dir = tmp_path / "run"
    with RunStore.open(run_dir) as store:
        store.record_job(0, "req-0", "job-a", T0, 3600.0)
        monkeypatch.setattr(ledger_module, "write_all", half_then_full)
        with pytest.raises(OSError, match="No space left"):
            store.record_job(1, "req-1", "job-b", T0 + 1, 3600.0)
        monkeypatch.setattr(ledger_module, "write_all", real)
        store.record_job(2, "req-2", "job-c", T0 + 2, 3600.0)
    with RunStore.open(run_dir) as store:
        assert [j.job_id for j in store.outstanding_jobs()] == ["job-a", "job-c"]


def test_write_errors_say_their_cause_and_what_lets_a_resume_write() -> None:
    # Every one said "free space, then resume", a read-only file system and a file size limit
    # too; and Arrow's "Error writing bytes to file. Detail: [errno 28]" came through whole.
    import errno

    from batchrunner.store import io_reason, what_to_do

    arrow = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space "
                                  "left on device")
    assert io_reason(arrow) == "No space left on device"
    assert what_to_do(arrow) == "free space, then resume"
    assert what_to_do(OSError(errno.EROFS, "Read-only file system")).startswith(
        "the file system is read-only: make it writable")
    assert what_to_do(OSError(errno.EFBIG, "File too large")) == (
        "a file size limit refused it (ulimit -f): raise it, then resume")
    assert io_reason(OSError("plain")) == "plain"


def test_rows_removed_at_open_are_given_whole_even_from_an_old_part(tmp_path: Path) -> None:
    # A part written before the usage columns existed made pricing the removed rows raise
    # KeyError, and every resume of that run fail.
    from batchrunner.spend import SpendMeter

    run_dir = tmp_path / "run"
    with RunStore.open(run_dir) as store:
        store.append_rows([row(0), row(1, status="cancelled", input_tokens=10)])
    (part,) = [p for p in (run_dir / "data").glob("part-*.parquet")
               if pq.read_metadata(p).num_rows]
    old = pq.read_table(part)
    pq.write_table(old.drop_columns([c for c in ("service_tier", "speed", "inference_geo",
                                                 "web_search_requests", "web_fetch_requests")
                                     if c in old.column_names]), part)
    got: list = []
    RunStore.open(run_dir, redo_statuses={"cancelled"}, on_removed=got.append).close()
    (removed,) = got
    assert removed.to_pylist()[0]["input_index"] == 1 and "service_tier" in removed.column_names
    meter = SpendMeter(1.0)
    meter.add_table(removed)  # priced, not a KeyError
    assert meter.spent_usd >= 0


def test_a_failure_pricing_the_removed_rows_never_fails_the_open(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunStore.open(run_dir) as store:
        store.append_rows([row(0, status="cancelled")])

    def broken(table: object) -> None:
        raise KeyError("input_tokens")

    with RunStore.open(run_dir, redo_statuses={"cancelled"}, on_removed=broken) as store:
        assert store.redone == {"cancelled": 1}


def test_lock_keeps_a_second_writer_out(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    store = RunStore.open(run_dir)
    with pytest.raises(
        RunDirectoryInUseError,
        match=rf"in use by another batchrunner process \(pid {os.getpid()}\)",
    ):
        RunStore.open(run_dir)
    store.close()
    RunStore.open(run_dir).close()


def test_write_json_atomic(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    write_json_atomic(target, {"a": 1, "path": tmp_path, "tags": {"b", "a"}, "x": math.pi})
    write_json_atomic(target, {"a": 2, "path": tmp_path, "tags": {"b", "a"}, "x": math.pi})
    assert orjson.loads(target.read_bytes()) == {
        "a": 2,
        "path": str(tmp_path),
        "tags": ["a", "b"],
        "x": math.pi,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
