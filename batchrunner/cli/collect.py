"""``batchrunner collect RUN_DIR``: poll the outstanding async jobs of a run and write their
rows."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import click

from batchrunner.cli import main
from batchrunner.cli.options import credential_options
from batchrunner.cli.run import finish, run_or_exit
from batchrunner.cli.signals import stops_cleanly_on_signals
from batchrunner.rundir import REQUEST_SHAPING

if TYPE_CHECKING:
    from batchrunner.config import RunConfig
    from batchrunner.runner import RunResult

#: RunConfig fields (as run.json records them) that say how the input file is read.
INPUT_READING = tuple(REQUEST_SHAPING)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@credential_options
@click.option(
    "--gateway",
    envvar="BATCHRUNNER_GATEWAY",
    metavar="URL",
    help="Gateway to poll [default: the one recorded in run.json]. Env BATCHRUNNER_GATEWAY "
    "only when run.json has none usable (its URL held credentials).",
)
@click.option(
    "--poll-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=1000.0,
    show_default=True,
    help="Polls per second at most.",
)
@click.option("--poll-concurrency", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print only errors, on stderr (no progress, messages or summary); the exit code "
    "tells the outcome, --json still prints the summary.",
)
@stops_cleanly_on_signals
def collect(
    run_dir: Path,
    gateway: str | None,
    api_key: str | None,
    virtual_key: str | None,
    headers: dict[str, str],
    poll_rate: float,
    poll_concurrency: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Fetch the results of the async jobs of RUN_DIR (a `run --mode async --detach` run, or
    one that was stopped) into the same run directory. Resumable and repeatable: run it again
    until it reports no outstanding jobs, before the deadline `run` printed."""
    from batchrunner.client import messages_url
    from batchrunner.config import MAX_TTL_S, REDACTED, ConfigError, RunConfig
    from batchrunner.formats import JSONL_SUFFIXES
    from batchrunner.redaction import url_has_credentials
    from batchrunner.rundir import load_run_json
    from batchrunner.schema import Mode

    # The jobs are the recorded gateway's: a BATCHRUNNER_GATEWAY left in the environment (for
    # another gateway) had every job of a run without a key end as job_not_found, and became
    # the run's recorded gateway. Only --gateway itself, or a run.json without a usable URL,
    # takes the environment's.
    from_env = click.get_current_context().get_parameter_source("gateway") is (
        click.core.ParameterSource.ENVIRONMENT)

    def build() -> RunConfig:
        nonlocal gateway
        info = load_run_json(run_dir)
        if info is None:
            if not run_dir.exists():  # a typo, not a damaged run
                raise ConfigError(f"{run_dir}: no such directory")
            raise ConfigError(f"{run_dir} is not a batchrunner run directory (no run.json)")
        recorded = info.get("config") or {}
        kept = info.get("gateway") if info.get("gateway") != "built-in emulator" else None
        if (from_env and gateway and kept and not recorded.get("gateway_credentials_set")
                and not url_has_credentials(gateway)):
            try:
                other = messages_url(gateway) != kept
            except ValueError:
                other = True
            if other and not quiet:
                click.echo(f"Note: BATCHRUNNER_GATEWAY is not this run's gateway: polling the "
                           f"one in run.json, {kept} (give --gateway to poll another)", err=True)
            gateway = None
        if recorded.get("mode") != Mode.ASYNC.value:
            raise ConfigError(
                f"{run_dir} is a --mode {recorded.get('mode')} run: nothing to collect"
            )
        # A job can only be read with the key that made it: polled without it, every job
        # reads as not found and ends as a final expired row, with no way back but paying again.
        for flag, given, option in (
            ("virtual_key_set", virtual_key, "--virtual-key (or BIFROST_VK)"),
            ("api_key_set", api_key, "--api-key (or BATCHRUNNER_API_KEY)"),
        ):
            if recorded.get(flag) and not given:
                raise ConfigError(
                    f"{run_dir} was submitted with a key: give the same {option} to collect it"
                )
        # The same for a credential sent as a header (-H 'Authorization: Bearer sk-bf-…'):
        # run.json holds only its name.
        given_names = {name.lower() for name in headers}
        missing = [
            name
            for name, value in (recorded.get("headers") or {}).items()
            if value == REDACTED and name.lower() not in given_names
        ]
        if missing:
            again = " ".join(f"-H '{name}: …'" for name in missing)
            raise ConfigError(
                f"{run_dir} was submitted with credential headers, which are never stored: give "
                f"the same {again} to collect it"
            )
        if recorded.get("gateway_credentials_set") and not gateway:
            raise ConfigError(
                f"{run_dir} was submitted to a gateway URL holding credentials, which are never "
                "stored: give the same --gateway (or BATCHRUNNER_GATEWAY) to collect it"
            )
        url = gateway or (
            info.get("gateway") if info.get("gateway") != "built-in emulator" else None
        )
        if not url:
            raise ConfigError(
                f"{run_dir} ran on the built-in emulator, whose jobs ended with it; nothing to "
                "collect"
            )
        requests = Path((info.get("input") or {}).get("path", ""))
        reading = {key: recorded[key] for key in INPUT_READING if recorded.get(key) is not None}
        if requests.name.lower().endswith(JSONL_SUFFIXES):
            # Parquet-only options, which older versions recorded (and ignored) for JSONL.
            reading.pop("prompt_column", None)
            reading.pop("metadata_columns", None)
        return RunConfig(
            requests=requests,
            gateway=url,
            mode=Mode.ASYNC,
            out=run_dir,
            api_key=api_key,
            virtual_key=virtual_key,
            headers={
                **{k: v for k, v in (recorded.get("headers") or {}).items() if v != REDACTED},
                **headers,
            },
            # (clamped: a run of older versions may have recorded one beyond what --ttl takes)
            ttl_s=min(int(recorded.get("ttl_s") or 3600), MAX_TTL_S),
            poll_rate=poll_rate,
            poll_concurrency=poll_concurrency,
            keep_response_json=bool(recorded.get("keep_response_json", True)),
            keep_response_text=bool(recorded.get("keep_response_text", True)),
            # How the input was read: jobs are matched to their requests by reading it again.
            **reading,
            collect_only=True,
        )

    built: list[RunConfig] = []

    def build_and_keep() -> RunConfig:
        built.append(build())
        return built[-1]

    result = run_or_exit(build_and_keep, quiet=quiet)
    hint = f"batchrunner collect {shlex.quote(str(result.run_dir))}"
    config = built[-1]
    if gateway and not url_has_credentials(gateway):
        hint += f" --gateway {shlex.quote(gateway)}"  # not the one run.json holds
    again = config.credentials_to_give_again()
    note = (f"(with {', '.join(again)} given again; credentials are never stored or shown)"
            if again else "")
    if result.status == "incomplete" and not result.outstanding_jobs and result.unsubmitted:
        # Every job is in; what is left was never submitted, which only `run` can send: the
        # message says how, and "collect again" would go round in a loop.
        finish(result, as_json=as_json, quiet=quiet, resume_hint="")
        return
    finish(result, as_json=as_json, quiet=quiet, resume_hint=hint, hint_note=note,
           failed_line=_retry_failed_line(result, config))


def _retry_failed_line(result: RunResult, config: RunConfig) -> str:
    """How to send the requests whose jobs failed or expired again: ``run --retry-failed``,
    since collect never submits ("" when none did). The command repeats what shaped the
    requests (a resume refuses other ``--max-tokens``, ``--model``, ...; run.json holds them),
    the TTL and the headers that are not credentials; credentials are named, never shown."""
    from batchrunner.cli.resume_hint import retry_failed_line

    command = config.async_run_command(result.run_dir, retry_failed=True)
    return retry_failed_line(result.summary.get("status") or {}, command,
                             list(config.credentials_to_give_again()))
