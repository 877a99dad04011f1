"""A text stream for messages that must never stop the run: once the reader is gone (a pipe
closed, EPIPE; a terminal hung up, EIO), writes are dropped instead of raising.

``batchrunner run … 2>&1 | head -1``, or a log collector that went away, made the first message
after it raise ``BrokenPipeError``: the run ended with exit code 1 and no ``run.json``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, TextIO


class SafeStream:
    """Wraps *stream*; see the module docstring. Anything else is the stream's own."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        #: Whether a write failed: the reader is gone, and nothing more is written.
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except OSError:
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except OSError:
                self._lose()

    def isatty(self) -> bool:
        try:
            return not self.gone and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _lose(self) -> None:
        self.gone = True
        # What the stream still buffers would fail again when Python flushes it at exit (and
        # turn the exit code into 120): its descriptor now writes to /dev/null instead.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)


def safe(stream: TextIO) -> TextIO:
    """*stream* as a :class:`SafeStream` (once: a wrapped one is returned as it is)."""
    return stream if isinstance(stream, SafeStream) else SafeStream(stream)  # type: ignore[return-value]
