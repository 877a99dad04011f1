"""The ``/_emulator/*`` endpoints (ground truth, stats, reset, live config) and
``count_tokens``: everything on the wire that is not the messages route itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import orjson

from batchrunner.emulator import wire
from batchrunner.emulator.checks import validate
from batchrunner.emulator.config import STATIC_FIELDS, ConfigError
from batchrunner.emulator.model import estimate_input_tokens
from batchrunner.emulator.protocol import HttpConnection, Request

if TYPE_CHECKING:
    from batchrunner.emulator.gateway import Gateway

_INVALID_JSON = wire.error_body("", "Invalid JSON")


def reply(conn: HttpConnection, req: Request, status: int, body: bytes) -> None:
    """Send a complete JSON response and move on to the connection's next request."""
    conn.write(wire.json_response(status, body, close=not req.keep_alive))
    conn.finish(req)


def handle_admin(gw: Gateway, conn: HttpConnection, req: Request) -> None:
    name = req.path[len(b"/_emulator/") :]
    m = req.method
    if name == b"ground-truth" and m == b"GET":
        q = parse_qs(req.query.decode("latin-1"))
        try:
            since = int(q.get("since", ["0"])[0])
            limit = int(q["limit"][0]) if "limit" in q else None
        except ValueError:
            return reply(
                conn,
                req,
                400,
                wire.error_body("invalid_request_error", "since/limit must be integers"),
            )
        return reply(conn, req, 200, orjson.dumps(gw.gt.read(since, limit)))
    if name == b"stats" and m == b"GET":
        return reply(conn, req, 200, orjson.dumps(gw.stats()))
    if name == b"reset" and m == b"POST":
        gw.reset()
        return reply(conn, req, 200, b'{"ok":true}')
    if name == b"config" and m == b"GET":
        return reply(conn, req, 200, orjson.dumps(gw.config.to_dict()))
    if name == b"config" and m in (b"POST", b"PATCH"):
        try:
            changes = orjson.loads(req.body)
            if not isinstance(changes, dict):
                raise ConfigError("expected a JSON object of option: value")
            # A fixed field may be sent with its current value, so the output of GET posts back.
            current = gw.config.to_dict()
            fixed = sorted(k for k, v in changes.items() if k in STATIC_FIELDS and v != current[k])
            if fixed:
                raise ConfigError(f"cannot change while running: {', '.join(fixed)}")
            gw.config.update(**changes)
        except (orjson.JSONDecodeError, ConfigError) as exc:
            return reply(conn, req, 400, wire.error_body("invalid_request_error", str(exc)))
        return reply(conn, req, 200, orjson.dumps(gw.config.to_dict()))
    reply(conn, req, 404, wire.error_body("not_found_error", "unknown emulator endpoint"))


def handle_count_tokens(gw: Gateway, conn: HttpConnection, req: Request) -> None:
    try:
        body = orjson.loads(req.body)
    except orjson.JSONDecodeError:
        return reply(conn, req, 400, _INVALID_JSON)
    if not isinstance(body, dict):
        return reply(conn, req, 400, _INVALID_JSON)
    problem = validate({"max_tokens": 1, **body})
    if problem:
        return reply(conn, req, 400, wire.error_body("invalid_request_error", problem))
    n = estimate_input_tokens(body, gw.config.chars_per_token)
    reply(conn, req, 200, b'{"input_tokens":%d}' % n)
