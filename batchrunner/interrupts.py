"""Who handles Ctrl-C and SIGTERM, and for how long.

A run session takes both signals from the moment it can record them until its ``run.json`` is
final (first: drain, second: cancel in-flight requests). Before and after, whoever handled them
before the session does again: asyncio's ``loop.remove_signal_handler`` would instead reset them
to Python's defaults, dropping ``asyncio.Runner``'s own Ctrl-C handling (which cancels the main
task cleanly) and letting a SIGTERM kill the process without a word.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any


class SignalHandlers:
    """Loop signal handlers that give the signals back, as they were, when removed."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def install(self, on_sigint: Callable[[], None], on_sigterm: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGINT, on_sigint), (signal.SIGTERM, on_sigterm)):
            self._previous.setdefault(sig, signal.getsignal(sig))
            loop.add_signal_handler(sig, handler)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, previous in self._previous.items():
            loop.remove_signal_handler(sig)
            if previous is not None:  # None: set from outside Python, nothing to give back
                signal.signal(sig, previous)
        self._previous.clear()


__all__ = ["SignalHandlers"]
