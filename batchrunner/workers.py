"""Long-lived coroutines that run the open loop's requests, each sent the moment it is due.

A task per request costs its creation, a first step, its teardown and a callback per watcher
when it ends (the task group's, the dispatcher's, the run's): five loop callbacks for one
request, where a closed-loop worker needs one. Measured on ``benchmarks/open_loop.py``, that was a
large part of why an open-loop request cost more CPU than a closed-loop one. Here a request is
handed to a parked worker by resolving the future it waits on (one callback). A worker is
spawned only when all are busy and at most :data:`KEEP_IDLE` idle ones stay parked, so the
number of worker tasks follows the most requests outstanding at once, not the request count.

A handed-over request would still wait its turn in the loop's ready queue, behind every response
already being processed in that turn, and that wait is send lag. So the request is started
*eagerly*: its coroutine is run at once, inside the timer callback, up to its first real wait (the
request is on the wire by then, if a kept-alive connection was free) on behalf of the worker's
task and in that task's context, much as Python 3.12's eager tasks do; the worker then continues
it from there. (A worker's requests share its context, as a closed-loop worker's do.) A
cancellation that reaches the worker before it continues the request is delivered into the
request as ``Task.cancel()`` would, so the request still ends as its own ``cancelled`` row.
Measured at 10,000 sends/s on one core, four runs each: send-lag p50 0.14 against 0.19-0.24 ms and
p99 0.40-0.52 against 0.70-0.84 ms, at the same CPU. But an eager start costs ~1 µs more (one more
frame per wait), and near the loop's capacity that tipped runs into falling behind: starting every
request eagerly cut saturated throughput by 9-14 % in a first version. So once a request is already
late by :data:`EAGER_WITHIN_S`, it and the next :data:`EAGER_BACKOFF` requests are handed over
plainly: the loop is behind, and catching up matters more than a few hundred microseconds. Should an
interpreter lack the hook this needs (``asyncio.tasks._enter_task``, present in 3.11-3.13),
or the start come from inside a task, the request simply starts when its worker next runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

#: Most parked workers kept after a burst; the ones beyond finish (a coroutine frame each).
KEEP_IDLE = 1024

#: A request started later than this after its instant is not started eagerly, and neither
#: are the next :data:`EAGER_BACKOFF` requests (the loop is behind: catching up comes first).
EAGER_WITHIN_S = 0.001
EAGER_BACKOFF = 1000

#: ``run(item, scheduled)``: the request itself.
Run = Callable[[Any, float], Coroutine[Any, Any, None]]
#: ``spawn(coroutine, context)``: starts a worker as a task (in the run's task group) that runs
#: in ``context`` (``create_task(..., context=context)``).
Spawn = Callable[[Coroutine[Any, Any, None], contextvars.Context], "asyncio.Task[None]"]

_enter_task = getattr(asyncio.tasks, "_enter_task", None)
_leave_task = getattr(asyncio.tasks, "_leave_task", None)
#: Whether requests can be started eagerly on this interpreter.
EAGER_AVAILABLE = _enter_task is not None and _leave_task is not None


class _Started:
    """A request whose coroutine already ran up to ``pending`` (what it waits on)."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, None], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, None]:
        # Waits for what the coroutine waits on, then continues the coroutine through
        # ``yield from``: its later waits and wake-ups (and a cancellation) pass through in C,
        # as if the worker had awaited it from the start.
        coro = self.coro
        try:
            yield self.pending
        except BaseException as exc:
            try:
                pending = coro.throw(exc)
            except StopIteration:
                return
            yield from _Started(coro, pending).__await__()  # it caught that and waits again
            return
        yield from coro.__await__()


class _Throw:
    """Delivers ``exc`` into a started coroutine, then continues it like :class:`_Started`."""

    __slots__ = ("coro", "exc")

    def __init__(self, coro: Coroutine[Any, Any, None], exc: BaseException) -> None:
        self.coro = coro
        self.exc = exc

    def __await__(self) -> Generator[Any, Any, None]:
        try:
            pending = self.coro.throw(self.exc)
        except StopIteration:
            return
        yield from _Started(self.coro, pending).__await__()


class ParkedWorkers:
    """Runs ``run(item, scheduled)`` for each :meth:`start` on a reused coroutine
    (``scheduled``: the request's ``time.perf_counter()`` instant).

    :param run: the request; an exception from it ends its worker's task (and so, in a task
        group, the run), as it would have ended a task of its own.
    :param spawn: makes a new worker a task; called only when no worker is parked.
    :param keep_idle: most parked workers kept.
    :param eager: start each request inside :meth:`start` (see the module docstring).
    """

    def __init__(
        self, run: Run, spawn: Spawn, keep_idle: int = KEEP_IDLE, eager: bool = True
    ) -> None:
        self._run = run
        self._spawn = spawn
        self._keep_idle = keep_idle
        self._eager = eager and EAGER_AVAILABLE
        self._loop = asyncio.get_running_loop()
        # A parked worker: the future it waits on, its task and that task's context (kept
        # here because Python 3.11 does not expose a task's context).
        self._parked: list[tuple[asyncio.Future[Any], asyncio.Task[Any], contextvars.Context]] = []
        self._closed = False
        #: Worker tasks made so far (the rest of the starts reused one).
        self.spawned = 0
        #: Requests that were started inside :meth:`start`.
        self.started_eagerly = 0
        self._plain_left = 0

    def start(self, item: Any, scheduled: float, done: Callable[[], None]) -> None:
        """Run one request; ``done()`` is called when it has ended, however it ended.

        :raises RuntimeError: after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("start() on closed ParkedWorkers")
        parked = self._parked
        while parked:
            # The most recently parked first: its frame is the likeliest still in cache.
            waiting, task, context = parked.pop()
            if not waiting.done():  # a cancelled worker leaves its future behind
                # Resolved first, so that during the eager start the task no longer waits on
                # it, as a running task would not (the request may cancel its own task).
                box: list[tuple[Any, Callable[[], None]]] = []
                waiting.set_result(box)
                box.append(self._begin(task, context, item, scheduled, done))
                return
        # A new worker starts its first request when it first runs: cancelled before that, a
        # task never runs any of its code, so a request it had sent could not end as a row.
        self.spawned += 1
        coro = self._run(item, scheduled)
        context = contextvars.copy_context()  # what create_task() would have given it
        task = self._spawn(self._work((coro, done), context), context)
        task.add_done_callback(lambda _: _reap_unstarted(coro, done))

    def close(self) -> None:
        """Start nothing more; parked workers finish, busy ones after their request."""
        self._closed = True
        parked, self._parked = self._parked, []
        for waiting, _, _ in parked:
            if not waiting.done():
                waiting.set_result(None)

    @property
    def parked(self) -> int:
        return len(self._parked)

    def _begin(
        self,
        task: asyncio.Task[Any],
        context: contextvars.Context,
        item: Any,
        scheduled: float,
        done: Callable[[], None],
    ) -> tuple[Any, Callable[[], None]]:
        """What the worker is handed: the coroutine, started eagerly if possible."""
        coro = self._run(item, scheduled)
        loop = self._loop
        if not self._eager:
            return coro, done
        if time.perf_counter() - scheduled > EAGER_WITHIN_S:
            self._plain_left = EAGER_BACKOFF
            return coro, done
        if self._plain_left > 0:
            self._plain_left -= 1
            return coro, done
        if asyncio.current_task(loop) is not None:
            return coro, done
        assert _enter_task is not None and _leave_task is not None
        self.started_eagerly += 1
        _enter_task(loop, task)
        try:
            pending = context.run(coro.send, None)
        except StopIteration:
            return None, done
        except BaseException as exc:
            return exc, done
        finally:
            _leave_task(loop, task)
        return _Started(coro, pending), done

    async def _work(
        self, first: tuple[Any, Callable[[], None]], context: contextvars.Context
    ) -> None:
        task = asyncio.current_task(self._loop)
        assert task is not None
        handoff: tuple[Any, Callable[[], None]] | None = first
        while True:
            if handoff is None:
                return
            work, done = handoff
            try:
                if isinstance(work, BaseException):
                    raise work
                if work is not None:
                    await work
            finally:
                done()
            if self._closed or len(self._parked) >= self._keep_idle:
                return
            waiting = self._loop.create_future()
            self._parked.append((waiting, task, context))
            try:
                box = await waiting
            except asyncio.CancelledError as exc:
                box = waiting.result() if waiting.done() and not waiting.cancelled() else None
                if not box or not isinstance(box[0][0], _Started):
                    _drop_unstarted(box[0] if box else None)
                    raise
                # Cancelled between an eager start and this task continuing it: do what
                # Task.cancel() does to a task waiting there (cancel what it waits on, then
                # deliver the cancellation into it), through this task, so that its clean-up
                # may await and ends it as its cancelled row, and a timeout that turns the
                # cancellation into TimeoutError lets it go on.
                started, done = box[0]
                if isinstance(started.pending, asyncio.Future):
                    started.pending.cancel()
                handoff = (_Throw(started.coro, exc), done)
                continue
            handoff = box[0] if box is not None else None


def _reap_unstarted(coro: Coroutine[Any, Any, None], done: Callable[[], None]) -> None:
    """A new worker's task ended; if it was cancelled before it ever ran, its first request
    never started: close it (no "never awaited" warning) and give its slot back."""
    if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
        coro.close()
        done()


def _drop_unstarted(handoff: tuple[Any, Callable[[], None]] | None) -> None:
    """A worker was cancelled with a request handed over that had not started: it was never
    sent and leaves no row, like a task cancelled before its first step (a resume sends it);
    its slot is given back."""
    if handoff is None:
        return
    work, done = handoff
    try:
        if asyncio.iscoroutine(work):
            work.close()  # no "never awaited" warning
    finally:
        done()
