"""Handing freed heap memory back to the OS after bulk work (glibc's ``malloc_trim``).

Compaction runs on its own thread, and glibc gives each thread its own malloc arena. Memory
freed there stays in the arena, resident, until the arena's top happens to be free, which for a
thread that allocates in bursts is rarely: measured, ~20 MB stayed resident after the first
compaction with 4 MB conversion blocks, ~6 MB with 1 MB blocks. ``malloc_trim(0)`` returns the
free pages of every arena, but it locks each arena in turn, the event loop thread's too, and took
0.5-14 ms per call in a 400k-row run: callers use it only when nothing is being timed. Other C
libraries have no such call; there this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's own symbols, libc's among them (find_library would run ldconfig).
        trim = ctypes.CDLL(None).malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; ``False`` where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
