"""A worker thread for bulk work during a run (Parquet compaction), out of the event loop's way.

When the loop and a busy worker share a core, the OS splits the time evenly between them: a
compaction running beside an open-loop schedule would take half the loop's time and show up as
send lag (measured: p99 from 0.2 ms to 20 ms during each compaction on one pinned core). The
worker runs at the lowest OS priority (Linux: a per-thread nice of 19), so it gets the time the
loop leaves idle and yields the moment the loop has work; Arrow work inside it is kept
single-threaded for the same reason.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

#: The nice value of the worker thread (19 is the lowest priority).
BACKGROUND_NICE = 19


def _lower_priority() -> None:
    # On Linux the nice value is a per-thread attribute addressed by the thread id; elsewhere
    # the same call would renice the whole process, so it is not made.
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        except OSError:
            pass  # not permitted in some sandboxes: the work still runs, at normal priority


def background_executor() -> ThreadPoolExecutor:
    """One low-priority worker thread; shut it down when the run ends."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="batchrunner-background", initializer=_lower_priority
    )
