"""Run configuration: one validated object built by the CLI or the library entry point.

Validation errors raise :class:`ConfigError` with a message naming the option, so both
front ends report them the same way. Secrets live in :attr:`RunConfig.api_key` and
:attr:`RunConfig.virtual_key` and are dropped by :meth:`RunConfig.public_dict`.
"""

from __future__ import annotations

import math
import numbers
import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx

from batchrunner.client import Timeouts, messages_url, redact_url
from batchrunner.gateway_address import check_port
from batchrunner.redaction import (
    REDACTED,
    Redactor,
    is_key_header,
    is_secret_header,
    key_problem,
    looks_secret,
    secret_header_values,
    url_has_credentials,
    url_secret_values,
)
from batchrunner.retry import RetryPolicy
from batchrunner.schema import Mode
from batchrunner.sources import SourceOptions

DEFAULT_CONCURRENCY = 32
#: Open loop without an explicit --concurrency: this many requests may be outstanding before
#: the dispatcher waits (the wait shows as send lag and in total_s, never hidden).
OPEN_LOOP_MAX_OUTSTANDING = 10_000
DEFAULT_DRAIN_TIMEOUT_S = 30.0
#: Long enough for a gateway restart or a rolling deploy; a longer outage stops the run.
DEFAULT_MAX_OUTAGE_S = 60.0
#: How long a model may stay rate-limited (every request 429) before the run stops.
DEFAULT_MAX_RATE_LIMIT_WAIT_S = 900.0
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_NAME_START = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]*")
#: Headers a user may not set: given twice or wrong, every request fails as malformed.
_FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "expect", "upgrade", "te", "trailer"}
)


class ConfigError(ValueError):
    """An invalid option; the message names it and is meant for the user."""


#: Most requests in flight that ``-c`` may ask for (one process's connections).
MAX_CONCURRENCY = 100_000

#: Numeric fields of :class:`RunConfig` and the options that set them.
_NUMBER_OPTIONS = {
    "concurrency": "--concurrency",
    "rate": "--rate",
    "max_rate": "--max-rate / --rpm",
    "max_requests": "--max-requests",
    "duration_s": "--duration",
    "max_cost_usd": "--max-cost",
    "max_error_rate": "--max-error-rate",
    "drain_timeout_s": "--drain-timeout",
    "max_outage_s": "--max-outage",
    "max_rate_limit_wait_s": "--max-rate-limit-wait",
    "seed": "--seed",
    "ttl_s": "--ttl",
    "poll_rate": "--poll-rate",
    "poll_concurrency": "--poll-concurrency",
    "max_tokens": "--max-tokens",
}
_TIMEOUT_OPTIONS = {
    "connect_s": "--connect-timeout",
    "read_s": "--read-timeout",
    "attempt_s": "--timeout",
}
#: Options that take whole numbers (the others take any number).
_INTEGER_OPTIONS = frozenset({"--concurrency", "--max-requests", "--seed", "--ttl",
                              "--poll-concurrency", "--max-tokens", "--max-retries"})
#: Where infinity is no limit but a broken schedule.
#: inf would be recorded as null in run.json; "no limit" is leaving the option out.
_FINITE_OPTIONS = frozenset(
    {"--rate", "--max-rate / --rpm", "--duration", "--poll-rate", "--max-cost"}
)


#: Longest ``--ttl``: the gateway keeps a TTL as a Go duration (at most ~9.2e9 s), and instants
#: beyond it cannot be shown as dates (a 1e17 s TTL crashed the run after every submit).
MAX_TTL_S = 9_000_000_000

@dataclass(slots=True)
class RunConfig:
    """Everything a run needs. See ``batchrunner run --help`` for each field's meaning."""

    requests: Path
    gateway: str | None = None
    mode: Mode = Mode.SYNC
    #: Closed loop: number of workers (default 32). Open loop (``rate``): a cap on requests in
    #: flight (default: none beyond a large safety bound).
    concurrency: int | None = None
    rate: float | None = None
    arrival: str = "constant"
    max_rate: float | None = None
    max_requests: int | None = None
    duration_s: float | None = None
    #: Stop starting requests once the run's rows have cost this many dollars (list prices).
    max_cost_usd: float | None = None
    out: Path | None = None
    results_root: Path = Path("results")
    resume: bool = False
    retry_failed: bool = False
    #: Async resume: submit again the requests of the jobs earlier sessions recorded, without
    #: polling them (jobs the gateway lost; any it still has are paid for twice).
    abandon_jobs: bool = False
    #: Resume even with options that build the requests differently (``--model``, ...): the
    #: run then mixes them, and each session's options are recorded in ``run.json``.
    allow_changed_options: bool = False
    api_key: str | None = field(default=None, repr=False)
    virtual_key: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_error_rate: float | None = None
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    #: How long requests wait for a gateway that cannot be connected to (0: they spend their
    #: retries instead); see :mod:`batchrunner.outage`.
    max_outage_s: float = DEFAULT_MAX_OUTAGE_S
    #: How long a model may be rate-limited (HTTP 429) with no success before the run stops
    #: (0: 429s spend retries like any failure); see :mod:`batchrunner.ratelimit`.
    max_rate_limit_wait_s: float = DEFAULT_MAX_RATE_LIMIT_WAIT_S
    keep_response_json: bool = True
    keep_response_text: bool = True
    seed: int = 0
    run_name: str | None = None
    emulator_profile: str | None = None
    # async jobs
    ttl_s: int = 3600
    detach: bool = False
    poll_rate: float | None = 1000.0
    poll_concurrency: int = 32
    collect_only: bool = False  # `batchrunner collect`: poll recorded jobs, submit nothing
    # source options
    model: str | None = None
    max_tokens: int | None = None
    system: str | None = None
    model_override: str | None = None
    prompt_column: str = "prompt"
    metadata_columns: tuple[str, ...] = ()
    strict: bool = False

    def validate(self) -> None:
        """Check values; normalise the gateway URL.

        :raises ConfigError: naming the offending option.
        """
        if not isinstance(self.mode, Mode):
            try:
                self.mode = Mode(str(self.mode))
            except ValueError:
                raise ConfigError(
                    f"--mode must be one of sync, stream, async (got {self.mode!r})"
                ) from None
        self._check_numbers()
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.concurrency is not None and self.concurrency > MAX_CONCURRENCY:
            # Each is a connection and a task: a typo of a few zeros would exhaust memory.
            raise ConfigError(f"--concurrency must be at most {MAX_CONCURRENCY:,}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("--rate must be > 0 requests per second")
        if self.max_rate is not None and self.max_rate <= 0:
            raise ConfigError("--max-rate / --rpm must be > 0")
        if self.arrival not in ("constant", "poisson"):
            raise ConfigError("--arrival must be constant or poisson")
        if self.max_requests is not None and self.max_requests < 0:
            raise ConfigError("--max-requests must be >= 0")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError("--duration must be > 0 seconds")
        if self.max_cost_usd is not None:
            if self.max_cost_usd <= 0:
                raise ConfigError("--max-cost must be > 0 dollars")
            if self.mode is Mode.ASYNC:
                raise ConfigError(
                    "--max-cost works with --mode sync and stream: async jobs are all submitted "
                    "before their results (and costs) come back, so it could not hold them back"
                )
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise ConfigError("--max-error-rate must be between 0 and 1 (e.g. 0.05)")
        if self.drain_timeout_s < 0:
            raise ConfigError("--drain-timeout must be >= 0")
        if self.max_outage_s < 0:
            raise ConfigError("--max-outage must be >= 0 seconds")
        if self.max_rate_limit_wait_s < 0:
            raise ConfigError("--max-rate-limit-wait must be >= 0 seconds")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError("--max-tokens must be >= 1")
        for name in ("attempt_s", "read_s", "connect_s"):  # --timeout sets the read one too
            value = getattr(self.timeouts, name)
            if value is not None and value <= 0:  # None: no limit
                raise ConfigError(f"{_TIMEOUT_OPTIONS[name]} must be > 0 seconds")
        if self.retry.max_retries < 0:
            raise ConfigError("--max-retries must be >= 0")
        if isinstance(self.headers, Mapping) and not isinstance(self.headers, dict):
            self.headers = dict(self.headers)  # httpx.Headers, a mappingproxy
        if not isinstance(self.headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
        ):
            raise ConfigError("headers must be a dict of header names to string values")
        for option, secret in (("--api-key", self.api_key), ("--virtual-key", self.virtual_key)):
            # The value is never quoted: it is a secret. A key read from a file often ends in a
            # newline, which would otherwise break (or inject) request headers; a byte-order
            # mark or a zero-width space makes every request fail.
            problem = key_problem(secret) if secret else None
            if problem:
                raise ConfigError(f"{option}: the key {problem}")
        for name, value in self.headers.items():
            if not _HEADER_NAME.match(name):
                raise ConfigError(_invalid_header_name(name))
            if name.lower().startswith("x-bf-async"):
                raise ConfigError(
                    f"-H {name}: async jobs are made by --mode async (with --ttl); in sync "
                    "or stream mode the gateway would answer with a job instead of the result"
                )
            if name.lower() in _FRAMING_HEADERS:
                raise ConfigError(
                    f"-H {name}: set by batchrunner for each request (it frames the body "
                    "and the connection); leave it out"
                )
            if "\n" in value or "\r" in value:
                raise ConfigError(f"-H {name}: header values cannot contain line breaks")
            # Only headers that hold nothing but a key: a broad credential-like name
            # (X-Author-Name, a Cookie with a tab) may carry any text.
            problem = key_problem(value.strip(" ")) if is_key_header(name) else None
            if problem:
                raise ConfigError(f"-H {name}: the value {problem}")
        if self.gateway is None and self.emulator_profile is not None:
            # Before the run directory is made: a mistyped name left one behind, half made.
            from batchrunner.embedded import load_emulator_profile

            load_emulator_profile(self.emulator_profile, seed=self.seed or 0)
        if self.gateway is not None:
            try:
                url = messages_url(self.gateway)
                check_port(self.gateway)  # before it is normalised: "host:" becomes "host"
                self.gateway = url
            except ValueError as exc:
                raise ConfigError(f"--gateway: {exc}") from None
        self.source_options()
        if self.abandon_jobs and (self.mode is not Mode.ASYNC or self.collect_only):
            raise ConfigError("--abandon-jobs is for resuming a --mode async run (with run, "
                              "not collect): it submits again the requests of recorded jobs")
        if self.ttl_s is not None and not 1 <= self.ttl_s <= MAX_TTL_S:
            raise ConfigError(f"--ttl must be from 1 to {MAX_TTL_S:,} seconds")
        if self.poll_rate is not None and self.poll_rate <= 0:
            raise ConfigError("--poll-rate must be > 0")
        if self.poll_concurrency < 1:
            raise ConfigError("--poll-concurrency must be at least 1")
        if self.detach:
            if self.mode is not Mode.ASYNC:
                raise ConfigError("--detach needs --mode async")
            if self.gateway is None:
                raise ConfigError(
                    "--detach needs --gateway: the built-in emulator (and its jobs) ends with "
                    "this process, so nothing would be left to collect"
                )

    def check_load_options(self) -> list[str]:
        """Refuse load options that contradict each other, and warn of options that have no
        effect in this run (``run`` only: ``bench`` sets the load per stage).

        :return: warnings, one line each, for stderr.
        :raises ConfigError: naming the options.
        """
        if self.arrival == "poisson" and self.rate is None:
            # The user asked for an open loop's arrivals; a closed loop would measure another
            # thing (latency under N in flight, not under an offered load) without saying so.
            raise ConfigError(
                "--arrival poisson spaces the arrivals of --rate (open loop); without --rate "
                "the run is a closed loop (-c) and has no arrivals: give --rate, or leave out "
                "--arrival"
            )
        warnings = []
        if self.rate is not None and self.max_rate is not None:
            if self.rate > self.max_rate:
                raise ConfigError(
                    f"--rate {self.rate:g}/s is above the --max-rate / --rpm ceiling "
                    f"({self.max_rate:g}/s): the ceiling, not the schedule, would pace every "
                    "send; lower --rate, or leave out the ceiling"
                )
            warnings.append(
                "Warning: with --rate, the --max-rate / --rpm ceiling holds back sends whenever "
                "they and retries go above it (Poisson bursts, retry waves); the delay shows in "
                "queue_wait_s and total_s"
            )
        if self.mode is not Mode.ASYNC:
            given = [o for f, o in _ASYNC_ONLY.items() if getattr(self, f) != _DEFAULTS[f]]
            if given:
                warnings.append(
                    f"Warning: {', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to "
                    f"--mode async only; ignored in "
                    f"--mode {self.mode.value}"
                )
        if self.gateway is not None and self.emulator_profile is not None:
            warnings.append(
                "Warning: --emulator-profile is for the built-in emulator; ignored with --gateway"
            )
        return warnings

    def _check_numbers(self) -> None:
        """No NaN anywhere (every comparison with it is false, so it passed the range checks
        and broke the run later), no endless rate or duration, and integers that fit the 64
        bits of run.json and the rows."""
        places: list[tuple[Any, str, str]] = [
            (self, name, option) for name, option in _NUMBER_OPTIONS.items()]
        places += [(self.timeouts, f.name, _TIMEOUT_OPTIONS.get(f.name, f"timeouts.{f.name}"))
                   for f in fields(self.timeouts)]
        places += [
            (self.retry, f.name, "--max-retries" if f.name == "max_retries" else f"retry.{f.name}")
            for f in fields(self.retry) if f.name != "retry_timeouts"  # a flag
        ]  # fmt: skip
        for holder, name, option in places:
            value = getattr(holder, name)
            if value is None:
                continue
            # From Python (batchrunner.run) any object gets here; the CLI parses numbers.
            # numpy's numbers are taken as the plain ones they stand for (run.json holds them).
            whole = option in _INTEGER_OPTIONS
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
                whole and not isinstance(value, numbers.Integral)
                and not float(value).is_integer()  # max_requests=1e6 is a whole number
            ):
                what = "a whole number" if whole else "a number"
                raise ConfigError(f"{option} must be {what}, got {value!r}")
            plain = int(value) if whole else value if type(value) is int else float(value)
            if plain is not value:
                object.__setattr__(holder, name, plain)
                value = plain
            if isinstance(value, float):
                if math.isnan(value):
                    raise ConfigError(f"{option} must be a number, got nan")
                if math.isinf(value) and option in _FINITE_OPTIONS:
                    raise ConfigError(f"{option} must be a finite number")
            elif isinstance(value, int) and not -(2**63) <= value < 2**63:
                raise ConfigError(f"{option} is too large")

    def source_options(self) -> SourceOptions:
        """How the input is read (defaults, column mapping, strictness).

        :raises ConfigError: an invalid source option.
        """
        try:
            return SourceOptions(
                model=self.model,
                max_tokens=self.max_tokens,
                system=self.system,
                model_override=self.model_override,
                prompt_column=self.prompt_column,
                metadata_columns=tuple(self.metadata_columns),
                strict=self.strict,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def request_headers(self) -> dict[str, str]:
        """Headers for every request: auth first, then the user's extras."""
        headers: dict[str, str] = {}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        if self.virtual_key:
            headers["x-bf-vk"] = self.virtual_key
        headers.update({k.lower(): v for k, v in self.headers.items()})
        return headers

    def credentials_to_give_again(self) -> list[str]:
        """The options carrying this run's credentials, as a user gives them again to resume
        or collect (they are never stored): ``--api-key``, ``--virtual-key``,
        ``-H 'Name: …'``, ``--gateway`` (a URL holding credentials)."""
        names = [option for option, value in (("--api-key", self.api_key),
                                              ("--virtual-key", self.virtual_key)) if value]
        names += [f"-H '{name}: …'" for name, value in self.headers.items()
                  if is_secret_header(name, value)]
        if url_has_credentials(self.gateway):
            names.append("--gateway (its URL holds credentials)")
        return names

    def async_run_command(self, run_dir: Path, *, retry_failed: bool = False) -> str:
        """``batchrunner run FILE --mode async --out RUN_DIR …`` that goes on with this async
        run (for ``collect``, which never submits): with what shaped the requests (a resume
        refuses other ``--max-tokens``, ``--model``, ...), the TTL, the headers and gateway that
        are not credentials; :meth:`credentials_to_give_again` names the rest."""
        from batchrunner.rundir import REQUEST_SHAPING  # (rundir reads configs: import late)

        words = ["batchrunner", "run", str(self.requests), "--mode", "async", "--out",
                 str(run_dir)]
        if retry_failed:
            words.append("--retry-failed")
        words += ["--ttl", str(self.ttl_s)]
        for name, flag in REQUEST_SHAPING.items():
            value = getattr(self, name, None)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item is not None:
                    words += [flag, str(item)]
        for name, value in self.headers.items():
            if not is_secret_header(name, value):  # a secret one is named to give again
                words += ["-H", f"{name}: {value}"]
        if not self.keep_response_json:
            words.append("--no-response-json")
        if not self.keep_response_text:
            words.append("--no-response-text")
        if self.gateway and not url_has_credentials(self.gateway):
            words += ["--gateway", self.gateway]
        return shlex.join(words)

    def secret_values(self) -> list[str]:
        """Every credential this run sends: the keys, the value of each header that
        :meth:`public_dict` redacts (a ``Bearer`` token also on its own), and the password and
        query values of the gateway URL (which ``run.json`` leaves out)."""
        keys = [(self.api_key or "").strip(), (self.virtual_key or "").strip()]
        return keys + secret_header_values(self.headers) + url_secret_values(self.gateway)

    def __repr__(self) -> str:
        # The generated repr, but the gateway as run.json shows it: its URL may hold a password
        # or a key (the keys and headers are left out of the repr altogether).
        shown = []
        for f in fields(self):
            if f.repr:
                value = getattr(self, f.name)
                if f.name == "gateway" and value is not None:
                    try:
                        value = Redactor(self.secret_values())(redact_url(value.strip()))
                    except (httpx.InvalidURL, ValueError, TypeError, AttributeError):
                        value = REDACTED
                shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def public_dict(self) -> dict[str, Any]:
        """The configuration with every secret removed, for ``run.json`` and logs."""
        data = asdict(self)
        data.pop("api_key")
        data.pop("virtual_key")
        data["api_key_set"] = bool(self.api_key)
        data["virtual_key_set"] = bool(self.virtual_key)
        # The URL's user:password and query are left out below; collect must be given them.
        data["gateway_credentials_set"] = url_has_credentials(self.gateway)
        data["headers"] = {
            k: (REDACTED if is_secret_header(k, v) else v)
            for k, v in self.headers.items()
        }
        redact = Redactor(self.secret_values())  # a key may even sit in the URL's path
        data["gateway"] = redact(redact_url(self.gateway)) if self.gateway else None
        data["mode"] = self.mode.value
        # What -c left to its default came to (``concurrency`` stays as given); collect
        # sends nothing, so it has none.
        data["in_flight_limit"] = (
            None
            if self.collect_only
            else self.concurrency
            or (OPEN_LOOP_MAX_OUTSTANDING if self.rate is not None else DEFAULT_CONCURRENCY)
        )
        data["metadata_columns"] = list(self.metadata_columns)
        for name in ("max_outage_s", "max_rate_limit_wait_s"):
            if math.isinf(data[name]):  # JSON has no infinity (orjson would write null)
                data[name] = "inf"
        for key in ("requests", "out", "results_root"):
            if data[key] is not None:
                data[key] = str(data[key])
        return data


#: Options that only async jobs use, and the fields that hold them.
_ASYNC_ONLY = {
    "ttl_s": "--ttl",
    "poll_rate": "--poll-rate",
    "poll_concurrency": "--poll-concurrency",
}
#: The defaults of :class:`RunConfig`: a value other than its default was given.
_DEFAULTS = {f.name: f.default for f in fields(RunConfig)}


def _invalid_header_name(name: str) -> str:
    """The error for an invalid ``-H`` name, quoting only its valid start: a forgotten ``:``
    (``-H 'X-Auth-Token abc:def'``) puts the start of the value, often a credential, in it."""
    start = _HEADER_NAME_START.match(name)
    shown = start.group() if start is not None else ""
    where = f"after {shown!r}" if shown and not looks_secret(shown) else "at its start"
    return (
        f"-H: invalid header name: a character that a header name cannot hold {where} (a "
        "space?); expected 'Name: value' (the rest is not shown, it may be a credential)"
    )
