"""Riding out a gateway that cannot be connected to: attempts wait instead of spending retries.

A connect failure (refused, unreachable, a connect timeout) means the gateway never saw the
request, so waiting for it costs nothing but time. Retried on the usual back-off instead, a
request spent its few retries in about a second (full jitter draws short waits): a gateway
restart of ~2 s turned hundreds of requests into error rows and stopped the run.

So the first connect failure marks the gateway down. Attempts that fail to connect then wait
(:meth:`GatewayOutage.hold`) while a probe tries a new connection every
:data:`PROBE_INTERVAL_S`; the first that succeeds wakes them all, in the order they came, and
each tries again without counting it as a retry (woken in batches, oldest first: thousands
of new connections at once would meet a gateway that has just come back with a full accept
queue). If the gateway stays unreachable for
``limit_s`` (at most :data:`NEVER_REACHED_LIMIT_S` when nothing in this session has reached
it yet: most likely a wrong address), the outage gives up: the waiting attempts end as
``cancelled`` rows, which a plain resume sends again, and the run stops. A stop (Ctrl-C,
``--duration``) ends the waiting at once the same way: the old retry path never sent a retry
once the run was stopping either.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

#: Time between two probes while the gateway is down.
PROBE_INTERVAL_S = 0.25
#: How long a gateway that this session has never reached may stay unreachable.
NEVER_REACHED_LIMIT_S = 10.0
#: A request that fails to connect more often than this (a gateway that accepts the probe's
#: connections but not the requests') spends retries as before.
MAX_HOLDS_PER_REQUEST = 20

#: Waiting attempts woken at once when the gateway is back, and the pause between batches
#: (10,000 waiting sends go on within 0.4 s; a closed loop's are all in the first batch).
RELEASE_BATCH = 256
RELEASE_EVERY_S = 0.01

#: ``probe()``: ``None`` when a new connection could be made, else why not.
Probe = Callable[[], Awaitable[str | None]]


class GatewayOutage:
    """The gateway's reachability, shared by every request of a session.

    :param probe: tries one new connection.
    :param limit_s: longest outage waited out (``--max-outage``).
    :param reached: whether a connection to the gateway was ever made in this session.
    :param on_down: called with the error text and the limit that applies (shorter for a
        gateway never reached) when the gateway is found down.
    :param on_up: called with the outage's length and how many attempts were waiting.
    :param on_give_up: called with a message once the outage lasted too long.
    """

    def __init__(
        self,
        probe: Probe,
        limit_s: float,
        *,
        reached: Callable[[], bool] = lambda: True,
        on_down: Callable[[str, float], None] = lambda error, limit_s: None,
        on_up: Callable[[float, int], None] = lambda seconds, waiting: None,
        on_give_up: Callable[[str], None] = lambda message: None,
        probe_interval_s: float = PROBE_INTERVAL_S,
        never_reached_limit_s: float = NEVER_REACHED_LIMIT_S,
        release_batch: int = RELEASE_BATCH,
    ) -> None:
        self._probe = probe
        self.limit_s = limit_s
        self._on_down = on_down
        self._on_up = on_up
        self._on_give_up = on_give_up
        self._interval = probe_interval_s
        self._never_reached_limit_s = never_reached_limit_s
        self._release_batch = release_batch
        self._reached = reached
        #: The outage lasted too long, or the run is stopping: no more waiting.
        self.ended = False
        self.gave_up = False
        #: The run stopped (or the outage gave up) while the gateway was down.
        self.ended_down = False
        self.outages = 0
        self._down = False
        #: One future per waiting attempt, oldest first.
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._polls: set[asyncio.Future[bool]] = set()  # those of job polls
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def down(self) -> bool:
        return self._down

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def _waiting_polls(self) -> int:
        return sum(1 for w in self._waiters if not w.done() and w in self._polls)

    async def hold(self, error: str, *, poll: bool = False) -> bool:
        """Wait after a connect failure (``error``) until the gateway takes connections again.

        :param poll: the waiting attempt polls an async job (which stays recorded for collect
            if the outage gives up), not a request (which then ends as cancelled).
        :return: ``True`` once it does (try again), ``False`` if the outage gave up or the run
            is stopping (:meth:`release`).
        """
        if self.ended:
            return False
        loop = asyncio.get_running_loop()
        if not self._down:
            self._down = True
            self.outages += 1
            self._spawn(self._watch(error))
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        if poll:
            self._polls.add(waiter)
        try:
            return await waiter  # a cancelled waiter is skipped when the others are woken
        finally:
            self._polls.discard(waiter)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, error: str) -> None:
        started = time.monotonic()
        reached = self._reached()
        limit = self.limit_s if reached else min(self.limit_s, self._never_reached_limit_s)
        self._on_down(error, limit)
        while True:
            await asyncio.sleep(self._interval)
            left = limit - (time.monotonic() - started)
            try:
                # Not past the limit for a gateway whose connects hang (connect timeout 10 s).
                async with asyncio.timeout(max(left, self._interval)):
                    last = await self._probe()
            except TimeoutError:
                last = error
            except Exception as exc:  # never leave the waiters waiting on a dead probe
                last = f"{type(exc).__name__}: {exc}"
            if self.ended:
                return
            elapsed = time.monotonic() - started
            if last is None:
                self._down = False
                self._on_up(elapsed, self.waiting)
                self._spawn(self._release_paced())
                return
            error = last
            if elapsed >= limit:
                polls = self._waiting_polls()
                requests = self.waiting - polls
                self.gave_up = True
                self._end()
                parts = [
                    f"the gateway has been unreachable for "
                    f"{elapsed:.{1 if elapsed < 10 else 0}f} s ({error})"
                ]
                if requests or not polls:
                    parts.append(
                        f"{requests:,} request{'' if requests == 1 else 's'} waiting for it "
                        f"{'ends' if requests == 1 else 'end'} as cancelled, which a resume "
                        "sends again"
                    )
                if not reached:
                    parts.append("check --gateway")
                self._on_give_up("; ".join(parts))
                return

    async def _release_paced(self) -> None:
        """Wake the waiters oldest first, :data:`RELEASE_BATCH` per :data:`RELEASE_EVERY_S`:
        thousands of new connections at once (an open loop's waiting sends) would meet a
        gateway that has just come back with a full accept queue."""
        waiters = self._waiters
        while waiters and not self.ended and not self._down:  # down again: the next probe
            woken = 0
            while waiters and woken < self._release_batch:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(True)
                    woken += 1
            if waiters:
                await asyncio.sleep(RELEASE_EVERY_S)

    def _end(self) -> None:
        self.ended = True
        self.ended_down = self.ended_down or self._down
        self._down = False
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)

    def release(self) -> None:
        """The run is stopping: whatever waits ends now (as cancelled, never sent), and no
        attempt waits any more."""
        self._end()
        for task in list(self._tasks):
            task.cancel()

    async def aclose(self) -> None:
        """Stop probing (the session is ending); anything still waiting is told to give up."""
        tasks = list(self._tasks)
        self.release()
        await asyncio.gather(*tasks, return_exceptions=True)
