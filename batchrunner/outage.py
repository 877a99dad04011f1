"""Riding out a gateway that cannot be connected to: attempts wait instead of spending retries.

A connect failure (refused, unreachable, a connect timeout) means the gateway never saw the
request, so waiting for it costs nothing but time. Retried on the usual back-off instead, a
request spent its few retries in about a second (full jitter draws short waits): a gateway
restart of ~2 s turned hundreds of requests into error rows and stopped the run.

So the first connect failure marks the gateway down. Attempts that fail to connect then wait
(:meth:`GatewayOutage.hold`) while a probe tries a new connection every
:data:`PROBE_INTERVAL_S`; the first that succeeds wakes them all, in the order they came, and
each tries again without counting it as a retry. If the gateway stays unreachable for
``limit_s`` (at most :data:`NEVER_REACHED_LIMIT_S` when nothing in this session has reached
it yet: most likely a wrong address), the outage gives up: the waiting attempts end as
``cancelled`` rows, which a plain resume sends again, and the run stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: Time between two probes while the gateway is down.
PROBE_INTERVAL_S = 0.25
#: How long a gateway that this session has never reached may stay unreachable.
NEVER_REACHED_LIMIT_S = 10.0
#: A request that fails to connect more often than this (a gateway that accepts the probe's
#: connections but not the requests') spends retries as before.
MAX_HOLDS_PER_REQUEST = 20

#: ``probe()``: ``None`` when a new connection could be made, else why not.
Probe = Callable[[], Awaitable[str | None]]


class GatewayOutage:
    """The gateway's reachability, shared by every request of a session.

    :param probe: tries one new connection.
    :param limit_s: longest outage waited out (``--max-outage``).
    :param reached: whether a connection to the gateway was ever made in this session.
    :param on_down: called with the error text when the gateway is first found down.
    :param on_up: called with the outage's length and how many attempts were waiting.
    :param on_give_up: called with a message once the outage lasted too long.
    """

    def __init__(
        self,
        probe: Probe,
        limit_s: float,
        *,
        reached: Callable[[], bool] = lambda: True,
        on_down: Callable[[str], None] = lambda error: None,
        on_up: Callable[[float, int], None] = lambda seconds, waiting: None,
        on_give_up: Callable[[str], None] = lambda message: None,
        probe_interval_s: float = PROBE_INTERVAL_S,
        never_reached_limit_s: float = NEVER_REACHED_LIMIT_S,
    ) -> None:
        self._probe = probe
        self.limit_s = limit_s
        self._on_down = on_down
        self._on_up = on_up
        self._on_give_up = on_give_up
        self._interval = probe_interval_s
        self._never_reached_limit_s = never_reached_limit_s
        self._reached = reached
        self.gave_up = False
        self.waiting = 0
        self.outages = 0
        self._back: asyncio.Future[bool] | None = None
        self._prober: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return self._back is not None

    async def hold(self, error: str) -> bool:
        """Wait after a connect failure (``error``) until the gateway takes connections again.

        :return: ``True`` once it does (try again), ``False`` if the outage gave up.
        """
        if self.gave_up:
            return False
        if self._back is None:
            self._back = asyncio.get_running_loop().create_future()
            self._prober = asyncio.get_running_loop().create_task(self._watch(error))
            self.outages += 1
            self._on_down(error)
        back = self._back
        self.waiting += 1
        try:
            # Shielded: one cancelled waiter (Ctrl-C twice) must not end the others' wait.
            return await asyncio.shield(back)
        finally:
            self.waiting -= 1

    async def _watch(self, error: str) -> None:
        started = time.monotonic()
        reached = self._reached()
        limit = self.limit_s if reached else min(self.limit_s, self._never_reached_limit_s)
        while True:
            await asyncio.sleep(self._interval)
            try:
                last = await self._probe()
            except Exception as exc:  # never leave the waiters waiting on a dead probe
                last = f"{type(exc).__name__}: {exc}"
            elapsed = time.monotonic() - started
            if last is None:
                self._end(True)
                self._on_up(elapsed, self.waiting)
                return
            error = last
            if elapsed >= limit:
                self.gave_up = True
                waiting = self.waiting
                self._end(False)
                self._on_give_up(
                    f"the gateway has been unreachable for {elapsed:.0f} s ({error}); "
                    f"{waiting:,} request{'' if waiting == 1 else 's'} waiting for it "
                    f"{'ends' if waiting == 1 else 'end'} as cancelled, which a resume sends again"
                    + ("" if reached else "; check --gateway")
                )
                return

    def _end(self, reachable: bool) -> None:
        back, self._back, self._prober = self._back, None, None
        if back is not None and not back.done():
            back.set_result(reachable)

    async def aclose(self) -> None:
        """Stop probing (the session is ending); anything still waiting is told to give up."""
        prober = self._prober
        self._end(False)
        if prober is not None:
            prober.cancel()
            await asyncio.gather(prober, return_exceptions=True)
