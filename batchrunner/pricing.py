"""Dollars from usage columns: rates resolved once per (model, UTC day), then applied to arrays.

Rates come from the price data bundled with `genai-prices` (never fetched: see
:func:`_bundled_snapshot`), optionally overridden or extended by a TOML price file
(:func:`load_price_file`). A :class:`PriceBook` resolves a model name to a :class:`ModelRates`
card once and caches it; :func:`cost_arrays` then prices millions of rows with a few numpy
operations, so re-pricing a big run takes seconds, not the ~73 µs per row of calling
``genai_prices.calc_price`` row by row.

The formula follows ``specs/pricing.md``: Anthropic's ``input_tokens`` is the uncached input;
5-minute and 1-hour cache writes and cache reads have their own per-model rates; a long-context
tier (a cliff) applies to every category of a request whose total input (uncached + cache
writes + cache reads) is above the tier's threshold. Gateway async jobs are standard requests,
so no batch discount is applied (only a row whose ``service_tier`` says ``batch`` gets one). A
model nobody can price gets NaN (null), never 0. The two corrections to genai-prices' data:
Sonnet 4's long-context tier, which it lacks (:data:`_MISSING_LONG_CONTEXT`), and Mythos 5 and
5.1, priced as the Fable models they are published with (:data:`_MISSING_MODELS`).

The usage fields beyond tokens (pricing.md §1.3, §1.6, §1.8-1.11), per row: ``speed == "fast"``
takes the model's fast-mode rate card (genai-prices' ``{"speed": "fast"}`` variant; a model
without one is unpriced for such rows, never priced at standard rates); ``inference_geo ==
"us"`` multiplies every token category by 1.1 (only Opus 4.6 and later models accept the
parameter, so no model check is needed); ``service_tier == "batch"`` halves them; web searches
cost $0.01 each (genai-prices' rate), never multiplied or discounted. ``priority`` rows are
priced at list price; the report flags them as an estimate.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BATCH_MULTIPLIER",
    "CATEGORIES",
    "DEFAULT_WEB_SEARCH_USD",
    "FEES",
    "INFERENCE_GEO_US_MULTIPLIER",
    "ModelRates",
    "Override",
    "PriceBook",
    "PriceFileError",
    "Rate",
    "UsageArrays",
    "cost_arrays",
    "load_price_file",
    "normalize_model",
    "split_cache_writes",
]

#: Cost categories, in report order (each has a rate and a ``cost_<category>_usd`` column).
CATEGORIES: tuple[str, ...] = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")

#: Per-request fees, priced apart from tokens (each has a ``cost_<fee>`` figure too).
FEES: tuple[str, ...] = ("web_search",)

#: Token rates of a request with ``usage.inference_geo == "us"`` (pricing.md §1.9).
INFERENCE_GEO_US_MULTIPLIER = 1.1
#: Token rates of a request with ``usage.service_tier == "batch"`` (pricing.md §1.6).
BATCH_MULTIPLIER = 0.5
#: $ per web search when the price data has none for the model (Anthropic's $10 per 1,000).
DEFAULT_WEB_SEARCH_USD = 0.01

#: Default cache rates of an override entry for a model genai-prices does not know, as
#: multiples of its input rate (Anthropic's standard prompt-caching multipliers).
DEFAULT_CACHE_MULTIPLIERS = {"cache_write_5m": 1.25, "cache_write_1h": 2.0, "cache_read": 0.1}

#: Long-context tiers the bundled genai-prices data lacks (``specs/pricing.md`` §1.7 and §2.7
#: item 3): above 200k input tokens, Sonnet 4's 1M-context beta billed the whole request at 2x
#: input and cache rates and 1.5x output (6 / 7.50 / 12 / 0.60 / 22.50 $/MTok). Only requests
#: sent with the beta could be that long, so the tier needs no date. Applied while the data has
#: no tier of its own for the model (a newer genai-prices that adds one wins).
_MISSING_LONG_CONTEXT: dict[str, tuple[int, dict[str, float]]] = {
    "claude-sonnet-4-0": (200_000, {"input": 2.0, "output": 1.5, "cache_write_5m": 2.0,
                                    "cache_write_1h": 2.0, "cache_read": 2.0}),
}

#: Models published at another model's rates (pricing.md §1.4) that genai-prices 0.2.3 lacks
#: (Mythos 5 and 5.1 bill as Fable 5 and 5.1). Used only when the data has no entry of its own,
#: for the bare name or a dated form (``-20260301``, ``@20260301``).
_MISSING_MODELS: dict[str, str] = {
    "claude-mythos-5": "claude-fable-5",
    "claude-mythos-5-1": "claude-fable-5-1",
}
_DATED = re.compile(r"(?P<name>.+?)(?:[-@]\d{8})?")

_OVERRIDE_KEYS = frozenset({*CATEGORIES, "same_as", "multiplier", "fast_multiplier",
                            "web_search_per_1000"})
_PER = 1_000_000.0  # rates are $ per million tokens


class PriceFileError(ValueError):
    """A ``--prices`` file that cannot be used; the message is for the user."""


@dataclass(frozen=True, slots=True)
class Rate:
    """One price in $ per million tokens, with optional long-context tiers.

    :param base: the rate below every tier threshold.
    :param tiers: ``(threshold, rate)`` pairs, ascending: a request whose total input tokens are
        *above* a threshold pays that tier's rate on every token (a cliff, as Anthropic bills).
    """

    base: float
    tiers: tuple[tuple[int, float], ...] = ()

    def scaled(self, factor: float) -> Rate:
        return Rate(self.base * factor, tuple((start, r * factor) for start, r in self.tiers))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"per_mtok": self.base}
        if self.tiers:
            out["tiers"] = [{"above_input_tokens": s, "per_mtok": r} for s, r in self.tiers]
        return out


@dataclass(frozen=True, slots=True)
class ModelRates:
    """The rate card used for one model on one day.

    :param rates: a :class:`Rate` for each of :data:`CATEGORIES`.
    :param priced_as: what the rates come from, e.g. ``genai-prices:anthropic/claude-sonnet-4-5``
        or ``prices.toml:claude-sonnet-4-5``.
    :param fast: the fast-mode rates (``usage.speed == "fast"``), or None when nobody publishes
        them for the model (such rows are then unpriced).
    :param web_search_usd: $ per web search (``usage.server_tool_use.web_search_requests``).
    """

    rates: dict[str, Rate]
    priced_as: str
    fast: dict[str, Rate] | None = None
    web_search_usd: float = DEFAULT_WEB_SEARCH_USD

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"priced_as": self.priced_as,
                               **{c: self.rates[c].describe() for c in CATEGORIES}}
        out["fast"] = ({c: self.fast[c].describe() for c in CATEGORIES}
                       if self.fast is not None else None)
        out["web_search_usd"] = self.web_search_usd
        return out


@dataclass(frozen=True, slots=True)
class Override:
    """One ``[models."NAME"]`` entry of a price file (rates in $/MTok; None = not given)."""

    pattern: str
    rates: dict[str, float] = field(default_factory=dict)
    same_as: str | None = None
    multiplier: float = 1.0
    fast_multiplier: float | None = None
    web_search_per_1000: float | None = None


def normalize_model(name: str | None) -> str | None:
    """The name used for pricing: trimmed, lowercased, any ``provider/`` prefix removed.

    ``anthropic/claude-sonnet-4-5`` and ``openrouter/anthropic/claude-sonnet-4-5`` both become
    ``claude-sonnet-4-5`` (gateways route by prefix; the price depends on the model only).

    :param name: a model name as recorded in a row, or None.
    """
    if name is None:
        return None
    cleaned = name.strip().lower().rsplit("/", 1)[-1]
    return cleaned or None


def load_price_file(path: Path) -> tuple[list[Override], dict[str, Any]]:
    """Read a TOML price file (format: ``docs/report.md``, "Price files").

    :param path: the file.
    :return: the overrides in file order, and a description for the report (path, sha256, name).
    :raises PriceFileError: unreadable file, bad TOML, unknown keys, missing or negative rates.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PriceFileError(f"cannot read price file {path}: {exc.strerror or exc}") from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PriceFileError(f"price file {path} is not valid TOML: {exc}") from exc
    unknown_top = set(doc) - {"name", "models"}
    if unknown_top:
        raise PriceFileError(f"price file {path}: unknown top-level keys {sorted(unknown_top)} "
                             "(expected 'name' and [models.\"NAME\"] tables)")
    models = doc.get("models", {})
    if not isinstance(models, dict) or not models:
        raise PriceFileError(f'price file {path}: no [models."NAME"] tables')
    overrides = [_parse_entry(path, name, entry) for name, entry in models.items()]
    info = {
        "path": str(path),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "name": str(doc["name"]) if "name" in doc else None,
        "models": [o.pattern for o in overrides],
    }
    return overrides, info


def _parse_entry(path: Path, name: str, entry: Any) -> Override:
    where = f'price file {path}, [models."{name}"]'
    if not isinstance(entry, dict):
        raise PriceFileError(f"{where}: expected a table of rates")
    unknown = set(entry) - _OVERRIDE_KEYS
    if unknown:
        raise PriceFileError(f"{where}: unknown keys {sorted(unknown)} "
                             f"(allowed: {', '.join(sorted(_OVERRIDE_KEYS))})")
    rates: dict[str, float] = {}
    for key in CATEGORIES:
        if key in entry:
            value = entry[key]
            if not _is_rate(value):
                raise PriceFileError(f"{where}: {key} must be a number >= 0 ($ per million "
                                     f"tokens), got {value!r}")
            rates[key] = float(value)
    numbers: dict[str, float | None] = {}
    for key in ("multiplier", "fast_multiplier", "web_search_per_1000"):
        value = entry.get(key)
        if value is not None and not _is_rate(value):
            raise PriceFileError(f"{where}: {key} must be a number >= 0, got {value!r}")
        numbers[key] = None if value is None else float(value)
    same_as = entry.get("same_as")
    if same_as is not None and not isinstance(same_as, str):
        raise PriceFileError(f"{where}: same_as must be a model name")
    pattern = normalize_model(name) or name
    multiplier = numbers["multiplier"]
    return Override(pattern=pattern, rates=rates, same_as=normalize_model(same_as),
                    multiplier=1.0 if multiplier is None else multiplier,
                    fast_multiplier=numbers["fast_multiplier"],
                    web_search_per_1000=numbers["web_search_per_1000"])


def _is_rate(value: Any) -> bool:
    """A finite number >= 0 (TOML also has inf and nan, which would price a row at $inf)."""
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value) and value >= 0)


def _bundled_snapshot() -> Any:
    """genai-prices' bundled data, never a snapshot swapped in by ``UpdatePrices``.

    ``get_snapshot()`` returns whatever ``UpdatePrices`` (started by us never, but possibly by
    another library in the same process) downloaded; reports must be reproducible from the
    pinned package, so prefer the bundled data and fall back only if the private helper moves.
    """
    from genai_prices import data_snapshot

    bundled = getattr(data_snapshot, "_bundled_snapshot", None)
    return bundled() if bundled is not None else data_snapshot.get_snapshot()


class PriceBook:
    """Resolves model names to rate cards, once per (model, UTC day).

    :param overrides: entries of a price file (see :func:`load_price_file`), in priority order.
    :param overrides_info: the price file's description, for :meth:`describe`.
    """

    def __init__(self, overrides: list[Override] | None = None,
                 overrides_info: dict[str, Any] | None = None) -> None:
        self._overrides = overrides or []
        self._overrides_info = overrides_info
        self._cache: dict[tuple[str, date], ModelRates | None] = {}
        self._snapshot: Any = None
        self.error: str | None = None  # why genai-prices could not be used, if it could not
        try:
            import genai_prices

            self.version: str | None = genai_prices.__version__
            self._snapshot = _bundled_snapshot()
        except ImportError as exc:  # declared dependency; this keeps a broken install readable
            self.version = None
            self.error = f"genai-prices is not installed ({exc}); only --prices models are priced"

    @classmethod
    def load(cls, prices_file: Path | None = None) -> PriceBook:
        """A book on the bundled data, with *prices_file* (TOML) applied when given.

        :raises PriceFileError: see :func:`load_price_file`.
        """
        if prices_file is None:
            return cls()
        overrides, info = load_price_file(prices_file)
        return cls(overrides, info)

    def describe(self) -> dict[str, Any]:
        """Where prices come from (goes into every report: the price data version)."""
        auto = bool(getattr(self._snapshot, "from_auto_update", False))
        return {
            "source": "genai-prices",
            "version": self.version,
            "data": "downloaded" if auto else "bundled",
            "overrides": self._overrides_info,
            "error": self.error,
            "notes": "standard rates (gateway async jobs are not Message Batches; rows whose "
                     "service_tier is batch get the 50% discount); web searches at $0.01 each; "
                     "fast mode (speed fast) at the model's fast-mode rates, unpriced where "
                     "genai-prices has none; inference_geo us at 1.1x token rates; Priority "
                     "Tier rows at list price, an estimate; failed attempts' reported usage "
                     "(retried_usage) priced too; not priced: code execution container time, "
                     "other server-tool fees that usage does not report, and compaction "
                     "passes (usage.iterations)",
        }

    def rates(self, model: str | None, day: date) -> ModelRates | None:
        """The rate card of *model* (already normalised) on *day*, or None if unknown.

        :param model: a name from :func:`normalize_model`.
        :param day: the UTC day of the request (genai-prices rates are date-effective).
        """
        if model is None:
            return None
        key = (model, day)
        if key not in self._cache:
            self._cache[key] = self._resolve(model, day, seen=())
        return self._cache[key]

    def _override_for(self, model: str) -> Override | None:
        # The API answers with the dated snapshot id (claude-sonnet-4-5-20250929) where a
        # price file names the model (claude-sonnet-4-5): an entry for the model applies to its
        # snapshots. The row's own name first (exact, then patterns), then the undated name.
        match = _DATED.fullmatch(model)
        undated = match.group("name") if match is not None else model
        patterns = [o for o in self._overrides if any(ch in o.pattern for ch in "*?[")]
        exact = {o.pattern: o for o in reversed(self._overrides)}  # the first entry of a name
        # 1. the row's own name; 2. a pattern for the snapshot that the model's name would not
        # match ("claude-sonnet-4-5-2025*"); 3. the model's name; 4. any other pattern
        # ("claude-*"). So exact names win over patterns, and a snapshot's own entry over
        # the model's.
        if model in exact:
            return exact[model]
        for o in patterns:
            if fnmatch.fnmatchcase(model, o.pattern) and not fnmatch.fnmatchcase(undated,
                                                                                 o.pattern):
                return o
        if undated in exact:
            return exact[undated]
        for o in patterns:
            if fnmatch.fnmatchcase(model, o.pattern):
                return o
        return None

    def _resolve(self, model: str, day: date, seen: tuple[str, ...]) -> ModelRates | None:
        override = self._override_for(model)
        if override is None or override.pattern in seen:
            # An entry applies once: "same_as" pointing back to it (or in a loop) means the
            # published rates of that model.
            return self._bundled(model, day)
        if override.same_as is not None:
            base = self._resolve(override.same_as, day, (*seen, override.pattern))
        else:
            base = self._bundled(model, day)
        source = (self._overrides_info or {}).get("path", "prices")
        label = f"{Path(source).name}:{override.pattern}"
        if base is None:
            if "input" not in override.rates or "output" not in override.rates:
                # A private model needs both main rates; cache ones default to the standard
                # multipliers (documented). Without them, pricing would be a guess: unknown.
                return None
            inp = override.rates["input"]
            rates = {c: Rate(override.rates.get(c, inp * DEFAULT_CACHE_MULTIPLIERS.get(c, 1.0)))
                     for c in CATEGORIES}
            rates["output"] = Rate(override.rates["output"])
        else:
            rates = dict(base.rates)
            rates.update({c: Rate(v) for c, v in override.rates.items()})
            label = f"{label} (from {base.priced_as})"
        if override.multiplier != 1.0:
            rates = {c: r.scaled(override.multiplier) for c, r in rates.items()}
            label = f"{label} x{override.multiplier:g}"
        if override.fast_multiplier is not None:
            # Fast mode is a multiplier on the standard rates across the whole context window
            # (a flat rate: no long-context tier).
            fast: dict[str, Rate] | None = {
                c: Rate(r.base * override.fast_multiplier) for c, r in rates.items()}
        elif base is not None and base.fast is not None:
            # The published fast/standard ratio of each category, applied to these rates: a
            # discount (multiplier) or contract rate carries over to fast mode in proportion.
            fast = {c: Rate(rates[c].base * _ratio(base.fast[c].base, base.rates[c].base))
                    for c in CATEGORIES}
        else:
            fast = None
        if override.web_search_per_1000 is not None:
            search = override.web_search_per_1000 / 1000.0
        else:
            search = base.web_search_usd if base is not None else DEFAULT_WEB_SEARCH_USD
        return ModelRates(rates=rates, priced_as=label, fast=fast, web_search_usd=search)

    def _bundled(self, model: str, day: date) -> ModelRates | None:
        if self._snapshot is None:
            return None
        found = None
        # Anthropic first (this tool speaks the Anthropic API); then let genai-prices pick the
        # provider from the name, for models a gateway serves through the same endpoint.
        for provider_id in ("anthropic", None):
            try:
                found = self._snapshot.find_provider_model(model, None, provider_id, None)
                break
            except (LookupError, ValueError):
                continue
        if found is None:
            undated = _DATED.fullmatch(model)
            stand_in = _MISSING_MODELS.get(undated.group("name")) if undated else None
            if stand_in is None:
                return None
            rates = self._bundled(stand_in, day)
            if rates is None:
                return None
            return ModelRates(rates=rates.rates, priced_as=f"{rates.priced_as} (as {model})",
                              fast=rates.fast, web_search_usd=rates.web_search_usd)
        provider, info = found
        when = datetime.combine(day, time(12), tzinfo=UTC)
        price = info.get_prices(when)
        rates = _card(price)
        fast = None
        if _has_variant(info, when, _FAST_CONTEXT):
            fast = _card(info.get_prices(when, _FAST_CONTEXT))
        label = f"genai-prices:{provider.id}/{info.id}"
        missing = _MISSING_LONG_CONTEXT.get(info.id) if provider.id == "anthropic" else None
        if missing is not None and not any(r.tiers for r in rates.values()):
            start, factors = missing
            rates = {c: Rate(r.base, ((start, r.base * factors[c]),)) for c, r in rates.items()}
            label = f"{label} + long-context tier above {start:,} input tokens"
        per_k = getattr(price, "web_searches_kcount", None)
        search = float(per_k) / 1000.0 if per_k is not None else DEFAULT_WEB_SEARCH_USD
        return ModelRates(rates=rates, priced_as=label, fast=fast, web_search_usd=search)


_FAST_CONTEXT = {"speed": "fast"}


def _has_variant(info: Any, when: datetime, context: dict[str, str]) -> bool:
    """Whether genai-prices has a price variant for *context* in effect at *when* (without one,
    ``get_prices`` silently returns the standard rates)."""
    for variant in getattr(info, "price_variants", None) or ():
        constraint = variant.constraint
        if constraint is not None and not constraint.active(when):
            continue
        if all(context.get(k) == v for k, v in variant.when.items()):
            return True
    return False


def _card(price: Any) -> dict[str, Rate]:
    inp = _rate(getattr(price, "input_mtok", None)) or Rate(0.0)
    out = _rate(getattr(price, "output_mtok", None)) or Rate(0.0)
    # genai-prices folds tokens of an unpriced unit into its parent unit (1h write → write
    # → input; read → input): mirror that so both always agree.
    cw5m = _rate(getattr(price, "cache_write_mtok", None)) or inp
    cw1h = _rate(getattr(price, "cache_write_1h_mtok", None)) or cw5m
    cr = _rate(getattr(price, "cache_read_mtok", None)) or inp
    return {"input": inp, "output": out, "cache_write_5m": cw5m, "cache_write_1h": cw1h,
            "cache_read": cr}


def _ratio(num: float, den: float) -> float:
    return num / den if den else 1.0


def _rate(value: Any) -> Rate | None:
    if value is None:
        return None
    tiers = getattr(value, "tiers", None)
    if tiers is not None:
        return Rate(float(value.base), tuple((int(t.start), float(t.price)) for t in tiers))
    return Rate(float(value))


@dataclass(slots=True)
class UsageArrays:
    """Token counts per row (nulls as 0), Anthropic semantics: ``input`` is uncached input;
    and what else of ``usage`` changes the price (None: no row has it).

    :param cache_write_5m: 5-minute cache writes (all writes when the TTL split is unknown).
    :param web_searches: ``web_search_requests`` (nulls as 0).
    :param fast: ``speed == "fast"``.
    :param geo_us: ``inference_geo == "us"``.
    :param batch: ``service_tier == "batch"``.
    """

    input: np.ndarray
    output: np.ndarray
    cache_write_5m: np.ndarray
    cache_write_1h: np.ndarray
    cache_read: np.ndarray
    web_searches: np.ndarray | None = None
    fast: np.ndarray | None = None
    geo_us: np.ndarray | None = None
    batch: np.ndarray | None = None

    def total_input(self) -> np.ndarray:
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read


def split_cache_writes(total: np.ndarray, w5m: np.ndarray, w1h: np.ndarray,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """5m and 1h write counts from possibly missing columns (NaN = not reported).

    The 1h count is trusted when present; the rest of the writes are 5m. With no TTL split at
    all, every write is priced as 5m (the only safe reading; it undercounts hidden 1h writes).

    :param total: ``cache_creation_input_tokens`` (NaN if null).
    :param w5m: ``cache_creation_5m_input_tokens`` (NaN if null).
    :param w1h: ``cache_creation_1h_input_tokens`` (NaN if null).
    :return: (5m, 1h) as float arrays without NaN.
    """
    one_h = np.nan_to_num(w1h, nan=0.0)
    whole = np.where(np.isnan(total), np.nan_to_num(w5m, nan=0.0) + one_h, total)
    five_m = np.maximum(whole - one_h, 0.0)
    return five_m, one_h


def cost_arrays(book: PriceBook, keys: list[tuple[str | None, date]], codes: np.ndarray,
                usage: UsageArrays) -> tuple[dict[str, np.ndarray], list[ModelRates | None]]:
    """Cost per row and category in USD; NaN for rows that cannot be priced.

    A row cannot be priced when its model has no rates, or when it ran in fast mode and nobody
    publishes fast-mode rates for its model (pricing it at standard rates would hide most of
    its cost).

    :param book: where rates come from.
    :param keys: the distinct (normalised model, UTC day) pairs of the rows.
    :param codes: for each row, its index in *keys*.
    :param usage: the rows' token counts and pricing flags.
    :return: ``{category: array, "web_search": array, "total": array}`` (categories of
        :data:`CATEGORIES`, after the fast-mode, data-residency and batch adjustments) and the
        rate card of each key (None if unpriced). Rows with no tokens and no searches cost 0
        whatever their model: nothing was billed.
    """
    cards = [book.rates(model, day) for model, day in keys]
    known = np.array([c is not None for c in cards] + [False], dtype=bool)
    safe_codes = np.where(codes < 0, len(cards), codes)  # -1 (no model) -> the unknown slot
    priced = known[safe_codes]
    fast = usage.fast if usage.fast is not None and usage.fast.any() else None
    if fast is not None:
        fast_known = np.array([c is not None and c.fast is not None for c in cards] + [False])
        priced &= ~fast | fast_known[safe_codes]
    searches = usage.web_searches
    total_in = usage.total_input()
    billed = total_in + usage.output
    if searches is not None:
        billed = billed + searches
    # An unpriced row with nothing billed at all: 0, not unknown.
    unpriced_value = np.where(billed == 0, 0.0, np.nan)
    factor = None  # data residency and batch scale every token category alike
    if usage.geo_us is not None and usage.geo_us.any():
        factor = np.where(usage.geo_us, INFERENCE_GEO_US_MULTIPLIER, 1.0)
    if usage.batch is not None and usage.batch.any():
        half = np.where(usage.batch, BATCH_MULTIPLIER, 1.0)
        factor = half if factor is None else factor * half
    out: dict[str, np.ndarray] = {}
    total = np.zeros(len(codes))
    for category in CATEGORIES:
        rate = _rates_per_row([c.rates if c else None for c in cards], category, codes,
                              safe_codes, total_in)
        if fast is not None:
            fast_rate = _rates_per_row([c.fast if c else None for c in cards], category, codes,
                                       safe_codes, total_in)
            rate = np.where(fast, fast_rate, rate)
        tokens = getattr(usage, category) * rate / _PER
        if factor is not None:
            tokens *= factor
        cost = np.where(priced, tokens, unpriced_value)
        out[category] = cost
        total += cost
    if searches is not None:
        per_search = np.array([c.web_search_usd if c else np.nan for c in cards] + [np.nan])
        cost = np.where(priced, searches * per_search[safe_codes], unpriced_value)
    else:
        cost = np.where(priced, 0.0, unpriced_value)
    out["web_search"] = cost
    total += cost
    out["total"] = total
    return out, cards


def _rates_per_row(cards: list[dict[str, Rate] | None], category: str, codes: np.ndarray,
                   safe_codes: np.ndarray, total_in: np.ndarray) -> np.ndarray:
    """The $/MTok rate of *category* for each row (NaN where its card is None), with any
    long-context tier applied."""
    base = np.array([c[category].base if c else np.nan for c in cards] + [np.nan])
    rate = base[safe_codes]
    for k, card in enumerate(cards):
        if card is None or not card[category].tiers:
            continue
        in_key = codes == k
        for start, tier_rate in card[category].tiers:  # ascending: the last one wins
            rate[in_key & (total_in > start)] = tier_rate
    return rate
