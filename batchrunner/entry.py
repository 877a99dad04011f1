"""The console script's entry point (``batchrunner``, and ``python -m batchrunner``).

Importing the commands (click, pyarrow, numpy, ...) takes a few hundred milliseconds, before any
command can handle Ctrl-C itself; a Ctrl-C then printed a KeyboardInterrupt traceback of some
forty lines and exit code 130. Here it ends as the commands end it once they run. This module
imports nothing heavy: it is what runs first.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

#: Commands that send requests: a Ctrl-C before they send is an interrupted run (exit code 3,
#: as ``batchrunner.runner.EXIT_ABORTED``; not imported from there, it is not cheap).
SENDING_COMMANDS = frozenset({"run", "collect", "bench"})
EXIT_ABORTED = 3
#: The shell's code for a process stopped by SIGINT (128 + 2), for the other commands.
EXIT_INTERRUPTED = 130
#: What a sending command says when stopped before it sent anything.
STOPPED_WHILE_STARTING = "stopped while starting, before sending anything"


def stopped_while_starting(args: Sequence[str], came: str = "Ctrl-C") -> NoReturn:
    """Say in one line that the command was stopped before it did anything, and exit.

    :param args: the command line after the program name (its first word that is not an
        option is the command).
    :param came: the signal's name as the user knows it.
    """
    command = next((a for a in args if not a.startswith("-")), None)
    if command in SENDING_COMMANDS:
        # On a terminal "^C" was echoed without a newline: the message starts on a line of its own.
        sys.stderr.write(f"\n{came}: {STOPPED_WHILE_STARTING}.\n")
        sys.stderr.flush()
        sys.exit(EXIT_ABORTED)
    sys.stderr.write(f"\n{came}: stopped while starting.\n")
    sys.stderr.flush()
    sys.exit(EXIT_INTERRUPTED)


def main() -> None:
    """Run the ``batchrunner`` command group; a Ctrl-C while it is imported ends cleanly."""
    try:
        with _sigint_held():
            from batchrunner.cli import main as group
    except KeyboardInterrupt:
        stopped_while_starting(sys.argv[1:])
    group()


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold SIGINT back while the commands import, and deliver it after (as KeyboardInterrupt,
    inside the caller's ``try``). A KeyboardInterrupt raised inside some extension modules'
    import crashes the interpreter: orjson 3.13 segfaulted in 6 of ~300 Ctrl-Cs at start-up
    (131 of 150 for a bare ``import orjson`` interrupted in its first 4 ms)."""
    if not hasattr(signal, "pthread_sigmask"):  # not on Windows: the guard above must do
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
