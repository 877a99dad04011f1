"""`batchrunner validate`: check a request set without sending anything.

Also home of :func:`source_options`, the click options shared by every command that reads a
request set (``run`` uses them too), and :func:`build_source_options`, which turns their values
into a :class:`~batchrunner.sources.SourceOptions`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson

from batchrunner.cli import main
from batchrunner.sources import (
    InputError,
    SourceOptions,
    ValidationReport,
    unused_columns_note,
    validate_file,
)

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes of ``validate``.
EXIT_OK = 0
EXIT_REJECTS = 1
EXIT_USAGE = 2

SHOWN_REJECTS = 20


class InputFileError(click.ClickException):
    """A request file that cannot be read: ``Error: <message>`` and exit code 2."""

    exit_code = EXIT_USAGE


def source_options(func: F) -> F:
    """Add the request-set options (``--model``, ``--max-tokens``, ``--system``,
    ``--model-override``, ``--prompt-column``, ``--metadata-column``, ``--strict``) to a command.

    :param func: the command callback.
    """
    decorators = [
        click.option("--model", "model", metavar="M", help="Model for requests without one."),
        click.option(
            "--max-tokens",
            "max_tokens",
            type=click.IntRange(min=1),
            metavar="N",
            help="max_tokens for requests without one.",
        ),
        click.option(
            "--system", "system", metavar="S", help="System prompt for requests without one."
        ),
        click.option(
            "--model-override",
            "model_override",
            metavar="M",
            help="Use this model for every request.",
        ),
        click.option(
            "--prompt-column",
            "prompt_column",
            default="prompt",
            show_default=True,
            metavar="C",
            help="Parquet without a params column: the column holding the user prompt.",
        ),
        click.option(
            "--metadata-column",
            "metadata_columns",
            multiple=True,
            metavar="C",
            help="Parquet: copy this column into each row's metadata (repeatable).",
        ),
        click.option("--strict", is_flag=True, help="Stop at the first invalid row."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def build_source_options(
    *,
    model: str | None,
    max_tokens: int | None,
    system: str | None,
    model_override: str | None,
    prompt_column: str,
    metadata_columns: tuple[str, ...],
    strict: bool,
) -> SourceOptions:
    """The :class:`SourceOptions` for the values of :func:`source_options`.

    :raises click.BadParameter: an empty ``--model`` or ``--model-override``.
    """
    try:
        return SourceOptions(
            model=model,
            max_tokens=max_tokens,
            system=system,
            model_override=model_override,
            prompt_column=prompt_column,
            metadata_columns=tuple(metadata_columns),
            strict=strict,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@source_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def validate(file: str, as_json: bool, **options: Any) -> None:
    """Check the request set FILE (.jsonl or .ndjson, gzipped or not, or .parquet / .pq)
    without sending anything.

    Prints how many requests are valid, the first rejected rows with their location and
    reason, and the models used. Exit code 0: every row is valid; 1: some rows would be
    rejected, or there is none; 2: usage error or unreadable file; 130: stopped by Ctrl-C.
    """
    source = build_source_options(**options)
    try:
        report = validate_file(file, source, max_rejects=SHOWN_REJECTS)
    except InputError as exc:
        raise InputFileError(str(exc)) from None
    if as_json:
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(_summary(report))
    # An empty set is not a valid one: `run` would refuse it.
    click.get_current_context().exit(EXIT_OK if report.valid and report.ok else EXIT_REJECTS)


def _summary(report: ValidationReport) -> str:
    lines = [
        f"{report.path}: {report.total} rows read, {report.ok} valid, {report.rejected} rejected"
        + (f" ({report.duplicates} duplicate custom_id)" if report.duplicates else "")
    ]
    if report.total == 0:
        lines.append("no requests: the file has no data rows")
    if report.stopped_early:
        lines.append("stopped at the first invalid row (--strict)")
    for reject in report.rejects:
        lines.append(f"  {reject.location}: {reject.reason}")
    hidden = report.rejected - len(report.rejects)
    if hidden > 0:
        lines.append(f"  ... and {hidden} more (a run writes every reject to rejects.jsonl)")
    if report.models:
        models = ", ".join(f"{name} ({n})" for name, n in report.models.items())
        lines.append(f"models: {models}")
    if report.unused_columns:
        lines.append(unused_columns_note(report.unused_columns))
    if report.stream_removed:
        lines.append(
            f"note: 'stream' was removed from {report.stream_removed} request(s) "
            "(the run's --mode decides streaming)"
        )
    return "\n".join(lines)
