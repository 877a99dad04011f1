"""A 127.0.0.1 server that refuses every request with a 401 quoting the credentials it got.

Some gateways do ("invalid x-api-key sk-…"); the tests use it to check that such text never
carries a key into a row, ``run.json`` or stderr.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

QUOTED_HEADERS = ("x-api-key", "x-bf-vk", "authorization")


class _EchoKeysHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        quoted = ", ".join(f"{name} {self.headers.get(name)}" for name in QUOTED_HEADERS)
        error = {"type": "authentication_error", "message": f"invalid {quoted}"}
        body = orjson.dumps({"type": "error", "error": error})
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def key_echo_server() -> Iterator[str]:
    """The server's base URL while it runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoKeysHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
