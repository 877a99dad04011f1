"""``batchrunner gen``: options → :class:`~batchrunner.gen.GenSpec` → one streamed write, and a
one-line summary (rows, size, rows/s) on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from batchrunner.cli import main
from batchrunner.gen import (
    CACHE_TTLS,
    DEFAULT_MODEL,
    GenError,
    GenSpec,
    TokenDist,
    output_format,
    parse_tag,
    parse_tag_mix,
    parse_weighted,
    write_requests,
)

F = TypeVar("F", bound=Callable[..., Any])

EXAMPLES = """\b
DIST is fixed:V, uniform:LO,HI, normal:MEAN,SD or lognormal:MEDIAN,SIGMA (a bare
number is fixed). Draws are rounded to integers and clamped into the bounds
(--input-min/--input-max, --max-tokens-min/--max-tokens-max; at least 1).

\b
Prompts are common three-letter filler words, 4 characters (one word) per
target token: exactly what the built-in emulator counts, and about what a real
tokenizer counts. Each prompt starts with its index, so only the shared prefix
can be a prompt-cache hit.

\b
Examples:
  batchrunner gen -n 1000 --out small.jsonl
  batchrunner gen -n 1000000 --out load.parquet \\
      --input-tokens lognormal:500,0.6 --input-min 16 --input-max 8000 \\
      --max-tokens uniform:64,512 \\
      --model claude-sonnet-4-5=0.7 --model claude-haiku-4-5=0.3 \\
      --shared-prefix-tokens 4096 --prefix-groups 4 --cache-ttl 1h \\
      --tag suite=nightly --tag-mix tier=free:0.8,paid:0.2 --seed 7
  batchrunner validate load.parquet && batchrunner run load.parquet"""


def _dist_option(flag: str, default: str, what: str) -> Callable[[F], F]:
    return click.option(
        flag,
        default=default,
        show_default=True,
        metavar="DIST",
        help=f"Distribution of {what}.",
    )


def _parse_mixes(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[Any, ...]:
    try:
        return tuple(parse_tag_mix(v) for v in values)
    except GenError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_tags(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(parse_tag(v) for v in values)
    except GenError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_models(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, float], ...]:
    try:
        return parse_weighted(values, "model")
    except GenError as exc:
        raise click.BadParameter(str(exc)) from None


def _parse_weights(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[float, ...]:
    if value is None:
        return ()
    try:
        weights = tuple(float(w) for w in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected numbers, as in 0.5,0.3,0.2") from None
    if any(not (w >= 0 and w != float("inf")) for w in weights) or sum(weights) <= 0:
        raise click.BadParameter(f"{value!r}: weights must be finite, >= 0 and not all 0")
    return weights


def _parse_out(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        output_format(value)
    except GenError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@main.command(epilog=EXAMPLES)
@click.option("-n", "--count", type=click.IntRange(min=1), required=True, help="Requests to write.")
@click.option(
    "-o",
    "--out",
    required=True,
    metavar="FILE",
    callback=_parse_out,
    help="Output: .jsonl/.ndjson (Message Batches lines), .jsonl.gz/.ndjson.gz, or .parquet/.pq "
    "(custom_id, params and metadata as JSON text). Replaced if it exists.",
)
@_dist_option(
    "--input-tokens", "fixed:256", "each prompt's own tokens (the shared prefix comes on top)"
)
@click.option(
    "--input-min",
    type=click.IntRange(min=1),
    metavar="N",
    help="Lower bound of --input-tokens [default: 1].",
)
@click.option(
    "--input-max",
    type=click.IntRange(min=1),
    metavar="N",
    help="Upper bound of --input-tokens [default: 1,000,000].",
)
@_dist_option("--max-tokens", "fixed:128", "max_tokens")
@click.option(
    "--max-tokens-min",
    type=click.IntRange(min=1),
    metavar="N",
    help="Lower bound of --max-tokens [default: 1].",
)
@click.option(
    "--max-tokens-max",
    type=click.IntRange(min=1),
    metavar="N",
    help="Upper bound of --max-tokens [default: 1,000,000].",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME[=W]",
    callback=_parse_models,
    help=f"A model and its weight (repeatable; weights are normalised, default 1). "
    f"[default: {DEFAULT_MODEL}]",
)
@click.option(
    "--shared-prefix-tokens",
    type=click.IntRange(min=0),
    default=0,
    metavar="K",
    help="Put a K-token system prefix, shared between requests, in front of every "
    "prompt (0: none). Anthropic caches only prefixes above a per-model minimum "
    "(1,024 tokens on Sonnet 4.5, 4,096 on Haiku 4.5).",
)
@click.option(
    "--cache-ttl",
    type=click.Choice(CACHE_TTLS),
    default=None,
    help='cache_control on the shared prefix: 5m ({"type": "ephemeral"}), 1h '
    '(with "ttl": "1h"), or none. [default: 5m]',
)
@click.option(
    "--prefix-groups",
    type=click.IntRange(min=1),
    default=None,
    metavar="G",
    help="G different shared prefixes, assigned round-robin. [default: 1]",
)
@click.option(
    "--prefix-weights",
    callback=_parse_weights,
    metavar="W,W,...",
    help="One weight per prefix group: rows pick a group at random by weight instead "
    "of round-robin (sets G).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_tags,
    help="A constant metadata tag (repeatable).",
)
@click.option(
    "--tag-mix",
    "tag_mixes",
    multiple=True,
    metavar="KEY=A:W,B:W",
    callback=_parse_mixes,
    help="A random categorical metadata tag: value A with weight W, ... (repeatable).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Same seed and options: the same file, byte for byte.",
)
@click.option(
    "--custom-id-prefix",
    default="gen",
    show_default=True,
    metavar="P",
    help="custom_id is P-<zero-padded index>.",
)
def gen(
    count: int,
    out: str,
    input_tokens: str,
    input_min: int | None,
    input_max: int | None,
    max_tokens: str,
    max_tokens_min: int | None,
    max_tokens_max: int | None,
    models: tuple[tuple[str, float], ...],
    shared_prefix_tokens: int,
    cache_ttl: str | None,
    prefix_groups: int | None,
    prefix_weights: tuple[float, ...],
    tags: tuple[tuple[str, str], ...],
    tag_mixes: tuple[Any, ...],
    seed: int,
    custom_id_prefix: str,
) -> None:
    """Write a synthetic request set of N requests to FILE, ready for `batchrunner run`.

    Each line (or row) is {"custom_id", "params", "metadata"}. metadata holds gen_index,
    input_tokens_target (the prompt's own tokens), with a shared prefix also prefix_tokens and
    prefix_group, then the --tag and --tag-mix values.
    """
    spec = _spec(
        count=count,
        input_tokens=_dist("--input-tokens", input_tokens, input_min, input_max),
        max_tokens=_dist("--max-tokens", max_tokens, max_tokens_min, max_tokens_max),
        models=models,
        shared_prefix_tokens=shared_prefix_tokens,
        cache_ttl=cache_ttl,
        prefix_groups=prefix_groups,
        prefix_weights=prefix_weights,
        tags=tags,
        tag_mixes=tag_mixes,
        seed=seed,
        custom_id_prefix=custom_id_prefix,
    )
    progress = _Progress(count) if sys.stderr.isatty() else None
    try:
        result = write_requests(spec, out, on_progress=progress)
    except OSError as exc:
        if progress is not None:
            progress.clear()
        raise _WriteError(f"cannot write {out}: {exc.strerror or exc}") from None
    if progress is not None:
        progress.clear()
    click.echo(
        f"wrote {result.rows:,} requests to {result.path} ({_size(result.bytes)}) in "
        f"{result.seconds:.2f} s: {result.rows_per_s:,.0f} rows/s",
        err=True,
    )


_BOUND_FLAGS = {
    "--input-tokens": ("--input-min", "--input-max"),
    "--max-tokens": ("--max-tokens-min", "--max-tokens-max"),
}


class _WriteError(click.ClickException):
    exit_code = 2


def _dist(flag: str, text: str, low: int | None, high: int | None) -> TokenDist:
    if low is not None and high is not None and high < low:
        lo_flag, hi_flag = _BOUND_FLAGS[flag]
        raise click.UsageError(f"{hi_flag} {high} is below {lo_flag} {low}")
    try:
        return TokenDist.parse(text, low, high)
    except GenError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{flag}'") from None


def _spec(*, cache_ttl: str | None, prefix_groups: int | None, **fields: Any) -> GenSpec:
    if not fields["shared_prefix_tokens"]:
        # Meaningless without a prefix: say so rather than silently ignoring them.
        for flag, given in (
            ("--cache-ttl", cache_ttl),
            ("--prefix-groups", prefix_groups),
            ("--prefix-weights", fields["prefix_weights"] or None),
        ):
            if given is not None:
                raise click.UsageError(f"{flag} needs --shared-prefix-tokens")
    try:
        return GenSpec(cache_ttl=cache_ttl or "5m", prefix_groups=prefix_groups or 1, **fields)
    except GenError as exc:
        raise click.UsageError(str(exc)) from None


def _size(n: int) -> str:
    size, unit = float(n), "B"
    for bigger in ("KB", "MB", "GB"):
        if size < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


class _Progress:
    """``rows / total`` on one stderr line, at most every half second (terminals only)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.last = 0.0

    def __call__(self, rows: int) -> None:
        now = time.monotonic()
        if now - self.last >= 0.5:
            self.last = now
            click.echo(f"\r{rows:,} / {self.total:,} rows", nl=False, err=True)

    def clear(self) -> None:
        if self.last:
            click.echo("\r\x1b[K", nl=False, err=True)
