"""The emulated gateway: routing, the ``POST /anthropic/v1/messages`` contract and async jobs.

Request flow on the messages route follows the gateway's router (see
``specs/bifrost-anthropic-protocol.md`` §3): ``x-bf-async-id`` → poll (before the body is even
parsed); body → ``Invalid JSON``; validation; ``fallbacks``; ``x-bf-async`` → job; else virtual
key check, per-key rate limit, injected status faults, a capacity slot, the first working model,
and finally the response — at once, after a timer (sync), or token by token (SSE). Nothing here
blocks: delays are ``loop.call_at`` timers. Everything runs on one event-loop thread.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from batchrunner.emulator import faults as F
from batchrunner.emulator import jobs as J
from batchrunner.emulator import streaming, wire
from batchrunner.emulator.admin import handle_admin, handle_count_tokens, reply
from batchrunner.emulator.checks import caller_key, parse_fallbacks, split_model, validate
from batchrunner.emulator.config import EmulatorConfig, serving
from batchrunner.emulator.exchange import Exchange
from batchrunner.emulator.faults import FaultPicker, RateLimiter
from batchrunner.emulator.groundtruth import GroundTruth
from batchrunner.emulator.jobs import Job, JobStore
from batchrunner.emulator.model import Plan, PromptCache, make_plan
from batchrunner.emulator.protocol import HttpConnection, Request
from batchrunner.emulator.slots import Slots

MESSAGES_PATH = b"/anthropic/v1/messages"
COUNT_TOKENS_PATH = b"/anthropic/v1/messages/count_tokens"
#: How often expired jobs are swept (the gateway's cleaner runs every minute; reads are lazy).
JOB_SWEEP_S = 60.0

_INVALID_JSON = wire.error_body("", "Invalid JSON")
_NOT_FOUND_JOB = wire.error_body("", "job not found or expired")
_ASYNC_STREAM = wire.error_body("", "streaming is not supported for async requests")
_ASYNC_CREATE = wire.error_body("", "failed to create async job")
_VK_REQUIRED = wire.error_body(
    "virtual_key_required", "virtual key is required. Provide a virtual key via the x-bf-vk header."
)
_VK_NOT_FOUND = wire.error_body(
    "virtual_key_not_found",
    "virtual key not found. The provided virtual key does not exist or has been revoked.",
)
_HEALTH = wire.json_response(200, b'{"status":"ok"}')
_HEADER_CACHE: dict[tuple[str, str, int], bytes] = {}


class Gateway:
    """The application behind every connection of one emulator instance.

    :param config: live configuration (read on every request).
    :param loop: the loop it runs on.
    """

    def __init__(self, config: EmulatorConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        serving(config, True)  # its fixed fields are read below, once
        self._closed = False
        self.loop = loop
        self.gt = GroundTruth(config.ground_truth_max)
        self.jobs = JobStore(config.job_store_max)
        self.cache = PromptCache(config.prompt_cache_max)
        self.faults = FaultPicker(config.seed)
        self.limiter = RateLimiter()
        self.slots = Slots(config.slots)
        self.connections: set[HttpConnection] = set()
        self._sweeper = loop.call_later(JOB_SWEEP_S, self._sweep)

    # -- lifecycle ----------------------------------------------------------------------------

    def connection_opened(self, conn: HttpConnection) -> None:
        self.connections.add(conn)
        self.gt.connections_total += 1

    def connection_closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)

    def _sweep(self) -> None:
        self.jobs.sweep()
        self._sweeper = self.loop.call_later(JOB_SWEEP_S, self._sweep)

    def _drop_jobs(self) -> None:
        for job in self.jobs.clear():
            job.cancelled = True
            if job.timer is not None:
                job.timer.cancel()
                job.timer = None
            if job.holds_slot:
                job.holds_slot = False
                self.slots.release()

    def reset(self) -> None:
        """Forget ground truth, counters, jobs, prompt cache and rate-limit state; restart the
        fault sequence from the seed. Requests in flight are served normally."""
        self._drop_jobs()
        self.gt.reset(in_flight=self.gt.in_flight)
        self.cache.clear()
        self.limiter.clear()
        self.faults = FaultPicker(self.config.seed)
        self.slots.reset_marks()

    def close(self) -> None:
        """Stop everything: abort every connection (stalled ones too) and cancel job timers."""
        if not self._closed:
            self._closed = True
            serving(self.config, False)
        self._sweeper.cancel()
        self._drop_jobs()
        for conn in list(self.connections):
            conn.abort()

    def stats(self) -> dict[str, Any]:
        """Counters (see ``docs/emulator.md``)."""
        gt = self.gt
        now = time.time()
        return {
            "requests": gt.requests,
            "in_flight": gt.in_flight,
            "in_flight_max": gt.in_flight_max,
            "by_kind": dict(gt.by_kind),
            "by_outcome": dict(gt.by_outcome),
            "by_status": dict(gt.by_status),
            "faults": dict(gt.faults),
            "slots": self.slots.capacity,
            "active": self.slots.active,
            "active_max": self.slots.active_max,
            "queued": self.slots.queued,
            "queued_max": self.slots.queued_max,
            "jobs": self.jobs.counts(),
            "connections": len(self.connections),
            "connections_total": gt.connections_total,
            "prompt_cache_entries": len(self.cache),
            "ground_truth_entries": len(gt),
            "ground_truth_dropped": gt.dropped,
            "started_at": gt.started_at,
            "uptime_s": now - gt.started_at,
        }

    # -- routing ------------------------------------------------------------------------------

    def handle(self, conn: HttpConnection, req: Request) -> None:
        path = req.path
        if path == MESSAGES_PATH:
            if req.method == b"POST":
                self._messages(conn, req)
            else:
                reply(
                    conn, req, 405, wire.error_body("invalid_request_error", "method not allowed")
                )
        elif path == b"/health":
            conn.write(_HEALTH)
            conn.finish(req)
        elif path.startswith(b"/_emulator/"):
            handle_admin(self, conn, req)
        elif path == COUNT_TOKENS_PATH and req.method == b"POST":
            handle_count_tokens(self, conn, req)
        else:
            reply(
                conn,
                req,
                404,
                wire.error_body("not_found_error", f"no route for {path.decode('latin-1')}"),
            )

    # -- the messages route ---------------------------------------------------------------

    def _messages(self, conn: HttpConnection, req: Request) -> None:
        cfg = self.config
        h = req.headers
        ex = Exchange(self, conn, req)
        self.gt.begin()
        rid = h.get(b"x-request-id")
        if rid:
            ex.request_id = rid.decode("latin-1")
        elif cfg.ground_truth:
            ex.request_id = str(uuid.uuid4())
        ex.vk = caller_key(h)

        job_id = h.get(b"x-bf-async-id")
        if job_id:
            ex.kind = "async_poll"
            if self._transport_fault(ex):
                return
            return self._poll(ex, job_id.decode("latin-1").strip())

        is_async = bool(h.get(b"x-bf-async"))
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            ex.kind = "async_submit" if is_async else "sync"
            if self._transport_fault(ex):
                return
            ex.error_type = ""
            return ex.respond(400, _INVALID_JSON)
        ex.kind = (
            "async_submit" if is_async else ("stream" if body.get("stream") is True else "sync")
        )
        if self._transport_fault(ex):
            return
        problem = validate(body)
        if problem is not None:
            return ex.error(400, "invalid_request_error", problem)
        ex.model_requested = body["model"]
        fallbacks = parse_fallbacks(body)
        if isinstance(fallbacks, str):
            return ex.error(400, "", fallbacks)
        if is_async:
            return self._submit(ex, body, fallbacks)

        # Governance (key, rate limit), then the upstream call.
        if cfg.virtual_keys and not self._key_ok(ex):
            return
        if cfg.rate_limit_rps > 0:
            wait = self.limiter.check(
                ex.vk or "", self.loop.time(), cfg.rate_limit_rps, cfg.rate_limit_burst
            )
            if wait > 0:
                ex.fault = F.KEY_RATE_LIMIT
                # No retry-after: Bifrost's governance sets none (protocol spec §8), so a
                # client must find its own pace; sending one here flattered clients in tests.
                return ex.error(
                    429, "rate_limited", "rate limit exceeded for this virtual key (emulated)"
                )
        fault = self.faults.status(cfg)
        if fault is not None:
            ex.fault = fault
            status = F.STATUS_OF[fault]
            etype = wire.error_type_for(status)
            headers = b"retry-after: %d\r\n" % cfg.retry_after_s if status == 429 else b""
            return ex.error(status, etype, wire.message_for(etype), headers)
        self._with_slot(ex, lambda: self._serve(ex, body, fallbacks))

    def _with_slot(self, ex: Exchange, then: Any) -> None:
        def granted() -> None:
            if ex.over:  # the client left while queued
                self.slots.release()
                return
            ex.holds_slot = True
            then()

        self.slots.acquire(granted)

    def _transport_fault(self, ex: Exchange) -> bool:
        fault = self.faults.transport(self.config)
        if fault is None:
            return False
        ex.fault = fault
        if fault == F.DROP:
            ex.drop()
        else:
            # A stall answers nothing, so a client EOF ends it (as a client timeout would)
            # instead of keeping a half-closed connection for stall_s.
            ex.req.close_on_eof = True
            ex.timer = self.loop.call_later(self.config.stall_s, ex.stall_over)
        return True

    def _key_ok(self, ex: Exchange) -> bool:
        cfg = self.config
        if ex.vk is None:
            if not cfg.require_virtual_key:
                return True
            ex.error_type = "virtual_key_required"
            ex.respond(401, _VK_REQUIRED)
            return False
        if ex.vk not in cfg.virtual_keys:
            ex.error_type = "virtual_key_not_found"
            ex.respond(401, _VK_NOT_FOUND)
            return False
        return True

    def _resolve(self, model: str, fallbacks: list[str]) -> tuple[str, str, int, bool]:
        """(provider, model, fallback index, ok) of the first model that is not failing."""
        fail = self.config.fail_models
        prov, name = split_model(model, "anthropic")
        if not fail or not (model in fail or name in fail or f"{prov}/{name}" in fail):
            return prov, name, 0, True
        for i, fb in enumerate(fallbacks, 1):
            p, n = split_model(fb, prov)
            if not (fb in fail or n in fail or f"{p}/{n}" in fail):
                return p, n, i, True
        return prov, name, 0, False

    def _serve(self, ex: Exchange, body: dict[str, Any], fallbacks: list[str]) -> None:
        cfg = self.config
        ex.started_at = time.time()
        ex.started_pc = time.perf_counter()
        prov, model, idx, ok = self._resolve(body["model"], fallbacks)
        ex.provider, ex.model, ex.fallback_index = prov, model, idx
        if not ok:
            ex.fault = F.MODEL_FAILURE
            st = cfg.fail_model_status
            return ex.error(st, wire.error_type_for(st), f"model {model} is failing (emulated)")
        ex.plan = plan = make_plan(cfg, ex.req.body, body, model, self.cache, self.loop.time())
        ex.msg_id = wire.new_message_id()
        if ex.kind == "stream":
            k = self.faults.midstream(cfg, plan.usage.output_tokens)
            if k is not None:
                ex.fault = F.MIDSTREAM
            return streaming.start(ex, self.loop, self._bifrost_headers(ex), cfg.stream_ping, k)
        dur = plan.duration_s
        if dur <= 0.0:
            self._sync_reply(ex)
        else:
            ex.timer = self.loop.call_later(dur, self._sync_reply, ex)

    def _bifrost_headers(self, ex: Exchange) -> bytes:
        key = (ex.provider or "", ex.model or "", ex.fallback_index or 0)
        h = _HEADER_CACHE.get(key)
        if h is None:
            h = b"x-bifrost-provider: %s\r\nx-bifrost-resolved-model: %s\r\n" % (
                wire.header_value(key[0]),
                wire.header_value(key[1]),
            )
            if key[2]:
                h += b"x-bifrost-fallback-index: %d\r\n" % key[2]
            if len(_HEADER_CACHE) > 4096:
                _HEADER_CACHE.clear()
            _HEADER_CACHE[key] = h
        return h

    def _sync_reply(self, ex: Exchange) -> None:
        ex.timer = None
        if ex.over:
            return
        plan = ex.plan
        assert plan is not None
        latency_ms = (time.perf_counter() - ex.started_pc) * 1000.0
        headers = (
            self._bifrost_headers(ex) + b"x-bifrost-upstream-latency-ms: %.3f\r\n" % latency_ms
        )
        body = wire.message_body(
            ex.msg_id, ex.model or "", plan.text(), plan.stop_reason, plan.usage
        )
        ex.respond(200, body, headers)

    # -- async jobs ---------------------------------------------------------------------------

    def _submit(self, ex: Exchange, body: dict[str, Any], fallbacks: list[str]) -> None:
        cfg = self.config
        if body.get("stream") is True:
            ex.error_type = ""
            return ex.respond(400, _ASYNC_STREAM)
        if cfg.virtual_keys and ex.vk is not None and ex.vk not in cfg.virtual_keys:
            # SubmitJob looks the key up in the governance store and fails the submit.
            ex.error_type = ""
            return ex.respond(400, _ASYNC_CREATE)
        ttl = J.parse_ttl(ex.req.headers.get(b"x-bf-async-job-result-ttl"), cfg.job_result_ttl_s)
        if ex.request_id is None:
            ex.request_id = str(uuid.uuid4())
        self.jobs.max_jobs = cfg.job_store_max  # a live option
        try:
            job = self.jobs.create(ex.vk, ttl, ex.request_id)
        except J.JobStoreFull:
            # Full of unfinished jobs: refuse the submit the way the gateway answers a job insert
            # its store rejects, rather than drop a job some client is still waiting for.
            ex.error_type = ""
            return ex.respond(400, _ASYNC_CREATE)
        ex.job = job
        ex.job_id = job.id

        # Everything the job will do is decided now (governance runs inside the job, so its
        # rejections become failed jobs); the job's clock starts when it gets a slot.
        prov, model, idx, ok = self._resolve(body["model"], fallbacks)
        ex.provider, ex.model, ex.fallback_index = prov, model, idx
        ex.plan = make_plan(cfg, ex.req.body, body, model, self.cache, self.loop.time())
        failure: tuple[int, str, str] | None = None
        if cfg.virtual_keys and ex.vk is None and cfg.require_virtual_key:
            failure = (
                401,
                "virtual_key_required",
                "virtual key is required. Provide a virtual key via the x-bf-vk header.",
            )
        elif (
            cfg.rate_limit_rps > 0
            and self.limiter.check(
                ex.vk or "", self.loop.time(), cfg.rate_limit_rps, cfg.rate_limit_burst
            )
            > 0
        ):
            job.fault = F.KEY_RATE_LIMIT
            failure = (429, "rate_limited", "rate limit exceeded for this virtual key (emulated)")
        elif not ok:
            job.fault = F.MODEL_FAILURE
            st = cfg.fail_model_status
            failure = (st, wire.error_type_for(st), f"model {model} is failing (emulated)")
        elif self.faults.job(cfg):
            job.fault = F.JOB_FAILURE
            st = cfg.job_failure_status
            etype = wire.error_type_for(st)
            failure = (st, etype, wire.message_for(etype))
        ex.job_status = job.status
        ex.msg_id = msg_id = wire.new_message_id() if failure is None else ""
        ex.respond(200, wire.async_stub(job.id))
        self.loop.call_soon(self._job_begin, job, ex.plan, model, msg_id, failure)

    def _job_begin(
        self, job: Job, plan: Plan, model: str, msg_id: str, failure: tuple[int, str, str] | None
    ) -> None:
        if job.cancelled:
            return
        job.status = J.PROCESSING
        job.started_at = time.time()

        def granted() -> None:
            if job.cancelled:
                self.slots.release()
                return
            job.holds_slot = True
            # A failure comes back when the first token would have; a success takes the full time.
            delay = plan.ttft_s if failure is not None else plan.duration_s
            job.timer = self.loop.call_later(
                delay, self._job_done, job, plan, model, msg_id, failure
            )

        self.slots.acquire(granted)

    def _job_done(
        self, job: Job, plan: Plan, model: str, msg_id: str, failure: tuple[int, str, str] | None
    ) -> None:
        job.timer = None
        if job.holds_slot:
            job.holds_slot = False
            self.slots.release()
        if job.cancelled:
            return
        if failure is None:
            body = wire.message_body(msg_id, model, plan.text(), plan.stop_reason, plan.usage)
            self.jobs.finish(job, J.COMPLETED, 200, body)
        else:
            status, etype, message = failure
            job.error_type = etype
            self.jobs.finish(job, J.FAILED, status, wire.error_body(etype, message))
            if job.fault is not None:
                self.gt.fault(job.fault)

    def _poll(self, ex: Exchange, job_id: str) -> None:
        ex.job_id = job_id
        job = self.jobs.get(job_id, ex.vk)
        if job is None:
            ex.error_type = ""
            return ex.respond(self.config.job_not_found_status, _NOT_FOUND_JOB)
        ex.job_status = job.status
        if job.status == J.COMPLETED:
            return ex.respond(200, job.body)
        if job.status == J.FAILED:
            ex.error_type = job.error_type
            return ex.respond(job.http_status or 400, job.body)
        ex.respond(200, wire.async_stub(job.id))
