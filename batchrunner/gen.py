"""Synthetic request sets for load tests: ``batchrunner gen``.

A :class:`GenSpec` describes the set (row count, input-token and ``max_tokens`` distributions,
a model mix, an optional shared system prefix with ``cache_control``, metadata tags, a seed);
:func:`write_requests` streams it to a JSONL (optionally gzipped) or Parquet file in the
Message Batches shape that ``batchrunner run`` reads, and :func:`iter_records` yields the same
records as dicts. Memory stays bounded whatever the row count: rows are made in chunks and
written as they come (Parquet: one row group per ~64k rows or ~32 MiB of text).

Every random value of row ``i`` is a hash of (seed, what it is for, ``i``) — a counter-based
SplitMix64, vectorised with numpy — so the same seed and options give a byte-identical file,
and changing one option (say, adding a ``--tag-mix``) does not reshuffle the other columns.

Prompt text is filler made of common three-letter words, :data:`CHARS_PER_TOKEN` characters
(one word and its space) per target token: exactly how the built-in emulator counts input
tokens (``ceil(chars / 4)``), and close to what a real BPE tokenizer makes of such words (not
checked against Anthropic's tokenizer here; calibrate with a gateway's ``count_tokens``).
Each user message starts with ``#<index>``, so no two prompts share more than the shared
system prefix, and prompt caches can only hit that.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from batchrunner.formats import JSONL_SUFFIXES, PARQUET_SUFFIXES

__all__ = [
    "CHARS_PER_TOKEN",
    "GenError",
    "GenResult",
    "GenSpec",
    "TokenDist",
    "iter_records",
    "output_format",
    "parse_tag",
    "parse_tag_mix",
    "parse_weighted",
    "write_requests",
]

#: Characters of prompt text per target token (the emulator's default ``chars_per_token``).
CHARS_PER_TOKEN = 4
#: Largest input-token count (prefix or per-request part) and ``max_tokens`` a row may get;
#: a cap on the tail of a wide distribution, so one row cannot be hundreds of megabytes.
HARD_MAX_TOKENS = 1_000_000
#: Metadata keys written by the generator; ``--tag`` cannot reuse them.
AUTO_TAGS = ("gen_index", "input_tokens_target", "prefix_tokens", "prefix_group")
DEFAULT_MODEL = "claude-haiku-4-5"
CACHE_TTLS = ("5m", "1h", "none")

_CHUNK_ROWS = 8192
_MIN_CHUNK_ROWS = 64
_CHUNK_CHARS = 8 << 20
_ROW_GROUP_ROWS = 65_536
_ROW_GROUP_BYTES = 32 << 20
_ID_PREFIX = re.compile(r"[A-Za-z0-9_-]+")
_KINDS = {"fixed": 1, "uniform": 2, "normal": 2, "lognormal": 2}
_FORMS = {
    "fixed": "fixed:V",
    "uniform": "uniform:LO,HI",
    "normal": "normal:MEAN,SD",
    "lognormal": "lognormal:MEDIAN,SIGMA",
}


class GenError(ValueError):
    """A generator option is unusable; the message is one line for the user."""


# --------------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class TokenDist:
    """A distribution of token counts: integer draws, clamped to ``[low, high]``.

    ``kind`` and the meaning of ``a`` and ``b``: ``fixed`` (always ``a``), ``uniform`` (every
    integer from ``a`` to ``b``, both included), ``normal`` (mean ``a``, standard deviation
    ``b``), ``lognormal`` (median ``a``, shape ``b``: the sigma of the underlying normal).
    Draws are rounded to the nearest integer, then clamped (not redrawn) into the bounds, so a
    bound that cuts a tail piles that tail's mass on the bound.

    :param kind: ``fixed``, ``uniform``, ``normal`` or ``lognormal``.
    :param a: first parameter.
    :param b: second parameter (unused for ``fixed``).
    :param low: smallest value (at least 1).
    :param high: largest value (``None``: :data:`HARD_MAX_TOKENS`).
    """

    kind: str
    a: float
    b: float = 0.0
    low: int = 1
    high: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise GenError(f"unknown distribution {self.kind!r}; use {', '.join(_FORMS.values())}")
        if not (math.isfinite(self.a) and math.isfinite(self.b)):
            raise GenError(f"{self}: parameters must be finite numbers")
        if self.kind == "uniform" and math.floor(self.b) < math.ceil(self.a):
            raise GenError(f"{self}: HI must be at least LO")
        if self.kind in ("normal", "lognormal") and self.b < 0:
            raise GenError(f"{self}: the spread (second number) must be >= 0")
        if self.kind == "lognormal" and self.a <= 0:
            raise GenError(f"{self}: the median must be > 0")
        if self.low < 1:
            raise GenError(f"the lower bound must be >= 1, got {self.low}")
        if self.high is not None and self.high < self.low:
            raise GenError(f"the upper bound {self.high} is below the lower bound {self.low}")
        if self.high is not None and self.high > HARD_MAX_TOKENS:
            raise GenError(f"the upper bound {self.high} is above {HARD_MAX_TOKENS:,}")

    @classmethod
    def parse(cls, text: str, low: int | None = None, high: int | None = None) -> TokenDist:
        """Read ``fixed:V``, ``uniform:LO,HI``, ``normal:MEAN,SD``, ``lognormal:MEDIAN,SIGMA``
        or a bare number (fixed).

        :param text: the description.
        :param low: lower bound (``None``: 1).
        :param high: upper bound (``None``: :data:`HARD_MAX_TOKENS`).
        :raises GenError: it cannot be understood or its numbers are out of range.
        """
        raw = text.strip()
        kind, sep, rest = raw.partition(":")
        kind = kind.strip().lower()
        if not sep:
            kind, rest = "fixed", raw
        if kind not in _KINDS:
            raise GenError(f"{text!r}: unknown distribution; use {', '.join(_FORMS.values())}")
        parts = [p.strip() for p in rest.split(",")]
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise GenError(f"{text!r}: expected numbers, as in {_FORMS[kind]}") from None
        if len(nums) != _KINDS[kind]:
            raise GenError(f"{text!r}: expected {_FORMS[kind]}")
        return cls(kind, nums[0], nums[1] if len(nums) > 1 else 0.0, low or 1, high)

    @property
    def upper(self) -> int:
        """The effective upper bound."""
        return HARD_MAX_TOKENS if self.high is None else self.high

    def sample(self, u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
        """Integer draws for uniforms ``u1``, ``u2`` in [0, 1) (``u2`` is used by the normal
        kinds, Box-Muller).

        :param u1: uniform draws, one per row.
        :param u2: further uniform draws, one per row.
        :return: an ``int64`` array, every value within the bounds.
        """
        k = self.kind
        if k == "fixed":
            v = np.full(u1.shape, self.a)
        elif k == "uniform":
            lo, hi = math.ceil(self.a), math.floor(self.b)
            v = np.minimum(lo + np.floor(u1 * (hi - lo + 1)), hi)
        else:
            z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
            v = self.a + self.b * z if k == "normal" else self.a * np.exp(self.b * z)
        # Clip before the integer cast: a lognormal tail can overflow to inf.
        out: np.ndarray = np.rint(np.clip(v, self.low, self.upper)).astype(np.int64)
        return out

    def mean(self) -> float:
        """The mean before rounding and bounds (for summaries and tests)."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return (math.ceil(self.a) + math.floor(self.b)) / 2
        if self.kind == "normal":
            return self.a
        return self.a * math.exp(self.b * self.b / 2)

    def __str__(self) -> str:
        return _FORMS[self.kind].split(":")[0] + (
            f":{self.a:g}" if self.kind == "fixed" else f":{self.a:g},{self.b:g}"
        )


# --------------------------------------------------------------------------- option parsing


def parse_weighted(items: tuple[str, ...] | list[str], what: str) -> tuple[tuple[str, float], ...]:
    """``NAME`` or ``NAME=WEIGHT`` items (weight 1 when left out) as (name, weight) pairs.

    :param items: the option values.
    :param what: what the names are, for messages (``model``).
    :raises GenError: a weight is not a finite number >= 0, a name repeats or is empty, or all
        weights are 0.
    """
    out: dict[str, float] = {}
    for item in items:
        name, _, weight = item.rpartition("=") if "=" in item else (item, "", "1")
        name = name.strip()
        if not name:
            raise GenError(f"{item!r}: empty {what} name")
        out_w = _weight(weight, item)
        if name in out:
            raise GenError(f"{what} {name!r} is given twice")
        out[name] = out_w
    if out and sum(out.values()) <= 0:
        raise GenError(f"the {what} weights add up to 0")
    return tuple(out.items())


def parse_tag(item: str) -> tuple[str, str]:
    """``key=value`` as a pair.

    :raises GenError: no ``=`` or an empty key.
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise GenError(f"{item!r}: expected key=value")
    return key.strip(), value


def parse_tag_mix(item: str) -> tuple[str, tuple[tuple[str, float], ...]]:
    """``key=a:0.5,b:0.5`` as (key, ((value, weight), ...)); weights are normalised later.

    :raises GenError: malformed, a value repeats, or a weight is not a number >= 0.
    """
    key, sep, rest = item.partition("=")
    if not sep or not key.strip() or not rest.strip():
        raise GenError(f"{item!r}: expected key=value:weight,value:weight,...")
    choices: dict[str, float] = {}
    for part in rest.split(","):
        value, colon, weight = part.rpartition(":")
        if not colon:
            raise GenError(f"{item!r}: {part!r} has no ':weight'")
        if value in choices:
            raise GenError(f"{item!r}: value {value!r} is given twice")
        choices[value] = _weight(weight, item)
    if sum(choices.values()) <= 0:
        raise GenError(f"{item!r}: the weights add up to 0")
    return key.strip(), tuple(choices.items())


def _weight(text: str, item: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise GenError(f"{item!r}: weight {text.strip()!r} is not a number") from None
    if not math.isfinite(w) or w < 0:
        raise GenError(f"{item!r}: weight must be a finite number >= 0")
    return w


def output_format(path: str | os.PathLike[str]) -> str:
    """``jsonl``, ``jsonl.gz`` or ``parquet`` from a file name.

    :raises GenError: any other extension.
    """
    name = os.fspath(path).lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl.gz" if name.endswith(".gz") else "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    # The input suffixes `run` reads, so a generated set always has a name it accepts.
    *rest, last = JSONL_SUFFIXES + PARQUET_SUFFIXES
    raise GenError(f"{os.fspath(path)}: unknown extension; use {', '.join(rest)} or {last}")


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class GenSpec:
    """What to generate.

    :param count: number of requests.
    :param input_tokens: tokens of each request's own part (the user message); a shared
        prefix comes on top.
    :param max_tokens: the ``max_tokens`` of each request.
    :param models: (model, weight) pairs; weights are normalised.
    :param shared_prefix_tokens: length of the shared system prefix (0: none).
    :param cache_ttl: ``5m`` or ``1h``: the prefix block carries ``cache_control``; ``none``:
        it does not.
    :param prefix_groups: number of different prefixes; rows take them round-robin.
    :param prefix_weights: optional weight per prefix group; rows then pick a group at random
        by weight instead of round-robin.
    :param tags: constant metadata (key, value) pairs.
    :param tag_mixes: random categorical metadata: (key, ((value, weight), ...)).
    :param seed: the same seed and options give the same file, byte for byte.
    :param custom_id_prefix: ids are ``<prefix>-<zero-padded index>``.
    """

    count: int
    input_tokens: TokenDist = field(default_factory=lambda: TokenDist("fixed", 256))
    max_tokens: TokenDist = field(default_factory=lambda: TokenDist("fixed", 128))
    models: tuple[tuple[str, float], ...] = ((DEFAULT_MODEL, 1.0),)
    shared_prefix_tokens: int = 0
    cache_ttl: str = "5m"
    prefix_groups: int = 1
    prefix_weights: tuple[float, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    tag_mixes: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    seed: int = 0
    custom_id_prefix: str = "gen"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise GenError(f"the request count must be >= 1, got {self.count}")
        if not self.models:
            object.__setattr__(self, "models", ((DEFAULT_MODEL, 1.0),))
        names = [m for m, _ in self.models]
        if len(set(names)) < len(names):
            raise GenError("a model is given twice")
        if any(not (math.isfinite(w) and w >= 0) for _, w in self.models):
            raise GenError("model weights must be finite numbers >= 0")
        if sum(w for _, w in self.models) <= 0:
            raise GenError("the model weights add up to 0")
        if not 0 <= self.shared_prefix_tokens <= HARD_MAX_TOKENS:
            raise GenError(f"--shared-prefix-tokens must be 0 to {HARD_MAX_TOKENS:,}")
        if self.cache_ttl not in CACHE_TTLS:
            raise GenError(f"cache TTL must be one of {', '.join(CACHE_TTLS)}")
        if self.prefix_weights:
            if self.prefix_groups not in (1, len(self.prefix_weights)):
                raise GenError(
                    f"--prefix-weights has {len(self.prefix_weights)} weights but "
                    f"--prefix-groups is {self.prefix_groups}"
                )
            object.__setattr__(self, "prefix_groups", len(self.prefix_weights))
            if sum(self.prefix_weights) <= 0 or min(self.prefix_weights) < 0:
                raise GenError("prefix weights must be >= 0 and not all 0")
        if self.prefix_groups < 1:
            raise GenError("--prefix-groups must be >= 1")
        if self.prefix_groups > 1 and not self.shared_prefix_tokens:
            raise GenError("--prefix-groups/--prefix-weights need --shared-prefix-tokens")
        for key, choices in self.tag_mixes:
            if not choices or sum(w for _, w in choices) <= 0 or min(w for _, w in choices) < 0:
                raise GenError(f"--tag-mix {key}: weights must be >= 0 and not all 0")
        keys = [k for k, _ in self.tags] + [k for k, _ in self.tag_mixes]
        for key in keys:
            if key in AUTO_TAGS:
                raise GenError(f"tag {key!r} is written by the generator; pick another name")
            if keys.count(key) > 1:
                raise GenError(f"tag {key!r} is given twice")
        if not _ID_PREFIX.fullmatch(self.custom_id_prefix):
            raise GenError(
                f"custom id prefix {self.custom_id_prefix!r}: use letters, digits, '_' or '-'"
            )
        if len(self.custom_id_prefix) + 1 + self.id_width > 64:
            raise GenError("custom id prefix too long: ids must be at most 64 characters")

    @property
    def id_width(self) -> int:
        """Digits of the zero-padded index in ``custom_id``."""
        return len(str(self.count - 1))


@dataclass
class GenResult:
    """What :func:`write_requests` wrote.

    :param path: the file.
    :param rows: requests written.
    :param bytes: file size.
    :param seconds: wall time of the whole write.
    :param input_tokens: sum of the per-request ``input_tokens_target`` (prefix excluded).
    """

    path: str
    rows: int
    bytes: int
    seconds: float
    input_tokens: int

    @property
    def rows_per_s(self) -> float:
        """Generation speed."""
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


# --------------------------------------------------------------------------- generation

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))

# Common three-letter English words: with its space, each word is 4 characters, which is one
# token for the emulator (chars / 4) and, in BPE vocabularies, usually one token too (a leading
# space plus a common word is a single token), so a target should land near real counts as well.
_VOCAB = """the and for are but not you all any can had her was one our out day get has him his
    how man new now old see two way who boy did its let put say she too use act add age ago air
    arm art ask bad bag bed big bit box bus buy car cat cup cut dog dry ear eat end eye far few
    fit fly fun gas god got gun hat hit hot ice job key kid law lay leg lie lot low map may mix
    net oil own pay pen per pop raw red run sea set sit six sky son sun tax tea ten top try war
    web win yes yet"""
_WORDS = tuple(dict.fromkeys(_VOCAB.split()))
_TAPE_CHARS = 1 << 20


def _key(seed: int, stream: str) -> np.uint64:
    digest = hashlib.blake2b(f"{seed}\x00{stream}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _mix(idx: np.ndarray, key: np.uint64) -> np.ndarray:
    """SplitMix64 of ``key + (idx + 1) * gamma``: 64 random bits per row, from its index."""
    z = (idx + np.uint64(1)) * _GAMMA + key
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _uniform(idx: np.ndarray, key: np.uint64) -> np.ndarray:
    return (_mix(idx, key) >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def _pick(u: np.ndarray, weights: tuple[float, ...] | list[float]) -> np.ndarray:
    """Categorical draws: the index whose cumulative-weight bucket holds ``u``."""
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    cum /= cum[-1]
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)


class _Filler:
    """A seeded tape of filler words, sliced at word starts to any length."""

    WORD = 1 + len(_WORDS[0])  # every word has three letters: with its space, 4 characters

    def __init__(self, seed: int) -> None:
        self.words = _TAPE_CHARS // self.WORD
        idx = np.arange(self.words, dtype=np.uint64)
        picks = (_mix(idx, _key(seed, "tape")) % np.uint64(len(_WORDS))).tolist()
        self.tape = " ".join([_WORDS[w] for w in picks]) + " "

    def start_offsets(self, u: np.ndarray) -> list[int]:
        offsets: list[int] = ((u * self.words).astype(np.int64) * self.WORD).tolist()
        return offsets

    def text(self, start: int, length: int) -> str:
        tape = self.tape
        out = tape[start : start + length]
        while len(out) < length:  # only rows longer than the rest of the tape get here
            out += tape[: length - len(out)]
        return out


@dataclass
class _Chunk:
    """Rows ``start`` to ``start + len(ids) - 1``, column by column."""

    start: int
    ids: list[str]
    n_in: list[int]
    n_max: list[int]
    model: list[int]
    group: list[int]
    contents: list[str]
    mixes: list[list[int]]


class _Generator:
    """Everything that is the same for every chunk (keys, prefix blocks, constant tags, the
    JSON fragments of both), and the chunks themselves."""

    def __init__(self, spec: GenSpec) -> None:
        self.spec = spec
        seed = spec.seed
        self.keys = {
            s: _key(seed, s) for s in ("in1", "in2", "max1", "max2", "model", "prefix", "text")
        }
        self.tag_keys = [_key(seed, f"tag\x00{k}") for k, _ in spec.tag_mixes]
        self.filler = _Filler(seed)
        self.models = [m for m, _ in spec.models]
        self.systems: list[list[dict[str, Any]]] = []
        if spec.shared_prefix_tokens:
            cc: dict[str, str] | None = None
            if spec.cache_ttl == "5m":
                cc = {"type": "ephemeral"}
            elif spec.cache_ttl == "1h":
                cc = {"type": "ephemeral", "ttl": "1h"}
            for g in range(spec.prefix_groups):
                block: dict[str, Any] = {"type": "text", "text": self._prefix_text(g)}
                if cc is not None:
                    block["cache_control"] = cc
                self.systems.append([block])
        # Fewer rows per chunk when rows are long, so a chunk stays near _CHUNK_CHARS of text
        # (values are per-row hashes: the chunk size never changes the output).
        dist = spec.input_tokens
        typical = min(max(dist.mean(), dist.low), dist.upper) + spec.shared_prefix_tokens
        per_row = CHARS_PER_TOKEN * typical + 300
        self.chunk_rows = int(max(_MIN_CHUNK_ROWS, min(_CHUNK_ROWS, _CHUNK_CHARS // per_row)))
        # JSON text pieces for the fast writer path (see json_rows).
        self.j_model = [f'{{"model":{_js(m)},"max_tokens":' for m in self.models]
        self.j_system = [f',"system":{_js(s)}' for s in self.systems] or [""]
        self.j_meta_prefix = (
            f',"prefix_tokens":{spec.shared_prefix_tokens},"prefix_group":' if self.systems else ""
        )
        self.j_tags = "".join(f",{_js(k)}:{_js(v)}" for k, v in spec.tags)
        self.j_mixes = [[f",{_js(k)}:{_js(v)}" for v, _ in ch] for k, ch in spec.tag_mixes]

    def _prefix_text(self, group: int) -> str:
        # The group number and seed come first, so prefixes differ from their first token:
        # a prompt cache cannot share a partial prefix between groups or between seeds.
        head = f"#{group} seed {self.spec.seed}: shared context. "
        need = self.spec.shared_prefix_tokens * CHARS_PER_TOKEN
        u = _uniform(np.array([group], dtype=np.uint64), _key(self.spec.seed, "prefix-text"))
        body = self.filler.text(self.filler.start_offsets(u)[0], max(0, need - len(head)))
        return (head + body)[:need]

    def chunks(self) -> Iterator[_Chunk]:
        """The rows, up to ``_CHUNK_ROWS`` at a time."""
        spec = self.spec
        k = self.keys
        cpt = CHARS_PER_TOKEN
        filler_text = self.filler.text
        prefix_id, width = spec.custom_id_prefix, spec.id_width
        model_weights = [w for _, w in spec.models]
        for start in range(0, spec.count, self.chunk_rows):
            stop = min(spec.count, start + self.chunk_rows)
            rows = stop - start
            idx = np.arange(start, stop, dtype=np.uint64)
            n_in = spec.input_tokens.sample(_uniform(idx, k["in1"]), _uniform(idx, k["in2"]))
            n_max = spec.max_tokens.sample(_uniform(idx, k["max1"]), _uniform(idx, k["max2"]))
            if len(self.models) > 1:
                model = _pick(_uniform(idx, k["model"]), model_weights).tolist()
            else:
                model = [0] * rows
            if spec.prefix_weights:
                group = _pick(_uniform(idx, k["prefix"]), spec.prefix_weights).tolist()
            else:
                group = (idx % np.uint64(spec.prefix_groups)).astype(np.int64).tolist()
            mixes = [
                _pick(_uniform(idx, key), [w for _, w in choices]).tolist()
                for key, (_, choices) in zip(self.tag_keys, spec.tag_mixes, strict=True)
            ]
            offsets = self.filler.start_offsets(_uniform(idx, k["text"]))
            contents = []
            for i, n, off in zip(range(start, stop), n_in.tolist(), offsets, strict=True):
                head = f"#{i} "
                room = n * cpt - len(head)
                # A tiny target may not fit the index: that prompt is then a few chars long.
                contents.append(head + filler_text(off, room) if room > 0 else head.rstrip())
            yield _Chunk(
                start,
                [f"{prefix_id}-{i:0{width}d}" for i in range(start, stop)],
                n_in.tolist(),
                n_max.tolist(),
                model,
                group,
                contents,
                mixes,
            )

    def dict_rows(self, c: _Chunk) -> Iterator[dict[str, Any]]:
        """The chunk's rows as ``{"custom_id", "params", "metadata"}`` dicts."""
        spec = self.spec
        for j, cid in enumerate(c.ids):
            body: dict[str, Any] = {"model": self.models[c.model[j]], "max_tokens": c.n_max[j]}
            meta: dict[str, Any] = {"gen_index": c.start + j, "input_tokens_target": c.n_in[j]}
            if self.systems:
                body["system"] = self.systems[c.group[j]]
                meta["prefix_tokens"] = spec.shared_prefix_tokens
                meta["prefix_group"] = c.group[j]
            body["messages"] = [{"role": "user", "content": c.contents[j]}]
            meta.update(spec.tags)
            for (key, choices), picked in zip(spec.tag_mixes, c.mixes, strict=True):
                meta[key] = choices[picked[j]][0]
            yield {"custom_id": cid, "params": body, "metadata": meta}

    def json_rows(self, c: _Chunk) -> tuple[list[str], list[str]]:
        """The chunk's ``params`` and ``metadata`` as compact JSON text, byte for byte what
        ``orjson.dumps`` makes of :meth:`dict_rows` — assembled from pre-encoded pieces, about
        twice as fast. Contents need no escaping: they are ``#<index>`` and filler words."""
        j_model, j_system, has_system = self.j_model, self.j_system, bool(self.systems)
        params = [
            f'{j_model[m]}{mt}{j_system[g if has_system else 0]},"messages":[{{"role":"user",'
            f'"content":"{text}"}}]}}'
            for m, mt, g, text in zip(c.model, c.n_max, c.group, c.contents, strict=True)
        ]
        tail = [self.j_tags] * len(c.ids)
        for pieces, picked in zip(self.j_mixes, c.mixes, strict=True):
            tail = [t + pieces[p] for t, p in zip(tail, picked, strict=True)]
        if has_system:
            pre = self.j_meta_prefix
            metas = [
                f'{{"gen_index":{c.start + j},"input_tokens_target":{n}{pre}{g}{t}}}'
                for j, (n, g, t) in enumerate(zip(c.n_in, c.group, tail, strict=True))
            ]
        else:
            metas = [
                f'{{"gen_index":{c.start + j},"input_tokens_target":{n}{t}}}'
                for j, (n, t) in enumerate(zip(c.n_in, tail, strict=True))
            ]
        return params, metas


def _js(value: Any) -> str:
    return orjson.dumps(value).decode()


def iter_records(spec: GenSpec) -> Iterator[dict[str, Any]]:
    """The generated requests as ``{"custom_id", "params", "metadata"}`` dicts, in order.

    Rows share their (read-only) system-prefix blocks; copy before changing one.

    :param spec: what to generate.
    """
    gen = _Generator(spec)
    for chunk in gen.chunks():
        yield from gen.dict_rows(chunk)


def write_requests(
    spec: GenSpec,
    path: str | os.PathLike[str],
    on_progress: Callable[[int], None] | None = None,
) -> GenResult:
    """Generate the set and write it to ``path`` (format from the extension: ``.jsonl`` /
    ``.ndjson`` [``.gz``] or ``.parquet`` / ``.pq``).

    The file is written under a temporary name next to ``path`` and renamed at the end, so an
    interrupted run leaves no half file; an existing ``path`` is replaced.

    :param spec: what to generate.
    :param path: the output file.
    :param on_progress: called with the number of rows written so far, after each chunk.
    :raises GenError: unknown extension.
    :raises OSError: the file cannot be written.
    """
    fmt = output_format(path)
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", os.fspath(path))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    rows = tokens = 0
    gen = _Generator(spec)
    try:
        with tmp.open("wb") as raw:
            writer = _ParquetOut(raw) if fmt == "parquet" else _JsonlOut(raw, fmt == "jsonl.gz")
            for chunk in gen.chunks():
                params, metas = gen.json_rows(chunk)
                writer.add(chunk.ids, params, metas)
                rows += len(chunk.ids)
                tokens += sum(chunk.n_in)
                if on_progress is not None:
                    on_progress(rows)
            writer.close()
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GenResult(os.fspath(path), rows, target.stat().st_size, time.perf_counter() - t0, tokens)


class _JsonlOut:
    def __init__(self, raw: IO[bytes], gz: bool) -> None:
        # mtime=0 and no file name in the header: the same set gives the same bytes. Level 1:
        # filler words compress almost as well as at 9 (about 10 % larger) at 2-3x the speed.
        self._gz = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1)
            if gz
            else None
        )
        self._out: IO[bytes] | gzip.GzipFile = self._gz if self._gz is not None else raw

    def add(self, ids: list[str], params: list[str], metas: list[str]) -> None:
        text = "".join(
            f'{{"custom_id":"{c}","params":{p},"metadata":{m}}}\n'
            for c, p, m in zip(ids, params, metas, strict=True)
        )
        self._out.write(text.encode())

    def close(self) -> None:
        if self._gz is not None:
            self._gz.close()


class _ParquetOut:
    """The ``jobs/demo.parquet`` layout: ``custom_id``, ``params`` and ``metadata`` as text."""

    SCHEMA = pa.schema(
        [("custom_id", pa.string()), ("params", pa.string()), ("metadata", pa.string())]
    )

    def __init__(self, raw: IO[bytes]) -> None:
        self._writer = pq.ParquetWriter(
            raw,
            self.SCHEMA,
            compression="zstd",
            use_dictionary=False,
            # Min/max statistics of whole request bodies are large and useless.
            write_statistics=["custom_id"],
        )
        self._cols: tuple[list[str], list[str], list[str]] = ([], [], [])
        self._chars = 0

    def add(self, ids: list[str], params: list[str], metas: list[str]) -> None:
        self._cols[0].extend(ids)
        self._cols[1].extend(params)
        self._cols[2].extend(metas)
        self._chars += sum(map(len, params)) + sum(map(len, metas))
        if len(self._cols[0]) >= _ROW_GROUP_ROWS or self._chars >= _ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._cols[0]:
            return
        table = pa.Table.from_arrays(
            [pa.array(col, pa.string()) for col in self._cols], schema=self.SCHEMA
        )
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._cols = ([], [], [])
        self._chars = 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
