"""Open-loop dispatch: each request starts at its scheduled instant, from timer callbacks.

A coroutine that sleeps before every send costs a timer, a future and a task step per request;
at tens of thousands of requests per second that overhead was a third of a request's CPU. Here
the timer callback itself starts every request that is due (a task each) and re-arms the timer
for the next one. The next record is read right after a start, so reading happens while
waiting, never between the timer and the send. When the loop was busy and several requests are
due at once, they start together, at most :data:`BURST` per loop turn so that responses are
still read in between. With ``cap`` requests outstanding the next start waits for a completion;
the row's ``total_s`` still counts from the schedule, so that wait is visible.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from batchrunner.pacing import Pacer

#: Most requests started in one loop turn when several are due at once.
BURST = 64

#: ``take()``: the next ``(item, scheduled perf_counter instant)``, or ``None`` when done.
Take = Callable[[], "tuple[Any, float] | None"]
#: ``start(item, scheduled)``: start the request and return its task.
Start = Callable[[Any, float], "asyncio.Task[Any]"]


class ScheduleDispatcher:
    """Starts ``take()``'s items at their instants through ``start``; ``finished`` resolves
    when ``take()`` runs out or :meth:`stop` is called (with ``take``'s exception, if it raised).

    :param pacer: the timer (timerfd on Linux).
    :param take: gives the next item and its instant; may raise (e.g. invalid input, strict).
    :param start: starts one request; its task's completion frees an outstanding slot.
    :param cap: most requests outstanding at once.
    :param stopping: checked right before each start (an item read ahead must not start once
        the run is stopping).
    """

    def __init__(
        self,
        pacer: Pacer,
        take: Take,
        start: Start,
        cap: int,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._pacer = pacer
        self._take = take
        self._start = start
        self._cap = cap
        self._stopping = stopping
        self._next: tuple[Any, float] | None = None
        self._blocked = False
        self.outstanding = 0
        self.started = 0
        self.finished: asyncio.Future[None] = self._loop.create_future()

    def begin(self) -> None:
        self._loop.call_soon(self._run)

    def stop(self) -> None:
        """Start nothing more (requests already started go on)."""
        self._pacer.cancel()
        if not self.finished.done():
            self.finished.set_result(None)

    def _run(self) -> None:
        if self.finished.done():
            return
        launched = 0
        now = time.perf_counter()
        try:
            while True:
                item = self._next
                if item is None:
                    item = self._next = self._take()
                    if item is None:
                        self.stop()
                        return
                scheduled = item[1]
                if scheduled > now:
                    now = time.perf_counter()  # reading the next item took some time
                    if scheduled > now:
                        self._pacer.call_at(scheduled, self._run)
                        return
                if self.outstanding >= self._cap:
                    self._blocked = True  # resumed by the next completion
                    return
                if launched >= BURST:
                    self._loop.call_soon(self._run)
                    return
                if self._stopping():
                    self.stop()
                    return
                self._next = None
                task = self._start(item[0], scheduled)
                self.outstanding += 1
                self.started += 1
                launched += 1
                task.add_done_callback(self._completed)
        except BaseException as exc:  # from take(): surfaced by whoever awaits ``finished``
            self._pacer.cancel()
            if not self.finished.done():
                self.finished.set_exception(exc)

    def _completed(self, _task: asyncio.Task[Any]) -> None:
        self.outstanding -= 1
        if self._blocked:
            self._blocked = False
            self._loop.call_soon(self._run)
