"""Open-loop dispatch: each request starts at its scheduled instant, from timer callbacks.

A coroutine that sleeps before every send costs a timer, a future and a task step per request;
at tens of thousands of requests per second that overhead was a third of a request's CPU. Here
the timer callback itself starts every request that is due (through ``start``, which hands it to
a parked worker: :mod:`batchrunner.workers`) and re-arms the timer.

One wake-up per send still cost as much CPU as the rest of the request at high rates (an
``epoll`` return, two syscalls for the timer and a loop turn each, and every response arriving
on its own turn too): measured, an open-loop request took about twice the CPU of a closed-loop
one, so the loop saturated near half the closed-loop ceiling. So instants closer together than
:data:`COALESCE_S` share one wake-up, at the last of them: no request ever starts early, none
starts more than :data:`COALESCE_S` late because of it, and a request whose neighbours are
further away is woken for at its own instant. The lag is recorded either way (``queue_wait_s``,
and ``total_s`` counts from the schedule).

Records are read ahead only as far as that window (at most :data:`BURST`), so reading happens
while waiting, never between the timer and the send. When the loop was busy and several
requests are due at once, they start together, at most :data:`BURST` per loop turn so that
responses are still read in between. With ``cap`` requests outstanding the next start waits for
a completion; the row's ``total_s`` still counts from the schedule, so that wait is visible.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from batchrunner.pacing import Pacer

#: Most requests started in one loop turn when several are due at once.
BURST = 64

#: Instants this close after the first pending one are woken for together, at the last of them.
#: Well under the 1 ms send-lag budget; at 20,000 sends/s it makes about five sends per wake-up.
COALESCE_S = 0.00025

#: ``take()``: the next ``(item, scheduled perf_counter instant)``, or ``None`` when done.
Take = Callable[[], "tuple[Any, float] | None"]
#: ``start(item, scheduled, done)``: start the request; it calls ``done()`` once it has ended.
Start = Callable[[Any, float, Callable[[], None]], None]


class ScheduleDispatcher:
    """Starts ``take()``'s items at their instants through ``start``; ``finished`` resolves
    when ``take()`` runs out or :meth:`stop` is called (with ``take``'s exception, if it raised,
    once the items read before it have started).

    :param pacer: the timer (timerfd on Linux).
    :param take: gives the next item and its instant (instants never decrease); may raise
        (e.g. invalid input, strict).
    :param start: starts one request; its ``done()`` frees an outstanding slot.
    :param cap: most requests outstanding at once.
    :param stopping: checked right before each start (an item read ahead must not start once
        the run is stopping).
    :param coalesce_s: see :data:`COALESCE_S`; 0 wakes for every instant.
    """

    def __init__(
        self,
        pacer: Pacer,
        take: Take,
        start: Start,
        cap: int,
        stopping: Callable[[], bool] = lambda: False,
        coalesce_s: float = COALESCE_S,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._pacer = pacer
        self._take = take
        self._start = start
        self._cap = cap
        self._stopping = stopping
        self._coalesce_s = coalesce_s
        self._ahead: deque[tuple[Any, float]] = deque()
        self._exhausted = False
        self._error: BaseException | None = None
        self._blocked = False
        self.outstanding = 0
        self.started = 0
        #: Times sending paused, a request being due with ``cap`` requests out, until a
        #: completion (one pause may hold several due requests).
        self.cap_waits = 0
        #: Loop turns that ran the dispatcher (timer wake-ups, bursts, resumes after the cap).
        self.turns = 0
        self.finished: asyncio.Future[None] = self._loop.create_future()

    def begin(self) -> None:
        self._loop.call_soon(self._run)

    def stop(self) -> None:
        """Start nothing more (requests already started go on)."""
        self._pacer.cancel()
        if not self.finished.done():
            self.finished.set_result(None)

    def _read(self) -> bool:
        """One more item into the look-ahead; ``False`` once ``take()`` has ended or raised."""
        if self._exhausted:
            return False
        try:
            item = self._take()
        except BaseException as exc:  # surfaced once the items read before it have started
            self._error = exc
            item = None
        if item is None:
            self._exhausted = True
            return False
        self._ahead.append(item)
        return True

    def _wake_at(self, first: float) -> float:
        """When to wake for the pending item due at ``first``: the last instant within the
        coalescing window (reading ahead to find it)."""
        limit = first + self._coalesce_s
        ahead = self._ahead
        while len(ahead) < BURST and ahead[-1][1] <= limit and self._read():
            pass
        wake = first
        for _, scheduled in ahead:
            if scheduled > limit:
                break
            wake = scheduled
        return wake

    def _run(self) -> None:
        if self.finished.done():
            return
        self.turns += 1
        try:
            self._start_due()
        except BaseException as exc:  # from start(): surfaced by whoever awaits ``finished``
            self._error = exc
            self._end()

    def _start_due(self) -> None:
        launched = 0
        now = time.perf_counter()
        ahead = self._ahead
        while True:
            if not ahead and not self._read():
                self._end()
                return
            item, scheduled = ahead[0]
            if scheduled > now:
                now = time.perf_counter()  # reading and starting took some time
                if scheduled > now:
                    self._pacer.call_at(self._wake_at(scheduled), self._run)
                    return
            if self.outstanding >= self._cap:
                self._blocked = True  # resumed by the next completion
                self.cap_waits += 1
                return
            if launched >= BURST:
                self._loop.call_soon(self._run)
                return
            if self._stopping():
                self.stop()
                return
            ahead.popleft()
            self.outstanding += 1  # before start(): its done() may come back at once
            try:
                self._start(item, scheduled, self._completed)
            except BaseException:
                self.outstanding -= 1
                raise
            self.started += 1
            launched += 1

    def _end(self) -> None:
        self._pacer.cancel()
        if self.finished.done():
            return
        if self._error is not None:
            self.finished.set_exception(self._error)
        else:
            self.finished.set_result(None)

    def _completed(self) -> None:
        self.outstanding -= 1
        if self._blocked:
            self._blocked = False
            self._loop.call_soon(self._run)
