from __future__ import annotations

import random

import orjson
import pytest

from batchrunner.client import StreamAssembler
from batchrunner.sse import SSEDecoder

EVENTS = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 5},
            },
        },
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hé"}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "llo\nworld"},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 3},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def wire(events, newline=b"\n"):
    out = b""
    for name, data in events:
        out += (
            b"event: "
            + name.encode()
            + newline
            + b"data: "
            + orjson.dumps(data)
            + newline
            + newline
        )
    return out


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_decoder_survives_any_chunking(newline):
    payload = wire(EVENTS, newline)
    rng = random.Random(3)
    for _ in range(50):
        decoder = SSEDecoder()
        got = []
        pos = 0
        while pos < len(payload):
            step = rng.randint(1, 40)
            got.extend(decoder.feed(payload[pos : pos + step]))
            pos += step
        assert [(t, orjson.loads(d)) for t, d in got] == EVENTS
        assert decoder.pending == b""


def test_decoder_one_large_event_in_many_small_reads():
    # read by read, as a 64 KiB socket read delivers a multi-megabyte event
    text = "x" * 300_000
    payload = wire([("content_block_delta", {"text": text})], b"\r\n") * 2
    decoder = SSEDecoder()
    got = []
    for pos in range(0, len(payload), 997):
        got.extend(decoder.feed(payload[pos : pos + 997]))
    assert [orjson.loads(d)["text"] for _, d in got] == [text, text]
    assert decoder.pending == b""


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_decoder_large_and_small_events_under_random_chunking(newline):
    # events over the 64 KiB at which an incomplete event is collected in pieces, among small
    # ones, cut anywhere (a read of a lone \r between \r\n and \n lost a large CRLF event)
    events = [("a", {"t": "x" * n}) for n in (10, 70_000, 5, 200_000, 3)]
    payload = wire(events, newline)
    rng = random.Random(11)
    for _ in range(60):
        decoder = SSEDecoder()
        got, pos = [], 0
        while pos < len(payload):
            step = rng.choice([1, 1, 2, 3, rng.randint(1, 5000), rng.randint(1, 90_000)])
            got.extend(decoder.feed(payload[pos : pos + step]))
            pos += step
        assert [(t, orjson.loads(d)) for t, d in got] == events
        assert decoder.pending == b""
    decoder = SSEDecoder()  # the reviewer's case: ... b"x\r\n", b"\r", b"\n"
    big = wire([events[1]], b"\r\n")
    # A \r ends the blank line at once (a line end of its own); the \n after it is its.
    assert decoder.feed(big[:-2]) == [] and [t for t, _ in decoder.feed(b"\r")] == ["a"]
    assert decoder.feed(b"\n") == [] and decoder.pending == b""


def test_decoder_crlf_comments_and_multiline_data():
    decoder = SSEDecoder()
    raw = b": keep-alive\r\n\r\nevent: x\r\ndata: a\r\ndata:b\r\n\r\n"
    assert decoder.feed(raw[:7]) == []
    assert decoder.feed(raw[7:]) == [("x", b"a\nb")]


def test_assembler_rebuilds_message():
    asm = StreamAssembler()
    kinds = [asm.add(t, orjson.dumps(d)) for t, d in EVENTS]
    assert kinds.count(StreamAssembler.CONTENT) == 2
    assert kinds[-1] == StreamAssembler.STOP
    msg = asm.message()
    assert msg["content"] == [{"type": "text", "text": "Héllo\nworld"}]
    assert msg["stop_reason"] == "max_tokens"
    # message_delta usage updates message_start's; the rest is kept
    assert msg["usage"] == {"input_tokens": 12, "output_tokens": 3, "cache_read_input_tokens": 5}


def test_assembler_error_event():
    asm = StreamAssembler()
    kind = asm.add(
        "error", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    )
    assert kind == StreamAssembler.ERROR
    assert (asm.error_type, asm.error_message) == ("overloaded_error", "Overloaded")


def test_assembler_tool_use_json():
    asm = StreamAssembler()
    asm.add(
        "content_block_start",
        orjson.dumps(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
            }
        ),
    )
    for part in ['{"a":', " 1}"]:
        asm.add(
            "content_block_delta",
            orjson.dumps(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": part},
                }
            ),
        )
    assert asm.message()["content"][0]["input"] == {"a": 1}


def _delta(index, delta):
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _start(index, block):
    return ("content_block_start", {"type": "content_block_start", "index": index,
                                    "content_block": block})  # fmt: skip


def test_assembler_keeps_signatures_and_citations_and_counts_only_tokens():
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0}
    events = [
        EVENTS[0],
        _start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        _delta(0, {"type": "thinking_delta", "thinking": "Let me"}),
        _delta(0, {"type": "thinking_delta", "thinking": " think."}),
        _delta(0, {"type": "signature_delta", "signature": "EqQB"}),
        _start(1, {"type": "text", "text": ""}),
        _delta(1, {"type": "citations_delta", "citation": citation}),
        _delta(1, {"type": "text_delta", "text": "Yes."}),
        _start(2, {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
        _delta(2, {"type": "input_json_delta", "partial_json": ""}),
        _delta(2, {"type": "input_json_delta", "partial_json": '{"a": 1}'}),
        EVENTS[-1],
    ]
    asm = StreamAssembler()
    kinds = [asm.add(t, orjson.dumps(d)) for t, d in events]
    # the signature, the citation and the empty opening of the tool input are not tokens
    assert kinds.count(StreamAssembler.CONTENT) == 4
    assert asm.message()["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": "EqQB"},
        {"type": "text", "text": "Yes.", "citations": [citation]},
        {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
    ]
    assert asm.lost is None


def test_a_delta_for_a_block_never_started():
    # Some Bifrost versions skip content_block_start (maximhq/bifrost#5169): text is placed in
    # a block of its own; what cannot be placed is reported, never dropped silently.
    asm = StreamAssembler()
    asm.add(*_encoded(EVENTS[0]))
    assert asm.add(*_encoded(_delta(0, {"type": "text_delta", "text": "Hi"}))) == asm.CONTENT
    assert asm.message()["content"] == [{"type": "text", "text": "Hi"}] and asm.lost is None
    asm = StreamAssembler()
    asm.add(*_encoded(_delta(3, {"type": "input_json_delta", "partial_json": '{"a"'})))
    assert asm.lost == "a input_json_delta for content block 3, which was never started"


def _encoded(event):
    name, data = event
    return name, orjson.dumps(data)


def test_an_empty_read_between_cr_and_lf_changes_nothing():
    # The \r taken as a line end was forgotten by an empty read, and its \n then counted as
    # another line end: one event split in two.
    decoder = SSEDecoder()
    got = decoder.feed(b"event: a\r") + decoder.feed(b"") + decoder.feed(b"\ndata: {}\r\n\r\n")
    assert got == [("a", b"{}")] and decoder.pending == b""


def test_a_block_opened_with_its_first_text_is_the_first_token():
    # A gateway that opens the block with text (the API opens it empty) had its TTFT taken at
    # the next delta, one token late (the timing audit).
    events = [EVENTS[0],
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": "He"}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "llo"}}),
              *EVENTS[5:]]
    asm = StreamAssembler()
    kinds = [asm.add(name, orjson.dumps(data)) for name, data in events]
    assert kinds[1] == StreamAssembler.CONTENT and kinds.count(StreamAssembler.CONTENT) == 2
    assert asm.message()["content"][0]["text"] == "Hello"
    # An empty opening (the API's) is still no token.
    asm = StreamAssembler()
    assert asm.add(EVENTS[0][0], orjson.dumps(EVENTS[0][1])) == StreamAssembler.OTHER
    assert asm.add(EVENTS[2][0], orjson.dumps(EVENTS[2][1])) == StreamAssembler.OTHER


@pytest.mark.parametrize("split", [1, 2, 3, 4, 10])
def test_a_leading_byte_order_mark_is_no_part_of_the_stream(split: int) -> None:
    # A BOM before "data: {message_start …}" hid that line: the stream lost its first event.
    body = b"\xef\xbb\xbf" + b'data: {"type":"message_start"}\n\ndata: {"type":"ping"}\n\n'
    decoder = SSEDecoder()
    events = decoder.feed(body[:split]) + decoder.feed(body[split:])
    assert events == [(None, b'{"type":"message_start"}'), (None, b'{"type":"ping"}')]
    # Only the first: one later in the stream is data, and a lone \xef stays as it came.
    later = SSEDecoder()
    assert later.feed(b'data: a\n\n') == [(None, b"a")]
    assert later.feed(b'\xef\xbb\xbfdata: b\n\n') == []
    lone = SSEDecoder()
    assert lone.feed(b"\xef") == [] and lone.pending == b"\xef"
    assert lone.feed(b"x: y\n\ndata: c\n\n") == [(None, b"c")]


def test_a_zero_in_the_last_usage_does_not_erase_the_prompt_s_counts():
    # A gateway re-encoding message_delta's usage writes 0 for the prompt counts it lacks:
    # the row said 0 input tokens, and was priced as if the prompt had been free.
    asm = StreamAssembler()
    start = {"input_tokens": 100, "cache_read_input_tokens": 50, "output_tokens": 1,
             "cache_creation_input_tokens": 40,
             "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 40}}
    asm.add("message_start", orjson.dumps({"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "model": "x", "content": [],
        "usage": start}}))
    asm.add("message_delta", orjson.dumps({"type": "message_delta", "delta": {}, "usage": {
        "input_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 7}}))
    assert asm.message()["usage"] == {**start, "output_tokens": 7}
    # What a delta says that is not zero is taken (a provider that reports cache reads only
    # at the end), and a start without counts takes the delta's zeros.
    late = StreamAssembler()
    late.add("message_start", orjson.dumps({"type": "message_start", "message": {
        "usage": {"input_tokens": 0, "output_tokens": 0}}}))
    late.add("message_delta", orjson.dumps({"type": "message_delta", "usage": {
        "input_tokens": 100, "cache_read_input_tokens": 0, "output_tokens": 3}}))
    assert late.message()["usage"] == {"input_tokens": 100, "cache_read_input_tokens": 0,
                                       "output_tokens": 3}
