"""Incremental Server-Sent Events decoder (bytes in, ``(event, data)`` pairs out).

Only what the Anthropic stream uses: ``event:`` and ``data:`` fields, blank-line framing,
``\\n`` or ``\\r\\n`` line ends, comments ignored. Kept separate from the HTTP code so it can
be tested on hostile chunkings without a server.
"""

from __future__ import annotations


class SSEDecoder:
    """Feed raw chunks in arrival order; get back complete events."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        """Decode what ``chunk`` completes.

        :return: ``(event type or None, data)`` for each complete event with a data field.
        """
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events: list[tuple[str | None, bytes]] = []
        start = 0
        find = buf.find
        while True:
            end = find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            event_type: str | None = None
            data: bytes | None = None
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[6:] if line[5:6] == b" " else line[5:]
                    data = value if data is None else data + b"\n" + value
                elif line.startswith(b"event:"):
                    event_type = line[6:].strip().decode("utf-8", "replace")
            if data is not None:
                events.append((event_type, data))
        self._buf = buf[start:] if start < len(buf) else b""
        return events

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a complete event."""
        return self._buf
