"""The emulator driven by the official ``anthropic`` SDK: a client none of us wrote."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from batchrunner.emulator import Emulator


@pytest.fixture
def sdk(emulator: Emulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=emulator.base_url + "/anthropic", api_key="sk-bf-test", max_retries=0
    ) as c:
        yield c


def ask(c: anthropic.Anthropic, **kw: Any) -> Any:
    params: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say something."}],
    }
    params.update(kw)
    return c.messages.create(**params)


def test_sync_message_has_full_usage(sdk: anthropic.Anthropic, emulator: Emulator) -> None:
    msg = ask(sdk)
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.id.startswith("msg_")
    assert msg.model == "claude-test"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    text = msg.content[0].text
    assert msg.usage.output_tokens == len(text.split())  # one filler word = one token
    assert msg.usage.input_tokens > 0
    assert msg.usage.cache_creation_input_tokens == 0 and msg.usage.cache_read_input_tokens == 0
    assert msg.usage.cache_creation is not None
    assert msg.usage.cache_creation.ephemeral_5m_input_tokens == 0
    assert msg.usage.cache_creation.ephemeral_1h_input_tokens == 0
    [truth] = emulator.ground_truth()
    assert truth["kind"] == "sync" and truth["outcome"] == "ok" and truth["http_status"] == 200
    assert truth["output_tokens"] == msg.usage.output_tokens and truth["response_id"] == msg.id
    assert truth["virtual_key"] == "sk-bf-test"  # x-api-key with the sk-bf- prefix is a virtual key


def test_max_tokens_cuts_the_output(sdk: anthropic.Anthropic) -> None:
    msg = ask(sdk, max_tokens=3)
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 3 and len(msg.content[0].text.split()) == 3


def test_stream_text_and_final_usage(sdk: anthropic.Anthropic, emulator: Emulator) -> None:
    with sdk.messages.stream(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "Stream please."}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text and text
    assert final.usage.output_tokens == len(text.split())
    assert final.usage.input_tokens > 0
    assert final.stop_reason == "end_turn"
    [truth] = emulator.ground_truth()
    assert truth["kind"] == "stream" and truth["output_tokens"] == final.usage.output_tokens


def test_stream_with_cache_control_reports_cache_tokens(sdk: anthropic.Anthropic) -> None:
    system = [
        {"type": "text", "text": "You are terse. " * 200, "cache_control": {"type": "ephemeral"}}
    ]
    first = ask(sdk, system=system)
    with sdk.messages.stream(
        model="claude-test",
        max_tokens=8,
        system=system,
        messages=[{"role": "user", "content": "again"}],
    ) as stream:
        second = stream.get_final_message()
    assert (
        first.usage.cache_creation_input_tokens == 750 and first.usage.cache_read_input_tokens == 0
    )
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == 750
    assert (
        second.usage.cache_read_input_tokens == 750
        and second.usage.cache_creation_input_tokens == 0
    )


@pytest.mark.parametrize(
    ("overrides", "exc", "status"),
    [
        ({"fault_429": 1.0}, anthropic.RateLimitError, 429),
        ({"fault_500": 1.0}, anthropic.InternalServerError, 500),
        ({"fault_529": 1.0}, anthropic.OverloadedError, 529),
        ({"virtual_keys": ("sk-bf-good",)}, anthropic.AuthenticationError, 401),
    ],
)
def test_errors_raise_the_sdk_classes(
    make_emulator: Any, overrides: dict[str, Any], exc: type, status: int
) -> None:
    emu = make_emulator(**overrides)
    with anthropic.Anthropic(
        base_url=emu.base_url + "/anthropic", api_key="sk-bf-other", max_retries=0
    ) as c:
        with pytest.raises(exc) as info:
            ask(c)
        assert info.value.status_code == status
        # streaming requests fail before the first byte with the same JSON error
        with (
            pytest.raises(exc),
            c.messages.stream(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            ) as s,
        ):
            s.get_final_message()
    if status == 429:
        assert info.value.response.headers["retry-after"] == "1"
    assert info.value.body["type"] == "error"  # type: ignore[index]


def test_overloaded_is_an_internal_server_error_subclass() -> None:
    # The SDK raises OverloadedError for 529; catching InternalServerError catches it too.
    assert issubclass(anthropic.OverloadedError, anthropic.InternalServerError)


def test_bad_request_for_invalid_bodies(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk.messages.create(
            model="claude-test", max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_mid_stream_error_event_raises(make_emulator: Any) -> None:
    emu = make_emulator(fault_midstream=1.0, output_tokens="fixed:20")
    with (
        anthropic.Anthropic(base_url=emu.base_url + "/anthropic", api_key="x", max_retries=0) as c,
        pytest.raises(anthropic.APIStatusError) as info,
        c.messages.stream(
            model="m", max_tokens=50, messages=[{"role": "user", "content": "x"}]
        ) as s,
    ):
        for _ in s.text_stream:
            pass
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    [truth] = emu.ground_truth()
    assert truth["outcome"] == "stream_error" and truth["fault"] == "midstream_error"
    assert 0 <= truth["error_after_tokens"] < 20


def test_fallback_serves_when_the_primary_fails(make_emulator: Any) -> None:
    emu = make_emulator(fail_models=("claude-opus-4",))
    with anthropic.Anthropic(base_url=emu.base_url + "/anthropic", api_key="x", max_retries=0) as c:
        raw = c.messages.with_raw_response.create(
            model="claude-opus-4",
            max_tokens=8,
            messages=[{"role": "user", "content": "x"}],
            extra_body={
                "fallbacks": ["anthropic/claude-opus-4", "openai/gpt-4o-mini", "claude-haiku-4-5"]
            },
        )
        msg = raw.parse()
    assert msg.model == "gpt-4o-mini"
    assert raw.headers["x-bifrost-provider"] == "openai"
    assert raw.headers["x-bifrost-resolved-model"] == "gpt-4o-mini"
    assert raw.headers["x-bifrost-fallback-index"] == "2"
    assert float(raw.headers["x-bifrost-upstream-latency-ms"]) >= 0


def test_usage_has_the_tier_and_echoes_speed_and_geo(sdk: anthropic.Anthropic) -> None:
    plain = ask(sdk)
    assert plain.usage.service_tier == "standard"  # as Anthropic reports a standard request
    assert plain.usage.speed is None and plain.usage.inference_geo is None
    msg = ask(sdk, extra_body={"speed": "fast", "inference_geo": "us"})
    assert msg.usage.speed == "fast" and msg.usage.inference_geo == "us"
    assert msg.usage.service_tier == "standard"
    with sdk.messages.stream(
        model="claude-test", max_tokens=8, messages=[{"role": "user", "content": "Stream."}],
        extra_body={"speed": "fast"},
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.speed == "fast" and final.usage.service_tier == "standard"
    assert final.usage.inference_geo is None and final.usage.output_tokens == 8
