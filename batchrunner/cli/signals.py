"""Ctrl-C and SIGTERM in the commands that send (run, collect, bench), outside a run session.

A run session handles both signals itself while it can record what they stop (see
:mod:`batchrunner.interrupts`). Before it (imports, counting the input, starting the emulator)
and after it (printing the summary) they must still end the command with a clear word and exit
code 3, not click's "Aborted!" with 1 for Ctrl-C, or a silent death for SIGTERM.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import click

from batchrunner.entry import STOPPED_WHILE_STARTING

F = TypeVar("F", bound=Callable[..., Any])

#: Exit code of an aborted or interrupted run (``batchrunner.runner.EXIT_ABORTED``; not imported
#: from there, to keep this module cheap to import before the signals are set up).
EXIT_ABORTED = 3


class _State:
    #: Which signal came last ("Ctrl-C" unless a SIGTERM did).
    came = "Ctrl-C"
    #: The run session has returned: its results and run.json are complete.
    session_over = False


def session_over() -> None:
    """Called once the run session has returned: an interrupt now only cuts the printing."""
    _State.session_over = True


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # Whatever Ctrl-C does at this moment (asyncio.Runner: cancel the main task; else raise
    # KeyboardInterrupt), so that SIGTERM stops start-up exactly as Ctrl-C does.
    _State.came = "SIGTERM"
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # SIG_IGN or SIG_DFL: Ctrl-C has no Python handler
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def stops_cleanly_on_signals(command: F) -> F:
    """Make a sending command end on Ctrl-C or SIGTERM outside its session with a message and
    exit code 3."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _State.came, _State.session_over = "Ctrl-C", False
        previous = signal.signal(signal.SIGTERM, _sigterm)
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            if _State.session_over:
                said = "the run had ended; its results and run.json are complete"
            else:
                said = STOPPED_WHILE_STARTING
            click.echo(f"\n{_State.came}: {said}.", err=True)
            sys.exit(EXIT_ABORTED)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


__all__ = ["EXIT_ABORTED", "session_over", "stops_cleanly_on_signals"]
