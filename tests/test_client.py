"""GatewayClient over each way it can send: the default wire client, our aiohttp httpx transport
passed by the user, and a user's ``httpx.AsyncClient``. Every response shape must become the
same :class:`Attempt`, whichever path carried it; responses are scripted by the raw server of
``rawserver.py`` (real sockets, no mocks).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from rawserver import Server

from batchrunner.client import Attempt, GatewayClient, Timeouts, bifrost_headers
from batchrunner.schema import (
    ERROR_CONNECTION,
    ERROR_INVALID_RESPONSE,
    ERROR_STREAM_INCOMPLETE,
    ERROR_TIMEOUT,
)
from batchrunner.transport import AiohttpTransport

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 3, "output_tokens": 2},
}


def sse(*events: tuple[str, dict[str, Any]]) -> list[str]:
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events]


STREAM_OK = sse(
    ("message_start", {"type": "message_start", "message": {**MESSAGE, "content": []}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "h"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "i"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                       "usage": {"output_tokens": 2}}),
    ("message_stop", {"type": "message_stop"}),
)  # fmt: skip

PATHS = ["wire", "aiohttp-transport", "httpx-client"]


@pytest.fixture(params=PATHS)
async def make_client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., GatewayClient]]:
    closers: list[Any] = []

    def make(url: str, timeouts: Timeouts | None = None) -> GatewayClient:
        headers = {"x-api-key": "k"}
        if request.param == "wire":
            client = GatewayClient(url, headers, timeouts=timeouts)
        elif request.param == "aiohttp-transport":
            transport = AiohttpTransport()
            closers.append(transport)
            client = GatewayClient(url, headers, transport=transport, timeouts=timeouts)
        else:
            http = httpx.AsyncClient()
            closers.append(http)
            client = GatewayClient(url, headers, client=http, timeouts=timeouts)
        closers.append(client)
        return client

    yield make
    for closer in reversed(closers):
        await closer.aclose()


async def send(client: GatewayClient, script: dict[str, Any], stream: bool = False) -> Attempt:
    return await client.send(
        json.dumps(script).encode(), stream=stream, extra_headers=[("x-request-id", "r1")]
    )


async def test_a_callers_client_s_default_headers_are_sent(server: Server) -> None:
    # client.send() skips them (client.post() would merge them): a team header or a proxy's
    # auth set on the caller's client used to be dropped without a word.
    async with httpx.AsyncClient(headers={"x-team": "evals", "x-api-key": "old"}) as http:
        client = GatewayClient(server.url("/echo"), {"x-api-key": "k"}, client=http)
        attempt = await client.send(b"{}", stream=False)
    sent = dict((k.lower(), v) for k, v in attempt.parsed["headers"])
    assert sent["x-team"] == "evals" and sent["x-api-key"] == "k"  # ours win, as in httpx
    assert sent["accept-encoding"] == "identity"  # not the client's gzip: bodies are read raw


async def test_sync_message(server: Server, make_client) -> None:
    client = make_client(server.url("/script"))
    headers = [["content-type", "application/json"], ["x-bifrost-provider", "anthropic"]]
    attempt = await send(client, {"status": 200, "headers": headers, "body": json.dumps(MESSAGE)})
    assert attempt.ok and attempt.http_status == 200
    assert attempt.message == MESSAGE
    assert attempt.raw_body == json.dumps(MESSAGE).encode()
    assert attempt.headers is not None and attempt.headers.get("Content-Type") == "application/json"
    assert bifrost_headers(attempt.headers) == {"x-bifrost-provider": "anthropic"}
    assert attempt.first_byte is not None and attempt.sent <= attempt.first_byte <= attempt.done
    sent = server.requests[-1]["headers"]
    names = [name.decode().lower() for name, _ in sent]  # type: ignore[union-attr]
    assert {"x-api-key", "x-request-id", "anthropic-version", "content-type"} <= set(names)


async def test_job_stub_is_a_success_without_message(server: Server, make_client) -> None:
    stub = {"id": "job-1", "type": "", "role": "", "content": None}
    attempt = await send(
        make_client(server.url("/script")), {"status": 202, "body": json.dumps(stub)}
    )
    assert attempt.ok and attempt.message is None and attempt.parsed == stub


async def test_invalid_json_body(server: Server, make_client) -> None:
    attempt = await send(make_client(server.url("/script")), {"status": 200, "body": "<html>oops"})
    assert attempt.error_type == ERROR_INVALID_RESPONSE and "<html>oops" in attempt.error_message


async def test_error_envelope_and_retry_headers(server: Server, make_client) -> None:
    envelope = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    script = {"status": 529, "headers": [["retry-after-ms", "50"]], "body": json.dumps(envelope)}
    attempt = await send(make_client(server.url("/script")), script)
    assert not attempt.ok and attempt.http_status == 529
    assert (attempt.error_type, attempt.error_message) == ("overloaded_error", "busy")
    assert attempt.headers is not None and attempt.headers.get("Retry-After-Ms") == "50"


async def test_error_without_envelope(server: Server, make_client) -> None:
    attempt = await send(make_client(server.url("/script")), {"status": 502, "body": "bad gateway"})
    assert attempt.error_type == "http_502" and "bad gateway" in attempt.error_message


async def test_stream_message(server: Server, make_client) -> None:
    client = make_client(server.url("/script"))
    attempt = await send(client, {"status": 200, "chunks": STREAM_OK}, stream=True)
    assert attempt.ok, attempt.error_message
    assert attempt.message is not None
    assert attempt.message["content"] == [{"type": "text", "text": "hi"}]
    assert attempt.message["usage"]["output_tokens"] == 2
    assert len(attempt.token_times) == 2
    assert attempt.first_token == attempt.token_times[0]
    assert attempt.first_byte is not None and attempt.first_byte <= attempt.first_token


async def test_stream_error_event(server: Server, make_client) -> None:
    chunks = [*STREAM_OK[:3], *sse(("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "mid-stream"}}))]  # fmt: skip
    attempt = await send(
        make_client(server.url("/script")), {"status": 200, "chunks": chunks}, True
    )
    assert (attempt.error_type, attempt.error_message) == ("overloaded_error", "mid-stream")
    assert len(attempt.token_times) == 1
    # What came before the error is kept: message_start's usage (the input was processed,
    # cache writes made) and the text so far.
    assert attempt.message is None and attempt.partial is not None
    assert attempt.partial["usage"] == MESSAGE["usage"]
    assert attempt.partial["content"] == [{"type": "text", "text": "h"}]


async def test_stream_that_cannot_be_assembled_is_invalid_response(
    server: Server, make_client
) -> None:
    bad = [*STREAM_OK[:2], *sse(("content_block_delta", {"type": "content_block_delta",
        "index": [0], "delta": {"type": "text_delta", "text": "h"}}))]  # fmt: skip
    script = {"status": 200, "chunks": bad}
    attempt = await send(make_client(server.url("/script")), script, stream=True)
    assert attempt.error_type == ERROR_INVALID_RESPONSE and not attempt.transport_failure


@pytest.mark.parametrize("stop", [True, False])
@pytest.mark.parametrize("index", ["1", None, 1.0, True])
async def test_a_block_index_that_is_no_integer_is_an_invalid_response_not_a_crash(
    server: Server, make_client, stop, index
) -> None:
    # Blocks 0 and "1" could not be ordered: send() raised TypeError, the request got no row
    # and the run aborted (with or without message_stop), again on every resume.
    chunks = _stream(_block(0, {"type": "text", "text": ""}),
                     _delta(0, {"type": "text_delta", "text": "a"}),
                     _block(index, {"type": "text", "text": ""}),
                     _delta(index, {"type": "text_delta", "text": "b"}))
    if not stop:
        chunks = chunks[:-1]
    attempt = await send(make_client(server.url("/script")), {"status": 200, "chunks": chunks},
                         True)
    assert attempt.error_type == ERROR_INVALID_RESPONSE and attempt.message is None
    assert "not an integer" in (attempt.error_message or ""), attempt.error_message
    assert not attempt.transport_failure  # read the same again: not retried


async def test_a_response_no_check_foresaw_is_its_attempt_s_failure_not_the_run_s(
    server: Server, make_client, monkeypatch
) -> None:
    # The safety net under reading a body: a shape that makes our code raise (as a block index
    # of "1" did) fails that attempt; before, send() raised and the whole run aborted.
    import batchrunner.client

    def unforeseen(attempt, status, raw):
        raise KeyError("boom")

    monkeypatch.setattr(batchrunner.client, "interpret_body", unforeseen)
    attempt = await send(make_client(server.url("/script")),
                         {"status": 200, "body": json.dumps(MESSAGE)})
    assert attempt.error_type == ERROR_INVALID_RESPONSE and not attempt.ok
    assert attempt.error_message == "response could not be processed: KeyError('boom')"


async def test_stream_content_that_cannot_be_placed_fails_the_attempt(
    server: Server, make_client
) -> None:
    # tool input for a block that was never started: an ok row would hold a partial answer
    orphan = sse(("content_block_delta", {"type": "content_block_delta", "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": "{}"}}))  # fmt: skip
    chunks = [*STREAM_OK[:-1], *orphan, STREAM_OK[-1]]
    attempt = await send(
        make_client(server.url("/script")), {"status": 200, "chunks": chunks}, True
    )
    assert attempt.error_type == ERROR_INVALID_RESPONSE and attempt.message is None
    assert "content block 1, which was never started" in (attempt.error_message or "")


def _stream(*middle: tuple[str, dict[str, Any]], delta: dict[str, Any] | None = None,
            start: bool = True, **event_extra: Any) -> list[str]:
    """A whole stream with *middle* between message_start and message_delta."""
    head = [("message_start", {"type": "message_start",
                               "message": {**MESSAGE, "content": []}})] if start else []
    return sse(*head, *middle,
               ("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": "end_turn", **(delta or {})},
                                  "usage": {"output_tokens": 2}, **event_extra}),
               ("message_stop", {"type": "message_stop"}))


def _block(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_start", {"type": "content_block_start", "index": index,
                                    "content_block": block})


def _delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index,
                                    "delta": delta})


async def test_an_undecodable_event_mid_stream_is_no_ok_row(server: Server, make_client) -> None:
    # It was skipped, and the row ok with that text missing.
    chunks = _stream(_block(0, {"type": "text", "text": ""}),
                     _delta(0, {"type": "text_delta", "text": "a"}))
    chunks.insert(3, 'event: content_block_delta\ndata: {"type":"content_block_delta","in\n\n')
    # (what some gateways send that is no JSON and no content stays harmless: see below)
    attempt = await send(make_client(server.url("/script")), {"status": 200, "chunks": chunks},
                         True)
    assert attempt.error_type == ERROR_INVALID_RESPONSE and attempt.message is None
    assert (attempt.error_message or "").startswith("undecodable SSE data")
    assert attempt.partial is not None and not attempt.transport_failure


async def test_keep_alives_and_done_markers_are_no_undecodable_events(
    server: Server, make_client
) -> None:
    chunks = _stream(_block(0, {"type": "text", "text": ""}),
                     _delta(0, {"type": "text_delta", "text": "a"}))
    chunks[2:2] = ["data: \n\n", "event: ping\ndata:\n\n"]
    chunks.append("data: [DONE]\n\n")
    attempt = await send(make_client(server.url("/script")), {"status": 200, "chunks": chunks},
                         True)
    assert attempt.ok, attempt.error_message


async def test_an_emoji_sent_as_two_surrogate_halves_is_one_character(
    server: Server, make_client
) -> None:
    # Gateways that cut UTF-16 text send "\ud83d" and "\ude00" apart; orjson refuses each.
    chunks = _stream(_block(0, {"type": "text", "text": ""}),
                     _delta(0, {"type": "text_delta", "text": "smile "}),
                     _delta(0, {"type": "text_delta", "text": "\ud83d"}),
                     _delta(0, {"type": "text_delta", "text": "\ude00"}))
    attempt = await send(make_client(server.url("/script")), {"status": 200, "chunks": chunks},
                         True)
    assert attempt.ok, attempt.error_message
    assert attempt.message["content"] == [{"type": "text", "text": "smile \U0001F600"}]


async def test_a_streamed_tool_input_keeps_big_integers_and_a_lone_half_is_replaced(
    server: Server, make_client
) -> None:
    # orjson read 123456789012345678901234567890 as 1.2345678901234568e+29; and a lone
    # surrogate half (its partner never came) would have failed the row's JSON encoding.
    from batchrunner.execute import json_text

    chunks = _stream(_block(0, {"type": "text", "text": ""}),
                     _delta(0, {"type": "text_delta", "text": "odd \ud83d"}),
                     _block(1, {"type": "tool_use", "id": "t1", "name": "pay", "input": {}}),
                     _delta(1, {"type": "input_json_delta", "partial_json": '{"account": 1234'}),
                     _delta(1, {"type": "input_json_delta",
                                "partial_json": '56789012345678901234567890}'}))
    attempt = await send(make_client(server.url("/script")), {"status": 200, "chunks": chunks},
                         True)
    assert attempt.ok, attempt.error_message
    text, tool = attempt.message["content"]
    assert text["text"] == "odd \ufffd"
    assert tool["input"] == {"account": 123456789012345678901234567890}
    assert json.loads(json_text(attempt.message))["content"][1]["input"]["account"] == (
        123456789012345678901234567890)


async def test_a_streamed_tool_input_that_is_not_json_is_no_ok_row(
    server: Server, make_client
) -> None:
    # The input was stored as a string in an ok row, where a caller reads the tool's
    # arguments as an object (the SDK raises on it). The text is kept in the row's response.
    chunks = _stream(_block(0, {"type": "tool_use", "id": "t1", "name": "pay", "input": {}}),
                     _delta(0, {"type": "input_json_delta", "partial_json": '{"account": '}),
                     _delta(0, {"type": "input_json_delta", "partial_json": "12,}"}))
    attempt = await send(make_client(server.url("/script")), {"status": 200, "chunks": chunks},
                         True)
    assert attempt.error_type == ERROR_INVALID_RESPONSE and attempt.message is None
    assert attempt.error_message == (
        'the tool input of content block 0 is not JSON: {"account": 12,}')
    assert attempt.partial["content"][0]["input"] == '{"account": 12,}'


async def test_a_stream_without_message_start_is_no_ok_row(server: Server, make_client) -> None:
    chunks = _stream(_block(0, {"type": "text", "text": ""}),
                     _delta(0, {"type": "text_delta", "text": "a"}), start=False)
    attempt = await send(make_client(server.url("/script")), {"status": 200, "chunks": chunks},
                         True)
    assert attempt.error_type == ERROR_INVALID_RESPONSE
    assert attempt.error_message == (
        "the stream sent no message_start (no model, id or input usage)")


async def test_a_streamed_message_keeps_what_the_sdk_keeps(server: Server, make_client) -> None:
    citation = {"type": "web_search_result_location", "url": "https://a", "title": "A",
                "encrypted_index": "e", "cited_text": "x"}
    chunks = _stream(
        # Bifrost writes an empty citations list as null: a crash, an error row, before.
        _block(0, {"type": "text", "text": "", "citations": None}),
        _delta(0, {"type": "citations_delta", "citation": citation}),
        _delta(0, {"type": "text_delta", "text": "cited"}),
        _block(1, {"type": "thinking", "thinking": "", "signature": ""}),
        _delta(1, {"type": "thinking_delta", "thinking": "hm"}),
        # Each signature replaces the last (the SDK's rule); they were joined.
        _delta(1, {"type": "signature_delta", "signature": "SIG1"}),
        _delta(1, {"type": "signature_delta", "signature": "SIG2"}),
        # A delta kind of a newer API: its fields are the block's.
        _block(2, {"type": "compaction", "content": None}),
        _delta(2, {"type": "compaction_delta", "content": "summary", "encrypted_content": "E"}),
        delta={"container": {"id": "c1", "expires_at": "2026-12-01T00:00:00Z"},
               "stop_details": {"type": "refusal", "category": "cyber"},
               # Neither may clobber what the message has: usage is merged, not replaced.
               "usage": {"output_tokens": 2}},
        context_management={"applied_edits": []},
    )
    attempt = await send(make_client(server.url("/script")), {"status": 200, "chunks": chunks},
                         True)
    assert attempt.ok, attempt.error_message
    message = attempt.message
    assert message["content"] == [
        {"type": "text", "text": "cited", "citations": [citation]},
        {"type": "thinking", "thinking": "hm", "signature": "SIG2"},
        {"type": "compaction", "content": "summary", "encrypted_content": "E"},
    ]
    assert message["container"] == {"id": "c1", "expires_at": "2026-12-01T00:00:00Z"}
    assert message["stop_details"] == {"type": "refusal", "category": "cyber"}
    assert message["context_management"] == {"applied_edits": []}
    assert message["stop_reason"] == "end_turn"
    assert message["usage"] == {**MESSAGE["usage"], "output_tokens": 2}
    assert len(attempt.token_times) == 2  # "cited" and "hm": no signature, citation, compaction


async def test_an_empty_text_delta_is_no_first_token(server: Server, make_client) -> None:
    # A converted opening chunk ("content": "") made TTFT the time to nothing.
    chunks = _stream(_block(0, {"type": "text", "text": ""}),
                     _delta(0, {"type": "text_delta", "text": ""}),
                     _delta(0, {"type": "text_delta", "text": "a"}))
    attempt = await send(make_client(server.url("/script")), {"status": 200, "chunks": chunks},
                         True)
    assert attempt.ok and len(attempt.token_times) == 1
    assert attempt.message["content"] == [{"type": "text", "text": "a"}]


async def test_a_stream_answered_with_another_2xx_is_read_as_a_stream(
    server: Server, make_client
) -> None:
    # A 201 stream was judged as one JSON body: invalid_response.
    attempt = await send(make_client(server.url("/script")), {"status": 201, "chunks": STREAM_OK},
                         True)
    assert attempt.ok and attempt.http_status == 201, attempt.error_message
    assert attempt.message["content"] == [{"type": "text", "text": "hi"}]


async def test_no_compressed_answer_is_asked_for_and_a_bom_is_no_json(
    server: Server, make_client
) -> None:
    client = make_client(server.url("/echo"))
    attempt = await client.send(b"{}", stream=False)
    sent = {k.lower(): v for k, v in attempt.parsed["headers"]}
    assert sent["accept-encoding"] == "identity"
    body = "\ufeff" + json.dumps(MESSAGE)
    script = {"status": 200, "headers": [["content-type", "application/json"]], "body": body}
    attempt = await send(make_client(server.url("/script")), script)
    assert attempt.ok and attempt.message == MESSAGE


@pytest.mark.parametrize(("script", "said"), [
    ({"headers": [["content-type", "text/html"]], "body": "<html><h1>Welcome</h1></html>"},
     "expected an event stream, got text/html: <html><h1>Welcome</h1></html>"),
    ({"headers": [["content-type", "text/event-stream"]], "chunks": STREAM_OK, "gzip": True},
     "the stream came compressed (content-encoding: gzip) though it was asked for "
     "uncompressed"),
])
async def test_a_whole_answer_that_is_no_stream_is_not_retried_as_a_cut_one(
    server: Server, make_client, script, said
) -> None:
    # A proxy's 200 page, or a stream compressed on the way: "stream ended before
    # message_stop", a transport failure, so sent again and paid for each time (3 of 3).
    attempt = await send(make_client(server.url("/script")), {"status": 200, **script}, True)
    assert attempt.error_type == ERROR_INVALID_RESPONSE and not attempt.transport_failure
    assert (attempt.error_message or "").startswith(said), attempt.error_message


async def test_a_compressed_answer_is_read_whichever_client_carried_it(
    server: Server, make_client
) -> None:
    # The wire client read a proxy's gzip body as text: invalid_response and binary noise in
    # error_message, where the httpx and aiohttp paths decode it to an ok row.
    script = {"status": 200, "headers": [["content-type", "application/json"]],
              "body": json.dumps(MESSAGE), "gzip": True}
    attempt = await send(make_client(server.url("/script")), script)
    assert attempt.ok and attempt.message == MESSAGE, attempt.error_message


def test_a_stream_cut_before_its_first_event_is_still_a_cut_stream() -> None:
    # Judged from the first read alone, a stream whose first read was b"ev" was "no stream":
    # invalid_response, not retried, where the same bytes read at once were retried (review).
    from batchrunner.client import StreamSink

    for pieces, headers in (
        ([b"ev", b"ent: message_start\n", b"data: {\"type\""], None),
        ([b"\xef", b"\xbb\xbfdata: {"], None),
        ([b"<partial"], httpx.Headers({"content-type": "text/event-stream"})),
    ):
        attempt = Attempt(sent=0.0, sent_at=0.0, headers=headers)
        sink = StreamSink(attempt)
        for piece in pieces:
            assert sink(piece, 1.0) is False
        sink.finish()
        assert attempt.error_type == ERROR_STREAM_INCOMPLETE and attempt.transport_failure, (
            pieces, attempt.error_message)


async def test_an_error_answer_compressed_in_a_way_not_decoded_keeps_its_status(
    server: Server,
) -> None:
    # A 429 compressed with br became invalid_response: the report's errors lost the rate
    # limit (the retry still followed the status) (review).
    client = GatewayClient(server.url("/raw"), {"x-api-key": "k"})
    try:
        attempt = await client.send(b"HTTP/1.1 429 Slow\r\ncontent-encoding: br\r\n"
                                    b"content-length: 4\r\n\r\n\x0b\x02\x80x", stream=False)
    finally:
        await client.aclose()
    assert attempt.http_status == 429 and attempt.error_type == "http_429"
    assert (attempt.error_message or "").startswith(
        "HTTP 429; the answer came compressed (content-encoding: br)")


def test_an_answer_compressed_in_a_way_not_decoded_says_so() -> None:
    from batchrunner.client import decompressed

    body, problem = decompressed(b"\x0b\x02\x80hi\x03", "br")
    assert body == b"\x0b\x02\x80hi\x03"
    assert problem is not None and problem.startswith("the answer came compressed "
                                                      "(content-encoding: br)")
    assert decompressed(b"not gzip", "gzip")[1] == (
        "the answer came compressed (gzip) but does not decompress")
    assert decompressed(b"{}", " Identity ") == (b"{}", None)


async def test_a_json_body_to_a_stream_request_is_read_as_one(
    server: Server, make_client
) -> None:
    # a job stub (x-bf-async sent anyway) is not a stream cut short, to be retried
    stub = json.dumps({"id": "job-1", "type": "", "role": "", "content": None})
    script = {"status": 200, "headers": [["content-type", "application/json"]], "body": stub}
    attempt = await send(make_client(server.url("/script")), script, stream=True)
    assert attempt.ok and attempt.message is None and attempt.parsed["id"] == "job-1"
    assert not attempt.transport_failure


def test_a_stream_that_failed_before_any_delta_counts_zero_deltas() -> None:
    # It began (message_start): "no delta came" is 0, not unknown (null).
    from batchrunner.execute import ExecContext, fill_attempt
    from batchrunner.schema import Mode

    attempt = Attempt(sent=1.0, sent_at=100.0, done=1.5, http_status=200)
    attempt.error_type, attempt.error_message = "overloaded_error", "mid-stream"
    attempt.partial = {**MESSAGE, "content": []}
    ctx = ExecContext(client=None, mode=Mode.STREAM, run_id="r", policy=None, emit=print)  # type: ignore[arg-type]
    row: dict[str, Any] = {}
    fill_attempt(row, attempt, ctx)
    assert row["content_deltas"] == 0 and row["input_tokens"] == 3


async def test_stream_without_message_stop(server: Server, make_client) -> None:
    script = {"status": 200, "chunks": STREAM_OK[:-1]}
    attempt = await send(make_client(server.url("/script")), script, stream=True)
    assert attempt.error_type == ERROR_STREAM_INCOMPLETE and attempt.transport_failure
    assert attempt.partial is not None and attempt.partial["usage"]["output_tokens"] == 2


async def test_stream_cut_by_the_server(server: Server, make_client) -> None:
    script = {"status": 200, "chunks": STREAM_OK[:4], "truncate": True}
    attempt = await send(make_client(server.url("/script")), script, stream=True)
    assert attempt.error_type in (ERROR_CONNECTION, ERROR_STREAM_INCOMPLETE)
    assert attempt.transport_failure and attempt.http_status == 200
    assert len(attempt.token_times) == 2  # what arrived before the cut is kept
    assert attempt.partial is not None and attempt.partial["id"] == MESSAGE["id"]
    assert attempt.partial["content"] == [{"type": "text", "text": "hi"}]


async def test_stream_request_with_error_status_reads_the_envelope(
    server: Server, make_client
) -> None:
    envelope = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    script = {"status": 429, "body": json.dumps(envelope)}
    attempt = await send(make_client(server.url("/script")), script, stream=True)
    assert attempt.error_type == "rate_limit_error" and attempt.http_status == 429


async def test_body_cut_by_the_server(server: Server, make_client) -> None:
    script = {"status": 200, "body": json.dumps(MESSAGE), "truncate": True}
    attempt = await send(make_client(server.url("/script")), script)
    assert attempt.error_type == ERROR_CONNECTION and attempt.transport_failure


async def test_read_timeout(server: Server, make_client) -> None:
    client = make_client(server.url("/stall-head"), Timeouts(connect_s=5, read_s=0.2, attempt_s=30))
    attempt = await client.send(b"{}", stream=False)
    assert attempt.error_type == ERROR_TIMEOUT and attempt.timed_out
    assert "ReadTimeout" in attempt.error_message


async def test_attempt_timeout(server: Server, make_client) -> None:
    client = make_client(server.url("/chunks"), Timeouts(connect_s=5, read_s=5, attempt_s=0.12))
    attempt = await client.send(b"{}", stream=True)
    assert attempt.error_type == ERROR_TIMEOUT and attempt.timed_out


async def test_connection_refused(make_client) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    attempt = await make_client(f"http://127.0.0.1:{port}").send(b"{}", stream=False)
    assert attempt.error_type == ERROR_CONNECTION and attempt.transport_failure
    assert attempt.http_status is None and "ConnectError" in attempt.error_message


async def test_header_with_a_line_break_fails_the_attempt_not_the_run(server: Server) -> None:
    # A job id from a gateway goes back in the next poll's header: it cannot inject headers.
    client = GatewayClient(server.url("/script"), {"x-api-key": "k"})
    try:
        attempt = await client.send(
            b"{}", stream=False, extra_headers=[("x-bf-async-id", "a\r\nx: y")]
        )
    finally:
        await client.aclose()
    assert attempt.error_type == ERROR_INVALID_RESPONSE and "x-bf-async-id" in attempt.error_message
    assert server.requests == []


def test_usage_counts_that_cannot_be_counts_are_left_null():
    # A gateway's negative count was priced as a refund; one beyond int64 broke the Parquet
    # write. Neither is a token count: the row keeps null there, the others as given.
    from batchrunner.execute import fill_message

    row: dict = {}
    fill_message(row, {"id": "m", "model": "claude-haiku-4-5", "usage": {
        "input_tokens": -5000, "output_tokens": 2**70, "cache_read_input_tokens": 7,
        "cache_creation_input_tokens": True}})
    assert (row["input_tokens"], row["output_tokens"]) == (None, None)
    assert row["cache_read_input_tokens"] == 7 and row["cache_creation_input_tokens"] is None
