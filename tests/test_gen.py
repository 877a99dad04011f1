"""``batchrunner gen``: determinism, distributions, model and tag mixes, shared prefixes, output
that ``run`` accepts, token targets the emulator agrees with, and CLI errors."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from batchrunner import gen as gen_module
from batchrunner.cli import main
from batchrunner.emulator import running_emulator
from batchrunner.emulator.model import estimate_input_tokens
from batchrunner.gen import (
    GenError,
    GenSpec,
    TokenDist,
    iter_records,
    output_format,
    parse_tag_mix,
    parse_weighted,
    write_requests,
)
from batchrunner.sources import SourceOptions, iter_requests, validate_file


def records(**kw: Any) -> list[dict[str, Any]]:
    return list(iter_records(GenSpec(**kw)))


def cli(*args: str) -> Result:
    result = CliRunner().invoke(main, ["gen", *args])
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    return result


RICH = {
    "count": 300,
    "input_tokens": TokenDist.parse("lognormal:60,0.5", 4, 400),
    "max_tokens": TokenDist.parse("uniform:16,256"),
    "models": parse_weighted(["claude-sonnet-4-5=0.7", "claude-haiku-4-5=0.3"], "model"),
    "shared_prefix_tokens": 64,
    "prefix_groups": 3,
    "tags": (("suite", 'night"ly ✓'),),
    "tag_mixes": (parse_tag_mix("tier=free:0.8,pa\\id:0.2"),),
    "seed": 7,
}


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", ["s.jsonl", "s.parquet", "s.jsonl.gz"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, name: str) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    write_requests(GenSpec(**RICH), a / name)
    write_requests(GenSpec(**RICH), b / name)
    write_requests(GenSpec(**{**RICH, "seed": 8}), c / name)
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_one_option_does_not_reshuffle_the_others() -> None:
    base = records(**RICH)
    more = records(**{**RICH, "tag_mixes": (*RICH["tag_mixes"], parse_tag_mix("x=a:1,b:1"))})
    assert [r["params"] for r in base] == [r["params"] for r in more]


# --------------------------------------------------------------------------- distributions


def targets(dist: TokenDist, n: int = 20_000) -> list[int]:
    return [r["metadata"]["input_tokens_target"] for r in records(count=n, input_tokens=dist)]


def test_fixed() -> None:
    assert set(targets(TokenDist.parse("fixed:37"), 500)) == {37}
    assert set(targets(TokenDist.parse("37"), 10)) == {37}


def test_uniform_covers_every_integer_in_range() -> None:
    xs = targets(TokenDist.parse("uniform:10,20"))
    assert set(xs) == set(range(10, 21))
    assert statistics.fmean(xs) == pytest.approx(15, abs=0.15)


def test_normal_mean_and_spread() -> None:
    xs = targets(TokenDist.parse("normal:300,40"))
    assert statistics.fmean(xs) == pytest.approx(300, abs=2)
    assert statistics.stdev(xs) == pytest.approx(40, rel=0.05)


def test_lognormal_median_mean_and_bounds() -> None:
    xs = targets(TokenDist.parse("lognormal:500,0.6"))
    assert statistics.median(xs) == pytest.approx(500, rel=0.03)
    assert statistics.fmean(xs) == pytest.approx(500 * math.exp(0.18), rel=0.03)
    bounded = targets(TokenDist.parse("lognormal:500,0.6", 16, 800))
    assert min(bounded) >= 16 and max(bounded) == 800
    # Clamped, not redrawn: the tail above 800 (P = 1 - Phi(ln 1.6 / 0.6) ~ 0.217) sits on 800.
    assert bounded.count(800) / len(bounded) == pytest.approx(0.217, abs=0.015)


def test_draws_are_integers_at_least_one() -> None:
    xs = targets(TokenDist.parse("normal:2,50"), 2000)
    assert min(xs) == 1 and all(isinstance(x, int) for x in xs)
    mts = [
        r["params"]["max_tokens"]
        for r in records(count=2000, max_tokens=TokenDist.parse("normal:2,50", None, 40))
    ]
    assert min(mts) == 1 and max(mts) == 40


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("pareto:1,2", None, None),
        ("lognormal:500", None, None),
        ("uniform:9,3", None, None),
        ("normal:5,-1", None, None),
        ("lognormal:0,1", None, None),
        ("fixed:abc", None, None),
        ("fixed:inf", None, None),
        ("fixed:5", 10, 5),
        ("fixed:5", None, 10**9),
    ],
)
def test_bad_distributions(text: str, low: int | None, high: int | None) -> None:
    with pytest.raises(GenError):
        TokenDist.parse(text, low, high)


# --------------------------------------------------------------------------- mixes and tags


def test_model_mix_proportions() -> None:
    models = parse_weighted(["m-a=7", "m-b=3"], "model")  # weights are normalised
    got = Counter(r["params"]["model"] for r in records(count=20_000, models=models))
    assert got["m-a"] / 20_000 == pytest.approx(0.7, abs=0.015)
    assert set(got) == {"m-a", "m-b"}
    assert {r["params"]["model"] for r in records(count=5)} == {"claude-haiku-4-5"}


def test_metadata_tags_and_ids() -> None:
    rows = records(
        count=20_000,
        tags=(("suite", "nightly"),),
        tag_mixes=(parse_tag_mix("tier=free:0.8,paid:0.2"),),
        custom_id_prefix="load",
    )
    assert rows[0]["custom_id"] == "load-00000" and rows[-1]["custom_id"] == "load-19999"
    meta = rows[123]["metadata"]
    assert list(meta)[:2] == ["gen_index", "input_tokens_target"] and meta["gen_index"] == 123
    assert meta["suite"] == "nightly"
    tiers = Counter(r["metadata"]["tier"] for r in rows)
    assert tiers["free"] / 20_000 == pytest.approx(0.8, abs=0.015)


@pytest.mark.parametrize(
    "kw",
    [
        {"tags": (("gen_index", "1"),)},
        {"tags": (("a", "1"),), "tag_mixes": (parse_tag_mix("a=x:1"),)},
        {"prefix_groups": 2},
        {"shared_prefix_tokens": 8, "prefix_groups": 2, "prefix_weights": (1.0, 1.0, 1.0)},
        {"custom_id_prefix": "bad id"},
        {"custom_id_prefix": "x" * 63},
        {"models": (("a", 0.0),)},
    ],
)
def test_bad_specs(kw: dict[str, Any]) -> None:
    with pytest.raises(GenError):
        GenSpec(count=10, **kw)


@pytest.mark.parametrize(
    "items", [["a=x"], ["a=-1"], ["a", "a=2"], ["=1"], ["a=0", "b=0"], ["a=nan"]]
)
def test_bad_model_weights(items: list[str]) -> None:
    with pytest.raises(GenError):
        parse_weighted(items, "model")


# --------------------------------------------------------------------------- shared prefix


@pytest.mark.parametrize(
    ("ttl", "cc"),
    [("5m", {"type": "ephemeral"}), ("1h", {"type": "ephemeral", "ttl": "1h"}), ("none", None)],
)
def test_shared_prefix_and_cache_control(ttl: str, cc: dict[str, str] | None) -> None:
    rows = records(count=7, shared_prefix_tokens=300, prefix_groups=3, cache_ttl=ttl)
    for i, r in enumerate(rows):
        (block,) = r["params"]["system"]
        assert len(block["text"]) == 300 * 4
        assert block.get("cache_control") == cc
        assert r["metadata"]["prefix_group"] == i % 3  # round-robin
        assert r["metadata"]["prefix_tokens"] == 300
    texts = [r["params"]["system"][0]["text"] for r in rows]
    assert texts[0] == texts[3] == texts[6] and len(set(texts)) == 3
    assert len({t[:20] for t in texts}) == 3  # groups differ from the start
    assert "system" not in records(count=1)[0]["params"]


def test_prefix_weights() -> None:
    rows = records(count=10_000, shared_prefix_tokens=8, prefix_weights=(0.6, 0.3, 0.1))
    got = Counter(r["metadata"]["prefix_group"] for r in rows)
    assert got[0] / 10_000 == pytest.approx(0.6, abs=0.02)
    assert got[2] / 10_000 == pytest.approx(0.1, abs=0.015)


def test_prompts_are_unique() -> None:
    rows = records(count=2000, input_tokens=TokenDist.parse("fixed:8"))
    assert len({r["params"]["messages"][0]["content"] for r in rows}) == 2000


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["s.jsonl", "s.parquet", "s.jsonl.gz", "s.ndjson", "s.pq"])
def test_output_validates_and_reads_back(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    result = write_requests(GenSpec(**RICH), path)
    assert result.rows == 300 and result.bytes == path.stat().st_size
    report = validate_file(path, SourceOptions())
    assert report.valid and report.ok == 300
    assert report.models.keys() == {"claude-sonnet-4-5", "claude-haiku-4-5"}
    got = [(r.custom_id, r.params, r.metadata) for r in iter_requests(path, SourceOptions())]
    want = [(r["custom_id"], r["params"], r["metadata"]) for r in records(**RICH)]
    assert got == want
    assert not [p for p in tmp_path.iterdir() if p.name != name]  # no temp file left


def test_parquet_layout_and_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen_module, "_ROW_GROUP_ROWS", 1000)
    monkeypatch.setattr(gen_module, "_CHUNK_ROWS", 512)
    path = tmp_path / "s.parquet"
    write_requests(GenSpec(count=5000, input_tokens=TokenDist.parse("fixed:4")), path)
    pf = pq.ParquetFile(path)
    assert [(f.name, str(f.type)) for f in pf.schema_arrow] == [
        ("custom_id", "string"),
        ("params", "string"),
        ("metadata", "string"),
    ]
    assert pf.metadata.num_row_groups == 5  # written as it goes, not held whole
    assert validate_file(path, SourceOptions()).ok == 5000


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    def boom(rows: int) -> None:
        raise KeyboardInterrupt

    path = tmp_path / "s.jsonl"
    with pytest.raises(KeyboardInterrupt):
        write_requests(GenSpec(count=10), path, on_progress=boom)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- token targets


def test_emulator_estimate_matches_the_target() -> None:
    rows = records(count=500, input_tokens=TokenDist.parse("lognormal:400,1", 1, 20_000))
    for r in rows:
        n = r["metadata"]["input_tokens_target"]
        got = estimate_input_tokens(r["params"], 4.0)
        if 4 * n >= len(f"#{r['metadata']['gen_index']} "):
            assert got == n
        else:  # the index alone is longer than a 1-2 token target
            assert got <= 3


def test_emulator_reports_target_and_prefix_cache() -> None:
    rows = records(
        count=3,
        input_tokens=TokenDist.parse("uniform:100,2000"),
        max_tokens=TokenDist.parse("fixed:4"),
        shared_prefix_tokens=1024,
        cache_ttl="1h",
    )
    with running_emulator() as emu, httpx.Client(base_url=emu.base_url, timeout=10) as client:
        usages = [
            client.post("/anthropic/v1/messages", json=r["params"]).json()["usage"] for r in rows
        ]
    for r, usage in zip(rows, usages, strict=True):
        target = r["metadata"]["input_tokens_target"]
        assert usage["input_tokens"] == pytest.approx(target, rel=0.15)
    assert usages[0]["cache_creation"]["ephemeral_1h_input_tokens"] == 1024
    assert [u["cache_read_input_tokens"] for u in usages[1:]] == [1024, 1024]


# --------------------------------------------------------------------------- CLI


def test_cli_writes_valid_set_and_reports_speed(tmp_path: Path) -> None:
    out = tmp_path / "load.parquet"
    result = cli(
        "-n", "500", "--out", str(out),
        "--input-tokens", "lognormal:200,0.6", "--input-min", "16", "--input-max", "800",
        "--max-tokens", "uniform:16,64",
        "--model", "claude-sonnet-4-5=0.7", "--model", "claude-haiku-4-5=0.3",
        "--shared-prefix-tokens", "64", "--prefix-groups", "2", "--cache-ttl", "1h",
        "--tag", "suite=nightly", "--tag-mix", "tier=free:0.8,paid:0.2", "--seed", "3",
        "--custom-id-prefix", "bench",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote 500 requests" in result.stderr and "rows/s" in result.stderr
    first = next(iter_requests(out, SourceOptions()))
    assert first.custom_id == "bench-000"
    assert first.params["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert first.metadata is not None and first.metadata["suite"] == "nightly"
    assert 16 <= first.metadata["input_tokens_target"] <= 800
    validate = CliRunner().invoke(main, ["validate", str(out)])
    assert validate.exit_code == 0 and "500 valid" in validate.output


def test_cli_help_documents_options() -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for flag in (
        "--input-tokens",
        "--max-tokens-max",
        "--prefix-weights",
        "--tag-mix",
        "--cache-ttl",
        "--seed",
        "lognormal:MEDIAN,SIGMA",
        "Examples",
    ):
        assert flag in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-tokens", "zipf:1"], "unknown distribution"),
        (["--input-tokens", "lognormal:500"], "lognormal:MEDIAN,SIGMA"),
        (["--max-tokens", "uniform:9,1"], "HI must be at least LO"),
        (["--input-min", "10", "--input-max", "5"], "--input-max 5 is below --input-min 10"),
        (["--model", "a=heavy"], "not a number"),
        (["--model", "a=0"], "add up to 0"),
        (["--tag", "novalue"], "key=value"),
        (["--tag", "gen_index=1"], "written by the generator"),
        (["--tag-mix", "tier=free"], "':weight'"),
        (["--cache-ttl", "1h"], "needs --shared-prefix-tokens"),
        (["--shared-prefix-tokens", "8", "--prefix-weights", "1,x"], "expected numbers"),
        (["--custom-id-prefix", "a b"], "custom id prefix"),
        (["-n", "0"], "-n"),
    ],
)
def test_cli_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = cli("-n", "5", "--out", str(tmp_path / "x.jsonl"), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_an_unknown_extension_names_every_accepted_one(tmp_path: Path) -> None:
    from batchrunner.formats import JSONL_SUFFIXES, PARQUET_SUFFIXES

    accepted = JSONL_SUFFIXES + PARQUET_SUFFIXES
    for suffix in accepted:  # each is accepted, whatever its case
        assert output_format(tmp_path / f"x{suffix.upper()}") in ("jsonl", "jsonl.gz", "parquet")
    with pytest.raises(GenError) as raised:
        output_format(tmp_path / "x.csv")
    assert str(raised.value).endswith(
        "unknown extension; use .jsonl, .ndjson, .jsonl.gz, .ndjson.gz, .parquet or .pq"
    )
    assert all(suffix in str(raised.value) for suffix in accepted)


def test_cli_bad_output_paths(tmp_path: Path) -> None:
    result = cli("-n", "5", "--out", str(tmp_path / "x.csv"))
    assert result.exit_code == 2 and "unknown extension" in result.output
    result = cli("-n", "5", "--out", str(tmp_path / "missing" / "x.jsonl"))
    assert result.exit_code == 2 and "cannot write" in result.output
    (tmp_path / "dir.jsonl").mkdir()
    result = cli("-n", "5", "--out", str(tmp_path / "dir.jsonl"))
    assert result.exit_code == 2 and "cannot write" in result.output
