"""``batchrunner bench``: load stages, sweeps, SLOs and a saturation search against a gateway."""

from __future__ import annotations

import os
import sys
import tomllib
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from batchrunner.cli import main
from batchrunner.cli.options import credential_options, name_env_sources
from batchrunner.cli.signals import session_over, stops_cleanly_on_signals

if TYPE_CHECKING:
    from batchrunner.redaction import Redactor

SCENARIO_KEYS = {
    "requests",
    "gateway",
    "mode",
    "concurrency",
    "rate",
    "arrival",
    "ramp",
    "stage_duration",
    "stage_requests",
    "warmup",
    "slo",
    "saturate",
    "search_start",
    "search_max",
    "search_factor",
    "search_steps",
    "max_errors",
    "max_error_rate",
    "duration",
    "workers",
    "timeout",
    "drain_timeout",
    "out",
    "max_retries",
    "model",
    "max_tokens",
    "seed",
    "emulator_profile",
}

_NUMBER = (int, float)
#: What each scenario key may hold, as TOML gives it (the CLI's own types check the options).
_SCENARIO_TYPES: dict[str, tuple[type, ...]] = {
    "requests": (str,), "gateway": (str,), "mode": (str,), "concurrency": (int, list, str),
    "rate": (int, float, list, str), "arrival": (str,), "ramp": (str,),
    "stage_duration": _NUMBER, "stage_requests": (int,), "warmup": _NUMBER, "slo": (list,),
    "saturate": (bool,), "search_start": _NUMBER, "search_max": _NUMBER,
    "search_factor": _NUMBER, "search_steps": (int,), "max_errors": (int,),
    "max_error_rate": _NUMBER, "duration": _NUMBER, "workers": (int,), "timeout": _NUMBER,
    "drain_timeout": _NUMBER,
    "max_retries": (int,), "model": (str,), "max_tokens": (int,), "seed": (int,),
    "emulator_profile": (str,), "out": (str,),
}  # fmt: skip
_SCENARIO_CHOICES = {"mode": ("sync", "stream"), "arrival": ("constant", "poisson")}


def _check_scenario_value(scenario: Path, key: str, value: Any) -> None:
    """A scenario value of the wrong type or choice is the error the option would give, not an
    internal error later (or, for a string where a list belongs, each character an SLO)."""
    from batchrunner.config import ConfigError

    allowed = _SCENARIO_TYPES.get(key, (object,))
    # bool is an int to Python, and TOML's true is no number of seconds
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join(
            {"str": "text", "int": "an integer", "float": "a number", "list": "a list",
             "bool": "true/false"}[t.__name__]
            for t in allowed
        )  # fmt: skip
        raise ConfigError(f"--scenario {scenario}: {key} must be {names}, got {value!r}")
    if key in _SCENARIO_CHOICES and value not in _SCENARIO_CHOICES[key]:
        raise ConfigError(
            f"--scenario {scenario}: {key} must be one of "
            f"{', '.join(_SCENARIO_CHOICES[key])}, got {value!r}"
        )
    if key == "slo" and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"--scenario {scenario}: slo must be a list of texts like 'ttft_p99=0.5'")


@main.command(
    epilog="""\b
Exit codes: 0 done; 1 internal error; 2 usage or configuration error; 3 interrupted
(Ctrl-C, SIGTERM or SIGHUP), aborted (a session gave up, a worker died), or stopped by
--max-errors / --max-error-rate / --duration before the last stage."""
)
@click.argument("requests", required=False, type=click.Path(path_type=Path, dir_okay=False))
@credential_options
@click.option(
    "--scenario",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="TOML file with the same settings (keys as the long options, with _ for -); "
    "options given here override it.",
)
@click.option(
    "--gateway",
    envvar="BATCHRUNNER_GATEWAY",
    metavar="URL",
    help="Gateway base URL [default: the built-in emulator]. Env BATCHRUNNER_GATEWAY.",
)
@click.option(
    "--mode",
    type=click.Choice(["sync", "stream"]),
    default=None,
    help="sync or stream [default: stream, for TTFT and inter-token latency].",
)
@click.option(
    "-c",
    "--concurrency",
    "concurrency",
    default=None,
    metavar="N[,N...]",
    help="Closed-loop stages, e.g. 1,8,32,128.",
)
@click.option(
    "--rate",
    "rate",
    default=None,
    metavar="R[,R...]",
    help="Open-loop stages in requests/s, e.g. 50,100,200.",
)
@click.option(
    "--arrival",
    type=click.Choice(["constant", "poisson"]),
    default=None,
    help="Arrivals of --rate / --ramp stages and --saturate [constant] (poisson without "
    "any of them is refused).",
)
@click.option(
    "--ramp",
    default=None,
    metavar="START:END:STEPS",
    help="Open-loop stages from START to END requests/s in STEPS even steps.",
)
@click.option(
    "--stage-duration",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Length of each stage after its warm-up [30].",
)
@click.option(
    "--stage-requests",
    type=int,
    default=None,
    metavar="N",
    help="Requests per stage (ends the stage first if reached before its duration).",
)
@click.option(
    "--warmup",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Warm-up at the start of each stage, excluded from its figures [0].",
)
@click.option(
    "--slo",
    "slo",
    multiple=True,
    metavar="METRIC_pQ=SECONDS",
    help="Objective, e.g. ttft_p99=0.5, latency_p95=4, error_rate=0.01 (repeatable). "
    "Stages report goodput and whether they met every SLO.",
)
@click.option(
    "--saturate",
    is_flag=True,
    default=None,
    help="Search the highest rate that meets the SLOs: raise the rate by "
    "--search-factor from --search-start until a stage fails, then bisect.",
)
@click.option("--search-start", type=float, default=None, help="First rate of the search [10].")
@click.option("--search-max", type=float, default=None, help="Highest rate tried [10000].")
@click.option("--search-factor", type=float, default=None, help="Rate multiplier [2].")
@click.option("--search-steps", type=int, default=None, help="Bisection steps [3].")
@click.option("--max-errors", type=int, default=None, help="Stop after this many failed requests.")
@click.option(
    "--max-error-rate",
    type=float,
    default=None,
    metavar="FRACTION",
    help="Stop after a stage whose error rate is above this (a failing stage in --saturate).",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Start no new stage after this long.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Processes sharing each stage's load (one event loop each) [1].",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run directory [results/<input>-bench-<UTC time>].",
)
@click.option("--timeout", type=float, default=None, help="Per-request timeout in seconds [120].")
@click.option(
    "--drain-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="At a stage's end (or a first Ctrl-C), how long requests in flight may finish; those "
    "still unanswered then are cancelled and count as failed [the --timeout].",
)
@click.option(
    "--max-retries",
    type=int,
    default=None,
    help="Retries per request [0: a load test measures first attempts].",
)
@click.option(
    "--model",
    default=None,
    help="Model for requests that name none (and for the "
    "built-in synthetic request when REQUESTS is omitted).",
)
@click.option("--max-tokens", type=int, default=None, help="max_tokens default [128].")
@click.option("--seed", type=int, default=None, help="Seed for arrivals and the emulator [0].")
@click.option(
    "--emulator-profile",
    default=None,
    metavar="NAME|FILE",
    help="Built-in emulator profile when no --gateway [a fast demo profile].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the stage results as JSON.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print only errors, on stderr (no stage lines, messages or results line).")
@stops_cleanly_on_signals
def bench(
    requests: Path | None,
    scenario: Path | None,
    headers: dict[str, str],
    as_json: bool,
    quiet: bool,
    **options: Any,
) -> None:
    """Load-test a gateway in stages and say, per stage, whether the gateway or the client was
    the limit.

    REQUESTS (JSONL or Parquet) is cycled as long as each stage needs; without it, one
    synthetic request is repeated.

    \b
    Examples:
      batchrunner bench --concurrency 1,8,32,128 --stage-duration 20
      batchrunner bench set.jsonl --rate 50,100,200 --arrival poisson --warmup 5 \\
          --slo ttft_p99=0.5 --slo latency_p95=4
      batchrunner bench set.jsonl --saturate --slo ttft_p99=0.5 --workers 2
      batchrunner bench --scenario scenario.toml --gateway http://bifrost:8080
    """
    from batchrunner.bench import Slo, parse_list, plan_stages
    from batchrunner.bench_run import BenchConfig, poisson_without_open_loop, run_bench
    from batchrunner.client import Timeouts
    from batchrunner.config import ConfigError, RunConfig
    from batchrunner.retry import RetryPolicy
    from batchrunner.rundir import RunDirError
    from batchrunner.runner import run_sync_coro
    from batchrunner.schema import Mode
    from batchrunner.sources import InputError

    values: dict[str, Any] = {}
    try:
        values = _merge_scenario(scenario, options)
        if requests is None and values.get("requests"):
            requests = Path(values["requests"])
        concurrency = values.get("concurrency")
        rates = values.get("rate")
        ramp = values.get("ramp")
        if isinstance(concurrency, str):
            concurrency = parse_list(concurrency, int, "--concurrency")
        elif isinstance(concurrency, int):
            concurrency = [concurrency]
        if isinstance(rates, str):
            rates = parse_list(rates, float, "--rate")
        elif isinstance(rates, int | float):
            rates = [float(rates)]
        ramp_spec = None
        if ramp:
            try:
                start, end, steps = str(ramp).split(":")
                ramp_spec = (float(start), float(end), int(steps))
            except ValueError:
                raise ConfigError("--ramp must be START:END:STEPS, e.g. 10:200:5") from None
        stage_duration = values.get("stage_duration", 30.0)
        warmup = _given(values, "warmup", 0.0)
        stages = plan_stages(
            concurrency=concurrency,
            rates=rates,
            ramp=ramp_spec,
            duration_s=stage_duration,
            requests=values.get("stage_requests"),
            warmup_s=warmup,
        )
        slos = [Slo.parse(s) for s in (values.get("slo") or [])]
        if (
            values.get("arrival") == "poisson"
            and stages
            and not values.get("saturate")
            and all(spec.rate is None for spec in stages)
        ):
            # Named where it was given: the scenario file, or the command line.
            raise ConfigError(
                poisson_without_open_loop(
                    f'--scenario {scenario}: arrival = "poisson"', "the arrival key"
                )
                if options.get("arrival") is None
                else poisson_without_open_loop("--arrival poisson", "--arrival")
            )
        timeout = values.get("timeout")
        timeout = 120.0 if timeout is None else timeout  # a 0 is refused, not the default
        run = RunConfig(
            requests=requests or Path(),
            gateway=values.get("gateway"),
            mode=Mode(values.get("mode") or "stream"),
            arrival=values.get("arrival") or "constant",
            api_key=options.get("api_key"),
            virtual_key=options.get("virtual_key"),
            headers=headers,
            timeouts=Timeouts(connect_s=10.0, read_s=timeout, attempt_s=timeout),
            retry=RetryPolicy(max_retries=values.get("max_retries") or 0),
            keep_response_json=False,
            model=values.get("model"),
            max_tokens=values.get("max_tokens"),
            seed=values.get("seed") or 0,
            emulator_profile=values.get("emulator_profile"),
            out=values.get("out"),
            # A request is no failure before its --timeout: the drain waits as long by default.
            drain_timeout_s=_given(values, "drain_timeout", timeout),
        )
        config = BenchConfig(
            run=run, stages=stages, slos=slos, saturate=bool(values.get("saturate")),
            search_start=_given(values, "search_start", 10.0),
            search_max=_given(values, "search_max", 10_000.0),
            search_factor=_given(values, "search_factor", 2.0),
            search_steps=(
                values.get("search_steps") if values.get("search_steps") is not None else 3
            ),
            stage_duration_s=stage_duration, stage_requests=values.get("stage_requests"),
            warmup_s=warmup, max_errors=values.get("max_errors"),
            max_error_rate=values.get("max_error_rate"),
            total_duration_s=values.get("duration"), workers=_given(values, "workers", 1),
        )  # fmt: skip
        result = run_sync_coro(run_bench(config, quiet=quiet, handle_signals=True))
        session_over()
    except (ConfigError, InputError, RunDirError, ValueError) as exc:
        message = name_env_sources(str(exc))
        click.echo(f"Error: {_redactor(options, headers, values)(message)}", err=True)
        sys.exit(2)
    except Exception as exc:
        # An exception's text may quote a header or the gateway URL, the traceback's too.
        redact = _redactor(options, headers, values)
        if os.environ.get("BATCHRUNNER_DEBUG"):
            click.echo(redact(traceback.format_exc()).rstrip("\n"), err=True)
        click.echo(f"Internal error: {redact(f'{type(exc).__name__}: {exc}')}", err=True)
        sys.exit(1)
    try:
        if as_json:
            click.echo(
                orjson.dumps(
                    {
                        "run_dir": str(result.run_dir),
                        "status": result.status,
                        "stages": result.stages,
                        "saturation": result.saturation,
                    },
                    option=orjson.OPT_INDENT_2,
                ).decode()
            )
        elif not quiet:
            sat = result.saturation
            if sat is not None:
                best = sat["highest_passing_rate"]
                click.echo(
                    f"saturation: highest rate meeting {', '.join(sat['slos']) or 'the limits'}"
                    f": {best:g} req/s"
                    if best
                    else "saturation: no rate met the objectives"
                )
                if sat.get("failure"):
                    failing = sat.get("lowest_failing_rate")
                    at = f" at {failing:g} req/s" if failing is not None else ""
                    click.echo(f"            lowest failing rate{at}: {sat['failure']}")
                if sat.get("note"):
                    click.echo(f"            note: {sat['note']}")
            click.echo(f"results    {result.run_dir}  (batchrunner report {result.run_dir})")
        if result.status != "finished":
            click.echo(f"{result.status}: {result.message}", err=True)
    except OSError:
        # The terminal went away (a hang-up): bench.json says how it ended.
        pass
    if result.status != "finished":
        sys.exit(3)


def _redactor(options: dict[str, Any], headers: dict[str, str], values: dict[str, Any]) -> Redactor:
    """Cuts the command's credentials (keys, secret headers, the gateway URL's, given as an
    option or in the scenario) out of text."""
    from batchrunner.redaction import Redactor, secret_header_values, url_secret_values

    secrets = [str(options.get(k) or "").strip() for k in ("api_key", "virtual_key")]
    secrets += secret_header_values(headers)
    for gateway in (options.get("gateway"), values.get("gateway")):
        secrets += url_secret_values(gateway if isinstance(gateway, str) else None)
    return Redactor(secrets)


def _given(values: dict[str, Any], key: str, default: Any) -> Any:
    """The value given (0 included: it is checked, not replaced), else the default."""
    value = values.get(key)
    return default if value is None else value


def _merge_scenario(scenario: Path | None, options: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if scenario is not None:
        try:
            data = tomllib.loads(scenario.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            from batchrunner.config import ConfigError

            raise ConfigError(f"--scenario {scenario}: {exc}") from None
        unknown = sorted(set(data) - SCENARIO_KEYS - {"description"})
        if unknown:
            from batchrunner.config import ConfigError

            raise ConfigError(f"--scenario {scenario}: unknown keys {', '.join(unknown)}")
        for key, value in data.items():
            if key != "description":
                _check_scenario_value(scenario, key, value)
            if key in ("concurrency", "rate") and isinstance(value, list):
                value = ",".join(str(v) for v in value)
            values[key] = value
        if "requests" in values:
            values["requests"] = str((scenario.parent / values["requests"]).resolve())
    for key, value in options.items():
        if key == "slo":
            if value:
                values["slo"] = list(value)
        elif value is not None:
            values[key] = value
    return values
