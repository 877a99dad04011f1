"""Usage beyond tokens over real sockets: ``server_tool_use`` counts, ``service_tier``, ``speed``
and ``inference_geo`` recorded in sync, stream and async rows, priced by the report; and run
directories written before those columns existed (report, comparison, resume)."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from keyecho import serving

from batchrunner.config import RunConfig
from batchrunner.report import build_report, load_run
from batchrunner.report_text import format_report
from batchrunner.runner import run_sync
from batchrunner.schema import RESULT_SCHEMA, Mode
from batchrunner.summary import format_summary

from .conftest import read_rows, write_requests

NEW_COLUMNS = ("web_search_requests", "web_fetch_requests", "service_tier", "speed",
               "inference_geo")

# The canned answer: Opus 4.8 in fast mode, run in the US, with 3 web searches and 1 fetch.
CANNED_USAGE = {
    "input_tokens": 1000,
    "cache_creation_input_tokens": 5000,
    "cache_read_input_tokens": 4000,
    "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 3000},
    "output_tokens": 500,
    "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 1},
    "service_tier": "priority",
    "speed": "fast",
    "inference_geo": "us",
}
# Opus 4.8 fast-mode rates (pricing.md §1.8): 10 / 12.50 / 20 / 1 / 50 $/MTok; x1.1 for the US;
# searches $0.01 each, not multiplied. Priority Tier: list price (an estimate).
CANNED_COST = (1000 * 10 + 2000 * 12.5 + 3000 * 20 + 4000 * 1 + 500 * 50) / 1e6 * 1.1 + 0.03


def _sse(event: str, data: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


def canned_stream() -> bytes:
    """Anthropic's event sequence: ``message_start`` has the full usage (no searches yet);
    ``message_delta`` has the cumulative counts, searches included."""
    start_usage = {**CANNED_USAGE, "output_tokens": 1,
                   "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0}}
    delta_usage = {k: CANNED_USAGE[k] for k in ("input_tokens", "cache_creation_input_tokens",
                                                "cache_read_input_tokens", "output_tokens",
                                                "server_tool_use")}
    return b"".join([
        _sse("message_start", {"type": "message_start", "message": {
            "id": "msg_canned", "type": "message", "role": "assistant", "content": [],
            "model": "claude-opus-4-8", "stop_reason": None, "stop_sequence": None,
            "usage": start_usage}}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "searched"}}),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": delta_usage}),
        _sse("message_stop", {"type": "message_stop"}),
    ])


CANNED_MESSAGE = orjson.dumps({
    "id": "msg_canned", "type": "message", "role": "assistant",
    "content": [{"type": "text", "text": "searched"}], "model": "claude-opus-4-8",
    "stop_reason": "end_turn", "stop_sequence": None, "usage": CANNED_USAGE})


class _Canned(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        stream = body.get("stream") is True
        payload = canned_stream() if stream else CANNED_MESSAGE
        self.send_response(200)
        self.send_header("content-type", "text/event-stream" if stream else "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned_gateway() -> Iterator[str]:
    """A gateway on 127.0.0.1:<ephemeral> answering every request with the canned message."""
    with serving(_Canned) as url:
        yield url


def run(requests: Path, gateway: str, out: Path, **kw):
    result = run_sync(RunConfig(requests=requests, gateway=gateway, out=out, **kw), quiet=True)
    assert result.status == "finished", result.message
    return result


@pytest.mark.parametrize("mode", [Mode.SYNC, Mode.STREAM])
def test_searches_tier_speed_and_geo_are_recorded_and_priced(canned_gateway, tmp_path, mode):
    requests = write_requests(tmp_path / "r.jsonl", 2, model="claude-opus-4-8")
    out = tmp_path / "out"
    result = run(requests, canned_gateway, out, mode=mode)
    rows = read_rows(out).sort_values("input_index")
    assert list(rows["web_search_requests"]) == [3, 3]  # stream: message_delta's count
    # The closing summary's cost parts add up to its total: the search fee is one of them.
    assert ", web search $0.0600;" in format_summary(result.summary)
    assert list(rows["web_fetch_requests"]) == [1, 1]
    assert list(rows["service_tier"]) == ["priority"] * 2
    assert list(rows["speed"]) == ["fast"] * 2
    assert list(rows["inference_geo"]) == ["us"] * 2
    assert list(rows["cache_creation_1h_input_tokens"]) == [3000, 3000]
    report = build_report([load_run(out)])
    cost = report["runs"][0]["overall"]["cost"]
    assert cost["complete"] and cost["total_usd"] == pytest.approx(2 * CANNED_COST, rel=1e-12)
    assert cost["usd"]["web_search"] == pytest.approx(0.06)
    assert cost["estimate"] is True
    assert cost["adjusted_rows"] == {"fast": 2, "inference_geo_us": 2, "batch": 0,
                                     "priority_at_list_price": 2}
    text = format_report(report)
    assert "ESTIMATE: 2 Priority Tier rows" in text and "fast mode: 2 rows" in text


def _opus_requests(path: Path) -> Path:
    """Rows 0-1 plain, 2-3 fast mode, 4-5 US inference (speed and inference_geo as Anthropic
    takes them: top-level request parameters)."""
    extras = [{}, {}, {"speed": "fast"}, {"speed": "fast"}, {"inference_geo": "us"},
              {"inference_geo": "us"}]
    params = [{"model": "claude-opus-4-8", "max_tokens": 16,
               "messages": [{"role": "user", "content": f"question {i}"}], **extra}
              for i, extra in enumerate(extras)]
    path.write_bytes(b"".join(orjson.dumps({"custom_id": f"q{i}", "params": p}) + b"\n"
                              for i, p in enumerate(params)))
    return path


@pytest.mark.parametrize("mode", [Mode.SYNC, Mode.STREAM, Mode.ASYNC])
def test_emulator_echoes_speed_and_geo_in_every_mode(emulator, tmp_path, mode):
    out = tmp_path / "out"
    run(_opus_requests(tmp_path / "q.jsonl"), emulator.base_url, out, mode=mode)
    rows = read_rows(out).sort_values("input_index")
    assert list(rows["service_tier"]) == ["standard"] * 6  # as Anthropic reports it
    assert list(rows["speed"].fillna("-")) == ["-", "-", "fast", "fast", "-", "-"]
    assert list(rows["inference_geo"].fillna("-")) == ["-", "-", "-", "-", "us", "us"]
    assert rows["web_search_requests"].isna().all()  # the emulator runs no server tools
    # ground truth: the requests that were planned (async: the submits, not the polls)
    planned = [t for t in emulator.ground_truth() if t["output_tokens"] is not None]
    assert sorted(str(t["speed"]) + "/" + str(t["inference_geo"]) for t in planned) == [
        "None/None", "None/None", "None/us", "None/us", "fast/None", "fast/None"]
    # Priced from the rows' own tokens: Opus 4.8 5 / 25 standard, 10 / 50 fast, x1.1 in the US.
    report = build_report([load_run(out)])
    tokens = rows[["input_tokens", "output_tokens"]].to_numpy(dtype=float)
    factor = [(5, 25)] * 2 + [(10, 50)] * 2 + [(5.5, 27.5)] * 2
    want = sum((i * a + o * b) / 1e6 for (i, o), (a, b) in zip(tokens, factor, strict=True))
    cost = report["runs"][0]["overall"]["cost"]
    assert cost["complete"] and cost["total_usd"] == pytest.approx(want, rel=1e-9)
    assert cost["adjusted_rows"]["fast"] == 2 and cost["adjusted_rows"]["inference_geo_us"] == 2


# -- run directories written before the usage columns ------------------------------------------

OLD_SCHEMA = pa.schema([f for f in RESULT_SCHEMA if f.name not in NEW_COLUMNS],
                       metadata={"batchrunner.schema_version": "1"})


def make_old_run(run_dir: Path, keep: int | None = None) -> None:
    """Rewrite *run_dir*'s parts as the previous version wrote them: without the usage columns
    (schema version 1), keeping the first *keep* rows by input_index (a run cut short)."""
    data = run_dir / "data"
    table = pq.read_table(data).sort_by("input_index")
    if keep is not None:
        table = table.slice(0, keep)
    for part in data.glob("part-*.parquet"):
        part.unlink()
    old = table.select(OLD_SCHEMA.names).cast(OLD_SCHEMA)
    pq.write_table(OLD_SCHEMA.empty_table(), data / "part-000000.parquet")
    half = max(1, old.num_rows // 2)
    pq.write_table(old.slice(0, half), data / "part-000001.parquet")
    pq.write_table(old.slice(half), data / "part-000002.parquet")
    info = orjson.loads((run_dir / "run.json").read_bytes())
    if keep is not None:
        info["status"] = "interrupted"
    (run_dir / "run.json").write_bytes(orjson.dumps(info))


def test_old_run_reports_and_compares_with_a_new_one(emulator, tmp_path):
    requests = write_requests(tmp_path / "r.jsonl", 8, model="claude-haiku-4-5")
    old, new = tmp_path / "old", tmp_path / "new"
    run(requests, emulator.base_url, old)
    run(requests, emulator.base_url, new)
    make_old_run(old)
    assert "speed" not in pq.read_schema(old / "data" / "part-000001.parquet").names
    report = build_report([load_run(old), load_run(new)])
    old_run, new_run = report["runs"]
    assert old_run["rows"] == new_run["rows"] == 8
    assert old_run["overall"]["tokens"]["web_search_requests"] == 0
    # same tokens (the emulator is seeded by the body), same price: nulls change nothing
    assert old_run["overall"]["cost"]["total_usd"] == pytest.approx(
        new_run["overall"]["cost"]["total_usd"], rel=1e-12)
    assert old_run["overall"]["cost"]["complete"] and old_run["overall"]["cost"]["total_usd"] > 0
    figures = {f["figure"]: f for f in report["comparison"]["overall"]}
    assert figures["cost_usd"]["delta"] == [0.0]
    assert figures["cost_usd web_search"]["values"] == [0.0, 0.0]
    assert "Comparison of 2 runs" in format_report(report)


def test_resume_of_an_old_run_appends_rows_with_the_new_columns(emulator, tmp_path):
    requests = write_requests(tmp_path / "r.jsonl", 10, model="claude-haiku-4-5",
                              extra={"inference_geo": "us"})
    out = tmp_path / "out"
    run(requests, emulator.base_url, out)
    make_old_run(out, keep=6)
    assert len(read_rows(out)) == 6
    result = run(requests, emulator.base_url, out)  # resumes: 4 requests left
    assert result.summary["requests"] == 10  # the closing summary read old and new parts
    rows = read_rows(out).sort_values("input_index")  # pyarrow takes the first part's schema
    assert list(rows["input_index"]) == list(range(10))
    assert set(NEW_COLUMNS) <= set(rows.columns)
    # old rows: null (their parts are left as they were); resumed rows: what usage said
    assert rows["service_tier"].iloc[:6].isna().all()
    assert list(rows["service_tier"].iloc[6:]) == ["standard"] * 4
    assert list(rows["inference_geo"].iloc[6:]) == ["us"] * 4
    assert "speed" not in pq.read_schema(out / "data" / "part-000001.parquet").names
    assert "speed" in pq.read_schema(out / "data" / "part-000000.parquet").names
    report = build_report([load_run(out)])
    cost = report["runs"][0]["overall"]["cost"]
    assert cost["complete"] and cost["adjusted_rows"]["inference_geo_us"] == 4
