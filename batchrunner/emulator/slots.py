"""Serving capacity: at most N pieces of model work at once, the rest wait in FIFO order.

Models a gateway/upstream with known capacity (``--slots``), for saturation tests. A waiter is a
plain callback, run when it gets a slot; a waiter whose request has meanwhile gone away simply
releases the slot again. Runs on the event-loop thread only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class Slots:
    """A FIFO capacity gate.

    :param capacity: most holders at once; ``0`` = unlimited (never queues).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0
        self.active_max = 0
        self.queued_max = 0
        self._queue: deque[Callable[[], None]] = deque()
        self._draining = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def reset_marks(self) -> None:
        """Restart the high-water marks from the current levels."""
        self.active_max = self.active
        self.queued_max = len(self._queue)

    def acquire(self, on_granted: Callable[[], None]) -> bool:
        """Take a slot now (and call ``on_granted`` at once) or queue for one.

        :return: ``True`` if granted immediately.
        """
        if self.capacity <= 0 or (self.active < self.capacity and not self._queue):
            self._grant()
            on_granted()
            return True
        self._queue.append(on_granted)
        if len(self._queue) > self.queued_max:
            self.queued_max = len(self._queue)
        return False

    def release(self) -> None:
        """Give a slot back; the oldest waiter (if any) gets it."""
        self.active -= 1
        self._drain()

    def _grant(self) -> None:
        self.active += 1
        if self.active > self.active_max:
            self.active_max = self.active

    def _drain(self) -> None:
        # Looping here (not recursing): a waiter may finish at once and release again.
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue and (self.capacity <= 0 or self.active < self.capacity):
                cb = self._queue.popleft()
                self._grant()
                cb()
        finally:
            self._draining = False
