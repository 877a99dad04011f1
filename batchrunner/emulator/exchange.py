"""One messages request in flight (:class:`Exchange`): how it ends — a response, a drop, a stall,
the client leaving — and, once over, its ground-truth entry.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from batchrunner.emulator import faults as F
from batchrunner.emulator import groundtruth as G
from batchrunner.emulator import wire
from batchrunner.emulator.jobs import Job
from batchrunner.emulator.model import Plan
from batchrunner.emulator.protocol import HttpConnection, Request

if TYPE_CHECKING:
    from batchrunner.emulator.gateway import Gateway


class Exchange:
    """One messages request from arrival to its last byte (or its drop).

    Once over, the object itself is the request's ground-truth entry (its connection and body
    references are dropped): a slotted object is far smaller than a dict per request, and the
    dict is only built when someone reads the log.
    """

    __slots__ = (
        "conn",
        "done_at",
        "error_after",
        "error_type",
        "fallback_index",
        "fault",
        "first_byte_at",
        "first_token_at",
        "frames",
        "gw",
        "holds_slot",
        "i",
        "job",
        "job_id",
        "job_status",
        "kind",
        "model",
        "model_requested",
        "msg_id",
        "next_t",
        "outcome",
        "over",
        "plan",
        "provider",
        "received_at",
        "req",
        "request_id",
        "seq",
        "started_at",
        "started_pc",
        "status",
        "timer",
        "vk",
    )

    def __init__(self, gw: Gateway, conn: HttpConnection, req: Request) -> None:
        self.gw = gw
        self.conn = conn
        self.req = req
        self.received_at = req.received_at
        self.seq = -1
        self.outcome: str | None = None
        self.kind = "sync"
        self.request_id: str | None = None
        self.vk: str | None = None
        self.model_requested: str | None = None
        self.model: str | None = None
        self.provider: str | None = None
        self.fallback_index: int | None = None
        self.plan: Plan | None = None
        self.fault: str | None = None
        self.status: int | None = None
        self.error_type: str | None = None
        self.error_after: int | None = None
        self.started_at: float | None = None
        self.started_pc = 0.0
        self.first_byte_at: float | None = None
        self.first_token_at: float | None = None
        self.done_at: float | None = None
        self.job: Job | None = None
        self.job_id: str | None = None
        self.job_status: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.holds_slot = False
        self.over = False
        self.frames: list[bytes] | None = None
        self.i = 0
        self.next_t = 0.0
        self.msg_id = ""
        req.on_lost = self.lost

    # -- endings ----------------------------------------------------------------------------

    def respond(self, status: int, body: bytes, headers: bytes = b"") -> None:
        """Send a complete JSON response and end."""
        if self.over:
            return
        self.status = status
        conn, req = self.conn, self.req
        conn.write(wire.json_response(status, body, headers, close=not req.keep_alive))
        self.first_byte_at = self.done_at = time.time()
        self.end(G.OK if status < 400 else G.ERROR)
        conn.finish(req)

    def error(self, status: int, etype: str, message: str, headers: bytes = b"") -> None:
        self.error_type = etype
        self.respond(status, wire.error_body(etype, message), headers)

    def end(self, outcome: str) -> None:
        """Account for the request (once): counters, slot, timer, ground truth."""
        if self.over:
            return
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        gw = self.gw
        if self.holds_slot:
            self.holds_slot = False
            gw.slots.release()
        if self.done_at is None:
            self.done_at = time.time()
        self.outcome = outcome
        gw.gt.end(self.kind, outcome, self.status, self.fault)
        self.req.on_lost = None
        if gw.config.ground_truth:
            # Keep only what the entry needs; the body and connection may be large or reused.
            self.conn = self.req = self.gw = self.frames = None  # type: ignore[assignment]
            gw.gt.add(self)

    def lost(self) -> None:
        """The client closed the connection before the response was complete."""
        self.end(G.STALLED if self.fault == F.STALL else G.CLIENT_CLOSED)

    def drop(self) -> None:
        """Injected fault: close the connection without a response."""
        conn = self.conn
        self.end(G.DROPPED)
        conn.abort()

    def stall_over(self) -> None:
        self.timer = None
        conn = self.conn
        self.end(G.STALLED)
        conn.abort()

    def as_dict(self) -> dict[str, Any]:
        """This request's ground-truth entry as plain values (see ``docs/emulator.md``)."""
        p = self.plan
        u = p.usage if p is not None else None
        e: dict[str, Any] = {
            "seq": self.seq,
            "request_id": self.request_id,
            "response_id": self.msg_id or None,
            "kind": self.kind,
            "outcome": self.outcome,
            "http_status": self.status,
            "error_type": self.error_type,
            "fault": self.fault,
            "virtual_key": self.vk,
            "model_requested": self.model_requested,
            "model": self.model,
            "provider": self.provider,
            "fallback_index": self.fallback_index,
            "ttft_s": p.ttft_s if p is not None else None,
            "token_delays_s": list(p.token_delays_s) if p is not None else None,
            "stop_reason": p.stop_reason if p is not None else None,
            "input_tokens": u.input_tokens if u is not None else None,
            "output_tokens": u.output_tokens if u is not None else None,
            "cache_creation_input_tokens": u.cache_creation_input_tokens if u is not None else None,
            "cache_read_input_tokens": u.cache_read_input_tokens if u is not None else None,
            "cache_creation_5m_input_tokens": u.cache_creation_5m_input_tokens
            if u is not None
            else None,
            "cache_creation_1h_input_tokens": u.cache_creation_1h_input_tokens
            if u is not None
            else None,
            "service_tier": u.service_tier if u is not None else None,
            "speed": u.speed if u is not None else None,
            "inference_geo": u.inference_geo if u is not None else None,
            "error_after_tokens": self.error_after,
            "received_at": self.received_at,
            "started_at": self.started_at,
            "first_byte_at": self.first_byte_at,
            "first_token_at": self.first_token_at,
            "done_at": self.done_at,
            "job_id": self.job_id,
            "job_status": self.job_status,
        }
        if self.job is not None:
            e["job"] = self.job.timeline()
        return e
