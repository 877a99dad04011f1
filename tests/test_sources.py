"""Input layer: JSONL/Parquet readers, request checks, duplicates, rejects, counts, demo data."""

from __future__ import annotations

import gzip
import random
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrunner import formats
from batchrunner.dedupe import DuplicateDetector
from batchrunner.sources import (
    InputError,
    Reject,
    SourceOptions,
    count_requests,
    iter_requests,
    validate_file,
)

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"

MSG = [{"role": "user", "content": "hi"}]
BODY = {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": MSG}


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def write_jsonl(path: Path, *lines: Any, newline: str = "\n") -> Path:
    """Write objects (dumped) or raw strings (as is), one per line."""
    text = newline.join(x if isinstance(x, str) else dumps(x) for x in lines)
    path.write_text(text + (newline if lines else ""), encoding="utf-8")
    return path


def read(path: Path, options: SourceOptions | None = None, **kw: Any):
    rejects: list[Reject] = []
    records = list(iter_requests(path, options or SourceOptions(), rejects.append, **kw))
    return records, rejects


def one_reject(tmp_path: Path, line: Any, options: SourceOptions | None = None) -> Reject:
    records, rejects = read(write_jsonl(tmp_path / "r.jsonl", line), options)
    assert records == []
    assert len(rejects) == 1
    return rejects[0]


# ----------------------------------------------------------------------------- shapes


def test_bare_body_and_batches_shape(tmp_path: Path) -> None:
    bare = {**BODY, "metadata": {"user_id": "u1"}}
    wrapped = {"custom_id": "req-1", "params": BODY, "metadata": {"task": "t", "split": "dev"}}
    records, rejects = read(write_jsonl(tmp_path / "a.jsonl", bare, wrapped))
    assert rejects == []
    first, second = records
    # A bare body's own metadata is Anthropic's field: it stays in params.
    assert first.custom_id == "0" and first.metadata is None
    assert first.params["metadata"] == {"user_id": "u1"}
    assert first.location == f"{tmp_path / 'a.jsonl'}:1"
    assert second.custom_id == "req-1" and second.input_index == 1
    assert second.metadata == {"task": "t", "split": "dev"}
    assert second.params == BODY


def test_bare_body_custom_id_is_taken_out_of_the_body(tmp_path: Path) -> None:
    records, _ = read(write_jsonl(tmp_path / "a.jsonl", {**BODY, "custom_id": "x-1"}))
    assert records[0].custom_id == "x-1"
    assert "custom_id" not in records[0].params


def test_unknown_body_fields_pass_through_and_stream_is_removed(tmp_path: Path) -> None:
    body = {**BODY, "fallbacks": ["openai/gpt-4o-mini"], "stream": True, "temperature": 0.5}
    records, _ = read(write_jsonl(tmp_path / "a.jsonl", body))
    params = records[0].params
    assert params["fallbacks"] == ["openai/gpt-4o-mini"]
    assert params["temperature"] == 0.5
    assert "stream" not in params


def test_defaults_fill_but_never_override(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        {"messages": MSG},
        {**BODY, "system": "own"},
        {"model": None, "max_tokens": None, "messages": MSG},
    )
    opts = SourceOptions(model="m-default", max_tokens=7, system="sys-default")
    records, rejects = read(path, opts)
    assert rejects == []
    a, b, c = (r.params for r in records)
    assert (a["model"], a["max_tokens"], a["system"]) == ("m-default", 7, "sys-default")
    assert (b["model"], b["max_tokens"], b["system"]) == ("claude-haiku-4-5", 32, "own")
    assert (c["model"], c["max_tokens"]) == ("m-default", 7)


def test_model_override_replaces_every_model(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", BODY, {"messages": MSG, "max_tokens": 5})
    records, _ = read(path, SourceOptions(model="unused", model_override="forced"))
    assert [r.params["model"] for r in records] == ["forced", "forced"]


def test_empty_final_assistant_prefill_is_allowed(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
    records, rejects = read(write_jsonl(tmp_path / "a.jsonl", {**BODY, "messages": msgs}))
    assert rejects == [] and len(records) == 1


def test_block_content_and_system_blocks(tmp_path: Path) -> None:
    body = {
        **BODY,
        "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {}}],
            }
        ],
    }
    records, rejects = read(write_jsonl(tmp_path / "a.jsonl", body))
    assert rejects == [] and records[0].params == body


# ----------------------------------------------------------------------------- bad rows

BAD_ROWS = [
    ("{not json", "invalid JSON"),
    ('{"model": "m",', "invalid JSON"),
    ("[1, 2]", "not a JSON object (got array)"),
    ('"text"', "not a JSON object (got string)"),
    ("42", "not a JSON object (got integer)"),
    ("null", "not a JSON object (got null)"),
    ({"max_tokens": 5, "messages": MSG}, "missing model"),
    ({**BODY, "model": ""}, "model must be a non-empty string"),
    ({**BODY, "model": "  "}, "model must be a non-empty string"),
    ({**BODY, "model": 5}, "model must be a non-empty string"),
    ({"model": "m", "messages": MSG}, "missing max_tokens"),
    ({**BODY, "max_tokens": 0}, "max_tokens must be a positive integer, got 0"),
    ({**BODY, "max_tokens": -3}, "max_tokens must be a positive integer, got -3"),
    ({**BODY, "max_tokens": 1.5}, "max_tokens must be a positive integer, got 1.5"),
    ({**BODY, "max_tokens": 100.0}, "max_tokens must be a positive integer, got 100.0"),
    ({**BODY, "max_tokens": True}, "max_tokens must be a positive integer, got true"),
    ({**BODY, "max_tokens": "100"}, 'max_tokens must be a positive integer, got "100"'),
    ({"model": "m", "max_tokens": 5}, "missing messages"),
    ({**BODY, "messages": []}, "messages is empty"),
    ({**BODY, "messages": "hi"}, "messages must be an array, got string"),
    ({**BODY, "messages": {"role": "user"}}, "messages must be an array, got object"),
    ({**BODY, "messages": [1]}, "messages[0] must be an object, got integer"),
    ({**BODY, "messages": [{"role": "system", "content": "x"}]}, "top-level 'system' field"),
    ({**BODY, "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role must be"),
    ({**BODY, "messages": [{"content": "x"}]}, "messages[0].role must be"),
    ({**BODY, "messages": [{"role": "user"}]}, "messages[0] has no content"),
    (
        {**BODY, "messages": [{"role": "user", "content": 5}]},
        "content must be a string or an array",
    ),
    ({**BODY, "messages": [{"role": "user", "content": None}]}, "content must be a string or an"),
    ({**BODY, "messages": [{"role": "user", "content": ""}]}, "messages[0].content is empty"),
    ({**BODY, "messages": [{"role": "user", "content": []}]}, "messages[0].content is empty"),
    (
        {**BODY, "messages": [{"role": "assistant", "content": ""}, *MSG]},
        "messages[0].content is empty",
    ),
    ({**BODY, "messages": [{"role": "user", "content": ["x"]}]}, "content[0] must be an object"),
    (
        {**BODY, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
        "content[0] has no type",
    ),
    (
        {**BODY, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "text block without a string 'text'",
    ),
    ({**BODY, "system": 5}, "system must be a string or an array of blocks, got integer"),
    ({**BODY, "system": [{"text": "x"}]}, "system[0] has no type"),
    ({"custom_id": "a", "params": [1]}, "params must be a JSON object, got array"),
    ({"custom_id": "a", "params": None}, "params must be a JSON object, got null"),
    ({"custom_id": "a", "params": BODY, "metadata": [1]}, "metadata must be a JSON object"),
    ({"custom_id": "a", "params": BODY, "meta": {}}, "unknown field 'meta' beside params"),
    ({"custom_id": "a b", "params": BODY}, "custom_id 'a b' is invalid"),
    ({"custom_id": "", "params": BODY}, "custom_id '' is invalid"),
    ({"custom_id": "x" * 65, "params": BODY}, "is invalid: use 1-64 characters"),
    ({"custom_id": "é", "params": BODY}, "is invalid"),
    ({"custom_id": "a\n", "params": BODY}, "is invalid"),
    ({"custom_id": ["a"], "params": BODY}, "custom_id must be a string, got array"),
    ({"custom_id": True, "params": BODY}, "custom_id must be a string, got boolean"),
    ({"custom_id": 1.5, "params": BODY}, "custom_id must be a string, got number"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_ROWS, ids=[str(i) for i in range(len(BAD_ROWS))])
def test_bad_row_is_rejected_with_reason(tmp_path: Path, line: Any, reason: str) -> None:
    reject = one_reject(tmp_path, line)
    assert reason in reject.reason
    assert reject.location == f"{tmp_path / 'r.jsonl'}:1"
    assert reject.input_index == 0
    assert reject.raw == (line if isinstance(line, str) else dumps(line))


def test_good_custom_ids(tmp_path: Path) -> None:
    ids = ["a", "A-z_09", "x" * 64, 7]
    path = write_jsonl(tmp_path / "a.jsonl", *({"custom_id": i, "params": BODY} for i in ids))
    records, rejects = read(path)
    assert rejects == []
    assert [r.custom_id for r in records] == ["a", "A-z_09", "x" * 64, "7"]


def test_reject_custom_id_field(tmp_path: Path) -> None:
    assert one_reject(tmp_path, {"custom_id": "c1", "params": {}}).custom_id == "c1"
    assert one_reject(tmp_path, {**BODY, "max_tokens": 0}).custom_id == "0"  # default id
    assert one_reject(tmp_path, "{bad").custom_id is None
    assert one_reject(tmp_path, {"custom_id": "a b", "params": BODY}).custom_id == "a b"


def test_raw_is_truncated(tmp_path: Path) -> None:
    reject = one_reject(tmp_path, "{" + "x" * 50_000)
    assert len(reject.raw) == formats.RAW_LIMIT
    assert reject.to_dict().keys() == {"location", "input_index", "custom_id", "reason", "raw"}


def test_invalid_utf8_is_a_reject(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"model": "\xff"}\n' + dumps(BODY).encode() + b"\n")
    records, rejects = read(path)
    assert [r.input_index for r in records] == [1]
    # raw has U+FFFD in its place; the reason says where it was and what it was
    assert rejects[0].reason == "not valid UTF-8: byte 12 of the line is ff (bytes ff 22 7d 0a)"
    assert "\ufffd" in rejects[0].raw


# ----------------------------------------------------------------------------- lines


def test_blank_lines_take_no_index_but_keep_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", "", BODY, "   ", "\t", BODY, "{bad", "", BODY)
    records, rejects = read(path)
    assert [(r.input_index, r.location.rsplit(":", 1)[1]) for r in records] == [
        (0, "2"),
        (1, "5"),
        (3, "8"),
    ]
    assert (rejects[0].input_index, rejects[0].location.rsplit(":", 1)[1]) == (2, "6")
    assert count_requests(path) == 4


def test_bom_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    lines = [dumps({"custom_id": f"c{i}", "params": BODY}) for i in range(3)]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    records, rejects = read(path)
    assert rejects == []
    assert [r.custom_id for r in records] == ["c0", "c1", "c2"]
    assert count_requests(path) == 3


def test_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(dumps(BODY) + "\n" + dumps(BODY)[:-7], encoding="utf-8")
    records, rejects = read(path)
    assert len(records) == 1
    assert rejects[0].location.endswith(":2")
    assert "invalid JSON" in rejects[0].reason and "no newline" in rejects[0].reason


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n", b"\xef\xbb\xbf"])
def test_empty_files_have_no_rows(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(content)
    assert read(path) == ([], [])
    assert count_requests(path) == 0
    report = validate_file(path, SourceOptions())
    assert (report.total, report.valid) == (0, True)


def test_all_rejects_is_not_a_file_error(tmp_path: Path) -> None:
    records, rejects = read(write_jsonl(tmp_path / "a.jsonl", "{", "[]", "1"))
    assert records == [] and len(rejects) == 3


def test_gzip_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(dumps({"custom_id": f"g{i}", "params": BODY}) for i in range(5)))
    records, _ = read(path)
    assert [r.custom_id for r in records] == [f"g{i}" for i in range(5)]
    assert count_requests(path) == 5


def test_corrupt_gzip_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress((dumps(BODY) + "\n").encode() * 2000)[:300])
    with pytest.raises(InputError, match=r"a\.jsonl\.gz: cannot read"):
        list(iter_requests(path, SourceOptions()))
    with pytest.raises(InputError, match="cannot read"):
        count_requests(path)


def test_count_matches_reader_across_block_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    pieces = [b"", b" ", b"\t", b"\r", b" x", b"{}", b"\x0c", b'  {"a":1} ', b"\xef\xbb\xbf"]
    path = tmp_path / "a.jsonl"
    for trial in range(300):
        lines = [rng.choice(pieces) + rng.choice(pieces) for _ in range(rng.randint(0, 12))]
        data = (b"\xef\xbb\xbf" if trial % 5 == 0 else b"") + b"\n".join(lines)
        if rng.random() < 0.5:
            data += b"\n"
        path.write_bytes(data)
        # Every data row, valid or not, has an index: count the rows the reader numbered.
        rejects: list[Reject] = []
        records = list(iter_requests(path, SourceOptions(), rejects.append))
        indices = [r.input_index for r in records] + [r.input_index for r in rejects]
        expected = len(indices)
        assert sorted(indices) == list(range(expected))
        for block in (1, 2, 3, 5, 64):
            monkeypatch.setattr(formats, "_BLOCK", block)
            assert count_requests(path) == expected, (data, block)
        monkeypatch.setattr(formats, "_BLOCK", 1 << 20)


# ----------------------------------------------------------------------------- duplicates


def test_duplicate_custom_id_first_wins(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        {"custom_id": "a", "params": BODY},
        {"custom_id": "b", "params": BODY},
        {"custom_id": "a", "params": BODY},
    )
    records, rejects = read(path)
    assert [r.custom_id for r in records] == ["a", "b"]
    assert rejects[0].reason.startswith("duplicate custom_id 'a': an earlier row has the same id")
    assert (rejects[0].input_index, rejects[0].custom_id) == (2, "a")


def test_given_id_clashing_with_a_default_index_id(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", BODY, {"custom_id": "0", "params": BODY})
    records, rejects = read(path)
    assert [r.custom_id for r in records] == ["0"]
    assert "duplicate custom_id '0'" in rejects[0].reason
    assert "row without custom_id has its 0-based row index as id" in rejects[0].reason


def test_a_row_without_id_whose_index_is_taken_says_why(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", {"custom_id": "1", "params": BODY}, BODY)
    records, rejects = read(path)
    assert [r.custom_id for r in records] == ["1"]
    assert rejects[0].reason.startswith("duplicate custom_id '1': this row has none")
    assert "give every row a custom_id, or none" in rejects[0].reason


def test_id_of_an_invalid_row_still_counts(tmp_path: Path) -> None:
    bad = {"custom_id": "a", "params": {**BODY, "max_tokens": 0}}
    path = write_jsonl(tmp_path / "a.jsonl", bad, {"custom_id": "a", "params": BODY})
    _, rejects = read(path)
    assert ["max_tokens" in rejects[0].reason, "duplicate" in rejects[1].reason] == [True, True]


def test_duplicates_across_batches(tmp_path: Path) -> None:
    n = formats.BATCH_ROWS * 3 + 5
    lines = [{"custom_id": f"id-{i}", "params": BODY} for i in range(n)]
    lines += [{"custom_id": "id-3", "params": BODY}, {"custom_id": f"id-{n - 1}", "params": BODY}]
    records, rejects = read(write_jsonl(tmp_path / "a.jsonl", *lines))
    assert len(records) == n
    assert [r.input_index for r in rejects] == [n, n + 1]
    report = validate_file(tmp_path / "a.jsonl", SourceOptions())
    assert (report.ok, report.rejected, report.duplicates) == (n, 2, 2)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_small_batches_read_the_same_records(tmp_path: Path, kind: str) -> None:
    # The run reads in small batches (so that reading never stalls its loop for long); what it
    # reads, rejects and flags as duplicate must not depend on the batch size.
    n = 100
    lines: list[Any] = [{"custom_id": f"id-{i}", "params": BODY} for i in range(n)]
    lines += [{"custom_id": "id-3", "params": BODY}, {"custom_id": "bad", "params": {"x": 1}}]
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "a.jsonl", *lines)
    else:
        path = tmp_path / "a.parquet"
        pq.write_table(
            pa.table(
                {
                    "custom_id": [line["custom_id"] for line in lines],
                    "params": [dumps(line["params"]) for line in lines],
                }
            ),
            path,
            row_group_size=40,
        )

    def outcome(batch_rows: int) -> tuple[list[Any], list[Any]]:
        seen: list[Reject] = []
        records = list(iter_requests(path, SourceOptions(), seen.append, batch_rows=batch_rows))
        return (
            [(r.input_index, r.custom_id, r.params, r.location) for r in records],
            [(r.input_index, r.reason, r.location) for r in seen],
        )

    reference = outcome(formats.BATCH_ROWS)
    assert len(reference[0]) == n and len(reference[1]) == 2
    for batch_rows in (1, 7, 32):
        assert outcome(batch_rows) == reference


def test_duplicate_detector_matches_a_set() -> None:
    rng = random.Random(3)
    for _ in range(40):
        detector, seen = DuplicateDetector(), set()
        for _ in range(rng.randint(1, 25)):
            keys = [str(rng.randint(0, 200)) for _ in range(rng.randint(0, 30))]
            expected = []
            for k in keys:
                expected.append(k in seen)
                seen.add(k)
            assert detector.add(keys).tolist() == expected
        assert len(detector) == len(seen)


# ----------------------------------------------------------------------------- strict, skip


def test_strict_raises_naming_location_and_reason(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", BODY, "", {**BODY, "max_tokens": 0}, BODY)
    seen: list[str] = []
    with pytest.raises(InputError) as info:
        for record in iter_requests(path, SourceOptions(strict=True)):
            seen.append(record.custom_id)
    assert seen == ["0"]
    assert str(info.value) == f"{path}:3: max_tokens must be a positive integer, got 0"
    assert info.value.reject is not None and info.value.reject.input_index == 1


def test_skip_hides_rows_but_not_their_ids(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        {"custom_id": "a", "params": BODY},
        {"custom_id": "b", "params": {"not": "checked when skipped"}},
        {"custom_id": "c", "params": BODY},
        {"custom_id": "a", "params": BODY},
        "{bad",
    )
    records, rejects = read(path, skip=lambda i: i in {0, 1, 4})
    assert [r.custom_id for r in records] == ["c"]
    # Row 3 repeats the id of row 0, which a resumed run skipped: still a duplicate.
    assert [(r.input_index, "duplicate" in r.reason) for r in rejects] == [(3, True)]


def test_missing_file_fails_at_call_time(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.jsonl: no such file"):
        iter_requests(tmp_path / "nope.jsonl", SourceOptions())


# ----------------------------------------------------------------------------- file errors


def test_file_level_errors(tmp_path: Path) -> None:
    cases: dict[str, str] = {}
    (tmp_path / "x.csv").write_text("a,b\n")
    cases["x.csv"] = "unknown file type"
    cases["missing.parquet"] = "no such file"
    (tmp_path / "dir.jsonl").mkdir()
    cases["dir.jsonl"] = "is a directory"
    (tmp_path / "fake.parquet").write_text(dumps(BODY))
    cases["fake.parquet"] = "not a readable Parquet file"
    pq.write_table(pa.table({"text": ["a"], "n": [1]}), tmp_path / "cols.parquet")
    cases["cols.parquet"] = "no usable columns: need 'params'.*columns are: text, n"
    pq.write_table(pa.table({"params": [1]}), tmp_path / "type.parquet")
    cases["type.parquet"] = "column 'params' has type int64; expected text, binary JSON or struct"
    pq.write_table(pa.table({"prompt": [b"bytes"]}), tmp_path / "bin.parquet")
    cases["bin.parquet"] = "column 'prompt' has type binary; expected text"
    pq.write_table(pa.table({"params": ["{}"], "custom_id": [True]}), tmp_path / "id.parquet")
    cases["id.parquet"] = "column 'custom_id' has type bool; expected text or integer"
    twice = pa.Table.from_arrays([pa.array([dumps(BODY)])] * 2, names=["params", "params"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    cases["twice.parquet"] = "column 'params' appears more than once"
    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "meta.parquet")
    for name, message in cases.items():
        path = tmp_path / name
        for call in (
            lambda p=path: iter_requests(p, SourceOptions()),
            lambda p=path: validate_file(p, SourceOptions()),
        ):
            with pytest.raises(InputError, match=message) as info:
                call()
            assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="metadata column 'tag' not found"):
        iter_requests(tmp_path / "meta.parquet", SourceOptions(metadata_columns=("tag",)))
    with pytest.raises(InputError, match="unknown file type"):
        count_requests(tmp_path / "x.csv")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", BODY)
    real_open = Path.open

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    # chmod 0 does not stop root, so refuse the open itself.
    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(InputError, match=r"a\.jsonl: cannot read: Permission denied"):
        iter_requests(path, SourceOptions())


def test_source_options_are_checked() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="--max-tokens must be a positive integer"):
            SourceOptions(max_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--model must be a non-empty string"):
        SourceOptions(model="")
    with pytest.raises(ValueError, match="--model-override must be a non-empty string"):
        SourceOptions(model_override=" ")
    assert SourceOptions(metadata_columns=["a"]).metadata_columns == ("a",)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- Parquet


def test_parquet_params_struct_drops_absent_fields(tmp_path: Path) -> None:
    cached = {
        **BODY,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "doc", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "question"},
                ],
            }
        ],
    }
    rows = [
        {"custom_id": "s1", "params": {**cached, "temperature": 0.5}, "metadata": {"task": "a"}},
        {"custom_id": "s2", "params": {**BODY, "system": "sys"}, "metadata": {"split": "dev"}},
    ]
    path = tmp_path / "s.parquet"
    table = pa.table(
        {
            "custom_id": [r["custom_id"] for r in rows],
            # One struct type for both rows: the second row's content is a list of blocks too.
            "params": [
                rows[0]["params"],
                {
                    **rows[1]["params"],
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                },
            ],
            "metadata": [r["metadata"] for r in rows],
        }
    )
    assert pa.types.is_struct(table.schema.field("params").type)
    pq.write_table(table, path)
    records, rejects = read(path)
    assert rejects == []
    assert records[0].params == {**cached, "temperature": 0.5}
    assert records[1].params == {
        **BODY,
        "system": "sys",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    assert records[0].metadata == {"task": "a"} and records[1].metadata == {"split": "dev"}
    assert records[1].location == f"{path}#row 1"


def test_parquet_params_json_text_and_metadata_map(tmp_path: Path) -> None:
    path = tmp_path / "j.parquet"
    table = pa.table(
        {
            "custom_id": pa.array([1, 2, 3, 4], pa.int64()),
            "params": [dumps(BODY), dumps({**BODY, "temperature": None}), "{bad", None],
            "metadata": pa.array(
                [[("k", "v")], None, [], [("a", "b")]], pa.map_(pa.string(), pa.string())
            ),
        }
    )
    pq.write_table(table, path)
    records, rejects = read(path)
    assert [r.custom_id for r in records] == ["1", "2"]
    assert records[0].metadata == {"k": "v"} and records[1].metadata is None
    assert records[1].params["temperature"] is None  # JSON text is taken as written
    assert [(r.location, r.custom_id) for r in rejects] == [
        (f"{path}#row 2", "3"),
        (f"{path}#row 3", "4"),
    ]
    assert rejects[0].reason.startswith("params: invalid JSON")
    assert rejects[1].reason == "params is null"
    assert orjson.loads(rejects[0].raw) == {"custom_id": 3, "params": "{bad", "metadata": {}}


def test_parquet_metadata_json_text(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"params": [dumps(BODY)] * 3, "metadata": ['{"t": 1}', "null", "[1]"]}), path
    )
    records, rejects = read(path)
    assert [r.metadata for r in records] == [{"t": 1}, None]
    assert "metadata must be a JSON object" in rejects[0].reason


def test_parquet_prompt_column_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {
                "question": ["What is 2+2?", "Name a colour.", None, ""],
                "system": ["Be brief.", None, None, None],
                "tag": ["math", "art", "x", "y"],
                "n": [1, 2, 3, 4],
            }
        ),
        path,
    )
    opts = SourceOptions(
        model="claude-haiku-4-5",
        max_tokens=64,
        system="Default system.",
        prompt_column="question",
        metadata_columns=("tag", "n"),
    )
    records, rejects = read(path, opts)
    assert records[0].params == {
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "system": "Be brief.",
    }
    assert records[1].params["system"] == "Default system."
    assert [r.custom_id for r in records] == ["0", "1"]
    assert records[0].metadata == {"tag": "math", "n": 1}
    assert [r.reason for r in rejects] == ["prompt column 'question' is null",
                                           "prompt column 'question' is empty"]


def test_parquet_prompt_layout_model_columns_and_missing_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt": ["a", "b"],
                "custom_id": ["p-1", "p-2"],
                "model": ["claude-opus-4-1", None],
                "max_tokens": pa.array([10, None], pa.int32()),
            }
        ),
        path,
    )
    records, rejects = read(path)
    assert records[0].params["model"] == "claude-opus-4-1" and records[0].custom_id == "p-1"
    assert "missing model" in rejects[0].reason
    records, rejects = read(path, SourceOptions(model="m", max_tokens=5))
    assert [(r.params["model"], r.params["max_tokens"]) for r in records] == [
        ("claude-opus-4-1", 10),
        ("m", 5),
    ]


def test_parquet_strict_and_count(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    params = [dumps(BODY)] * 2500 + [dumps({**BODY, "messages": []})]
    pq.write_table(pa.table({"params": params}), path, row_group_size=1000)
    assert count_requests(path) == 2501
    with pytest.raises(InputError, match=r"s\.parquet#row 2500: messages is empty"):
        list(iter_requests(path, SourceOptions(strict=True)))


# ----------------------------------------------------------------------------- validate_file


def test_validate_file_report(tmp_path: Path) -> None:
    lines = [
        {"custom_id": "a", "params": {**BODY, "stream": False}},
        {"custom_id": "b", "params": {**BODY, "model": "claude-sonnet-4-5"}},
        {"custom_id": "c", "params": BODY},
        {"custom_id": "a", "params": BODY},
        *(["{bad"] * 30),
    ]
    path = write_jsonl(tmp_path / "a.jsonl", *lines)
    report = validate_file(path, SourceOptions(), max_rejects=5)
    assert (report.total, report.ok, report.rejected, report.duplicates) == (34, 3, 31, 1)
    assert report.models == {"claude-haiku-4-5": 2, "claude-sonnet-4-5": 1}
    assert report.stream_removed == 1
    assert len(report.rejects) == 5 and report.rejects[0].input_index == 3
    assert not report.valid and not report.stopped_early
    assert orjson.loads(orjson.dumps(report.to_dict()))["total"] == 34

    strict = validate_file(path, SourceOptions(strict=True))
    assert strict.stopped_early and strict.rejected == 1 and strict.ok == 3


# ----------------------------------------------------------------------------- demo data


def _essence(path: Path) -> list[tuple[Any, ...]]:
    return [
        (r.input_index, r.custom_id, r.params, r.metadata)
        for r in iter_requests(path, SourceOptions(strict=True))
    ]


def test_demo_files_are_valid_and_equal() -> None:
    jsonl, parquet = JOBS / "demo.jsonl", JOBS / "demo.parquet"
    report = validate_file(jsonl, SourceOptions(strict=True))
    assert report.valid and report.ok >= 50
    assert {"claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"} <= set(report.models)
    assert _essence(jsonl) == _essence(parquet)
    assert count_requests(jsonl) == count_requests(parquet) == report.ok

    records = list(iter_requests(jsonl, SourceOptions()))
    text = jsonl.read_text(encoding="utf-8")
    assert '"cache_control":{"type":"ephemeral"}' in text
    assert '"cache_control":{"type":"ephemeral","ttl":"1h"}' in text
    assert any("fallbacks" in r.params for r in records)
    assert any(isinstance(r.params.get("system"), list) for r in records)
    assert any(len(r.params["messages"]) > 2 for r in records)
    tokens = {r.params["max_tokens"] for r in records}
    assert min(tokens) == 16 and max(tokens) == 1024
    assert all(r.metadata and "task" in r.metadata for r in records)


def test_demo_generator_reproduces_the_committed_files(tmp_path: Path) -> None:
    sys.path.insert(0, str(JOBS))
    try:
        import make_demo
    finally:
        sys.path.remove(str(JOBS))
    jsonl, parquet = make_demo.write(make_demo.build(), tmp_path)
    assert jsonl.read_bytes() == (JOBS / "demo.jsonl").read_bytes()
    assert pq.read_table(parquet).equals(pq.read_table(JOBS / "demo.parquet"))


def test_rows_that_decode_but_cannot_be_encoded_again_are_rejected(tmp_path: Path) -> None:
    # orjson reads 1,024 levels of nesting but writes only ~250; Parquet has decimals, bytes
    # and maps with integer keys. Such a row used to fail once sent: paid for, then lost.
    deep = '{"a":' * 300 + "1" + "}" * 300
    path = write_jsonl(
        tmp_path / "deep.jsonl",
        {"custom_id": "ok", "params": BODY, "metadata": {"k": [1, 2]}},
        f'{{"custom_id": "meta", "params": {dumps(BODY)}, "metadata": {deep}}}',
        '{"custom_id": "body", "params": ' + dumps(BODY)[:-1] + ', "x": ' + deep + "}}",
    )
    records, rejects = read(path)
    assert [r.custom_id for r in records] == ["ok"]
    assert records[0].body == orjson.dumps(BODY) and records[0].metadata_json == '{"k":[1,2]}'
    too_deep = "nested too deeply (JSON here allows about 250 levels)"
    assert [(r.custom_id, r.reason) for r in rejects] == [
        ("meta", f"metadata cannot be stored as JSON: {too_deep}"),
        ("body", f"params cannot be sent as JSON: {too_deep}"),
    ]

    struct = pa.struct([("model", pa.string()), ("max_tokens", pa.int64()),
                        ("messages", pa.list_(pa.struct([("role", pa.string()),
                                                         ("content", pa.string())]))),
                        ("temperature", pa.decimal128(4, 2))])  # fmt: skip
    table = pa.table(
        {
            "custom_id": ["dec-meta", "int-keys", "bytes", "dec-body"],
            "params": pa.array(
                [{**BODY, "temperature": None}] * 3 + [{**BODY, "temperature": Decimal("0.5")}],
                struct,
            ),
            "metadata": [dumps({"k": 1}), None, None, None],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    meta_types = {
        "dec-meta": pa.array([{"d": 1}], pa.struct([("d", pa.decimal128(4, 0))])),
        "int-keys": pa.array([[(1, "x")]], pa.map_(pa.int64(), pa.string())),
        "bytes": pa.array([{"b": b"\x00"}], pa.struct([("b", pa.binary())])),
    }
    for cid, column in meta_types.items():
        one = table.filter(pa.compute.equal(table["custom_id"], cid)).drop_columns(["metadata"])
        pq.write_table(one.append_column("metadata", column), tmp_path / f"{cid}.parquet")
        records, rejects = read(tmp_path / f"{cid}.parquet")
        assert records == [] and len(rejects) == 1, cid
        expected = ("column 'metadata': a map key that is not text" if cid == "int-keys"
                    else "metadata cannot be stored as JSON: ")
        assert rejects[0].reason.startswith(expected), cid
    last = table.slice(3)
    pq.write_table(last, tmp_path / "dec-body.parquet")
    records, rejects = read(tmp_path / "dec-body.parquet")
    assert records == [] and rejects[0].reason == (
        "params cannot be sent as JSON: a value of a type JSON lacks: decimal.Decimal"
    )


def test_parquet_maps_are_json_objects_wherever_they_are_nested(tmp_path):
    # A map inside a struct params (metadata.user_id, a tool's JSON-schema properties) was
    # sent as [[key, value], ...]: a real API refuses every such row.
    props = pa.map_(pa.string(), pa.struct([("type", pa.string())]))
    schema = pa.schema([
        ("custom_id", pa.string()),
        ("params", pa.struct([
            ("model", pa.string()), ("max_tokens", pa.int64()),
            ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("metadata", pa.map_(pa.string(), pa.string())),
            ("tools", pa.list_(pa.struct([
                ("name", pa.string()),
                ("input_schema", pa.struct([("type", pa.string()), ("properties", props)])),
            ]))),
        ])),
        ("metadata", pa.struct([("split", pa.string()),
                                ("labels", pa.map_(pa.string(), pa.string()))])),
        ("tags", pa.map_(pa.string(), pa.int64())),
    ])
    row = {
        "custom_id": "a",
        "params": {"model": "m", "max_tokens": 5, "messages": MSG,
                   "metadata": [("user_id", "u1")],
                   "tools": [{"name": "w", "input_schema": {
                       "type": "object", "properties": [("city", {"type": "string"})]}}]},
        "metadata": {"split": "dev", "labels": [("lang", "en")]},
        "tags": [("k", 1)],
    }
    path = tmp_path / "maps.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=schema), path)
    (record,), rejects = read(path, SourceOptions(metadata_columns=("tags",)))
    assert rejects == []
    body = orjson.loads(record.body)
    assert body["metadata"] == {"user_id": "u1"}
    assert body["tools"][0]["input_schema"]["properties"] == {"city": {"type": "string"}}
    assert orjson.loads(record.metadata_json) == {
        "split": "dev", "labels": {"lang": "en"}, "tags": {"k": 1}}


def test_parquet_32_and_16_bit_floats_are_sent_as_written(tmp_path):
    # A float32 temperature of 0.7 went out as 0.699999988079071 (its exact binary value), in
    # the body and in metadata alike.
    schema = pa.schema([
        ("params", pa.struct([
            ("model", pa.string()), ("max_tokens", pa.int64()),
            ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("temperature", pa.float32()), ("top_p", pa.float16()),
            ("stop_sequences", pa.list_(pa.string())),
        ])),
        ("metadata", pa.struct([("weight", pa.float32()), ("scores", pa.list_(pa.float32())),
                                ("big", pa.float16())])),
        ("difficulty", pa.float32()),
    ])
    rows = [
        {"params": {"model": "m", "max_tokens": 5, "messages": MSG, "temperature": 0.7,
                    "top_p": 0.9, "stop_sequences": None},
         "metadata": {"weight": 0.1, "scores": [1e-8, 3.4e38, None], "big": 65504.0},
         "difficulty": 2.3},
        {"params": {"model": "m", "max_tokens": 5, "messages": MSG, "temperature": float("nan"),
                    "top_p": None, "stop_sequences": None},
         "metadata": None, "difficulty": None},
    ]
    path = tmp_path / "narrow.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    (record,), rejects = read(path, SourceOptions(metadata_columns=("difficulty",)))
    body = orjson.loads(record.body)
    assert (body["temperature"], body["top_p"]) == (0.7, 0.9)
    # 16 bits: 65504 is the float16 that "65500" reads as (as numpy prints it); it crashed
    assert orjson.loads(record.metadata_json) == {
        "weight": 0.1, "scores": [1e-8, 3.4e38, None], "big": 65500.0, "difficulty": 2.3}
    assert [r.location for r in rejects] == [f"{path}#row 1"]  # NaN is still a reject
    assert rejects[0].reason == "params holds nan, which JSON cannot hold"


def test_a_parquet_cell_python_cannot_decode_rejects_its_row_only(tmp_path):
    # Text that is not UTF-8 (a writer that does not check) and a timestamp beyond year 9999
    # stopped validate with a traceback and run with an internal error, at every resume.
    text = pa.array([b"hello", b"caf\xe9", b"bye", b"ok"]).cast(pa.string(), safe=False)
    when = pa.array([0, 5, 10**12, 7], type=pa.timestamp("s"))
    path = tmp_path / "cells.parquet"
    pq.write_table(pa.table({"prompt": text, "at": when}), path)
    records, rejects = read(path, SourceOptions(model="m", max_tokens=5,
                                                metadata_columns=("at",)))
    assert [r.input_index for r in records] == [0, 3]
    assert [(r.location, r.reason) for r in rejects] == [
        (f"{path}#row 1", "column 'prompt': not valid UTF-8 (byte 3 of the value is e9)"),
        (f"{path}#row 2", "column 'at': a date or time outside the years 1-9999 (date value "
                          "out of range)"),
    ]


def test_a_parquet_json_column_is_json_text(tmp_path):
    # Parquet's JSON logical type (DuckDB writes its JSON columns so) reads as an extension
    # type over text: it was refused as "has type extension<arrow.json>".
    if not hasattr(pa, "json_"):
        pytest.skip("this pyarrow has no JSON extension type")
    path = tmp_path / "json.parquet"
    params = pa.array([dumps(BODY)], type=pa.string()).cast(pa.json_())
    pq.write_table(pa.table({"params": params}), path, store_schema=False)
    (record,), rejects = read(path)
    assert rejects == [] and orjson.loads(record.body) == BODY


def test_a_named_pipe_is_refused_without_opening_it(tmp_path):
    # validate opened it to check it could be read: that blocked without a writer, and with one
    # it consumed the data ("0 rows"). run already refused it.
    import os

    import threading

    fifo = tmp_path / "set.jsonl"
    os.mkfifo(fifo)

    def unblock() -> None:
        # Should a reader open it after all (it blocks until a writer comes): writers that go
        # away at once, until the test is over, so that it fails instead of hanging.
        done.wait(3)
        while not done.wait(0.05):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader at the moment
                pass

    done = threading.Event()
    threading.Thread(target=unblock, daemon=True).start()
    try:
        with pytest.raises(InputError, match="not a regular file .a pipe or device.; "
                                             "batchrunner reads its input more than once"):
            validate_file(fifo, SourceOptions())
    finally:
        done.set()


def test_parquet_integer_columns_written_as_floats_by_pandas(tmp_path):
    # pandas writes an integer column with a missing value as float64: the whole file was
    # refused, so a null max_tokens could never fall back to --max-tokens as documented.
    import pandas as pd

    path = tmp_path / "pd.parquet"
    pd.DataFrame({"prompt": ["a", "b", "c", "d"], "max_tokens": [10, None, 7.5, 1e23],
                  "custom_id": [10, 20, None, 40]}).to_parquet(path)
    records, rejects = read(path, SourceOptions(model="m", max_tokens=5))
    assert [(r.custom_id, r.params["max_tokens"]) for r in records] == [("10", 10), ("20", 5)]
    assert [r.reason for r in rejects] == [
        "max_tokens must be a positive integer, got 7.5",
        "max_tokens must be a positive integer of at most 64 bits, got 1e+23",
    ]


def test_what_json_cannot_hold_is_a_reject_not_sent_altered(tmp_path):
    # NaN in a struct went out as null (JSON text with NaN is a reject); a binary
    # --metadata-column value was stored as Python's repr, a timestamp as str().
    import datetime as dt

    path = tmp_path / "odd.parquet"
    params = pa.array([{"model": "m", "max_tokens": 5, "messages": MSG, "temperature": v}
                       for v in (0.5, float("nan"))])
    pq.write_table(pa.table({
        "params": params,
        "blob": pa.array([None, b"\x00"], type=pa.binary()),
        "at": pa.array([dt.datetime(2026, 1, 2, 3, 4, 5), None], type=pa.timestamp("s")),
    }), path)
    records, rejects = read(path, SourceOptions(metadata_columns=("at",)))
    assert [r.metadata for r in records] == [{"at": "2026-01-02T03:04:05"}]
    assert [r.reason for r in rejects] == ["params holds nan, which JSON cannot hold"]
    records, rejects = read(path, SourceOptions(metadata_columns=("blob",)))
    assert [r.reason for r in rejects] == [
        "params holds nan, which JSON cannot hold"]
    bad = tmp_path / "blob.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "blob": pa.array([b"\xff"])}), bad)
    records, rejects = read(bad, SourceOptions(model="m", max_tokens=5,
                                               metadata_columns=("blob",)))
    assert [r.reason for r in rejects] == [
        "metadata column 'blob' holds a binary value, which JSON cannot hold (cast it to text)"]


def test_a_null_system_is_no_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", {**BODY, "system": None})
    (record,), _ = read(path)
    assert "system" not in orjson.loads(record.body)
    (record,), _ = read(path, SourceOptions(system="Be brief."))
    assert orjson.loads(record.body)["system"] == "Be brief."


def test_prompt_column_with_a_params_file_is_refused(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"params": [dumps(BODY)], "question": ["q"]}), path)
    with pytest.raises(InputError, match="--prompt-column 'question' is for files without a "
                                         "'params' column"):
        read(path, SourceOptions(prompt_column="question"))


def test_parquet_maps_that_json_cannot_hold_reject_their_row(tmp_path):
    # A key given twice raised KeyError out of the reader (a traceback in validate, an
    # internal error in run); binary keys crashed writing the reject.
    maps = pa.array([[], [(b"\xff", "x")]], type=pa.map_(pa.binary(), pa.string()))
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"params": [dumps(BODY)] * 2, "metadata": maps}), path)
    records, rejects = read(path)
    assert [r.input_index for r in records] == [0]
    assert [(r.input_index, r.reason) for r in rejects] == [
        (1, "column 'metadata': a map key that is not text"),
    ]
    text_keys = pa.array([[("k", "1"), ("k", "2")]], type=pa.map_(pa.string(), pa.string()))
    pq.write_table(pa.table({"params": [dumps(BODY)], "metadata": text_keys}), path)
    records, rejects = read(path)
    assert [r.reason for r in rejects] == ["column 'metadata': a map with the key 'k' twice"]


def test_a_nan_in_a_metadata_struct_is_null_not_a_reject(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"params": [dumps(BODY)],
                             "metadata": pa.array([{"score": float("nan"), "k": "v"}])}), path)
    (record,), rejects = read(path)
    assert rejects == [] and record.metadata == {"score": None, "k": "v"}


def test_parquet_columns_neither_sent_nor_kept_are_named(tmp_path):
    # A typo such as "meta" (or an expected answer kept beside the requests) was dropped
    # without a word; --metadata-column would have kept it.
    from batchrunner.sources import unused_columns

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"params": [dumps(BODY)], "meta": ["x"], "answer": ["4"]}), path)
    assert validate_file(path, SourceOptions()).unused_columns == ["meta", "answer"]
    assert unused_columns(path, SourceOptions(metadata_columns=("answer",))) == ["meta"]
    assert unused_columns(write_jsonl(tmp_path / "a.jsonl", BODY), SourceOptions()) == []


def test_reading_a_parquet_input_holds_one_row_group_not_all(tmp_path):
    # pyarrow's pre-buffering kept the row groups read so far: Arrow memory grew to 100 MB
    # over a 300,000-row input, and a run's RSS with it.
    n, groups = 40_000, 8
    rng = random.Random(7)  # text that does not compress: the file is as big as its data
    table = pa.table({
        "prompt": [f"{i}: " + rng.randbytes(150).hex() for i in range(n)],
        "model": ["m"] * n, "max_tokens": [5] * n,
    })
    path = tmp_path / "groups.parquet"
    pq.write_table(table, path, row_group_size=n // groups)
    size = path.stat().st_size
    base = pa.total_allocated_bytes()
    peak = 0
    for k, _ in enumerate(iter_requests(path, SourceOptions())):
        if k % 1000 == 0:
            peak = max(peak, pa.total_allocated_bytes() - base)
    assert k == n - 1
    assert peak < size / 2, (peak, size)  # a row group or two of 8, not the whole file
