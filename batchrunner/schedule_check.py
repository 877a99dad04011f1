"""Did an open loop keep its schedule? One rule for ``bench`` stages, ``run``'s summary and
``report``.

An open-loop run (``--rate``) draws a schedule (``scheduled_at``) and records when each request
was really sent (``sent_at``; ``queue_wait_s`` is the difference). A client that cannot keep up
(its CPU, or the in-flight cap ``-c`` reached while the gateway is slow) sends late: its
``total_s`` and ``queue_wait_s`` then measure its own backlog, and its rate is not the one asked
for. The rule judges the sends against the schedule the client actually drew (a Poisson
schedule of a few requests can be far off the nominal rate), never against the nominal rate.

:class:`ScheduleCheck` gathers what the rule needs from rows fed batch by batch (counts and
extremes per session; the send-lag distribution is the caller's, who may hold the values or
count them in two passes). A resumed run is judged over its sessions' own sending windows,
summed: the gap between a stop and its resume is no lateness.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_SEND_LAG_P99_S",
    "MIN_ACHIEVED_SHARE",
    "MIN_SEND_OVERRUN_S",
    "ScheduleCheck",
    "Session",
    "open_loop_sessions",
    "schedule_misses",
]

#: Open-loop sends lagging their schedule by more than this at p99 did not keep it.
MAX_SEND_LAG_P99_S = 0.01
#: Open-loop sends that came at less than this share of the rate of their own schedule (the
#: instants it drew, over the same requests; not the nominal rate, which a Poisson schedule of a
#: few requests can miss by far) fell behind it...
MIN_ACHIEVED_SHARE = 0.95
#: ... if they also took this much longer than their schedule: on a schedule of a few
#: milliseconds, 5 % is less than the send jitter that the p99 lag bound accepts.
MIN_SEND_OVERRUN_S = 0.01


def schedule_misses(achieved: float | None, scheduled: float | None, overrun: float | None,
                    lag_p99: float | None) -> list[str]:
    """Why sends did not keep their schedule (empty: they kept it).

    :param achieved: sent requests per second over the span of their sends.
    :param scheduled: the same requests per second over the span of their ``scheduled_at``.
    :param overrun: how much longer (s) the sends took than their schedule.
    :param lag_p99: 99th percentile of ``queue_wait_s`` (send lag) of the sent rows.
    """
    reasons = []
    if (achieved is not None and scheduled is not None and overrun is not None
            and achieved < MIN_ACHIEVED_SHARE * scheduled and overrun > MIN_SEND_OVERRUN_S):
        reasons.append(f"sent {achieved:,.1f}/s of the {scheduled:,.1f}/s scheduled")
    if lag_p99 is not None and lag_p99 > MAX_SEND_LAG_P99_S:
        reasons.append(f"send lag p99 {lag_p99 * 1000:,.1f} ms")
    return reasons


Session = tuple[float | None, float | None, int | None, int, int | None, int]


def open_loop_sessions(info: dict[str, Any]) -> list[Session]:
    """``(started_at, rate, in-flight cap, gateway outages, cap waits, rate-limited attempts)``
    of each session of a run, from its ``run.json`` (each session keeps the config it ran with:
    a resume may change ``--rate``); rate None for a closed-loop session; outages: how many times the session found
    the gateway could not be connected to (``gateway_outages``, 0 when not recorded); cap waits:
    how many times sending paused for the in-flight cap (``cap_waits``; None when not
    recorded: a closed loop, a session that died, or a run.json older than it); rate-limited
    attempts: the 429s its requests waited out (``rate_limited.attempts``, 0 when not
    recorded). A ``run.json`` without sessions gives one from its top-level config."""
    sessions = [s for s in info.get("sessions") or [] if isinstance(s, dict)]
    if not sessions:
        sessions = [{"config": info.get("config") or {}}]
    out = []
    for s in sessions:
        config = s.get("config") or {}
        rate = config.get("rate")
        limited = s.get("rate_limited")
        out.append((s.get("started_at"), float(rate) if rate else None,
                    config.get("in_flight_limit"), int(s.get("gateway_outages") or 0),
                    s.get("cap_waits"),
                    int(limited.get("attempts") or 0) if isinstance(limited, dict) else 0))
    return out


class ScheduleCheck:
    """Whether the open-loop sessions of a run kept their schedules, from rows fed in batches.

    A row belongs to the session that began last before its ``scheduled_at``; rows of closed-loop
    sessions (no rate) are left out. Per open-loop session, kept: the sent rows' count and the
    extremes of their ``sent_at`` and ``scheduled_at``. The rates are then over the sessions'
    spans summed, so that the time between sessions counts neither as sending nor as schedule.
    Only the open-loop sessions that sent rows are named in the verdict (their rates, caps and
    gateway outages): one that sent nothing (a ``--retry-failed`` with nothing to retry) had no
    schedule to keep.

    :param sessions: from :func:`open_loop_sessions`.
    """

    def __init__(self, sessions: Sequence[tuple[Any, ...]]) -> None:
        timed = [s for s in sessions if s[0] is not None] if len(sessions) > 1 else list(sessions)
        timed.sort(key=lambda s: s[0] or 0.0)
        self._rates = [s[1] for s in timed]
        self._caps = [s[2] for s in timed]
        self._outages = [int(s[3]) for s in timed]
        self._cap_waits = [s[4] if len(s) > 4 else None for s in timed]
        self._limited = [int(s[5]) if len(s) > 5 else 0 for s in timed]
        self._open = np.array([r is not None for r in self._rates], dtype=bool)
        self._splits = np.array([s[0] for s in timed[1:]], dtype=np.float64)
        k = len(timed)
        self._n = np.zeros(k, dtype=np.int64)
        self._sent = np.array([[np.inf] * k, [-np.inf] * k])
        self._sched = np.array([[np.inf] * k, [-np.inf] * k])

    @property
    def open_loop(self) -> bool:
        """Some session ran on a schedule (``--rate``)."""
        return bool(self._open.any())

    def _session(self, scheduled_at: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._splits, scheduled_at, side="right")

    def open_rows(self, scheduled_at: np.ndarray) -> np.ndarray:
        """Which rows were scheduled by an open-loop session (their send lag is judged)."""
        if not self._open.size:
            return np.zeros(scheduled_at.shape, dtype=bool)
        return self._open[self._session(scheduled_at)] & ~np.isnan(scheduled_at)

    def add(self, scheduled_at: np.ndarray, sent_at: np.ndarray) -> None:
        """Rows' ``scheduled_at`` and ``sent_at`` (float epoch seconds, NaN = none)."""
        mine = self.open_rows(scheduled_at) & ~np.isnan(sent_at)
        if not mine.any():
            return
        group = self._session(scheduled_at[mine])
        sent, sched = sent_at[mine], scheduled_at[mine]
        for g in np.unique(group).tolist():
            at = group == g
            self._n[g] += int(at.sum())
            self._sent[0, g] = min(self._sent[0, g], float(sent[at].min()))
            self._sent[1, g] = max(self._sent[1, g], float(sent[at].max()))
            self._sched[0, g] = min(self._sched[0, g], float(sched[at].min()))
            self._sched[1, g] = max(self._sched[1, g], float(sched[at].max()))

    def result(self, send_lag: dict[str, Any] | None) -> dict[str, Any] | None:
        """The verdict, or None for a run with no open-loop session.

        :param send_lag: distribution (``n``, ``p50``, ``p99``, ``max``, ...) of ``queue_wait_s``
            over the rows :meth:`open_rows` selects, every status (a failed request was sent
            too), or None.
        :return: ``{kept, reasons, target_rates, in_flight_caps, gateway_outages, cap_waits,
            rate_limited, rows_used, sessions, achieved_send_rate, scheduled_send_rate, send_span_s,
            send_overrun_s, send_lag_s}``; rates, caps, outages and cap waits of the open-loop
            sessions that sent rows (cap waits None unless every one of them recorded its own).
        """
        if not self.open_loop:
            return None
        used = (self._n > 1) & self._open
        intervals = int((self._n[used] - 1).sum())
        span = float((self._sent[1] - self._sent[0])[used].sum()) if used.any() else 0.0
        sched = float((self._sched[1] - self._sched[0])[used].sum()) if used.any() else 0.0
        achieved = intervals / span if span > 0 else None
        scheduled = intervals / sched if sched > 0 else None
        overrun = span - sched if used.any() else None
        lag = {k: send_lag.get(k) for k in ("p50", "p99", "max")} if send_lag and send_lag.get(
            "n") else None
        reasons = schedule_misses(achieved, scheduled, overrun, lag["p99"] if lag else None)
        sent = ((self._n > 0) & self._open).tolist()
        waits = [w for w, o in zip(self._cap_waits, sent, strict=True) if o]
        return {
            "kept": not reasons,
            "reasons": reasons,
            "target_rates": _distinct(r for r, o in zip(self._rates, sent, strict=True) if o),
            "in_flight_caps": _distinct(c for c, o in zip(self._caps, sent, strict=True)
                                        if o and c is not None),
            "gateway_outages": sum(n for n, o in zip(self._outages, sent, strict=True) if o),
            "cap_waits": (sum(waits) if waits and all(type(w) is int for w in waits)
                          else None),
            "rate_limited": sum(n for n, o in zip(self._limited, sent, strict=True) if o),
            "rows_used": int(self._n.sum()),
            "sessions": int(used.sum()),
            "achieved_send_rate": achieved,
            "scheduled_send_rate": scheduled,
            "send_span_s": span if used.any() else None,
            "send_overrun_s": overrun,
            "send_lag_s": lag,
        }


def _distinct(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))
