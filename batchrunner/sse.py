"""Incremental Server-Sent Events decoder (bytes in, ``(event, data)`` pairs out).

Only what the Anthropic stream uses: ``event:`` and ``data:`` fields, blank-line framing,
``\\n``, ``\\r\\n`` or ``\\r`` line ends, comments ignored, one byte order mark first
dropped. Kept separate from the HTTP code so it can be tested on hostile chunkings without a
server.
"""

from __future__ import annotations

#: An incomplete event longer than this is collected in pieces until its end arrives, instead
#: of being joined with (and searched again) on every read.
_COLLECT_ABOVE = 64 * 1024
_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Feed raw chunks in arrival order; get back complete events.

    An event split over many reads (a multi-megabyte answer in one ``message``) is collected as
    a list of pieces, each searched once for the event's end: joining and searching the whole
    of it again on every read cost time quadratic in its size (16 MB: 2.9 s of CPU on the loop).
    Small leftovers are simply joined with the next read, the cheapest for ordinary streams.
    """

    __slots__ = ("_buf", "_cr", "_fed", "_parts")

    def __init__(self) -> None:
        self._buf = b""
        self._parts: list[bytes] = []  # a long incomplete event, when there is one
        self._cr = False  # the last chunk ended in \r: a \n starting the next one is its
        self._fed = False  # whether the stream's first bytes came (a BOM there is dropped)

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        """Decode what ``chunk`` completes.

        :return: ``(event type or None, data)`` for each complete event with a data field.
        """
        if not chunk:  # nothing read (it must not forget a \r just taken as a line end)
            return []
        if not self._fed:
            # One byte order mark first is no part of the stream (as the SSE spec says); kept,
            # it hid the first line, "data: {message_start …}".
            if self._buf:  # the start of a BOM held back from the last read
                chunk, self._buf = self._buf + chunk, b""
            if len(chunk) < 3 and _BOM.startswith(chunk):
                self._buf = chunk  # what came so far may yet be a BOM
                return []
            self._fed = True
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
                if not chunk:
                    return []
        if self._cr:  # the last chunk ended in \r, taken as a line end: its \n is not another
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            # CRLF, or a bare CR: the spec allows all three line ends. A \r at the end counts
            # at once (an event it completes is not held back for the next read).
            self._cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not chunk:
            return []
        if self._parts:
            # The blank line may straddle the last piece and this one.
            if b"\n\n" not in self._parts[-1][-1:] + chunk[:1] and b"\n\n" not in chunk:
                self._parts.append(chunk)
                return []
            buf = b"".join(self._parts) + chunk
            self._parts = []
        else:
            buf = self._buf + chunk if self._buf else chunk
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
        rest = buf[start:] if start < len(buf) else b""
        if len(rest) > _COLLECT_ABOVE:
            self._parts, self._buf = [rest], b""
        else:
            self._buf = rest
        return events

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a complete event."""
        return b"".join(self._parts) + self._buf
