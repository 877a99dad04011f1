"""Cost: hand-computed values, long-context tiers, cache 5m/1h writes and reads, unknown models,
price files, offline use, and agreement with genai-prices' own per-request calculation."""

from __future__ import annotations

import socket
from datetime import UTC, date, datetime

import numpy as np
import pytest

from batchrunner.pricing import (
    PriceBook,
    PriceFileError,
    UsageArrays,
    cost_arrays,
    load_price_file,
    normalize_model,
    split_cache_writes,
)
from batchrunner.report import build_report, load_run

from .conftest import row


def usage_row(model: str, i: int = 0, *, inp: int = 0, w5m: int = 0, w1h: int = 0,
              read: int = 0, out: int = 0, **extra) -> dict:
    return row(input_index=i, model=model, model_requested=model, input_tokens=inp,
               output_tokens=out, cache_creation_input_tokens=w5m + w1h,
               cache_creation_5m_input_tokens=w5m, cache_creation_1h_input_tokens=w1h,
               cache_read_input_tokens=read, **extra)


def cost_of(make_run, rows, prices=None):
    book = PriceBook.load(prices)
    return build_report([load_run(make_run(rows))], book=book)["runs"][0]


# $/MTok: input, 5m write, 1h write, cache read, output (pricing.md §1.4)
HAND = [
    # Sonnet 4.5: 3 / 3.75 / 6 / 0.30 / 15
    ("claude-sonnet-4-5", {"inp": 1200, "w5m": 10_000, "w1h": 20_000, "read": 50_000, "out": 800},
     (1200 * 3 + 10_000 * 3.75 + 20_000 * 6 + 50_000 * 0.3 + 800 * 15) / 1e6),
    # Haiku 4.5: 1 / 1.25 / 2 / 0.10 / 5
    ("claude-haiku-4-5", {"inp": 1000, "w5m": 2000, "w1h": 3000, "read": 4000, "out": 500},
     (1000 * 1 + 2000 * 1.25 + 3000 * 2 + 4000 * 0.1 + 500 * 5) / 1e6),
    # Opus 4.1: 15 / 18.75 / 30 / 1.50 / 75
    ("claude-opus-4-1-20250805", {"inp": 100, "w1h": 1000, "read": 2000, "out": 300},
     (100 * 15 + 1000 * 30 + 2000 * 1.5 + 300 * 75) / 1e6),
    # the provider prefix a gateway routes by is stripped
    ("anthropic/claude-haiku-4-5", {"inp": 1000, "out": 1000}, (1000 * 1 + 1000 * 5) / 1e6),
    # Sonnet 4.5 long context: above 200k input tokens (cache included) every rate is the tier's
    ("claude-sonnet-4-5", {"inp": 1000, "read": 250_000, "out": 1000},
     (1000 * 6 + 250_000 * 0.6 + 1000 * 22.5) / 1e6),
    # exactly 200k is not above the threshold
    ("claude-sonnet-4-5", {"inp": 1000, "read": 199_000, "out": 1000},
     (1000 * 3 + 199_000 * 0.3 + 1000 * 15) / 1e6),
    # Sonnet 4's 1M beta (pricing.md §1.7): 6 / 7.50 / 12 / 0.60 / 22.50 above 200k input tokens
    # (genai-prices 0.2.3 has no tier for it: 0.1527 before the fix, not 0.2979)
    ("claude-sonnet-4-20250514", {"inp": 1000, "w5m": 4000, "w1h": 10_000, "read": 245_000,
                                  "out": 1000},
     (1000 * 6 + 4000 * 7.5 + 10_000 * 12 + 245_000 * 0.6 + 1000 * 22.5) / 1e6),
    ("anthropic/claude-sonnet-4-0", {"inp": 250_000, "out": 1000},
     (250_000 * 6 + 1000 * 22.5) / 1e6),
    ("claude-sonnet-4", {"inp": 1000, "read": 199_000, "out": 1000},
     (1000 * 3 + 199_000 * 0.3 + 1000 * 15) / 1e6),
    # Mythos 5 and 5.1 bill as Fable 5 and 5.1 (pricing.md §1.4); genai-prices 0.2.3 lacks them
    # (unpriced before the fix). 10 / 12.50 / 20 / 1 (5.1: 0.25) / 50
    ("claude-mythos-5", {"inp": 1000, "w5m": 2000, "w1h": 3000, "read": 4000, "out": 500},
     (1000 * 10 + 2000 * 12.5 + 3000 * 20 + 4000 * 1 + 500 * 50) / 1e6),
    ("anthropic/claude-mythos-5-1-20260301", {"inp": 1000, "read": 4000, "out": 500},
     (1000 * 10 + 4000 * 0.25 + 500 * 50) / 1e6),
    # Mythos 5.2 is in the data: 8 / 10 / 16 / 0.20 / 40
    ("claude-mythos-5-2", {"inp": 1000, "read": 4000, "out": 500},
     (1000 * 8 + 4000 * 0.2 + 500 * 40) / 1e6),
]


def test_a_mythos_version_nobody_publishes_stays_unpriced(make_run):
    run = cost_of(make_run, [usage_row("claude-mythos-5-3", inp=1000, out=10)])
    cost = run["overall"]["cost"]
    assert not cost["complete"] and cost["total_usd"] is None


@pytest.mark.parametrize(("model", "usage", "want"), HAND, ids=[h[0] for h in HAND])
def test_hand_computed_costs(make_run, model, usage, want):
    run = cost_of(make_run, [usage_row(model, **usage)])
    cost = run["overall"]["cost"]
    assert cost["total_usd"] == pytest.approx(want, rel=1e-12)
    assert cost["complete"] and cost["rows_priced"] == 1


def test_cost_categories_and_by_model(make_run):
    rows = [usage_row("claude-sonnet-4-5", 0, inp=1200, w5m=10_000, w1h=20_000, read=50_000,
                      out=800),
            usage_row("claude-haiku-4-5", 1, inp=1000, w5m=2000, w1h=3000, read=4000, out=500)]
    run = cost_of(make_run, rows)
    usd = run["overall"]["cost"]["usd"]
    assert usd["input"] == pytest.approx((1200 * 3 + 1000 * 1) / 1e6)
    assert usd["output"] == pytest.approx((800 * 15 + 500 * 5) / 1e6)
    assert usd["cache_write_5m"] == pytest.approx((10_000 * 3.75 + 2000 * 1.25) / 1e6)
    assert usd["cache_write_1h"] == pytest.approx((20_000 * 6 + 3000 * 2) / 1e6)
    assert usd["cache_read"] == pytest.approx((50_000 * 0.3 + 4000 * 0.1) / 1e6)
    assert usd["total"] == pytest.approx(0.1881 + 0.0124)
    by_model = {m["model"]: m for m in run["cost_by_model"]}
    assert by_model["claude-sonnet-4-5"]["cost"]["total_usd"] == pytest.approx(0.1881)
    assert by_model["claude-sonnet-4-5"]["priced_as"] == "genai-prices:anthropic/claude-sonnet-4-5"
    rates = by_model["claude-haiku-4-5"]["rates"]
    assert rates["cache_write_1h"]["per_mtok"] == 2.0 and rates["cache_read"]["per_mtok"] == 0.1
    assert run["cost_by_model"][0]["model"] == "claude-sonnet-4-5"  # most expensive first


def test_cache_write_split_fallbacks(make_run):
    rows = [
        # no TTL split reported: every write is priced as 5m (the documented safe reading)
        row(input_index=0, input_tokens=0, output_tokens=0, cache_creation_input_tokens=4000,
            cache_creation_5m_input_tokens=None, cache_creation_1h_input_tokens=None),
        # only the 1h part known: the rest of the writes are 5m
        row(input_index=1, input_tokens=0, output_tokens=0, cache_creation_input_tokens=4000,
            cache_creation_5m_input_tokens=None, cache_creation_1h_input_tokens=1000),
    ]
    run = cost_of(make_run, rows)
    usd = run["overall"]["cost"]["usd"]
    assert usd["cache_write_5m"] == pytest.approx((4000 + 3000) * 1.25 / 1e6)
    assert usd["cache_write_1h"] == pytest.approx(1000 * 2 / 1e6)
    assert run["overall"]["tokens"]["cache_write_5m"] == 7000
    five, one = split_cache_writes(np.array([np.nan, 10.0]), np.array([3.0, np.nan]),
                                   np.array([2.0, 4.0]))
    assert list(five) == [3.0, 6.0] and list(one) == [2.0, 4.0]


def test_unknown_model_is_null_and_listed_never_zero(make_run):
    rows = [usage_row("claude-haiku-4-5", 0, inp=1000, out=1000),
            usage_row("claude-foo-9", 1, inp=500, out=10),
            usage_row("claude-foo-9", 2, inp=5, out=5),
            # a failed request with no usage billed nothing, whatever its model
            row(input_index=3, model=None, model_requested="no-such-model", status="error",
                error_type="not_found_error", input_tokens=None, output_tokens=None,
                cache_creation_input_tokens=None, cache_read_input_tokens=None,
                cache_creation_5m_input_tokens=None, cache_creation_1h_input_tokens=None)]
    run = cost_of(make_run, rows)
    cost = run["overall"]["cost"]
    assert cost["complete"] is False and cost["total_usd"] is None
    assert cost["usd"]["total"] == pytest.approx(0.006)  # the priced rows only
    assert cost["unpriced_models"] == [{"model": "claude-foo-9", "rows": 2, "tokens": 520,
                                        "reason": "no prices"}]
    assert cost["rows_priced"] == 2 and cost["rows_unpriced"] == 2
    foo = next(m for m in run["cost_by_model"] if m["model"] == "claude-foo-9")
    assert foo["cost"]["total_usd"] is None and foo["priced_as"] is None


def test_normalize_model():
    assert normalize_model("anthropic/claude-sonnet-4-5") == "claude-sonnet-4-5"
    assert normalize_model(" OpenRouter/Anthropic/Claude-Haiku-4-5 ") == "claude-haiku-4-5"
    assert normalize_model(None) is None and normalize_model("x/") is None


PRICE_FILE = """
name = "ACME contract 2026"

[models."claude-haiku-4-5"]    # contract rates; cache rates stay as published
input = 0.5
output = 2.5

[models."anthropic/my-model"]  # a private model: cache rates default to 1.25x/2x/0.1x input
input = 2
output = 8

[models."fine-tune-*"]         # priced like another model, with a discount
same_as = "claude-sonnet-4-5"
multiplier = 0.8

[models."half-known"]          # no output rate: cannot be priced
input = 1
"""


def test_price_file_overrides_and_adds_models(make_run, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICE_FILE)
    rows = [usage_row("claude-haiku-4-5", 0, inp=1000, w5m=1000, w1h=1000, read=1000, out=1000),
            usage_row("my-model", 1, inp=1000, w5m=1000, w1h=1000, read=1000, out=1000),
            usage_row("fine-tune-abc", 2, inp=1000, read=250_000, out=1000),
            usage_row("half-known", 3, inp=1000, out=1000)]
    run = cost_of(make_run, rows, prices)
    by_model = {m["model"]: m for m in run["cost_by_model"]}
    haiku = by_model["claude-haiku-4-5"]["cost"]["total_usd"]
    assert haiku == pytest.approx((1000 * 0.5 + 1000 * 1.25 + 1000 * 2 + 1000 * 0.1 + 1000 * 2.5)
                                  / 1e6)
    mine = by_model["my-model"]["cost"]["total_usd"]
    assert mine == pytest.approx((1000 * 2 + 1000 * 2.5 + 1000 * 4 + 1000 * 0.2 + 1000 * 8) / 1e6)
    tuned = by_model["fine-tune-abc"]["cost"]["total_usd"]  # long-context tier, x0.8
    assert tuned == pytest.approx(0.8 * (1000 * 6 + 250_000 * 0.6 + 1000 * 22.5) / 1e6)
    assert by_model["fine-tune-abc"]["priced_as"].startswith("prices.toml:fine-tune-*")
    assert by_model["half-known"]["cost"]["total_usd"] is None
    assert run["overall"]["cost"]["unpriced_models"][0]["model"] == "half-known"
    info = PriceBook.load(prices).describe()["overrides"]
    assert info["name"] == "ACME contract 2026" and len(info["sha256"]) == 64
    assert info["models"] == ["claude-haiku-4-5", "my-model", "fine-tune-*", "half-known"]


@pytest.mark.parametrize(("text", "message"), [
    ("[models.x]\ninput = 1\noutput = 2\ncache_write = 3\n", "unknown keys ['cache_write']"),
    ("[models.x]\ninput = -1\noutput = 2\n", "input must be a number >= 0"),
    ("[models.x]\ninput = inf\noutput = 2\n", "input must be a number >= 0"),
    ("[models.x]\ninput = 1\noutput = nan\n", "output must be a number >= 0"),
    ("[models.x]\nmultiplier = nan\n", "multiplier must be a number >= 0"),
    ("[models.x]\nweb_search_per_1000 = -inf\n", "web_search_per_1000 must be a number >= 0"),
    ("[models.x\n", "not valid TOML"),
    ("name = 'empty'\n", "no [models"),
    ("[model.x]\ninput = 1\n", "unknown top-level keys"),
    ("[models.x]\nsame_as = 3\n", "same_as must be a model name"),
])
def test_bad_price_files(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(PriceFileError) as info:
        load_price_file(path)
    assert message in str(info.value)
    with pytest.raises(PriceFileError, match="cannot read"):
        load_price_file(tmp_path / "missing.toml")


def test_vectorised_prices_equal_genai_prices_per_request():
    """The rate-table path agrees with genai-prices' own calc_price on every Anthropic model."""
    from genai_prices import Usage, calc_price, data_snapshot

    models = [m.id for p in data_snapshot.get_snapshot().providers if p.id == "anthropic"
              for m in p.models]
    rng = np.random.default_rng(11)
    n = 3 * len(models)
    names = [models[i % len(models)] for i in range(n)]
    day = date(2026, 11, 1)
    keys = [(m, day) for m in models]
    codes = np.arange(n) % len(models)
    big = rng.random(n) < 0.3  # some requests above the long-context thresholds
    u = UsageArrays(*(rng.integers(0, 40_000, n).astype(float) for _ in range(4)),
                    cache_read=np.where(big, 230_000.0, rng.integers(0, 40_000, n)))
    costs, cards = cost_arrays(PriceBook(), keys, codes, u)
    assert all(cards)
    for i, model in enumerate(names):
        w = int(u.cache_write_5m[i] + u.cache_write_1h[i])
        usage = Usage(input_tokens=int(u.input[i]) + w + int(u.cache_read[i]),
                      cache_write_tokens=w, cache_write_1h_tokens=int(u.cache_write_1h[i]),
                      cache_read_tokens=int(u.cache_read[i]), output_tokens=int(u.output[i]))
        want = calc_price(usage, model, provider_id="anthropic",
                          genai_request_timestamp=datetime(2026, 11, 1, 12, tzinfo=UTC))
        expected = float(want.total_price)
        if model == "claude-sonnet-4-0" and usage.input_tokens > 200_000:
            # the documented correction: the long-context tier genai-prices lacks
            expected = float(want.input_price) * 2 + float(want.output_price) * 1.5
        assert costs["total"][i] == pytest.approx(expected, rel=1e-12), model


def test_offline_and_bundled_even_if_someone_swapped_the_snapshot(monkeypatch):
    from genai_prices import data_snapshot

    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    # What UpdatePrices (started by another library) would do: swap in downloaded data.
    monkeypatch.setattr(data_snapshot, "_custom_snapshot", data_snapshot.DataSnapshot(
        providers=[], from_auto_update=True))
    book = PriceBook()
    assert book.describe()["data"] == "bundled" and book.describe()["version"]
    card = book.rates("claude-haiku-4-5", date(2026, 11, 1))
    assert card is not None and card.rates["input"].base == 1.0


def test_multiplier_alone_and_same_as_itself_apply_once(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[models."claude-haiku-4-5"]\nmultiplier = 0.5\n'
                    '[models."claude-sonnet-4-5"]\nsame_as = "claude-sonnet-4-5"\n'
                    'multiplier = 0.5\n'
                    '[models."a"]\nsame_as = "b"\n[models."b"]\nsame_as = "a"\n')
    book = PriceBook.load(path)
    day = date(2026, 11, 1)
    haiku = book.rates("claude-haiku-4-5", day)
    assert haiku.rates["input"].base == 0.5 and haiku.rates["cache_write_1h"].base == 1.0
    assert haiku.priced_as == "p.toml:claude-haiku-4-5 (from genai-prices:anthropic/" \
                              "claude-haiku-4-5) x0.5"
    sonnet = book.rates("claude-sonnet-4-5", day)
    assert sonnet.rates["input"].base == 1.5
    assert sonnet.rates["input"].tiers == ((200_000, 3.0),)  # the long-context tier, scaled
    assert book.rates("a", day) is None  # a loop of unknown models: no price, no hang


def test_an_entry_applies_to_every_name_of_its_model(make_run, tmp_path):
    # The API answers with the dated id; a contract entry for the model's name was ignored for
    # those rows (list price: $6 for this row instead of $1).
    written = "claude-sonnet-4-5"
    path = tmp_path / "p.toml"
    path.write_text(f'[models."{written}"]\ninput = 1.0\n')
    rows = [usage_row("claude-sonnet-4-5-20250929", 0, inp=1_000_000),
            usage_row("claude-sonnet-4-5", 1, inp=1_000_000),
            usage_row("anthropic/claude-sonnet-4-5@20250929", 2, inp=1_000_000)]
    run = cost_of(make_run, rows, path)
    by_model = {m["model"]: m for m in run["cost_by_model"]}
    for model in by_model.values():
        assert model["cost"]["total_usd"] == pytest.approx(1.0), model
        assert model["priced_as"].startswith(f"p.toml:{written}"), model


def test_an_exact_entry_wins_over_the_models_other_names(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[models."claude-sonnet-4-5"]\ninput = 1.0\n'
                    '[models."claude-sonnet-4-5-20250929"]\ninput = 2.0\n'
                    '[models."claude-haiku-*"]\ninput = 0.5\n')
    book = PriceBook.load(path)
    day = date(2026, 11, 1)
    assert book.rates("claude-sonnet-4-5-20250929", day).rates["input"].base == 2.0
    assert book.rates("claude-sonnet-4-5", day).rates["input"].base == 1.0
    assert book.rates("claude-haiku-4-5-20251001", day).rates["input"].base == 0.5
    assert book.rates("claude-opus-4-1-20250805", day).rates["input"].base == 15.0
    # A pattern on the row's own name wins over an exact entry for its undated name; a name
    # that is not a dated snapshot (a fine-tune) does not take the base model's entry.
    both = PriceBook.load(_write(tmp_path / "b.toml",
                                 '[models."claude-sonnet-4-5"]\nmultiplier = 0.5\n'
                                 '[models."claude-sonnet-4-5-2025*"]\nmultiplier = 0.9\n'))
    assert both.rates("claude-sonnet-4-5-20250929", day).rates["input"].base == 3.0 * 0.9
    assert both.rates("claude-sonnet-4-5-ft-acme", day).priced_as.startswith("genai-prices")
    # An exact entry for the model's name wins over a pattern that its name matches too.
    wide = PriceBook.load(_write(tmp_path / "w.toml",
                                 '[models."claude-*"]\nmultiplier = 0.9\n'
                                 '[models."claude-sonnet-4-5"]\ninput = 2.0\n'))
    assert wide.rates("claude-sonnet-4-5-20250929", day).rates["input"].base == 2.0
    assert wide.rates("claude-haiku-4-5-20251001", day).rates["input"].base == 1.0 * 0.9
    # A dated entry names that snapshot only: the alias may move on to a newer one.
    dated = PriceBook.load(_write(tmp_path / "d.toml",
                                  '[models."claude-sonnet-4-5-20250929"]\ninput = 2.0\n'))
    assert dated.rates("claude-sonnet-4-5", day).rates["input"].base == 3.0


def _write(path, text):
    path.write_text(text)
    return path


def test_price_version_is_in_the_report(make_run):
    import genai_prices

    rep = build_report([load_run(make_run([row()]))])
    assert rep["prices"]["source"] == "genai-prices"
    assert rep["prices"]["version"] == genai_prices.__version__
    assert "not Message Batches" in rep["prices"]["notes"]


def test_async_jobs_are_priced_at_standard_rates(make_run):
    sync = cost_of(make_run, [usage_row("claude-haiku-4-5", inp=1000, out=1000)])
    job = cost_of(make_run, [usage_row("claude-haiku-4-5", inp=1000, out=1000, mode="async",
                                       job_id="job-1")])
    assert job["overall"]["cost"]["total_usd"] == sync["overall"]["cost"]["total_usd"] == 0.006


# -- usage beyond tokens: web searches, fast mode, data residency, service tiers -------------

# Opus 4.6: 5 / 6.25 / 10 / 0.50 / 25; its tokens of this usage cost 0.062 at standard rates
OPUS_46_TOKENS = (1000 * 5 + 2000 * 6.25 + 3000 * 10 + 4000 * 0.5 + 500 * 25) / 1e6
# Opus 4.8 fast mode (pricing.md §1.8, genai-prices' variant): 10 / 12.50 / 20 / 1 / 50
OPUS_48_FAST_TOKENS = (1000 * 10 + 2000 * 12.5 + 3000 * 20 + 4000 * 1 + 500 * 50) / 1e6
USAGE = {"inp": 1000, "w5m": 2000, "w1h": 3000, "read": 4000, "out": 500}

ADJUSTED = [
    ("opus-4-6 inference_geo us", "claude-opus-4-6", {"inference_geo": "us"},
     OPUS_46_TOKENS * 1.1),
    ("opus-4-6 inference_geo global", "claude-opus-4-6", {"inference_geo": "global"},
     OPUS_46_TOKENS),
    ("opus-4-8 fast", "claude-opus-4-8", {"speed": "fast"}, OPUS_48_FAST_TOKENS),
    ("opus-4-8 standard speed", "claude-opus-4-8", {"speed": "standard"}, OPUS_46_TOKENS),
    # fast and US residency stack; searches are neither multiplied nor discounted
    ("opus-4-8 fast us 2 searches", "claude-opus-4-8",
     {"speed": "fast", "inference_geo": "us", "web_search_requests": 2},
     OPUS_48_FAST_TOKENS * 1.1 + 0.02),
    # haiku 4.5 (1 / 1.25 / 2 / 0.10 / 5) with 3 web searches at $0.01
    ("haiku-4-5 3 searches", "claude-haiku-4-5",
     {"web_search_requests": 3, "web_fetch_requests": 4},
     (1000 * 1 + 2000 * 1.25 + 3000 * 2 + 4000 * 0.1 + 500 * 5) / 1e6 + 0.03),
    ("haiku-4-5 batch tier 3 searches", "claude-haiku-4-5",
     {"service_tier": "batch", "web_search_requests": 3},
     (1000 * 1 + 2000 * 1.25 + 3000 * 2 + 4000 * 0.1 + 500 * 5) / 1e6 * 0.5 + 0.03),
    ("haiku-4-5 priority tier", "claude-haiku-4-5", {"service_tier": "priority"},
     (1000 * 1 + 2000 * 1.25 + 3000 * 2 + 4000 * 0.1 + 500 * 5) / 1e6),
]


@pytest.mark.parametrize(("model", "extra", "want"), [a[1:] for a in ADJUSTED],
                         ids=[a[0] for a in ADJUSTED])
def test_hand_computed_costs_with_usage_beyond_tokens(make_run, model, extra, want):
    run = cost_of(make_run, [usage_row(model, **USAGE, **extra)])
    cost = run["overall"]["cost"]
    assert cost["complete"] and cost["total_usd"] == pytest.approx(want, rel=1e-12)
    assert cost["usd"]["web_search"] == pytest.approx(
        0.01 * extra.get("web_search_requests", 0), rel=1e-12)
    assert sum(cost["usd"][c] for c in ("input", "output", "cache_write_5m", "cache_write_1h",
                                        "cache_read", "web_search")) == pytest.approx(want)
    assert cost["estimate"] is (extra.get("service_tier") == "priority")
    assert run["overall"]["tokens"]["web_search_requests"] == extra.get("web_search_requests", 0)
    assert run["overall"]["tokens"]["web_fetch_requests"] == extra.get("web_fetch_requests", 0)


def test_fast_rows_of_a_model_without_fast_rates_are_unpriced_not_standard(make_run):
    # genai-prices 0.2.3 has no fast-mode rates for Opus 4.6 (pricing.md §2.7 item 4): its fast
    # rows are unknown, never priced at the standard rates; its standard rows stay priced.
    rows = [usage_row("claude-opus-4-6", 0, **USAGE),
            usage_row("claude-opus-4-6", 1, **USAGE, speed="fast"),
            usage_row("claude-opus-4-8", 2, **USAGE, speed="fast")]
    run = cost_of(make_run, rows)
    cost = run["overall"]["cost"]
    assert not cost["complete"] and cost["total_usd"] is None
    assert cost["usd"]["total"] == pytest.approx(OPUS_46_TOKENS + OPUS_48_FAST_TOKENS)
    assert cost["unpriced_models"] == [{"model": "claude-opus-4-6", "rows": 1, "tokens": 10_500,
                                        "reason": "no fast-mode rates"}]
    assert cost["adjusted_rows"]["fast"] == 1  # the priced fast row only
    by_model = {m["model"]: m for m in run["cost_by_model"]}
    assert by_model["claude-opus-4-6"]["rates"]["fast"] is None
    assert by_model["claude-opus-4-8"]["rates"]["fast"]["output"]["per_mtok"] == 50.0


def test_report_text_says_how_usage_changed_the_price(make_run):
    from batchrunner.report_text import format_report

    rows = [usage_row("claude-opus-4-6", 0, **USAGE, speed="fast"),
            usage_row("claude-opus-4-6", 1, **USAGE, inference_geo="us", web_search_requests=3),
            usage_row("claude-haiku-4-5", 2, **USAGE, service_tier="priority"),
            usage_row("claude-haiku-4-5", 3, **USAGE, service_tier="batch")]
    text = format_report(build_report([load_run(make_run(rows))]))
    # One row of each: counted in the singular ("1 rows" read as a typo)
    assert "UNPRICED (cost unknown, left out of the totals): claude-opus-4-6 (1 row, 10,500 " \
           "tokens, speed fast: no fast-mode rates)" in text
    assert "data residency: 1 row with inference_geo us at 1.1x token rates" in text
    assert "batch: 1 row with service_tier batch at 50% of token rates" in text
    assert "ESTIMATE: 1 Priority Tier row (service_tier priority) priced at list price" in text
    assert " 1 rows" not in text
    assert "web search" in text and "web searches" in text  # cost and tokens columns
    assert "$0.0300" in text  # the searches' cost


def test_no_search_columns_when_no_row_searched(make_run):
    from batchrunner.report_text import format_report

    text = format_report(build_report([load_run(make_run([usage_row("claude-haiku-4-5",
                                                                     **USAGE)]))]))
    assert "web search" not in text and "ESTIMATE" not in text


def test_notes_no_longer_claim_searches_residency_and_fast_mode_are_unpriced(make_run):
    notes = build_report([load_run(make_run([row()]))])["prices"]["notes"]
    assert "not priced: code execution container time" in notes
    for priced in ("web searches at $0.01", "fast mode", "inference_geo us at 1.1x",
                   "Priority Tier rows at list price, an estimate"):
        assert priced in notes


FAST_PRICE_FILE = """
[models."claude-opus-4-6"]   # fast mode as Claude Code bills it: 6x ($30 / $150)
fast_multiplier = 6
web_search_per_1000 = 5

[models."claude-opus-4-8"]   # a contract discount carries over to fast mode
multiplier = 0.5

[models."claude-opus-5"]     # contract input rate: fast input keeps the published 2x ratio
input = 4
"""


def test_price_file_fast_mode_and_search_fee(make_run, tmp_path):
    prices = tmp_path / "fast.toml"
    prices.write_text(FAST_PRICE_FILE)
    rows = [usage_row("claude-opus-4-6", 0, **USAGE, speed="fast", web_search_requests=2),
            usage_row("claude-opus-4-8", 1, **USAGE, speed="fast", inference_geo="us"),
            usage_row("claude-opus-5", 2, inp=1000, out=0, speed="fast"),
            usage_row("claude-opus-5", 3, inp=1000, out=0)]
    run = cost_of(make_run, rows, prices)
    by_model = {m["model"]: m["cost"]["total_usd"] for m in run["cost_by_model"]}
    assert by_model["claude-opus-4-6"] == pytest.approx(OPUS_46_TOKENS * 6 + 2 * 0.005)
    # data residency applies on top of a contract price
    assert by_model["claude-opus-4-8"] == pytest.approx(OPUS_48_FAST_TOKENS * 0.5 * 1.1)
    assert by_model["claude-opus-5"] == pytest.approx((1000 * 8 + 1000 * 4) / 1e6)
    assert run["overall"]["cost"]["complete"]


@pytest.mark.parametrize("key", ["fast_multiplier", "web_search_per_1000"])
def test_bad_fast_and_search_keys(tmp_path, key):
    path = tmp_path / "p.toml"
    path.write_text(f'[models.x]\ninput = 1\noutput = 2\n{key} = "six"\n')
    with pytest.raises(PriceFileError, match=f"{key} must be a number >= 0"):
        load_price_file(path)


def test_vectorised_fast_and_search_prices_equal_genai_prices_per_request():
    """Fast-mode rates and search fees agree with genai-prices' calc_price(price_context=
    {"speed": "fast"}) on every Anthropic model that has fast-mode rates."""
    from genai_prices import Usage, calc_price, data_snapshot

    book = PriceBook()
    day = date(2026, 11, 1)
    models = [m.id for p in data_snapshot.get_snapshot().providers if p.id == "anthropic"
              for m in p.models]
    fast_models = [m for m in models if book.rates(m, day).fast is not None]
    assert {"claude-opus-4-8", "claude-opus-5", "claude-opus-5-5"} <= set(fast_models)
    assert book.rates("claude-opus-4-6", day).fast is None
    rng = np.random.default_rng(5)
    n = 4 * len(fast_models)
    codes = np.arange(n) % len(fast_models)
    u = UsageArrays(*(rng.integers(0, 40_000, n).astype(float) for _ in range(5)),
                    web_searches=rng.integers(0, 5, n).astype(float),
                    fast=np.ones(n, dtype=bool))
    costs, _cards = cost_arrays(book, [(m, day) for m in fast_models], codes, u)
    for i in range(n):
        w = int(u.cache_write_5m[i] + u.cache_write_1h[i])
        usage = Usage(input_tokens=int(u.input[i]) + w + int(u.cache_read[i]),
                      cache_write_tokens=w, cache_write_1h_tokens=int(u.cache_write_1h[i]),
                      cache_read_tokens=int(u.cache_read[i]), output_tokens=int(u.output[i]),
                      web_searches=int(u.web_searches[i]))
        want = calc_price(usage, fast_models[codes[i]], provider_id="anthropic",
                          genai_request_timestamp=datetime(2026, 11, 1, 12, tzinfo=UTC),
                          price_context={"speed": "fast"})
        assert costs["total"][i] == pytest.approx(float(want.total_price), rel=1e-12)


def test_a_model_with_some_unpriced_fast_rows_shows_its_priced_part(make_run, tmp_path):
    from batchrunner.report_html import render_html
    from batchrunner.report_text import fmt_usd, format_report

    rows = [usage_row("claude-opus-4-6", 0, **USAGE, speed="fast"),  # no fast-mode rates
            usage_row("claude-opus-4-6", 1, **USAGE),
            usage_row("claude-haiku-4-5", 2, **USAGE)]
    doc = build_report([load_run(make_run(rows))])
    run = doc["runs"][0]
    by_model = {m["model"]: m["cost"] for m in run["cost_by_model"]}
    opus = by_model["claude-opus-4-6"]
    assert opus["complete"] is False and opus["total_usd"] is None
    assert opus["rows_priced"] == 1 and opus["rows_unpriced"] == 1
    assert opus["usd"]["total"] == pytest.approx(OPUS_46_TOKENS)
    total = run["overall"]["cost"]["usd"]["total"]
    assert total == pytest.approx(sum(c["usd"]["total"] for c in by_model.values()))

    text = format_report(doc)
    line = next(x for x in text.splitlines() if x.startswith("  claude-opus-4-6 "))
    # Before: "-" in every column, while its priced row was in the ">= $x" total.
    cells = line.split()
    assert cells[:3] == ["claude-opus-4-6", "2", fmt_usd(opus["usd"]["input"])]
    assert f">= {fmt_usd(opus['usd']['total'])}" in line
    assert line.endswith("genai-prices:anthropic/claude-opus-4-6; 1 row UNPRICED (speed fast: "
                         "no fast-mode rates)")
    assert f">= {fmt_usd(total)}" in next(x for x in text.splitlines()
                                          if x.startswith("  total "))
    html = render_html(build_report([load_run(make_run(rows))], plot_data=True))
    assert f"&gt;= {fmt_usd(opus['usd']['total'])}" in html
    assert "1 row UNPRICED (speed fast: no fast-mode rates)" in html
    assert f"&gt;= {fmt_usd(opus['usd']['total'])} (1 row unpriced)</text>" in html  # its bar
    # The closing summary named it "unpriced" with no reason, as a model without prices.
    from batchrunner.report_text import format_short
    from batchrunner.summary import SUMMARY_COLUMNS, summarize, summarize_batches

    table = load_run(make_run(rows)).table.select(SUMMARY_COLUMNS)
    for summary in (summarize(table), summarize_batches(iter([table]))):
        assert summary["cost"]["unpriced_fast_models"] == ["claude-opus-4-6"]
        assert ("unpriced: claude-opus-4-6 (its speed-fast rows: no fast-mode rates)"
                in format_short(summary))


def test_dollar_figures_too_small_for_six_decimals_do_not_read_as_zero():
    from batchrunner.report_text import fmt_usd

    # A claude-3-haiku input of one token ($0.00000025) printed as "$0.000000"; 0.0099999
    # printed as "$0.010000" (six decimals for a figure that rounds to a cent).
    assert fmt_usd(2.5e-7) == "<$0.000001" and fmt_usd(-2e-7) == "> -$0.000001"
    assert fmt_usd(0.0099999) == "$0.0100" and fmt_usd(0.99999) == "$1.00"
    assert fmt_usd(0.000412) == "$0.000412" and fmt_usd(0) == "$0" and fmt_usd(None) == "-"


def test_a_retried_attempt_of_an_unpriced_model_leaves_the_rows_own_cost(make_run):
    # One retried attempt answered by a model without prices (a fallback) made the whole row
    # unpriced: its own cost left every total, the message named the row's priced model
    # ("add claude-sonnet-4-5 to a --prices file"), and `retried` read "$0".
    import orjson

    from batchrunner.report_text import format_report, format_short
    from batchrunner.spend import SpendMeter
    from batchrunner.summary import SUMMARY_COLUMNS, summarize_batches

    retried = orjson.dumps([{"model": "acme-fallback-1", "input_tokens": 1000,
                             "output_tokens": 1},
                            {"model": "claude-sonnet-4-5", "input_tokens": 1000,
                             "output_tokens": 1}]).decode()
    rows = [usage_row("claude-sonnet-4-5", 0, inp=1000, out=100, retried_usage=retried),
            usage_row("claude-sonnet-4-5", 1, inp=1000, out=100)]
    run_dir = make_run(rows)
    run = build_report([load_run(run_dir)])["runs"][0]
    cost = run["overall"]["cost"]
    own = 2 * (1000 * 3 + 100 * 15) / 1e6
    priced_retry = (1000 * 3 + 1 * 15) / 1e6
    assert cost["usd"]["total"] == pytest.approx(own + priced_retry)
    assert cost["complete"] is False and cost["total_usd"] is None
    assert cost["rows_unpriced"] == 0 and cost["unpriced_models"] == []
    assert cost["retried"] == {"attempts": 2, "rows": 1, "usd": pytest.approx(priced_retry),
                               "unpriced_attempts": 1, "unpriced_models": ["acme-fallback-1"]}
    text = format_report(build_report([load_run(run_dir)]))
    assert "1 attempt of acme-fallback-1 (no prices) in no figure" in text
    assert "add them to a --prices file" not in text  # no row of a priced model is unpriced
    table = load_run(run_dir).table.select(SUMMARY_COLUMNS)
    summary = summarize_batches(iter([table]))
    assert summary["cost"]["unpriced_models"] == ["acme-fallback-1"]
    assert "1 of them unpriced, not counted" in format_short(summary)
    meter = SpendMeter(1.0)
    assert meter.add_table(load_run(run_dir).table) == ["acme-fallback-1"]
    assert meter.spent_usd == pytest.approx(own + priced_retry)
