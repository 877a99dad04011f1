"""Fields of a ``run.json`` that the report reads, checked for their types before it reads them.

``run.json`` is written by batchrunner, but a user may edit it (to rename a run, to fix a path)
or a tool may rewrite it. A field of the wrong type must not stop the report with an internal
error when the rows can speak for themselves: it is left out, and a warning names it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _array(value: Any) -> bool:
    return isinstance(value, list)


_WHAT = {_number: "a number", _count: "a count", _text: "a string", _object: "an object",
         _array: "a list"}

#: Field -> its check, per object the report reads (None values are always accepted).
_TOP: dict[str, Check] = {
    "name": _text, "run_id": _text, "status": _text, "gateway": _text, "kind": _text,
    "config": _object, "sessions": _array, "async": _object, "bench": _object,
    "stages": _array, "saturation": _object,
}
_SESSION: dict[str, Check] = {
    "started_at": _number, "finished_at": _number, "config": _object, "gateway_outages": _count,
}
_CONFIG: dict[str, Check] = {"rate": _number, "in_flight_limit": _count, "mode": _text}
_ASYNC: dict[str, Check] = {"outstanding_jobs": _count, "collect_before": _number}


def checked_run_info(info: Any, path: str) -> tuple[dict[str, Any], list[str]]:
    """*info* (``run.json`` as parsed) with every field of a wrong type left out.

    :param path: how to name the file in warnings.
    :return: the fields kept (a new dict; *info* is not changed), and one warning per field
        left out, naming it and saying what it should be.
    """
    warnings: list[str] = []
    if not isinstance(info, dict):
        warnings.append(f"{path} holds {_kind(info)}, not the run's description: reported from "
                        "the rows alone (no status, config, sessions or async jobs)")
        return {}, warnings
    out = _fields(info, _TOP, path, "", warnings)
    for key in ("config", "async"):
        if isinstance(out.get(key), dict):
            out[key] = _fields(out[key], _CONFIG if key == "config" else _ASYNC, path,
                               f"{key}.", warnings)
    if isinstance(out.get("sessions"), list):
        sessions = []
        for i, session in enumerate(out["sessions"]):
            if not isinstance(session, dict):
                warnings.append(f"{path}: sessions[{i}] is {_kind(session)}, not an object; "
                                "left out")
                continue
            kept = _fields(session, _SESSION, path, f"sessions[{i}].", warnings)
            if isinstance(kept.get("config"), dict):
                kept["config"] = _fields(kept["config"], _CONFIG, path,
                                         f"sessions[{i}].config.", warnings)
            sessions.append(kept)
        out["sessions"] = sessions
    return out, warnings


def _fields(obj: dict[str, Any], checks: dict[str, Check], path: str, prefix: str,
            warnings: list[str]) -> dict[str, Any]:
    out = dict(obj)
    for key, check in checks.items():
        value = out.get(key)
        if value is not None and not check(value):
            del out[key]
            warnings.append(f"{path}: {prefix}{key} is {_kind(value)}, expected {_WHAT[check]}; "
                            "left out")
    return out


def _kind(value: Any) -> str:
    """How a JSON value is described in a warning (its type, and a short value)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    name = names.get(type(value), type(value).__name__)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return f"{name} ({shown})"
    return name
