"""``batchrunner run``: options → :class:`RunConfig` → one run session → summary and exit code."""

from __future__ import annotations

import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from batchrunner.cli import main
from batchrunner.cli.options import credential_options, name_env_sources
from batchrunner.cli.resume_hint import (
    RecordingCommand,
    program,
    raw_args,
    resume_command,
    retry_failed_line,
)
from batchrunner.cli.signals import session_over, stops_cleanly_on_signals

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchrunner.config import RunConfig
    from batchrunner.runner import RunResult
from batchrunner.cli.validate import source_options

EXIT_CODES_HELP = """\b
Exit codes:
  0  finished (or stopped by --max-requests/--duration/--max-cost) within
     --max-error-rate
  1  internal error (set BATCHRUNNER_DEBUG=1 for the traceback)
  2  usage, configuration or input error (also: no valid request in the input);
     nothing was sent
  3  run aborted or interrupted (Ctrl-C, SIGTERM or SIGHUP, --strict reject, unwritable output,
     gateway refusing every request); finished rows are kept, resume to go on
  4  finished, but the share of failed requests (of those not cancelled) is above
     --max-error-rate"""


@main.command(cls=RecordingCommand, epilog=EXIT_CODES_HELP)
@click.argument("requests", type=click.Path(path_type=Path, dir_okay=False))
@credential_options
@click.option(
    "--gateway",
    envvar="BATCHRUNNER_GATEWAY",
    metavar="URL",
    help="Gateway base URL, e.g. http://localhost:8080 (/anthropic/v1/messages is "
    "appended unless the path ends in /v1/messages). Env BATCHRUNNER_GATEWAY. "
    "Without it, the built-in emulator is started in-process.",
)
@click.option(
    "--mode",
    type=click.Choice(["sync", "stream", "async"]),
    default="sync",
    show_default=True,
    help="sync: one JSON response; stream: SSE with TTFT and "
    "inter-token timings; async: gateway async jobs.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Closed loop: requests in flight at once [default: 32]. With --rate: a cap "
    "on requests in flight (waiting for it counts in queue_wait_s and total_s) "
    "[default: 10,000].",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Open loop: start requests at this many per second on a precomputed "
    "schedule, whatever the responses do.",
)
@click.option(
    "--arrival",
    type=click.Choice(["constant", "poisson"]),
    default="constant",
    show_default=True,
    help="Spacing of --rate arrivals.",
)
@click.option(
    "--max-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Ceiling on request starts per second (retries included), to stay under a "
    "gateway's limit.",
)
@click.option(
    "--rpm",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The same ceiling in requests per minute (give it or --max-rate, not both).",
)
@click.option(
    "--max-requests",
    type=click.IntRange(min=0),
    default=None,
    help="Send at most this many requests in this session.",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop starting requests after this long (with --rate: after this much of the "
    "schedule; connecting ahead comes before it).",
)
@click.option(
    "--max-cost",
    "max_cost_usd",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="DOLLARS",
    help="Stop starting requests once the run's rows (earlier sessions' included) have cost "
    "this much at list prices (genai-prices); requests in flight finish, so the run can end "
    "a little above it. Sync and stream modes.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run directory. An existing run directory of the same input is resumed. "
    "[default: results/<input>-<mode>-<UTC time>]",
)
@click.option(
    "--results-root",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("results"),
    show_default=True,
    help="Where default run directories go.",
)
@click.option("--name", "run_name", default=None,
              help="Name of the new run directory (with --resume: the run under "
              "--results-root to resume).")
@click.option(
    "--resume",
    is_flag=True,
    help="Resume the latest run of this input under --results-root (or --out): send "
    "only requests without a result row; cancelled ones are sent again.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Resume, and also send again the requests whose row is error, timeout or "
    "expired (their old rows are replaced).",
)
@click.option(
    "--abandon-jobs",
    is_flag=True,
    help="Async resume: do not poll the jobs earlier sessions recorded; submit their requests "
    "again. Only for jobs the gateway lost (a restart without its logs store): any that still "
    "exist are paid for twice.",
)
@click.option(
    "--allow-changed-options",
    is_flag=True,
    help="Resume even with another --model, --max-tokens, --system, --model-override (or "
    "Parquet column option) than the run's rows were sent with (refused without it: the run "
    "would mix two kinds of requests); each session's options are recorded in run.json.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=900.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest time for one attempt, send to last byte.",
)
@click.option(
    "--read-timeout",
    "read_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest silence between two bytes of a response.",
)
@click.option(
    "--connect-timeout",
    "connect_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest TCP (and TLS) connection set-up.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Retries per request for 408/409/429, every 5xx but 501 and 505 (529 included) and "
    "connection failures, obeying retry-after.",
)
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="FRACTION",
    help="Exit with code 4 when more than this share of requests failed (e.g. 0.01; cancelled "
    "ones, sent again by a resume, are not counted).",
)
@click.option(
    "--drain-timeout",
    "drain_timeout_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="On stop (Ctrl-C, --duration), how long in-flight requests may finish.",
)
@click.option(
    "--max-outage",
    "max_outage_s",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long requests wait for a gateway that cannot be connected to (a restart), "
    "spending no retries, before the run stops (they then end as cancelled: a resume sends "
    "them). At most 10 s while it has never been reached. 0: retry as for any failure.",
)
@click.option(
    "--max-rate-limit-wait",
    "max_rate_limit_wait_s",
    type=click.FloatRange(min=0),
    default=900.0,
    show_default=True,
    metavar="SECONDS",
    help="A gateway's 429 (rate limited) is sent again spending no retry, and a model whose "
    "requests keep meeting 429s is slowed down (fewer in flight, pauses). If a model gets "
    "nothing but 429s this long, the run stops (its requests end as cancelled: a resume sends "
    "them). 0: retry 429s as any failure.",
)
@click.option(
    "--no-response-json",
    is_flag=True,
    help="Do not store the full response body (smaller files for load tests).",
)
@click.option("--no-response-text", is_flag=True, help="Do not store the response text.")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for Poisson arrivals, back-off jitter and the built-in emulator.",
)
@click.option(
    "--emulator-profile",
    default=None,
    metavar="NAME|FILE",
    help="Profile of the built-in emulator when no --gateway is given: instant, "
    "realistic, flaky, or a TOML file [default: a fast demo profile].",
)
@click.option(
    "--ttl",
    "ttl_s",
    type=click.IntRange(min=1),
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="Async: how long the gateway keeps each job's result after it completes "
    "(x-bf-async-job-result-ttl).",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Async: submit everything, record the job ids, print the deadline and exit; "
    "`batchrunner collect RUN_DIR` fetches the results later.",
)
@click.option(
    "--poll-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=1000.0,
    show_default=True,
    help="Async: polls per second at most, all jobs together.",
)
@click.option(
    "--poll-concurrency",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Async: polls in flight at most.",
)
@source_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print only errors, on stderr (no progress, messages, summary or --detach "
    "deadline); the exit code tells the outcome, --json still prints the summary.",
)
@stops_cleanly_on_signals
def run(
    requests: Path,
    headers: dict[str, str],
    timeout_s: float,
    read_timeout_s: float,
    connect_timeout_s: float,
    max_retries: int,
    rpm: float | None,
    no_response_json: bool,
    no_response_text: bool,
    as_json: bool,
    quiet: bool,
    **options: object,
) -> None:
    """Send every request of REQUESTS (JSONL or Parquet) and write one Parquet row per request.

    \b
    Examples:
      batchrunner run jobs/demo.jsonl
      batchrunner run set.jsonl --gateway http://localhost:8080 --virtual-key sk-bf-... -c 64
      batchrunner run set.parquet --mode stream --rate 20 --arrival poisson --duration 600
      batchrunner run set.jsonl --resume          # after a crash or Ctrl-C
    """
    from batchrunner.client import Timeouts
    from batchrunner.config import RunConfig
    from batchrunner.retry import RetryPolicy
    from batchrunner.schema import Mode

    max_rate = options.pop("max_rate")

    built: list[RunConfig] = []

    def build() -> RunConfig:
        from batchrunner.config import ConfigError

        if rpm is not None and max_rate is not None:
            # Two ceilings in different units: keeping the lower one in silence would pace the
            # run by a number the user may not have meant.
            raise ConfigError(
                f"--max-rate {max_rate:g} and --rpm {rpm:g} are the same ceiling (per second and "
                "per minute): give one of them"
            )
        built.append(
            RunConfig(
                requests=requests,
                mode=Mode(str(options.pop("mode"))),
                headers=headers,
                timeouts=Timeouts(
                    connect_s=connect_timeout_s, read_s=read_timeout_s, attempt_s=timeout_s
                ),
                retry=RetryPolicy(max_retries=max_retries),
                max_rate=rpm / 60.0 if rpm is not None else max_rate,  # type: ignore[arg-type]
                keep_response_json=not no_response_json,
                keep_response_text=not no_response_text,
                **options,  # type: ignore[arg-type]
            )
        )
        return built[-1]

    result = run_or_exit(build, quiet=quiet)
    args = raw_args() or [str(requests)]
    command, left_out = resume_command(
        args,
        result.run_dir,
        retry_failed=result.failed_on_config,
        secrets=built[-1].secret_values(),
        program=program(),
    )
    notes = []
    if result.failed_on_config:
        notes.append("once the gateway address or key is fixed (change them in the command)")
    if result.failed_on_input and "--strict" in args:
        notes.append(
            "it stops at the same row again: without --strict invalid rows are skipped and "
            "written to rejects.jsonl; a corrected file is a new input and needs a new run"
        )
    if result.message.startswith("--max-cost "):  # the same limit would send nothing
        notes.append("with a higher --max-cost: the run's rows already cost what this one allows")
    limits = [o for o in ("--max-requests", "--duration") if _given(o, args)]
    if limits:
        notes.append(
            f"{' and '.join(limits)} {'count' if len(limits) > 1 else 'counts'} again from the "
            f"start of the resumed session: leave {'them' if len(limits) > 1 else 'it'} out to "
            "send all the rest"
        )
    if left_out:
        notes.append(
            f"with {', '.join(dict.fromkeys(left_out))} given again (--api-key, --virtual-key "
            "and --gateway may also come from BATCHRUNNER_API_KEY, BIFROST_VK and "
            "BATCHRUNNER_GATEWAY); credentials are never stored or shown"
        )
    note = f"({'; '.join(notes)})" if notes else ""
    retry, retry_left_out = resume_command(
        args, result.run_dir, retry_failed=True, secrets=built[-1].secret_values(),
        program=program(),
    )  # fmt: skip
    failed_line = retry_failed_line(result.summary.get("status") or {}, retry, retry_left_out)
    finish(
        result, as_json=as_json, quiet=quiet, resume_hint=command, hint_note=note,
        failed_line=failed_line, validate_hint=_validate_command(built[-1]),
    )  # fmt: skip


def _given(option: str, args: list[str]) -> bool:
    """Whether a long option is among the command's arguments (``--opt V`` or ``--opt=V``)."""
    return any(a == option or a.startswith(option + "=") for a in args)


def _validate_command(config: RunConfig) -> str:
    """``batchrunner validate …`` with the run's input options: what checks a corrected file."""
    args = [str(config.requests)]
    for option, value in (
        ("--model", config.model),
        ("--max-tokens", config.max_tokens),
        ("--system", config.system),
        ("--model-override", config.model_override),
    ):
        if value is not None:
            args += [option, str(value)]
    if config.prompt_column != "prompt":
        args += ["--prompt-column", config.prompt_column]
    for column in config.metadata_columns:
        args += ["--metadata-column", column]
    return f"{program().rsplit(' ', 1)[0]} validate {shlex.join(args)}"


#: Rejected rows named on stderr when a run had no valid request (all are in rejects.jsonl).
REJECTS_SHOWN = 5


def _first_rejects(path: Path, n: int) -> list[str]:
    """``location: reason`` of the first *n* rows of a ``rejects.jsonl`` (fewer if unreadable)."""
    shown: list[str] = []
    try:
        with path.open("rb") as fh:
            for line in fh:
                if len(shown) >= n:
                    break
                try:
                    reject = orjson.loads(line)
                    shown.append(f"{reject['location']}: {reject['reason']}")
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
    except OSError:
        pass  # the message already names the file; the examples are a courtesy
    return shown


def _nothing_sent_lines(result: RunResult, validate_hint: str) -> list[str]:
    """What a run whose every input row was rejected says instead of a summary: it sent
    nothing, so a summary of zero requests and $0 would read like a successful empty run."""
    rejects = result.run_dir / "rejects.jsonl"
    lines = [f"{result.status}: {result.message}"]
    shown = _first_rejects(rejects, REJECTS_SHOWN)
    lines += [f"  {reject}" for reject in shown]
    if shown and result.rejected > len(shown):
        lines.append(f"  … and {result.rejected - len(shown):,} more in {rejects}")
    lines.append(
        f"Nothing was sent and no result rows were written (exit code {result.exit_code}: "
        "input error). Correct the input and run again"
        + (f"; `{validate_hint}` checks it without sending anything." if validate_hint else ".")
    )
    return lines


def run_or_exit(build: Callable[[], RunConfig], *, quiet: bool) -> RunResult:
    """Build the configuration and run it; usage and internal errors exit with their codes."""
    from batchrunner.config import ConfigError, Redactor
    from batchrunner.rundir import RunDirError
    from batchrunner.runner import EXIT_INTERNAL, EXIT_USAGE, run_sync
    from batchrunner.sources import InputError
    from batchrunner.store import RunStoreError

    config: RunConfig | None = None
    try:
        config = build()
        result = run_sync(config, handle_signals=True, quiet=quiet)
        session_over()
        return result
    except (ConfigError, InputError, RunDirError, RunStoreError) as exc:
        click.echo(f"Error: {name_env_sources(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)
    except Exception as exc:
        # An exception's text may quote a header or the gateway URL, the traceback's too.
        redact = Redactor(config.secret_values() if config is not None else [])
        if os.environ.get("BATCHRUNNER_DEBUG"):
            click.echo(redact(traceback.format_exc()).rstrip("\n"), err=True)
        click.echo(f"Internal error: {redact(f'{type(exc).__name__}: {exc}')}", err=True)
        if config is not None and not config.collect_only:
            click.echo(
                "Any rows already written are kept: add --resume (or --out with the run "
                "directory named above) to go on.",
                err=True,
            )
        sys.exit(EXIT_INTERNAL)


def finish(
    result: RunResult,
    *,
    as_json: bool,
    quiet: bool,
    resume_hint: str,
    hint_note: str = "",
    failed_line: str = "",
    validate_hint: str = "",
) -> None:
    """Print the outcome of a run session (summary, where the results are, what next) and exit.

    :param resume_hint: the whole command that resumes the run.
    :param hint_note: printed under it (e.g. which credentials it leaves out).
    :param failed_line: printed when the run finished with failed rows (how to send them again).
    :param validate_hint: the ``validate`` command for the input, named when every row of it
        was rejected.
    """
    from batchrunner.runner import EXIT_ABORTED, EXIT_OK
    from batchrunner.summary import format_summary

    try:
        if as_json:
            click.echo(
                orjson.dumps(
                    {
                        "run_dir": str(result.run_dir),
                        "status": result.status,
                        "exit_code": result.exit_code,
                        "message": result.message,
                        "rejected": result.rejected,
                        "outstanding_jobs": result.outstanding_jobs,
                        "collect_before": result.collect_before,
                        "summary": result.summary,
                    },
                    option=orjson.OPT_INDENT_2,
                ).decode()
            )
        elif not quiet and result.status != "rejected":
            click.echo(format_summary(result.summary))
        if quiet:
            # -q prints errors only: a session that could not do its work says why. A detached
            # run prints nothing; a script gets the directory and the deadline from --json.
            if result.status in ("aborted", "rejected"):
                click.echo(f"{result.status}: {result.message}", err=True)
        elif result.status == "rejected":
            # Nothing to sum up and no results: stdout stays empty (as for any input error),
            # stderr names the rejects and what the exit code means.
            for line in _nothing_sent_lines(result, validate_hint):
                click.echo(line, err=True)
        else:
            if result.status == "detached" and not as_json:
                click.echo(f"detached   {result.run_dir}")
                click.echo(f"collect    {result.message}")
            click.echo(f"results    {result.run_dir}", err=as_json)
            if result.rejected:
                click.echo(
                    f"rejected   {result.rejected:,} invalid input "
                    f"row{'' if result.rejected == 1 else 's'}, see "
                    f"{result.run_dir / 'rejects.jsonl'}",
                    err=True,
                )
            if result.status not in ("finished", "detached"):
                click.echo(f"{result.status}: {result.message}", err=True)
            if resume_hint and result.resumable and (
                result.exit_code == EXIT_ABORTED or result.status == "incomplete"
            ):
                click.echo(f"Resume with: {resume_hint}", err=True)
                if hint_note:
                    click.echo(f"  {hint_note}", err=True)
            elif result.exit_code != EXIT_OK and result.status in ("finished", "detached"):
                click.echo(result.message, err=True)
            if failed_line and result.status == "finished":
                click.echo(failed_line, err=True)
    except OSError:
        # The terminal went away (closed after the run was sent to the background): the
        # run is over and run.json says how; the exit code is all that is left to give.
        pass
    sys.exit(result.exit_code)
