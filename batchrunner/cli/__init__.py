"""The ``batchrunner`` command group. Each sub-command lives in its own module of this package
and stays thin: options -> a config object -> one call into the library."""

from __future__ import annotations

import sys
from typing import Any

import click

from batchrunner import __version__

#: The shell's code for a process stopped by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """The command group; a Ctrl-C in a command that does not handle it itself (``validate``,
    ``report``, ``gen``) ends with one line and exit code 130, not click's "Aborted!" and 1,
    which ``validate`` uses for "some rows would be rejected"."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if exc.message.startswith("Got unexpected extra argument"):
                # click quotes them: the rest of an unquoted -H 'Authorization: Bearer sk-…'.
                extra = len(exc.message.partition("(")[2].rstrip(")").split())  # words
                exc.message = (
                    f"Got {extra} unexpected extra argument{'s' if extra != 1 else ''} (not "
                    "shown: they may hold a credential); quote a value with spaces, e.g. -H "
                    "'Authorization: Bearer …'"
                )
            raise
        except KeyboardInterrupt:
            # "^C" was echoed on the terminal without a newline.
            click.echo(f"\nCtrl-C: {ctx.invoked_subcommand or 'batchrunner'} stopped.", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchrunner")
def main() -> None:
    """Run Anthropic Messages request sets through an LLM gateway and record every response.

    \b
    Examples:
      batchrunner run jobs/demo.jsonl                 # on the built-in emulator
      batchrunner run big.jsonl --gateway http://bifrost:8080 -c 64 --mode stream
      batchrunner validate big.jsonl                  # check a set, send nothing
      batchrunner emulate --port 8080                 # the gateway emulator as a server
    """


def _register() -> None:
    # Imported here so that each command module can import the group without a cycle.
    from batchrunner.cli import bench, collect, emulate, gen, report, run, validate  # noqa: F401


_register()
