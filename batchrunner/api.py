"""The library entry point: ``batchrunner.run(...)`` from a script or a notebook."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any

import httpx

from batchrunner.client import Timeouts
from batchrunner.config import RunConfig
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunResult, run_sync
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
    max_retries: int | None = None,
    quiet: bool = True,
    **options: Any,
) -> RunResult:
    """Run (or resume) a request set and return the run directory and its summary.

    Works inside a notebook too (where an event loop is already running: the run then gets its
    own thread and loop).

    :param requests: JSONL or Parquet request set.
    :param gateway: gateway base URL; ``None`` starts the built-in emulator.
    :param mode: ``sync`` or ``stream``.
    :param concurrency: closed-loop workers, or the in-flight cap with ``rate``.
    :param out: run directory (an existing one is resumed).
    :param transport: an httpx transport to send through.
    :param http_client: an ``httpx.AsyncClient`` to send through instead.
    :param timeout_s: per-attempt timeout.
    :param max_retries: retries per request.
    :param quiet: print nothing.
    :param options: any other :class:`batchrunner.config.RunConfig` field (``rate``,
        ``max_rate``, ``max_requests``, ``api_key``, ``virtual_key``, ``resume``, ...).
    :return: a :class:`RunResult` (``run_dir``, ``summary``, ``status``, ``exit_code``).
    :raises batchrunner.ConfigError: invalid options.
    :raises batchrunner.InputError: unreadable input (or an invalid row with ``strict=True``).
    """
    config = RunConfig(
        requests=Path(requests),
        gateway=gateway,
        mode=Mode(mode),
        concurrency=concurrency,
        out=Path(out) if out is not None else None,
        **options,
    )
    if timeout_s is not None:
        config.timeouts = Timeouts(
            connect_s=config.timeouts.connect_s, read_s=timeout_s, attempt_s=timeout_s
        )
    if max_retries is not None:
        config.retry = RetryPolicy(max_retries=max_retries)
    kwargs: dict[str, Any] = {"transport": transport, "http_client": http_client, "quiet": quiet}
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_sync(config, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run_sync, config, **kwargs).result()
