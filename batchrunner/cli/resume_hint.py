"""The command that resumes a run: the user's own command line, pointed at the run directory.

Printed after an interrupted or aborted run, it must be runnable as it stands. A hint of only
``batchrunner run FILE --out DIR`` lost ``--gateway`` (the rest of the run then went to the
built-in emulator), ``--mode`` (refused on resume) and the load options. Credentials are left
out: the hint goes to a terminal or a log, and keys never do.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from batchrunner.redaction import Redactor, is_secret_header, url_has_credentials

#: Options whose value is a credential: left out of the hint.
_KEY_OPTIONS = ("--api-key", "--virtual-key")
#: Options the hint replaces with ``--out RUN_DIR`` (which resumes that directory).
#: Options the resume command leaves out (``--abandon-jobs`` again would abandon the jobs this
#: session submitted, and pay for them twice).
_REPLACED = {"--out": True, "--name": True, "--results-root": True, "--resume": False,
             "--abandon-jobs": False}
_HEADER_OPTIONS = ("-H", "--header")


class RecordingCommand(click.Command):
    """A command that keeps its raw arguments (``ctx.meta["raw_args"]``) for the hint."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["raw_args"] = list(args)
        return super().parse_args(ctx, args)


def program() -> str:
    """How the current command was invoked: ``batchrunner run``, ``python -m batchrunner run``."""
    ctx = click.get_current_context(silent=True)
    return ctx.command_path if ctx is not None else "batchrunner run"


def raw_args() -> list[str] | None:
    """The current command's arguments as typed, if it is a :class:`RecordingCommand`."""
    ctx = click.get_current_context(silent=True)
    found: Any = ctx.meta.get("raw_args") if ctx is not None else None
    return list(found) if found is not None else None


def resume_command(
    args: list[str],
    run_dir: Path,
    *,
    retry_failed: bool = False,
    secrets: list[str] | None = None,
    program: str = "batchrunner run",
) -> tuple[str, list[str]]:
    """``batchrunner run …`` that resumes ``run_dir``, and the credential options left out.

    :param args: the ``run`` command's arguments as typed.
    :param retry_failed: add ``--retry-failed`` (the failed requests must be sent again).
    :param secrets: the run's credentials, cut out wherever else they appear.
    :param program: how the user invoked ``run`` (e.g. ``python -m batchrunner run``).
    """
    kept: list[str] = []
    left_out: list[str] = []
    positional_only = False  # after "--" every word is an argument
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if positional_only:
            kept.append(arg)
            i += 1
        elif arg == "--":
            positional_only = True
            kept.append(arg)
            i += 1
        elif name == "--gateway":
            url = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
            used = 1 if eq else 2
            if url_has_credentials(url):  # user:password or a query
                left_out.append("--gateway (its URL holds credentials)")
            else:
                kept.extend(args[i : i + used])
            i += used
        elif name in _KEY_OPTIONS:
            left_out.append(name)
            i += 1 if eq else 2
        elif name in _REPLACED:
            takes_value = _REPLACED[name]
            i += 1 if eq or not takes_value else 2
        elif name in _HEADER_OPTIONS or (arg.startswith("-H") and len(arg) > 2):
            if eq:
                value, used = inline, 1
            elif name in _HEADER_OPTIONS:
                value, used = (args[i + 1] if i + 1 < len(args) else ""), 2
            else:
                value, used = arg[2:], 1
            header, _, header_value = value.partition(":")
            if is_secret_header(header, header_value):
                left_out.append(f"-H '{header.strip()}: …'")
            else:
                kept.extend(args[i : i + used])
            i += used
        else:
            kept.append(arg)
            i += 1
    options = ["--out", str(run_dir)]
    if retry_failed and "--retry-failed" not in kept:
        options.append("--retry-failed")
    # Options go before a "--" (after it, click reads them as file names).
    at = kept.index("--") if "--" in kept else len(kept)
    kept[at:at] = options
    command = f"{program} {shlex.join(kept)}"
    redacted = Redactor(secrets or [])(command)
    if redacted != command:
        left_out.append("the parts shown as <redacted>")
    return redacted, left_out


#: Row statuses that ``--retry-failed`` sends again (``cancelled`` rows are sent by any resume).
FAILED_STATUSES = ("error", "timeout", "expired")


def retry_failed_line(status_counts: dict[str, int], command: str, left_out: list[str]) -> str:
    """One line for a run that finished with failed rows: how many, and the command that sends
    them again ("" when none failed). A resume of a complete run otherwise said nothing of it.

    :param status_counts: rows per status, the summary's ``status``.
    :param command: from :func:`resume_command` with ``retry_failed=True``.
    :param left_out: what that command leaves out (credentials), named so they are given again.
    """
    failed = {s: int(status_counts.get(s) or 0) for s in FAILED_STATUSES}
    total = sum(failed.values())
    if not total:
        return ""
    kinds = ", ".join(f"{status} {count:,}" for status, count in failed.items() if count)
    again = f" (give {', '.join(dict.fromkeys(left_out))} again)" if left_out else ""
    return (
        f"{total:,} request{'' if total == 1 else 's'} failed ({kinds}); send "
        f"{'it' if total == 1 else 'them'} again with: {command}{again}"
    )
