"""The behaviour model: what a request "costs" — delays, output length, text and token usage.

Everything random here is a pure function of the configured seed and the request body bytes
(hashed with BLAKE2b into a small SplitMix64 generator), so the same request against the same
seed always gets the same TTFT, per-token delays, output length and text. The one piece of state
is the prompt cache (:class:`PromptCache`), which turns ``cache_control`` breakpoints into cache
writes on first sight of a prefix and reads afterwards, like Anthropic's prompt caching.
"""

from __future__ import annotations

import hashlib
import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batchrunner.emulator.config import Dist, EmulatorConfig

_MASK = (1 << 64) - 1
_TTL_S = {"5m": 300.0, "1h": 3600.0}

_VOCAB = """the of and to in is was for on that with as by at from his he it an were are which this
    be or has had not but first one their its new after who they have her she two been other when
    there all during into school time may years more most only over city some world would where
    later up such used many can state about national out known university united then made
    team american under well season game many war part three high film while music new first
    year number also early back system series group large through best since river life between
    both long home based each each work well film public four name same general how small second
    south north east west place against began around within left around good around light water
    model token latency stream quick brown fox jumps lazy dog signal batch queue gateway vector
    matrix prompt answer result value measure report sample random noise order clock record
    field table column row page line word text data file store cache layer block shard node
    thread task event frame chunk byte packet socket server client route proxy agent router
    """
#: Filler vocabulary (de-duplicated, order kept): one word is counted as one output token.
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_VOCAB.split()))
N_WORDS = len(WORDS)
# A stride co-prime with the vocabulary size, so consecutive tokens walk the whole vocabulary.
_STRIDE = next(s for s in (7, 11, 13, 17) if math.gcd(s, N_WORDS) == 1)


class SplitMix:
    """A tiny deterministic generator (SplitMix64); far cheaper to seed than ``random.Random``.

    :param seed: any integer.
    """

    __slots__ = ("_gauss_next", "_s")

    def __init__(self, seed: int) -> None:
        self._s = seed & _MASK
        self._gauss_next: float | None = None

    def next64(self) -> int:
        self._s = s = (self._s + 0x9E3779B97F4A7C15) & _MASK
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def random(self) -> float:
        """Uniform in [0, 1)."""
        return (self.next64() >> 11) * (1.0 / 9007199254740992.0)

    def gauss(self) -> float:
        """Standard normal (Box-Muller, second value kept for the next call)."""
        g = self._gauss_next
        if g is not None:
            self._gauss_next = None
            return g
        u1 = 1.0 - self.random()  # (0, 1], safe for log
        u2 = self.random()
        r = math.sqrt(-2.0 * math.log(u1))
        self._gauss_next = r * math.sin(2.0 * math.pi * u2)
        return r * math.cos(2.0 * math.pi * u2)


def request_rng(seed: int, body: bytes) -> SplitMix:
    """The generator for one request: a hash of the seed and the raw body bytes.

    :param seed: the configured seed.
    :param body: the request body exactly as received.
    """
    h = hashlib.blake2b(body, digest_size=8, key=seed.to_bytes(16, "little", signed=True))
    return SplitMix(int.from_bytes(h.digest(), "little"))


@dataclass(slots=True)
class Breakpoint:
    """End of a cacheable prefix (a block carrying ``cache_control``)."""

    chars: int
    digest: bytes
    ttl: str


@dataclass(slots=True)
class PromptShape:
    """Size of a prompt in characters and its cache breakpoints, in prompt order."""

    chars: int
    breakpoints: list[Breakpoint]


def _ttl_of(cc: Any) -> str:
    if isinstance(cc, dict) and cc.get("ttl") == "1h":
        return "1h"
    return "5m"


class _Walker:
    """Walks tools → system → messages in Anthropic's cache-prefix order, counting characters
    and, only when the body has ``cache_control`` somewhere, hashing the prefix as it goes."""

    __slots__ = ("bps", "chars", "h")

    def __init__(self, model: str, track: bool) -> None:
        self.chars = 0
        self.bps: list[Breakpoint] = []
        self.h = hashlib.blake2b(model.encode(), digest_size=16) if track else None

    def text(self, tag: bytes, s: str) -> None:
        self.chars += len(s)
        if self.h is not None:
            self.h.update(tag)
            self.h.update(s.encode("utf-8", "surrogatepass"))

    def mark(self, cc: Any) -> None:
        if self.h is not None:
            self.bps.append(Breakpoint(self.chars, self.h.copy().digest(), _ttl_of(cc)))

    def block(self, tag: bytes, b: Any) -> None:
        if isinstance(b, str):
            self.text(tag, b)
            return
        if not isinstance(b, dict):
            return
        t = b.get("type")
        if t == "text" or (t is None and "text" in b):
            self.text(tag, str(b.get("text", "")))
        elif t == "tool_result":
            c = b.get("content")
            if isinstance(c, list):
                for sub in c:
                    self.block(tag, sub)
            elif c is not None:
                self.text(tag, str(c))
        elif t == "tool_use":
            self.text(tag, str(b.get("name", "")) + _dumps(b.get("input")))
        elif t in ("image", "document"):
            # Images and PDFs are priced by size, not by base64 length: count a flat 4,000
            # characters (~1,000 tokens) so an attachment does not look like a megabyte of text.
            self.chars += 4000
            if self.h is not None:
                self.h.update(tag)
                self.h.update(_dumps(b.get("source")).encode())
        else:
            self.text(tag, _dumps({k: v for k, v in b.items() if k != "cache_control"}))
        if "cache_control" in b:
            self.mark(b["cache_control"])


def _dumps(v: Any) -> str:
    try:
        return orjson.dumps(v).decode()
    except TypeError:
        return str(v)


def analyze_prompt(body: dict[str, Any], model: str, track_cache: bool) -> PromptShape:
    """Count the prompt's characters and find its cache breakpoints.

    :param body: the parsed Messages request.
    :param model: the served model (prompt caches are per model).
    :param track_cache: hash prefixes for ``cache_control`` (skip when the body has none).
    """
    w = _Walker(model, track_cache)
    tools = body.get("tools")
    if isinstance(tools, list):
        for t in tools:
            w.block(b"\x01", {"type": "tool", **t} if isinstance(t, dict) else t)
    system = body.get("system")
    if isinstance(system, str):
        w.text(b"\x02", system)
    elif isinstance(system, list):
        for b in system:
            w.block(b"\x02", b)
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        tag = b"\x03" if m.get("role") == "user" else b"\x04"
        c = m.get("content")
        if isinstance(c, str):
            w.text(tag, c)
        elif isinstance(c, list):
            for b in c:
                w.block(tag, b)
    if track_cache and "cache_control" in body:
        # Automatic caching: a top-level cache_control marks the end of the whole prompt.
        w.mark(body["cache_control"])
    return PromptShape(w.chars, w.bps)


class PromptCache:
    """Remembered prompt prefixes with their expiry (5 min or 1 h, refreshed on every read),
    bounded by least-recent use.

    :param max_entries: most prefixes kept; 0 disables caching (every breakpoint is a write).
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._d: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        self._d.clear()

    def lookup(self, digest: bytes, now: float) -> bool:
        exp = self._d.get(digest)
        if exp is None:
            return False
        if exp <= now:
            del self._d[digest]
            return False
        return True

    def store(self, digest: bytes, ttl: str, now: float) -> None:
        if self.max_entries <= 0:
            return
        d = self._d
        exp = now + _TTL_S[ttl]
        old = d.get(digest)
        d[digest] = exp if old is None or exp > old else old
        d.move_to_end(digest)
        while len(d) > self.max_entries:
            d.popitem(last=False)


@dataclass(slots=True)
class Usage:
    """Token usage of one response, Anthropic field names."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_5m_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    #: What Anthropic reports besides tokens: the tier is always ``standard`` here (no
    #: Priority Tier, no Message Batches); ``speed`` and ``inference_geo`` echo the request's
    #: parameters and are absent (None) when it has none.
    service_tier: str = "standard"
    speed: str | None = None
    inference_geo: str | None = None


@dataclass(slots=True)
class Plan:
    """What one request will do: timings, tokens, text.

    ``token_delays_s`` has one entry per output token after the first (the gap before it).
    """

    ttft_s: float
    token_delays_s: Sequence[float]
    usage: Usage
    stop_reason: str
    word_offset: int

    @property
    def duration_s(self) -> float:
        """Time from start of service to the last token."""
        return self.ttft_s + sum(self.token_delays_s)

    def word_indexes(self) -> list[int]:
        """Vocabulary index of every output word, in order."""
        off = self.word_offset
        return [(off + i * _STRIDE) % N_WORDS for i in range(self.usage.output_tokens)]

    def text(self) -> str:
        """The whole output text (words separated by single spaces)."""
        key = (self.word_offset, self.usage.output_tokens)
        t = _TEXT_CACHE.get(key)
        if t is None:
            t = " ".join([WORDS[i] for i in self.word_indexes()])
            if len(_TEXT_CACHE) >= _TEXT_CACHE_MAX:
                _TEXT_CACHE.clear()
            _TEXT_CACHE[key] = t
        return t


# Texts are a function of (offset, length) only; load tests repeat them constantly.
_TEXT_CACHE: dict[tuple[int, int], str] = {}
_TEXT_CACHE_MAX = 20_000


def _tokens(chars: int, cpt: float) -> int:
    return math.ceil(chars / cpt) if chars > 0 else 0


def estimate_input_tokens(body: dict[str, Any], chars_per_token: float) -> int:
    """Prompt size in tokens (characters / ``chars_per_token``, at least 1), ignoring caching."""
    return max(1, _tokens(analyze_prompt(body, "", False).chars, chars_per_token))


def make_plan(
    cfg: EmulatorConfig,
    raw_body: bytes,
    body: dict[str, Any],
    model: str,
    cache: PromptCache,
    now: float | None = None,
) -> Plan:
    """Decide delays, length, text and usage for one request.

    :param cfg: the live configuration.
    :param raw_body: the body bytes as received (hashed with the seed).
    :param body: the same body, parsed.
    :param model: the model that serves it (keys the prompt cache).
    :param cache: prompt-cache state, updated here.
    :param now: monotonic time for cache expiry (default ``time.monotonic()``).
    """
    rng = request_rng(cfg.seed, raw_body)
    cache.max_entries = cfg.prompt_cache_max  # a live option
    max_tokens = body["max_tokens"]
    od: Dist = cfg.output_tokens
    want = round(od.constant if od.is_constant else od.sample(rng))
    want = max(want, 1)
    if want > max_tokens:
        n, stop = max_tokens, "max_tokens"
    else:
        n, stop = want, "end_turn"

    cpt = cfg.chars_per_token
    track = b"cache_control" in raw_body
    shape = analyze_prompt(body, model, track)
    total = max(1, _tokens(shape.chars, cpt))
    usage = Usage(input_tokens=total, output_tokens=n)
    speed, geo = body.get("speed"), body.get("inference_geo")
    if speed is not None or geo is not None:  # rare: most requests have neither
        usage.speed = speed if isinstance(speed, str) else None
        usage.inference_geo = geo if isinstance(geo, str) else None
    if shape.breakpoints:
        _apply_cache(usage, shape, total, cpt, cache, time.monotonic() if now is None else now)

    td: Dist = cfg.ttft
    ttft = td.constant if td.is_constant else td.sample(rng)
    if cfg.prefill_s_per_token:
        # A cache write is computed like any uncached token before it is stored; only cache
        # reads skip the prefill.
        ttft += cfg.prefill_s_per_token * (usage.input_tokens + usage.cache_creation_input_tokens)
    dd: Dist = cfg.token_delay
    # A constant delay needs no draws; the list still has one entry per gap (ground truth).
    # Drawn delays are kept as C doubles: the ground-truth log holds every plan, and a list of
    # float objects cost ~32 bytes a token (5 GB for a million 150-token answers), this 8.
    delays = (
        _constant_delays(dd.constant, n - 1)
        if dd.is_constant
        else array("d", [dd.sample(rng) for _ in range(n - 1)])
    )
    return Plan(ttft, delays, usage, stop, int(rng.next64() % N_WORDS))


_CONST_DELAYS: dict[tuple[float, int], list[float]] = {}


def _constant_delays(value: float, n: int) -> list[float]:
    # Shared between plans (never mutated): a million ground-truth entries of a fixed-delay
    # profile then cost one list per distinct length, not one per request.
    key = (value, n)
    lst = _CONST_DELAYS.get(key)
    if lst is None:
        if len(_CONST_DELAYS) >= 10_000:
            _CONST_DELAYS.clear()
        lst = _CONST_DELAYS[key] = [value] * n
    return lst


def _apply_cache(
    usage: Usage, shape: PromptShape, total: int, cpt: float, cache: PromptCache, now: float
) -> None:
    bps = shape.breakpoints
    toks = [min(total, _tokens(b.chars, cpt)) for b in bps]
    # The longest prefix still cached is read; every later segment up to the last breakpoint is
    # written with the TTL of the breakpoint that ends it.
    hit = -1
    for i in range(len(bps) - 1, -1, -1):
        if toks[i] > 0 and cache.lookup(bps[i].digest, now):
            hit = i
            break
    read = toks[hit] if hit >= 0 else 0
    w5 = w1 = 0
    prev = read
    for i in range(hit + 1, len(bps)):
        seg = max(0, toks[i] - prev)
        if bps[i].ttl == "1h":
            w1 += seg
        else:
            w5 += seg
        prev = max(prev, toks[i])
    for i, b in enumerate(bps):
        if toks[i] > 0:
            cache.store(b.digest, b.ttl, now)
    usage.cache_read_input_tokens = read
    usage.cache_creation_5m_input_tokens = w5
    usage.cache_creation_1h_input_tokens = w1
    usage.cache_creation_input_tokens = w5 + w1
    usage.input_tokens = max(0, total - prev)
