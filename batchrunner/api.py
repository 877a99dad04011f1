"""The library entry point: ``batchrunner.run(...)`` from a script or a notebook."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import numbers
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx

from batchrunner.client import Timeouts
from batchrunner.config import ConfigError, RunConfig
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunResult, run_session, run_sync, run_sync_coro
from batchrunner.schema import Mode


def run(
    requests: str | Path,
    *,
    gateway: str | None = None,
    mode: str | Mode = Mode.SYNC,
    concurrency: int | None = None,
    out: str | Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    http_client: httpx.AsyncClient | None = None,
    timeout_s: float | None = None,
    read_timeout_s: float | None = None,
    max_retries: int | None = None,
    quiet: bool = True,
    **options: Any,
) -> RunResult:
    """Run (or resume) a request set and return the run directory and its summary.

    Works inside a notebook too (where an event loop is already running: the run then gets its
    own thread and loop).

    :param requests: JSONL or Parquet request set.
    :param gateway: gateway base URL; ``None`` starts the built-in emulator.
    :param mode: ``sync``, ``stream`` or ``async``.
    :param concurrency: closed-loop workers, or the in-flight cap with ``rate``.
    :param out: run directory (an existing one is resumed).
    :param transport: an httpx transport to send through.
    :param http_client: an ``httpx.AsyncClient`` to send through instead.
    :param timeout_s: whole-attempt timeout (the CLI's ``--timeout``); unless
        ``read_timeout_s`` is given, the read timeout is set to it too.
    :param read_timeout_s: longest silence while reading a response (``--read-timeout``).
    :param max_retries: retries per request.
    :param quiet: print nothing.
    :param options: any other :class:`batchrunner.config.RunConfig` field (``rate``,
        ``max_rate``, ``max_requests``, ``max_cost_usd``, ``api_key``, ``virtual_key``,
        ``resume``, ...).
    :return: a :class:`RunResult` (``run_dir``, ``summary``, ``status``, ``exit_code``),
        whatever the run's outcome: a ``strict=True`` stop at an invalid row is ``aborted``
        (exit code 3), with the row in ``rejects.jsonl``.
    :raises batchrunner.ConfigError: invalid options.
    :raises batchrunner.InputError: a missing, unreadable or empty input.
    :raises batchrunner.RunDirError: the run directory cannot be used.
    :raises KeyboardInterrupt: after closing the run as ``interrupted`` (Ctrl-C, a notebook's
        interrupt).
    """
    try:
        mode = Mode(mode)
    except ValueError:
        known = ", ".join(repr(m.value) for m in Mode)
        raise ConfigError(f"mode must be one of {known}, got {mode!r}") from None
    unknown = sorted(set(options) - {f.name for f in fields(RunConfig)})
    if unknown:
        raise ConfigError(
            f"unknown option {', '.join(map(repr, unknown))}: run() takes the fields of "
            "batchrunner.RunConfig"
        )
    config = RunConfig(
        requests=Path(requests),
        gateway=gateway,
        mode=mode,
        concurrency=concurrency,
        out=Path(out) if out is not None else None,
        **options,
    )
    if timeout_s is not None or read_timeout_s is not None:
        default = config.timeouts
        # "is None", not "or": a 0 would silently have meant the default (validate refuses it).
        config.timeouts = Timeouts(
            connect_s=default.connect_s,
            read_s=next((t for t in (read_timeout_s, timeout_s) if t is not None), default.read_s),
            attempt_s=timeout_s if timeout_s is not None else default.attempt_s,
        )
    if max_retries is not None:
        whole = isinstance(max_retries, numbers.Real) and not isinstance(max_retries, bool) and (
            float(max_retries).is_integer())
        if not whole or max_retries < 0:
            raise ConfigError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
        config.retry = RetryPolicy(max_retries=int(max_retries))
    if http_client is not None and transport is not None:
        raise ConfigError("give transport= or http_client=, not both")
    kwargs: dict[str, Any] = {"transport": transport, "http_client": http_client, "quiet": quiet}
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_sync(config, **kwargs)
    return _run_in_own_thread(config, kwargs)


#: How often a caller waiting for a run on its own thread looks for its own cancellation.
_CALLER_CHECK_S = 0.1


def _run_in_own_thread(config: RunConfig, kwargs: dict[str, Any]) -> RunResult:
    """Run on a thread with its own loop, for a caller whose thread already runs one (a
    notebook). An interrupt of the caller (the notebook's stop button) stops the run as Ctrl-C
    stops a script's: its task is cancelled, the requests in flight are recorded as cancelled,
    ``run.json`` says "interrupted", then KeyboardInterrupt goes on."""
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]]
    started = concurrent.futures.Future()

    async def session() -> RunResult:
        task = asyncio.current_task()
        assert task is not None
        started.set_result((asyncio.get_running_loop(), task))
        return await run_session(config, **kwargs)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrunner")
    future = pool.submit(lambda: run_sync_coro(session()))
    caller = asyncio.current_task()
    # A cancellation the caller already handled (caught, not uncancelled) is not a new one.
    before = caller.cancelling() if caller is not None else 0
    try:
        while True:
            try:
                return future.result(timeout=_CALLER_CHECK_S)
            except concurrent.futures.TimeoutError:
                # Under asyncio.run(), a first Ctrl-C only cancels the caller's task, which
                # cannot run while this waits: it never reached the run (which went on to its
                # end, and the KeyboardInterrupt of a second Ctrl-C then lost its result).
                if caller is not None and caller.cancelling() > before:
                    raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        concurrent.futures.wait([started, future], return_when=concurrent.futures.FIRST_COMPLETED)
        if started.done() and not future.done():
            loop, task = started.result()
            # The loop may close between the check and this call: the run has ended then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        # A second interrupt stops this wait only: the run still closes on its thread.
        concurrent.futures.wait([future])
        raise
    finally:
        pool.shutdown(wait=False)
