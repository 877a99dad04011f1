"""Returning freed C heap to the OS after compaction: available exactly where glibc is."""

from __future__ import annotations

import platform
import sys

from batchrunner.heap import release_free_heap


def test_release_free_heap_runs_where_glibc_has_malloc_trim() -> None:
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_free_heap() is glibc
    assert release_free_heap() is glibc  # cached lookup, callable again
