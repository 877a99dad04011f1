from __future__ import annotations

import random

import orjson

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


def test_decoder_survives_any_chunking():
    payload = wire(EVENTS)
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
