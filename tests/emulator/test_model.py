"""The behaviour model: determinism, distributions, lengths, token estimates, prompt caching."""

from __future__ import annotations

import statistics
from typing import Any

import orjson
import pytest

from batchrunner.emulator.config import Dist, EmulatorConfig
from batchrunner.emulator.model import PromptCache, SplitMix, estimate_input_tokens, make_plan

from .helpers import MESSAGES, body, client


def plan(
    cfg: EmulatorConfig, b: dict[str, Any], cache: PromptCache | None = None, now: float = 0.0
) -> Any:
    return make_plan(
        cfg, orjson.dumps(b), b, b["model"], cache if cache is not None else PromptCache(100), now
    )


REALISTIC = EmulatorConfig(
    ttft="lognormal:0.5,0.25", token_delay="uniform:0.02,0.06", output_tokens="normal:40,10"
)


def test_same_seed_and_body_give_the_same_plan() -> None:
    a, b = plan(REALISTIC, body()), plan(REALISTIC, body())
    assert (a.ttft_s, a.token_delays_s, a.usage, a.text()) == (
        b.ttft_s,
        b.token_delays_s,
        b.usage,
        b.text(),
    )
    other_body = plan(REALISTIC, body("Different prompt"))
    other_seed = plan(EmulatorConfig(**{**REALISTIC.to_dict(), "seed": 1}), body())
    assert other_body.ttft_s != a.ttft_s and other_seed.ttft_s != a.ttft_s


def test_determinism_over_http(make_emulator: Any) -> None:
    cfg = {
        "seed": 42,
        "ttft": "uniform:0,0.01",
        "token_delay": "uniform:0,0.001",
        "output_tokens": "uniform:5,50",
    }
    runs = []
    for _ in range(2):
        emu = make_emulator(**cfg)
        with client(emu) as c:
            texts = [
                c.post(MESSAGES, json=body(f"prompt {i}")).json()["content"][0]["text"]
                for i in range(5)
            ]
            stream = c.post(MESSAGES, json=body("prompt 0", stream=True)).text
        truth = emu.ground_truth()
        runs.append(
            (texts, [(t["ttft_s"], t["token_delays_s"], t["output_tokens"]) for t in truth])
        )
        assert (
            "".join(
                orjson.loads(line[6:])["delta"]["text"]
                for line in stream.splitlines()
                if "text_delta" in line
            )
            != ""
        )
    assert runs[0] == runs[1]
    assert len({t[0] for t in runs[0][1][:5]}) == 5  # different requests, different draws


def test_output_length_is_capped_by_max_tokens() -> None:
    cfg = EmulatorConfig(output_tokens="fixed:100")
    full, cut = plan(cfg, body(max_tokens=200)), plan(cfg, body(max_tokens=7))
    assert (full.usage.output_tokens, full.stop_reason) == (100, "end_turn")
    assert (cut.usage.output_tokens, cut.stop_reason) == (7, "max_tokens")
    assert len(cut.token_delays_s) == 6 and len(cut.text().split()) == 7


def test_input_tokens_follow_prompt_characters() -> None:
    b = {
        "model": "m",
        "max_tokens": 5,
        "system": "s" * 400,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "u" * 400}]}],
    }
    assert plan(EmulatorConfig(), b).usage.input_tokens == 200
    assert estimate_input_tokens(b, 4.0) == 200
    assert plan(EmulatorConfig(chars_per_token=8), b).usage.input_tokens == 100


def test_prefill_cost_adds_to_ttft() -> None:
    b = body("x" * 4000)
    assert plan(EmulatorConfig(prefill_s_per_token=0.001), b).ttft_s == pytest.approx(1.0, abs=0.01)


def test_distributions_clamp_and_match_their_parameters() -> None:
    rng = SplitMix(7)
    normal = [Dist("normal", 0.0, 1.0).sample(rng) for _ in range(2000)]
    assert min(normal) == 0.0 and sum(v == 0.0 for v in normal) > 800  # negatives clamped
    logn = [Dist("lognormal", 0.5, 0.25).sample(rng) for _ in range(4000)]
    assert statistics.median(logn) == pytest.approx(0.5, rel=0.05)
    assert sorted(logn)[100] > 0.28 and sorted(logn)[-100] < 0.9  # ~95 % within 0.3-0.8
    uni = [Dist("uniform", 0.02, 0.06).sample(rng) for _ in range(2000)]
    assert (
        min(uni) >= 0.02
        and max(uni) < 0.06
        and statistics.mean(uni) == pytest.approx(0.04, rel=0.05)
    )
    assert Dist("fixed", -3).sample(rng) == 0.0


def test_cache_write_then_read_5m_and_1h() -> None:
    cache = PromptCache(100)
    cfg = EmulatorConfig()
    sys_blocks = [
        {"type": "text", "text": "a" * 4000, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "b" * 2000, "cache_control": {"type": "ephemeral"}},
    ]
    b = {
        "model": "m",
        "max_tokens": 5,
        "system": sys_blocks,
        "messages": [{"role": "user", "content": "q" * 400}],
    }
    first = plan(cfg, b, cache, now=0.0).usage
    assert (first.cache_creation_1h_input_tokens, first.cache_creation_5m_input_tokens) == (
        1000,
        500,
    )
    assert first.cache_creation_input_tokens == 1500 and first.cache_read_input_tokens == 0
    assert first.input_tokens == 100
    second = plan(cfg, b, cache, now=10.0).usage
    assert second.cache_read_input_tokens == 1500 and second.cache_creation_input_tokens == 0
    assert second.input_tokens == 100
    # after 10 minutes the 5m segment expired but the 1h prefix is still there
    third = plan(cfg, b, cache, now=10.0 + 600).usage
    assert third.cache_read_input_tokens == 1000 and third.cache_creation_5m_input_tokens == 500
    # another model has its own cache
    other = make_plan(cfg, orjson.dumps(b), b, "other-model", cache, 700.0).usage
    assert other.cache_read_input_tokens == 0 and other.cache_creation_input_tokens == 1500


def test_prefill_is_charged_for_cache_writes_but_not_reads(make_emulator: Any) -> None:
    emu = make_emulator(prefill_s_per_token=0.0001, output_tokens="fixed:1")
    system = [{"type": "text", "text": "a" * 4000, "cache_control": {"type": "ephemeral"}}]
    b = body("q" * 400, system=system)  # 1,000 cacheable tokens + 100 after the breakpoint
    with client(emu) as c:
        first = c.post(MESSAGES, json=b).json()["usage"]
        second = c.post(MESSAGES, json=b).json()["usage"]
    assert (first["cache_creation_input_tokens"], first["input_tokens"]) == (1000, 100)
    assert (second["cache_read_input_tokens"], second["input_tokens"]) == (1000, 100)
    write, read = emu.ground_truth()
    assert write["ttft_s"] == pytest.approx(0.0001 * (100 + 1000))  # a write is computed
    assert read["ttft_s"] == pytest.approx(0.0001 * 100)  # a read is not
    assert write["done_at"] - write["started_at"] >= 0.11 - 0.002  # and really waited


def test_top_level_cache_control_caches_the_whole_prompt() -> None:
    cache = PromptCache(100)
    b = {**body("z" * 800), "cache_control": {"type": "ephemeral"}}
    first, second = plan(EmulatorConfig(), b, cache).usage, plan(EmulatorConfig(), b, cache).usage
    assert first.cache_creation_input_tokens == 200 and first.input_tokens == 0
    assert second.cache_read_input_tokens == 200


def test_prompt_cache_is_bounded() -> None:
    cache = PromptCache(100)
    cfg = EmulatorConfig(prompt_cache_max=3)  # read on every request: a live option
    for i in range(10):
        b = {**body(f"prompt {i} " * 50), "cache_control": {"type": "ephemeral"}}
        plan(cfg, b, cache)
    assert len(cache) == 3
