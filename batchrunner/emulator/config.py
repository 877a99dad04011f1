"""Emulator configuration: the :class:`EmulatorConfig` dataclass, latency/length distributions
(:class:`Dist`) and TOML profile loading.

Every field has a default, and the defaults together are the *instant* profile: zero latency, no
faults, no keys. Values are coerced and validated on every assignment (also after start), so a
running emulator's ``config`` can be changed in place from another thread; see
:data:`LIVE_FIELDS` for which changes take effect while running. This module knows nothing about
HTTP or click: the CLI maps its flags onto these field names.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from batchrunner.emulator.jobs import MAX_TTL_S

DIST_KINDS = ("fixed", "uniform", "normal", "lognormal")


class ConfigError(ValueError):
    """An emulator option or profile is invalid (unknown field, bad value, unreadable file)."""


@dataclass(frozen=True, slots=True)
class Dist:
    """A non-negative random quantity: seconds for delays, a count for token lengths.

    ``kind`` and the meaning of ``a`` and ``b``:

    * ``fixed``: always ``a``;
    * ``uniform``: between ``a`` (low) and ``b`` (high);
    * ``normal``: mean ``a``, standard deviation ``b``;
    * ``lognormal``: median ``a``, shape ``b`` (sigma of the underlying normal; about 95 % of
      draws fall within ``a * exp(±2b)``).

    Draws below 0 are clamped to 0.

    :param kind: one of ``fixed``, ``uniform``, ``normal``, ``lognormal``.
    :param a: first parameter (see above).
    :param b: second parameter (unused for ``fixed``).
    """

    kind: str = "fixed"
    a: float = 0.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in DIST_KINDS:
            raise ConfigError(
                f"unknown distribution {self.kind!r}; use one of {', '.join(DIST_KINDS)}"
            )
        for v in (self.a, self.b):
            if not math.isfinite(v):
                raise ConfigError(f"distribution parameters must be finite numbers, got {v!r}")
        if self.kind == "uniform" and self.b < self.a:
            raise ConfigError(f"uniform:{self.a},{self.b}: high is below low")
        if self.kind in ("normal", "lognormal") and self.b < 0:
            raise ConfigError(f"{self.kind}: the spread (second parameter) must be >= 0")
        if self.kind == "lognormal" and self.a <= 0:
            raise ConfigError("lognormal: the median (first parameter) must be > 0")

    @property
    def is_constant(self) -> bool:
        """True when every draw gives the same value (no randomness needed)."""
        return (
            self.kind == "fixed"
            or (self.kind != "uniform" and self.b == 0)
            or (self.kind == "uniform" and self.a == self.b)
        )

    @property
    def constant(self) -> float:
        """The value of a constant distribution (clamped at 0)."""
        return max(0.0, self.a)

    def sample(self, rng: Any) -> float:
        """One draw, clamped at 0.

        :param rng: an object with ``random()`` (uniform in [0, 1)) and ``gauss()`` methods.
        """
        k = self.kind
        if k == "fixed":
            v = self.a
        elif k == "uniform":
            v = self.a + (self.b - self.a) * rng.random()
        elif k == "normal":
            v = self.a + self.b * rng.gauss()
        else:
            v = self.a * math.exp(self.b * rng.gauss())
        return v if v > 0.0 else 0.0

    def __str__(self) -> str:
        # Exact, not rounded: GET /_emulator/config must post back to the same distribution.
        if self.kind == "fixed":
            return f"fixed:{_num(self.a)}"
        return f"{self.kind}:{_num(self.a)},{_num(self.b)}"

    @classmethod
    def parse(cls, value: Any) -> Dist:
        """Build a distribution from a number, a string or a mapping.

        Accepted forms: ``0.5`` (fixed), ``"fixed:0.5"``, ``"uniform:0.1,0.4"``,
        ``"normal:0.5,0.1"``, ``"lognormal:0.5,0.25"``, or a TOML/dict table such as
        ``{kind = "lognormal", median = 0.5, sigma = 0.25}`` (names: ``value``; ``low``/``high``;
        ``mean``/``stddev``; ``median``/``sigma``; or ``a``/``b``).

        :param value: the description.
        :raises ConfigError: when it cannot be understood.
        """
        if isinstance(value, Dist):
            return value
        if isinstance(value, bool):
            raise ConfigError(f"not a distribution: {value!r}")
        if isinstance(value, int | float):
            return cls("fixed", float(value))
        if isinstance(value, str):
            text = value.strip()
            kind, sep, rest = text.partition(":")
            if not sep:
                try:
                    return cls("fixed", float(text))
                except ValueError:
                    raise ConfigError(
                        f"not a distribution: {value!r} (try e.g. 'uniform:0.1,0.4')"
                    ) from None
            kind = kind.strip().lower()
            try:
                nums = [float(p) for p in rest.split(",") if p.strip()]
            except ValueError:
                raise ConfigError(f"bad numbers in distribution {value!r}") from None
            want = 1 if kind == "fixed" else 2
            if len(nums) != want:
                raise ConfigError(f"{kind} needs {want} number(s), got {value!r}")
            return cls(kind, *nums)
        if isinstance(value, dict):
            d = dict(value)
            kind = str(d.pop("kind", "fixed")).lower()
            names = {
                "fixed": ("value", None),
                "uniform": ("low", "high"),
                "normal": ("mean", "stddev"),
                "lognormal": ("median", "sigma"),
            }.get(kind)
            if names is None:
                raise ConfigError(
                    f"unknown distribution {kind!r}; use one of {', '.join(DIST_KINDS)}"
                )
            try:
                a = float(d.pop(names[0], d.pop("a", 0.0)))
                b = float(d.pop(names[1], d.pop("b", 0.0))) if names[1] else float(d.pop("b", 0.0))
            except (TypeError, ValueError):
                raise ConfigError(f"bad numbers in distribution {value!r}") from None
            if d:
                raise ConfigError(f"unknown keys {sorted(d)} in distribution {value!r}")
            return cls(kind, a, b)
        raise ConfigError(f"not a distribution: {value!r}")


def _num(x: float) -> str:
    # repr() is the shortest text that parses back to the same float; "3.0" reads as "3".
    r = repr(x)
    return r[:-2] if r.endswith(".0") else r


#: Integers are bounded to 64 bits: the wire (orjson) cannot carry more, so a larger value
#: would break ``GET /_emulator/config`` and the ground truth.
_INT64_MAX = 2**63 - 1


def _rate(name: str, v: Any) -> float:
    v = _float(name, v)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{name} is a probability between 0 and 1, got {v}")
    return v


def _float(name: str, v: Any, minimum: float | None = 0.0) -> float:
    if isinstance(v, bool):
        raise ConfigError(f"{name} must be a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f) or (minimum is not None and f < minimum):
        raise ConfigError(f"{name} must be a finite number >= {minimum}, got {v!r}")
    return f


def _int(name: str, v: Any, minimum: int = 0, maximum: int = _INT64_MAX) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {v!r}") from None
    if not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {v!r}")
    if v > maximum:
        raise ConfigError(f"{name} must be an integer <= {maximum}, got {v!r}")
    return v


def _status(name: str, v: Any) -> int:
    v = _int(name, v, 100)
    if v > 599:
        raise ConfigError(f"{name} must be an HTTP status (100-599), got {v}")
    return v


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return v.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ConfigError(f"{name} must be true or false, got {v!r}")


def _strings(name: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [p for p in (s.strip() for s in v.split(",")) if p]
    if not isinstance(v, list | tuple | set | frozenset) or not all(isinstance(s, str) for s in v):
        raise ConfigError(f"{name} must be a list of strings, got {v!r}")
    return tuple(v)


def _seed(name: str, v: Any) -> int:
    # Any 64-bit value, read as signed or unsigned. The behaviour model keys BLAKE2b with the
    # seed's bytes, so a wider seed would only fail later, on every request.
    try:
        return _int(name, v, -(2**63), 2**64 - 1)
    except ConfigError:
        raise ConfigError(
            f"{name} must be a 64-bit integer (from -2**63 to 2**64-1), got {v!r}"
        ) from None


def _dist(name: str, v: Any) -> Dist:
    try:
        return Dist.parse(v)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _not_found(name: str, v: Any) -> int:
    v = _int(name, v, 0)
    if v not in (400, 404):
        raise ConfigError(f"{name} must be 404 (newest gateway) or 400 (older revisions), got {v}")
    return v


@dataclass(slots=True)
class EmulatorConfig:
    """Everything the emulator does, as plain fields. The defaults are the *instant* profile.

    Latency and length model (see ``docs/emulator.md``): a response of ``n`` output tokens has
    its first token after ``ttft`` (+ ``prefill_s_per_token`` * input tokens that are not cache
    reads) and each further token ``token_delay`` after the previous one; sync responses and
    async jobs take the same total time. All draws are a pure function of ``seed`` and the
    request body bytes.

    Fault rates are probabilities in [0, 1]. Faults in one group are exclusive, checked in the
    listed order with one draw: transport (``fault_drop``, ``fault_stall``; every request kind),
    status (``fault_429``, ``fault_500``, ``fault_529``; sync and stream), then
    ``fault_midstream`` (streams) and ``fault_job`` (async job execution).
    """

    #: Seed of the behaviour model (hashed with the request body) and of the fault sequence.
    seed: int = 0
    #: Time to first token, seconds.
    ttft: Dist = field(default_factory=Dist)
    #: Delay between consecutive output tokens, seconds.
    token_delay: Dist = field(default_factory=Dist)
    #: Output length in tokens (rounded, at least 1), capped by the request's ``max_tokens``.
    output_tokens: Dist = field(default_factory=lambda: Dist("uniform", 10, 40))
    #: Extra TTFT per input token not read from the prompt cache (``input_tokens`` plus
    #: cache writes), seconds: the prefill cost. Cache reads cost none. 0 = none.
    prefill_s_per_token: float = 0.0
    #: Characters per input token for the prompt-size estimate.
    chars_per_token: float = 4.0
    #: Send a ``ping`` event after ``message_start`` in streams.
    stream_ping: bool = True
    #: At most this many messages requests (and async jobs) are served at once; the others
    #: wait in a FIFO queue. 0 = unlimited.
    slots: int = 0
    #: Accepted virtual keys (``sk-bf-…``). Empty = no key check.
    virtual_keys: tuple[str, ...] = ()
    #: With ``virtual_keys`` set: a request without any key is refused (401) too.
    require_virtual_key: bool = True
    #: Requests per second allowed per key (no key = one shared bucket). 0 = no limit.
    rate_limit_rps: float = 0.0
    #: Burst size of the per-key limit; 0 = max(1, rate_limit_rps).
    rate_limit_burst: int = 0
    #: Models (bare ``claude-…`` or ``provider/model``) that always fail; fallbacks then serve.
    fail_models: tuple[str, ...] = ()
    #: HTTP status of a failing model's error (and of the response when no fallback works).
    fail_model_status: int = 500
    #: Probability of a 429 ``rate_limit_error`` (with ``retry-after``).
    fault_429: float = 0.0
    #: Probability of a 500 ``api_error``.
    fault_500: float = 0.0
    #: Probability of a 529 ``overloaded_error``.
    fault_529: float = 0.0
    #: Probability that the connection is closed before any response byte.
    fault_drop: float = 0.0
    #: Probability that a stream ends with an ``error`` event after some tokens.
    fault_midstream: float = 0.0
    #: Probability that the request is held without an answer for ``stall_s``.
    fault_stall: float = 0.0
    #: Probability that an async job ends ``failed`` with ``job_failure_status``.
    fault_job: float = 0.0
    #: HTTP status stored in a failed job (e.g. 500, 529, 429, 402).
    job_failure_status: int = 500
    #: ``retry-after`` seconds sent with the injected 429.
    retry_after_s: int = 1
    #: How long a stalled request is held before its connection is closed, seconds.
    stall_s: float = 3600.0
    #: Default async result TTL (missing, invalid or negative ``x-bf-async-job-result-ttl``).
    job_result_ttl_s: int = 3600
    #: Status for unknown/expired/other-key jobs: 404 (newest gateway) or 400 (older ones).
    job_not_found_status: int = 404
    #: Most async jobs kept; beyond it the oldest finished jobs are forgotten.
    job_store_max: int = 1_000_000
    #: Most prompt-cache prefixes remembered (least recently used are forgotten).
    prompt_cache_max: int = 100_000
    #: Record one ground-truth entry per request (turn off for benchmarks).
    ground_truth: bool = True
    #: Most ground-truth entries kept (oldest are dropped first).
    ground_truth_max: int = 1_000_000

    _COERCE: ClassVar[dict[str, Any]] = {
        "seed": _seed,
        "ttft": _dist,
        "token_delay": _dist,
        "output_tokens": _dist,
        "prefill_s_per_token": _float,
        "chars_per_token": lambda n, v: _float(n, v, 0.01),
        "stream_ping": _bool,
        "slots": _int,
        "virtual_keys": _strings,
        "require_virtual_key": _bool,
        "rate_limit_rps": _float,
        "rate_limit_burst": _int,
        "fail_models": _strings,
        "fail_model_status": _status,
        "fault_429": _rate,
        "fault_500": _rate,
        "fault_529": _rate,
        "fault_drop": _rate,
        "fault_midstream": _rate,
        "fault_stall": _rate,
        "fault_job": _rate,
        "job_failure_status": _status,
        "retry_after_s": _int,
        "stall_s": _float,
        "job_result_ttl_s": lambda n, v: _int(n, v, 1, MAX_TTL_S),
        "job_not_found_status": _not_found,
        "job_store_max": lambda n, v: _int(n, v, 1),
        "prompt_cache_max": _int,
        "ground_truth": _bool,
        "ground_truth_max": lambda n, v: _int(n, v, 1),
    }

    def __setattr__(self, name: str, value: Any) -> None:
        coerce = self._COERCE.get(name)
        if coerce is None:
            raise AttributeError(f"EmulatorConfig has no field {name!r}")
        value = coerce(name, value)
        self._check_static({name: value})
        object.__setattr__(self, name, value)

    def _check_static(self, changes: dict[str, Any]) -> None:
        """Refuse a change to a field read once at start while a gateway serves this config:
        it would be reported (GET /_emulator/config) but not in effect."""
        if _SERVED.get(id(self), (0, None))[1] is not self:
            return
        fixed = sorted(k for k, v in changes.items()
                       if k in STATIC_FIELDS and v != getattr(self, k, v))
        if fixed:
            raise ConfigError(f"cannot change while running: {', '.join(fixed)} (fixed at "
                              "start; restart the emulator with the new value)")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON/TOML-friendly values (distributions as strings)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Dist) else list(v) if isinstance(v, tuple) else v
        return out

    def update(self, **changes: Any) -> None:
        """Set several fields at once; all are validated before any is applied.

        :raises ConfigError: on an unknown field or a bad value.
        """
        checked = {}
        for name, value in changes.items():
            coerce = self._COERCE.get(name)
            if coerce is None:
                raise ConfigError(
                    f"unknown emulator option {name!r}; known: {', '.join(FIELD_NAMES)}"
                )
            checked[name] = coerce(name, value)
        self._check_static(checked)
        for name, value in checked.items():
            object.__setattr__(self, name, value)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EmulatorConfig))

#: Fields whose changes on a running emulator are *not* picked up (fixed at start or reset).
STATIC_FIELDS: frozenset[str] = frozenset({"slots", "ground_truth_max"})
#: id of each configuration a running gateway serves -> (how many gateways serve it, the
#: configuration itself: a marked id is never another object's, as the entry keeps it alive).
_SERVED: dict[int, tuple[int, EmulatorConfig]] = {}


def serving(config: EmulatorConfig, on: bool) -> None:
    """Mark *config* as served by a gateway (its STATIC_FIELDS are then fixed), or no longer."""
    key = id(config)
    count = _SERVED.get(key, (0, config))[0] + (1 if on else -1)
    if count > 0:
        _SERVED[key] = (count, config)
    else:
        _SERVED.pop(key, None)

#: Fields that may be changed on a running emulator (``emu.config.fault_500 = 0.2``, or
#: ``POST /_emulator/config``); each request reads them when it arrives. ``seed`` changes the
#: behaviour model at once but the fault sequence only at the next reset.
LIVE_FIELDS: frozenset[str] = frozenset(FIELD_NAMES) - STATIC_FIELDS

#: Folder of the ready-made profiles, relative to the repository root.
PROFILE_DIR = Path("jobs") / "emulator"


def _find_profile(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    # A bare name such as "flaky" means jobs/emulator/flaky.toml (cwd first, then the repo).
    if p.suffix == "" and len(p.parts) == 1:
        repo = Path(__file__).resolve().parents[2]
        for base in (Path.cwd(), repo):
            cand = base / PROFILE_DIR / f"{p.name}.toml"
            if cand.exists():
                return cand
    raise ConfigError(f"emulator profile not found: {path}")


def load_profile(path: str | Path | None = None, **overrides: Any) -> EmulatorConfig:
    """Read a TOML profile and apply overrides on top of it.

    Top-level keys of the file are :class:`EmulatorConfig` field names; distributions may be
    strings (``"lognormal:0.5,0.25"``) or inline tables. Overrides whose value is ``None`` are
    ignored, so a CLI can pass every flag and only the given ones win over the profile.

    :param path: a ``.toml`` file, or a bare profile name (``"flaky"``) looked up in
        ``jobs/emulator/``; ``None`` starts from the defaults.
    :param overrides: field values that replace the profile's.
    :return: a validated configuration.
    :raises ConfigError: on an unreadable file, an unknown key or a bad value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        p = _find_profile(path)
        try:
            with p.open("rb") as fh:
                values = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read emulator profile {p}: {exc}") from None
        values.pop("description", None)  # free text for humans
        unknown = sorted(set(values) - set(FIELD_NAMES))
        if unknown:
            raise ConfigError(
                f"{p}: unknown option(s) {', '.join(unknown)}; known: {', '.join(FIELD_NAMES)}"
            )
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ConfigError(f"unknown emulator option(s) {', '.join(unknown)}")
    return EmulatorConfig(**values)
