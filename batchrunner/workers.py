"""Long-lived coroutines that run the open loop's requests, so that a request is not a task.

A task per request costs its creation, a first step, its teardown and a callback per watcher
when it ends (the task group's, the dispatcher's, the run's): five loop callbacks for one
request, where a closed-loop worker needs one. Measured on ``benchmarks/open_loop.py``, that was a
large part of why an open-loop request cost more CPU than a closed-loop one. Here a request is
handed to a parked worker by resolving the future it waits on (one callback); a worker only
exists as a task while there are requests for it, and one is spawned when all are busy, so the
number of workers follows the most requests outstanding at once, not the request count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

#: Most parked workers kept after a burst; the ones beyond finish (a coroutine frame each).
KEEP_IDLE = 1024

#: ``run(item, scheduled)``: the request itself.
Run = Callable[[Any, float], Coroutine[Any, Any, None]]
#: ``spawn(coroutine)``: starts a worker as a task (in the run's task group).
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class ParkedWorkers:
    """Runs ``run(item, scheduled)`` for each :meth:`start` on a reused coroutine.

    :param run: the request; an exception from it ends its worker's task (and so, in a task
        group, the run), as it would have ended a task of its own.
    :param spawn: makes a new worker a task; called only when no worker is parked.
    :param keep_idle: most parked workers kept.
    """

    def __init__(self, run: Run, spawn: Spawn, keep_idle: int = KEEP_IDLE) -> None:
        self._run = run
        self._spawn = spawn
        self._keep_idle = keep_idle
        self._loop = asyncio.get_running_loop()
        self._parked: list[asyncio.Future[Any]] = []
        self._closed = False
        #: Worker tasks made so far (the rest of the starts reused one).
        self.spawned = 0

    def start(self, item: Any, scheduled: float, done: Callable[[], None]) -> None:
        """Run one request; ``done()`` is called when it has ended, however it ended.

        :raises RuntimeError: after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("start() on closed ParkedWorkers")
        parked = self._parked
        while parked:
            # The most recently parked first: its frame is the likeliest still in cache.
            waiting = parked.pop()
            if not waiting.done():  # a cancelled worker leaves its future behind
                waiting.set_result((item, scheduled, done))
                return
        self.spawned += 1
        self._spawn(self._work(item, scheduled, done))

    def close(self) -> None:
        """Start nothing more; parked workers finish, busy ones after their request."""
        self._closed = True
        parked, self._parked = self._parked, []
        for waiting in parked:
            if not waiting.done():
                waiting.set_result(None)

    @property
    def parked(self) -> int:
        return len(self._parked)

    async def _work(self, item: Any, scheduled: float, done: Callable[[], None]) -> None:
        while True:
            try:
                await self._run(item, scheduled)
            finally:
                done()
            if self._closed or len(self._parked) >= self._keep_idle:
                return
            waiting: asyncio.Future[Any] = self._loop.create_future()
            self._parked.append(waiting)
            try:
                handoff = await waiting
            except asyncio.CancelledError:
                # Cancelled after a request was handed over but before it ran: like a task
                # cancelled before its first step, it was never sent and leaves no row (a
                # resume sends it); its slot is given back all the same.
                if waiting.done() and not waiting.cancelled() and waiting.result() is not None:
                    waiting.result()[2]()
                raise
            if handoff is None:
                return
            item, scheduled, done = handoff
