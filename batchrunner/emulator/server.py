"""Running the emulator: in-process on its own thread (:func:`running_emulator`, :class:`Emulator`)
or as a blocking server for the CLI (:func:`serve`).

Each emulator owns one event loop (uvloop when installed) and one listening socket. Stopping it
closes the listener, aborts every open connection — stalled ones included — and cancels pending
job timers, so a test can stop an emulator and start a fresh one (jobs are lost, as in a gateway
restart). Reads of ground truth and counters from other threads are run on the loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from batchrunner.emulator.config import EmulatorConfig
from batchrunner.emulator.gateway import Gateway
from batchrunner.emulator.protocol import HttpConnection

T = TypeVar("T")

#: Listen backlog; load tests open many connections at once.
BACKLOG = 4096


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _start(config: EmulatorConfig, host: str, port: int) -> tuple[asyncio.Server, Gateway]:
    loop = asyncio.get_running_loop()
    gw = Gateway(config, loop)
    try:
        server = await loop.create_server(
            lambda: HttpConnection(gw), host, port, backlog=BACKLOG, reuse_address=True
        )
    except BaseException:
        gw.close()  # it serves nothing: its configuration is free to change again
        raise
    return server, gw


async def _shutdown(server: asyncio.Server, gw: Gateway) -> None:
    server.close()
    gw.close()
    # Let the aborted transports deliver connection_lost (which ends their requests).
    for _ in range(3):
        await asyncio.sleep(0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2.0)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Emulator:
    """An emulator running on a background thread. Use :func:`running_emulator` in ``with``.

    :param config: the live configuration (this object itself is used, so changing its fields
        changes the running emulator; see ``LIVE_FIELDS``); ``None`` = defaults (instant).
    :param host: interface to bind.
    :param port: port to bind; 0 picks a free one.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gw: Gateway | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no path; the Anthropic route is under ``/anthropic``)."""
        return _url(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = 10.0) -> Emulator:
        """Bind and start serving; returns once the socket is listening.

        :raises OSError: when the address cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        self._thread = threading.Thread(target=self._run, name=f"emulator-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("emulator did not start in time")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _run(self) -> None:
        loop = new_event_loop()
        try:
            server, gw = loop.run_until_complete(_start(self.config, self.host, self.port))
        except BaseException as exc:
            self._error = exc
            loop.close()
            self._ready.set()
            return
        self._loop, self._gw = loop, gw
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(_shutdown(server, gw))
            loop.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving: close the listener and every connection (stalled ones too)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)

    def __enter__(self) -> Emulator:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[[], T]) -> T:
        loop = self._loop
        if self._gw is None:
            raise RuntimeError("emulator not started")
        if loop is None or not self.running or threading.current_thread() is self._thread:
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # loop closed meanwhile
            return fn()
        return fut.result(30.0)

    def ground_truth(self, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """One dict per handled messages request, oldest first (see ``docs/emulator.md``).

        :param since: only entries with ``seq >= since``.
        :param limit: at most this many.
        """
        return self._call(lambda: self._gateway().gt.read(since, limit))["entries"]

    def ground_truth_page(self, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """Like :meth:`ground_truth`, as ``{"next", "dropped", "entries"}`` (incremental reads)."""
        return self._call(lambda: self._gateway().gt.read(since, limit))

    def stats(self) -> dict[str, Any]:
        """Counters: requests by kind/outcome/status, faults, ``in_flight`` and ``in_flight_max``,
        slots, jobs, connections."""
        return self._call(lambda: self._gateway().stats())

    def reset(self) -> None:
        """Forget ground truth, counters, jobs, prompt cache and rate-limit state."""
        self._call(lambda: self._gateway().reset())

    def _gateway(self) -> Gateway:
        assert self._gw is not None
        return self._gw


@contextlib.contextmanager
def running_emulator(
    config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[Emulator]:
    """Run an emulator on a background thread for the duration of a ``with`` block.

    :param config: configuration (used live, not copied); ``None`` = defaults (instant, no
        faults, no keys).
    :param host: interface to bind (loopback by default).
    :param port: 0 = a free ephemeral port; pass a previous emulator's port to "restart" it.
    :return: the running :class:`Emulator` (``base_url``, ``ground_truth()``, ``stats()``,
        ``reset()``, ``config``).
    """
    emu = Emulator(config, host, port).start()
    try:
        yield emu
    finally:
        emu.stop()


def serve(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (or KeyboardInterrupt), then shut down
    cleanly.

    :param config: configuration; ``None`` = defaults.
    :param host: interface to bind.
    :param port: port to bind (0 = any free port).
    :param on_ready: called with the base URL once the socket is listening.
    :raises OSError: when the address cannot be bound.
    """
    cfg = config if config is not None else EmulatorConfig()
    loop = new_event_loop()
    try:
        server, gw = loop.run_until_complete(_start(cfg, host, port))
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, loop.stop)
        if on_ready is not None:
            on_ready(_url(host, server.sockets[0].getsockname()[1]))
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            pass
        finally:
            loop.run_until_complete(_shutdown(server, gw))
    finally:
        loop.close()
