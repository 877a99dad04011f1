"""Ground truth: what the emulator did for every request, and running counters.

One entry per handled messages request, appended when the request is over (so an entry never
changes after it is written, except the live ``job`` timeline of an async submit, which is read
from the job itself when the log is read). Entries are any objects with a ``seq`` attribute and
an ``as_dict()`` method; readers always get fresh dicts. Sequence numbers let readers fetch
increments (``since``). The log is bounded (oldest entries dropped) and can be switched off;
counters are always kept. All methods run on the server's event-loop thread.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from itertools import islice
from typing import Any, Protocol

# Outcomes (``outcome`` field and ``by_outcome`` counter).
OK = "ok"
ERROR = "error"
DROPPED = "dropped"
STALLED = "stalled"
STREAM_ERROR = "stream_error"
CLIENT_CLOSED = "client_closed"


class Entry(Protocol):
    """What the log stores: a sequence number and a way to render itself."""

    seq: int

    def as_dict(self) -> dict[str, Any]: ...


class GroundTruth:
    """The log and the counters.

    :param max_entries: most entries kept.
    """

    def __init__(self, max_entries: int) -> None:
        self._log: deque[Entry] = deque(maxlen=max_entries)
        self._next_seq = 0
        self.reset()

    def reset(self, in_flight: int = 0) -> None:
        """Clear the log and the counters (the sequence numbers keep counting up, so a reader
        holding ``since`` never re-reads old entries as new).

        :param in_flight: requests currently being served (kept, as they are still real).
        """
        self._log.clear()
        self._reset_seq = self._next_seq
        self.started_at = time.time()
        self.requests = 0
        self.by_kind: Counter[str] = Counter()
        self.by_outcome: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.in_flight = in_flight
        self.in_flight_max = in_flight
        self.connections_total = 0

    # -- request accounting -------------------------------------------------------------

    def begin(self) -> None:
        """A messages request arrived (complete) and is now in flight."""
        self.requests += 1
        n = self.in_flight = self.in_flight + 1
        if n > self.in_flight_max:
            self.in_flight_max = n

    def end(self, kind: str, outcome: str, status: int | None, fault: str | None) -> None:
        """A request is over; update counters."""
        self.in_flight -= 1
        self.by_kind[kind] += 1
        self.by_outcome[outcome] += 1
        self.by_status[str(status) if status is not None else "none"] += 1
        if fault is not None:
            self.faults[fault] += 1

    def fault(self, name: str) -> None:
        """Count a fault that is not tied to a request's end (e.g. an async job failure)."""
        self.faults[name] += 1

    def add(self, entry: Entry) -> None:
        """Append one entry (its ``seq`` is set here)."""
        entry.seq = self._next_seq
        self._next_seq += 1
        self._log.append(entry)

    # -- reading ----------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Entries pushed out of the bounded log since the last reset."""
        return (self._next_seq - len(self._log)) - self._reset_seq

    def read(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """Entries with ``seq >= since``, oldest first.

        :param since: first sequence number wanted (``next`` of a previous read).
        :param limit: most entries returned.
        :return: ``{"next": <seq to pass next time>, "dropped": <entries lost to the cap>,
            "entries": [...]}``.
        """
        first = self._next_seq - len(self._log)
        start = max(0, since - first)
        stop = None if limit is None else start + max(0, limit)
        out = [e.as_dict() for e in islice(self._log, start, stop)]
        nxt = out[-1]["seq"] + 1 if out else min(max(since, first), self._next_seq)
        return {"next": nxt, "dropped": self.dropped, "entries": out}

    def __len__(self) -> int:
        return len(self._log)
