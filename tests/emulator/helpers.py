"""Small helpers shared by the emulator tests (plain functions, no fixtures)."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx

MESSAGES = "/anthropic/v1/messages"


def body(content: str = "Hello, emulator!", **extra: Any) -> dict[str, Any]:
    """A minimal valid Messages body."""
    return {
        "model": "claude-test",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def client(emu: Any, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=emu.base_url, timeout=kw.pop("timeout", 10.0), **kw)


def raw_exchange(
    emu: Any, payload: bytes, *, read_until: bytes | None = None, timeout_s: float = 5.0
) -> bytes:
    """Send raw bytes on a fresh socket and read until ``read_until`` appears or the peer closes."""
    host, port = emu.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(payload)
        return read_socket(s, read_until, timeout_s)


def read_socket(s: socket.socket, until: bytes | None, timeout_s: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if until is not None and data.count(until) >= 1 and until in data:
            break
    return data


def wait_for(pred: Any, timeout_s: float = 5.0, step_s: float = 0.01) -> Any:
    """Poll ``pred()`` until truthy (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step_s)
