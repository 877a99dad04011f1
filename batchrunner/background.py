"""A worker thread for bulk work during a run (Parquet compaction), out of the event loop's way.

When the loop and a busy worker share a core, the OS splits the time between them and the
worker's share shows up as send lag and late timestamps. The worker runs at a slightly lower OS
priority (Linux: a per-thread nice of 5) and keeps its Arrow work single-threaded, so that it
does not bring a pool of equal-priority threads. Not lower: the worker also holds the
interpreter lock between Arrow calls, and when another process competes for the core a
lowest-priority holder is scheduled so rarely that the loop waits for the lock. Measured with a
CPU-bound process on the same core, loop timer lag p99: nice 0: 3.0 ms, 5: 2.0 ms, 10: 10.5 ms,
19: 203 ms; alone on a pinned core at 8,500 sends/s, nice 19 gave the lowest send lag (p99
~1 ms against 3-7 ms), a gain not worth that risk. A worker *process* at nice 19 has neither
problem (its own interpreter lock) but costs ~115 MB more memory (its own pyarrow, and
multiprocessing's resource tracker), so it was measured (send lag p99 2.8 ms) and not kept.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

#: The nice value of the worker thread (0 is the default priority, 19 the lowest).
BACKGROUND_NICE = 5


def _lower_priority() -> None:
    # On Linux the nice value is a per-thread attribute addressed by the thread id; elsewhere
    # the same call would renice the whole process, so it is not made.
    if sys.platform.startswith("linux"):
        # Not permitted in some sandboxes: the work then runs at normal priority.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def background_executor() -> ThreadPoolExecutor:
    """One worker thread at :data:`BACKGROUND_NICE`; shut it down when the run ends."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="batchrunner-background", initializer=_lower_priority
    )
