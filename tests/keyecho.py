"""A 127.0.0.1 server that refuses every request with a 401 quoting the credentials it got.

Some gateways do ("invalid x-api-key sk-…"); the tests use it to check that such text never
carries a key into a row, ``run.json`` or stderr.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

QUOTED_HEADERS = ("x-api-key", "x-bf-vk", "authorization")


class RefusingHandler(BaseHTTPRequestHandler):
    """Answers every POST with a 401 whose Anthropic error is :meth:`error` of the request."""

    def error(self) -> dict[str, str]:
        quoted = ", ".join(f"{name} {self.headers.get(name)}" for name in QUOTED_HEADERS)
        return {"type": "authentication_error", "message": f"invalid {quoted}"}

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = orjson.dumps({"type": "error", "error": self.error()})
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def key_echo_server() -> AbstractContextManager[str]:
    """The server's base URL while it runs."""
    return serving(RefusingHandler)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded 127.0.0.1 server of *handler*: its base URL while it runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
