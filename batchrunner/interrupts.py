"""Who handles Ctrl-C, SIGTERM and SIGHUP, and for how long.

A run session takes both signals from the moment it can record what they stop until its
``run.json`` is final (first: drain, second: cancel in-flight requests; once sending is over they
are only acknowledged). Before and after, whoever handled them before the session does again:
asyncio's ``loop.remove_signal_handler`` would instead reset them to Python's defaults, dropping
``asyncio.Runner``'s own Ctrl-C handling (which cancels the main task cleanly) and letting a
SIGTERM kill the process without a word.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any


def _belongs_to_a_loop(handler: Any) -> bool:
    # What asyncio and uvloop put in place of a handler registered with add_signal_handler:
    # the real one lives in that loop and could not be given back after ours.
    return getattr(handler, "__name__", "") == "_sighandler_noop"


class SignalHandlers:
    """Loop signal handlers that give the signals back, as they were, when removed.

    Off the main thread (a notebook's run thread) nothing is installed: signals only reach the
    main thread. A signal someone's own loop already handles is left to them.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def install(self, on_sigint: Callable[[], None], on_sigterm: Callable[[], None],
                on_sighup: Callable[[], None] | None = None) -> None:
        """:param on_sighup: for SIGHUP (the terminal closed, an ssh session dropped), which
            otherwise kills the process like ``kill -9``; not taken when it is ignored
            (``nohup``: the user asked for the run to go on). An ignored SIGINT is left
            ignored too: a job a script starts in the background gets it so, for the
            terminal's Ctrl-C to reach only the foreground (it was ignored while the run
            started, then obeyed once it sent)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        wanted = [(signal.SIGINT, on_sigint), (signal.SIGTERM, on_sigterm)]
        if on_sighup is not None and hasattr(signal, "SIGHUP"):
            wanted.append((signal.SIGHUP, on_sighup))
        for sig, handler in wanted:
            previous = signal.getsignal(sig)
            if _belongs_to_a_loop(previous):
                continue
            if sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)) and (
                    previous is signal.SIG_IGN):
                continue
            loop.add_signal_handler(sig, handler)
            self._previous[sig] = previous  # only once ours is in place: remove() undoes it

    def remove(self) -> None:
        if not self._previous:
            return
        loop = asyncio.get_running_loop()
        for sig, previous in self._previous.items():
            loop.remove_signal_handler(sig)
            if previous is not None:  # None: set from outside Python, nothing to give back
                signal.signal(sig, previous)
        self._previous.clear()


__all__ = ["SignalHandlers"]
