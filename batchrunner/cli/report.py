"""``batchrunner report``: run directories → report (text, ``--json``, ``--html``), compared
side by side when several are given."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click
import orjson

from batchrunner.cli import main

EXIT_CODES_HELP = """\b
Exit codes:
  0  report written
  1  internal error (set BATCHRUNNER_DEBUG=1 for the traceback)
  2  bad usage: a missing path, a file, a non-run directory, an unknown --by key, a bad
     --prices file (an unreadable run.json beside data/ is a warning, not an error)"""


class ReportUsageError(click.ClickException):
    """``Error: <message>`` and exit code 2, without a usage dump or a traceback."""

    exit_code = 2


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...",
                type=click.Path(path_type=Path))
@click.option("--by", "by", multiple=True, metavar="KEY",
              help="Group every table by model, model_requested, mode, status, error_type, "
                   "http_status, bifrost_provider, ... or metadata.KEY (repeatable).")
@click.option("--prices", "prices_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, metavar="FILE",
              help="TOML price file overriding or adding models ($ per million tokens).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the whole report as JSON (stable keys, see docs/report.md).")
@click.option("--html", "html_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, metavar="FILE",
              help="Also write a self-contained HTML report with plots.")
@click.option("--max-groups", type=click.IntRange(min=1), default=30, show_default=True,
              help="Groups beyond the biggest N are merged into one '(other)' group.")
@click.option("--max-buckets", type=click.IntRange(min=2), default=120, show_default=True,
              help="At most this many time buckets for the series over time.")
def report(run_dirs: tuple[Path, ...], by: tuple[str, ...], prices_file: Path | None,
           as_json: bool, html_file: Path | None, max_groups: int, max_buckets: int) -> None:
    """Summarise one or more run directories: counts, errors, throughput, latency, tokens, cost.

    Several RUN_DIRs are reported one after the other, then compared side by side with deltas
    against the first.

    \b
    Examples:
      batchrunner report results/demo-sync-20261126-104717
      batchrunner report RUN --by model --by metadata.split --html report.html
      batchrunner report RUN_SYNC RUN_ASYNC --prices contract.toml
      batchrunner report RUN --json > report.json
    """
    from batchrunner.pricing import PriceBook, PriceFileError
    from batchrunner.report import ReportError, build_report, load_run, parse_group_keys
    from batchrunner.report_text import format_report

    try:
        keys = parse_group_keys(by)
        book = PriceBook.load(prices_file)
        runs = [load_run(d, keys) for d in run_dirs]
        result = build_report(runs, by=keys, book=book, max_groups=max_groups,
                              max_buckets=max_buckets, plot_data=html_file is not None)
        if html_file is not None:
            from batchrunner.report_html import render_html

            try:
                html_file.write_text(render_html(result), encoding="utf-8")
            except OSError as exc:
                raise ReportError(f"cannot write {html_file}: {exc.strerror or exc}") from exc
    except (ReportError, PriceFileError) as exc:
        raise ReportUsageError(str(exc)) from exc
    except Exception as exc:
        if os.environ.get("BATCHRUNNER_DEBUG"):
            traceback.print_exc()
        click.echo(f"Internal error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    if as_json:
        for run in result["runs"]:
            run.pop("plot_data", None)
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
                   .decode())
    else:
        click.echo(format_report(result))
    if html_file is not None:
        click.echo(f"HTML report: {html_file}", err=True)
