"""Riding out a gateway that rate-limits (HTTP 429): 429s spend no retries, and a model whose
requests keep meeting them is slowed down.

Bifrost's governance answers a virtual key over its request or token limit with 429 and no
``retry-after`` (protocol spec §8), and its limits reset per window (a minute to a month). On
the usual back-off a request spent its four retries within ~4 s and became an error row: a key
limited to 20 requests/s turned 132 of a 600-request run at ``-c 32`` into ``rate_limited``
rows, and a key whose hourly limit ran out would have failed the rest of a 2M-row set.

A 429 was not processed, so sending it again costs nothing but time. So:

* a 429'd request waits (its ``retry-after``; else, while its model is under pressure, below,
  up to :data:`PRESSED_RETRY_S`, the model's pace spacing its sends; else the usual jittered
  back-off, growing with each 429 it meets) and is sent again without using up a retry
  (``attempts`` counts it);
* per model (Bifrost also limits per model, and one model's limit must not slow the others),
  once :data:`PRESSURE` of the model's last :data:`RECENT_ANSWERS` answers were 429s, fewer of
  its requests may be in flight: half as many at each new burst of 429s (a 429 of a request
  sent before the last cut belongs to the burst already answered), one more per window's worth
  of successes (TCP's congestion control, in short). A 429 now and then (a gateway's sporadic
  ones) slows nothing down: cutting on each would have held the whole model to a few requests;
* when the model has had no success for :data:`WALL_AFTER_S` while its 429s go on (a limit
  that ran out), each new burst also pauses its sends: :data:`BASE_PAUSE_S`, doubling up to
  :data:`MAX_PAUSE_S`. (Counting bursts alone paused a key of 10 requests/s after every
  success, whose next sends come too early for the bucket: one success a second);
* a request that alone keeps getting 429 while others of its model succeed freely (larger than
  a token limit, say) spends retries as before after :data:`MAX_HOLDS_PER_REQUEST` such
  answers, or after :data:`ALONE_AT_A_WALL` once nothing else of its model is answered (the
  end of a run: else it would wait out the whole ``limit_s``);
* a model with no success for ``limit_s`` while rate-limited ends the waiting: the run stops,
  and the waiting requests end as ``cancelled`` rows, which a resume sends again.

Nothing here runs before a first 429 (one attribute check per request), and bench stages never
use it: there a 429 is the gateway's figure.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

#: A model is slowed down once this many of its last :data:`RECENT_ANSWERS` answers were 429s.
PRESSURE = 4
RECENT_ANSWERS = 20
#: A model rate-limited this long with no success has run out of its limit: its sends pause.
WALL_AFTER_S = 1.0
#: First pause of such a model's sends; doubles for each further burst of 429s.
BASE_PAUSE_S = 0.5
#: Longest pause: Bifrost's shortest limit window is a minute.
MAX_PAUSE_S = 60.0
#: A 429'd request of a model under pressure is sent again within this (jittered): the model's
#: window and pauses pace it, not a back-off of its own.
PRESSED_RETRY_S = 0.5
#: 429s a request may meet while others of its model succeed freely (the model not under
#: pressure) before it spends retries...
MAX_HOLDS_PER_REQUEST = 8
#: ... or this many, once its model has had no success for :data:`WALL_AFTER_S` (a limit that
#: ran out then costs a few error rows at most: those alone before the pressure built).
ALONE_AT_A_WALL = 1


class ModelGate:
    """The pace of one model's requests once the gateway has answered one of them 429."""

    def __init__(self, owner: RateLimits, model: str) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self.model = model
        #: Requests of the model allowed in flight (no limit until it is slowed down).
        self.window = math.inf
        #: Attempts admitted by :meth:`acquire` and not yet released.
        self.in_flight = 0
        self.closed_until = 0.0  # loop.time()
        self.pauses = 0  # pauses since the last success
        self.cut_at = -math.inf  # perf_counter of the last cut
        self.successes = 0
        self.limited_since: float | None = None  # monotonic: first 429 since the last success
        self.limited = 0  # 429s met
        self.waited_out = 0  # of them, sent again without spending a retry
        self.smallest_window = math.inf
        self._recent: deque[bool] = deque(maxlen=RECENT_ANSWERS)  # True: a 429
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._wake: asyncio.TimerHandle | None = None

    @property
    def slowed(self) -> bool:
        """Whether the model's requests are being held to a window."""
        return self.window != math.inf

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def pressed(self) -> bool:
        """Whether the model's recent answers hold enough 429s to slow it down: its 429s are
        then its limit's, not one request's own."""
        return sum(self._recent) >= PRESSURE

    def _has_room(self) -> bool:
        return self._loop.time() >= self.closed_until and self.in_flight < self.window

    async def acquire(self) -> bool:
        """Wait for the pause to end and for room in the window; ``False`` once the waiting has
        ended (the run is stopping, or a model stayed rate-limited too long): do not send."""
        if self._owner.ended:
            return False
        if not self._waiters and self._has_room():
            self.in_flight += 1
            return True
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiters.append(waiter)
        self._admit()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()  # admitted, then cancelled before it could send
            raise

    def release(self) -> None:
        """An attempt admitted by :meth:`acquire` has ended."""
        self.in_flight -= 1
        if self._waiters:
            self._admit()

    def _admit(self) -> None:
        """Let waiters go, oldest first, while no pause holds and the window has room."""
        waiters = self._waiters
        if self._loop.time() < self.closed_until:
            if self._wake is None:
                self._wake = self._loop.call_at(self.closed_until, self._reopen)
            return
        while waiters and self.in_flight < self.window:
            waiter = waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(True)

    def _reopen(self) -> None:
        self._wake = None
        self._admit()

    def on_limited(self, sent: float, in_flight: int) -> bool:
        """An attempt sent at *sent* (``perf_counter``) was answered 429; *in_flight*: the
        requests in flight to halve at a first cut. ``True`` if this 429 cut the window (a new
        burst under pressure)."""
        self.limited += 1
        self._recent.append(True)
        if self.limited_since is None:
            self.limited_since = time.monotonic()
        if not self.pressed or sent < self.cut_at:
            return False  # a sporadic 429, or one of a burst already answered
        base = self.in_flight if self.slowed else in_flight
        self.window = float(max(1, base // 2))
        self.smallest_window = min(self.smallest_window, self.window)
        self.cut_at = time.perf_counter()
        if self.limited_for() >= WALL_AFTER_S:  # no success for a while: the limit ran out
            self.pauses += 1
            pause = min(MAX_PAUSE_S, BASE_PAUSE_S * 2 ** (self.pauses - 1))
            # Never past the end of the waiting: the 429 that ends it comes on time.
            pause = max(0.0, min(pause, self._owner.limit_s - self.limited_for()))
            until = self._loop.time() + pause
            if until > self.closed_until:
                self.closed_until = until
                if self._wake is not None:  # armed for the earlier instant: again, for this one
                    self._wake.cancel()
                    self._wake = self._loop.call_at(until, self._reopen)
        return True

    def on_success(self) -> None:
        self._recent.append(False)
        self.successes += 1
        self.pauses = 0
        self.limited_since = None
        if self.slowed:
            self.window += 1.0 / self.window
            if self._waiters:
                self._admit()

    def limited_for(self) -> float:
        """Seconds since the first 429 with no success after it (0 when not limited)."""
        return 0.0 if self.limited_since is None else time.monotonic() - self.limited_since

    def end(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)


class RateLimits:
    """The gates of a session's models that met 429s.

    :param limit_s: longest time a model may stay rate-limited with no success.
    :param in_flight: the session's requests in flight (a model's first cut halves it).
    :param on_slowed: called with the model and the 429's text when a model is first slowed.
    :param on_give_up: called with a message when a model stayed limited past ``limit_s``.
    """

    def __init__(
        self,
        limit_s: float,
        in_flight: Callable[[], int],
        *,
        on_slowed: Callable[[str, str], None] = lambda model, error: None,
        on_give_up: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.limit_s = limit_s
        self._in_flight = in_flight
        self._on_slowed = on_slowed
        self._on_give_up = on_give_up
        self.gates: dict[str, ModelGate] = {}
        #: Whether any model has met a 429 in this session (nothing runs before).
        self.active = False
        #: The waiting has ended: the run is stopping, or a model stayed limited too long.
        self.ended = False
        #: The model that stayed rate-limited past ``limit_s``, if one did.
        self.gave_up_on: str | None = None
        #: Requests resting after a 429 before they are sent again (a stop ends them at once).
        self.resting = 0

    def gate(self, model: str) -> ModelGate | None:
        return self.gates.get(model)

    @property
    def waiting(self) -> int:
        """Requests that only wait for a rate limit: queued at a model's gate, or resting after
        a 429 before they are sent again."""
        return self.resting + sum(g.waiting for g in self.gates.values())

    @property
    def limited(self) -> int:
        """429s met by the session's requests."""
        return sum(g.limited for g in self.gates.values())

    @property
    def waited_out(self) -> int:
        """Of them, those sent again without spending a retry."""
        return sum(g.waited_out for g in self.gates.values())

    def _gate_of(self, model: str) -> ModelGate:
        """*model*'s gate, made at its first 429 (from then on its requests pass through it)."""
        gate = self.gates.get(model)
        if gate is None:
            gate = self.gates[model] = ModelGate(self, model)
            self.active = True
        return gate

    def on_limited(self, model: str, sent: float, error: str) -> ModelGate:
        """An attempt of *model* sent at *sent* was answered 429 (*error*: its text)."""
        gate = self._gate_of(model)
        first = not gate.slowed
        if gate.on_limited(sent, self._in_flight()) and first:
            self._on_slowed(model, error)
        if not self.ended and gate.limited_for() >= self.limit_s:
            self._give_up(gate, error)
        return gate

    def late_429(self, model: str) -> None:
        """An attempt of *model* in flight when the waiting ended was answered 429: counted as
        the 429 that ended it is (not sent again, no retry spent), and nothing more."""
        gate = self._gate_of(model)
        gate.limited += 1
        gate.waited_out += 1

    def _give_up(self, gate: ModelGate, error: str) -> None:
        seconds = gate.limited_for()
        self.gave_up_on = gate.model
        self.end()
        self._on_give_up(
            f"the gateway has rate-limited every request for {gate.model} for {seconds:.0f} s "
            f"({error}; --max-rate-limit-wait {self.limit_s:g}); the requests waiting for a "
            "rate limit end as cancelled, which a resume sends again once the limit has reset"
        )

    def describe(self) -> dict[str, object]:
        """For ``run.json`` and the closing summary: 429s met, and how far each model that met
        them was slowed down (``fewest_in_flight`` null: never)."""
        return {
            "attempts": self.limited,
            "waited_out": self.waited_out,
            "models": {
                model: {"attempts": g.limited, "waited_out": g.waited_out,
                        "fewest_in_flight": (None if g.smallest_window == math.inf
                                             else int(g.smallest_window))}
                for model, g in self.gates.items()
            },
            "gave_up_on": self.gave_up_on,
        }

    def end(self) -> None:
        """Whatever waits ends now (not sent), and nothing waits any more."""
        self.ended = True
        for gate in self.gates.values():
            gate.end()
