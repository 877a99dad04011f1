"""Checks of the gateway's address made before a run creates anything or sends a request.

httpx accepts a port out of range (``:378333``) and reads an empty one (``http://host:``) as the
scheme's default, and a mistyped host name fails only when each request tries to connect: both
used to cost a run directory full of error rows and many seconds of retries. Messages never
quote the URL's user, password or query: they may be credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
from urllib.parse import urlsplit

import httpx

#: How long the host name may take to resolve before the run is refused: a resolver this slow
#: would also hold up every connection of the run.
RESOLVE_TIMEOUT_S = 5.0


def check_port(gateway: str) -> None:
    """Refuse an empty or out-of-range port in a gateway URL, as typed.

    :raises ValueError: the port is empty, not a number or not in 1-65535.
    """
    netloc = urlsplit(gateway.strip()).netloc
    hostport = netloc.rpartition("@")[2]  # user:password@ goes; it is never quoted
    if hostport.startswith("["):  # an IPv6 literal holds colons of its own
        _, _, rest = hostport.partition("]")
        has_port, port = rest.startswith(":"), rest[1:]
    else:
        _, colon, port = hostport.partition(":")
        has_port = bool(colon)
    if not has_port:
        return
    if not port:
        raise ValueError(
            "the gateway URL has an empty port (nothing after ':'); give one (e.g. :8080) or "
            "leave out the ':' for the scheme's default"
        )
    if not port.isascii() or not port.isdigit():
        raise ValueError("the gateway URL's port is not a number (expected 1-65535)")
    if not 1 <= int(port) <= 65535:
        # With an '@' anywhere, these digits may be a password's: one holding a '/', '?' or
        # '#' (not percent-encoded) ends the URL's authority before its '@'.
        shown = "" if "@" in gateway else f" {int(port)}"
        raise ValueError(f"the gateway URL's port{shown} is out of range (1-65535)")


async def check_resolves(url: str, timeout_s: float = RESOLVE_TIMEOUT_S) -> None:
    """Resolve the URL's host once; an IP address is not looked up.

    The lookup runs on a daemon thread of its own, not the loop's executor: a resolver that
    hangs past the timeout must not hold up the process's exit (``asyncio.run`` waits for the
    executor's threads).

    :param url: a URL already accepted by :func:`batchrunner.client.messages_url`.
    :raises ValueError: the host does not resolve, or not within ``timeout_s``; the message
        names the host.
    """
    parsed = httpx.URL(url)
    host = parsed.host
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BaseException | None] = loop.create_future()

    def settle(outcome: BaseException | None) -> None:
        if not done.done():
            done.set_result(outcome)

    def lookup() -> None:
        outcome: BaseException | None = None
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # handed over: an unexpected one is raised by the waiter
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop closed after the timeout
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=lookup, name="resolve-gateway", daemon=True).start()
    try:
        failure = await asyncio.wait_for(done, timeout_s)
    except TimeoutError:
        raise ValueError(
            f"the gateway host {host} did not resolve within {timeout_s:g} s; check the name "
            "and the DNS"
        ) from None
    if failure is not None and not isinstance(failure, OSError | UnicodeError):
        raise failure
    if failure is not None:
        reason = getattr(failure, "strerror", None) or str(failure) or type(failure).__name__
        raise ValueError(
            f"the gateway host {host} does not resolve ({reason}); check the name"
        )
