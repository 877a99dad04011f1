"""Fields of ``run.json`` and ``bench.json`` that the report reads, checked for their types
before it reads them.

Both files are written by batchrunner, but a user may edit them (to rename a run, to fix a
path) or a tool may rewrite them. A field of the wrong type must not stop the report with an
internal error when the rows can speak for themselves: it is left out, and a warning names it.
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


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _object(value: Any) -> bool:
    return isinstance(value, dict)


_WHAT = {_number: "a number", _count: "a count", _text: "a string", _flag: "true or false",
         _object: "an object"}

#: A spec is a check, a dict of field -> spec (an object), or a one-item list [spec] (a list of
#: such items). None values are always accepted.
_CONFIG = {"rate": _number, "in_flight_limit": _count, "mode": _text}
#: A stage's result (``bench.json`` and, after a bench, ``run.json``'s ``stages``).
_STAGE = {
    "stage": _text, "target": {"concurrency": _count, "rate": _number},
    "requests": _count, "warmup_requests": _count, "ok": _count, "failed": _count,
    "error_rate": _number, "window_s": _number, "throughput_rps": _number,
    "goodput_rps": _number, "output_tokens_per_s": _number, "client_cpu": _number,
    "verdict": _text, "slo_met": _flag, "slos": [_object],
}
#: The saturation search's result (``bench.json``, and ``run.json`` after a bench).
_SATURATION = {"highest_passing_rate": _number, "lowest_failing_rate": _number,
               "failure": _text, "note": _text}
RUN_JSON: dict[str, Any] = {
    "name": _text, "run_id": _text, "status": _text, "gateway": _text, "kind": _text,
    "config": _CONFIG,
    "sessions": [{"started_at": _number, "finished_at": _number, "config": _CONFIG,
                  "gateway_outages": _count, "cap_waits": _count, "redone_cost_usd": _number,
                  "rate_limited": _object}],
    "async": {"outstanding_jobs": _count, "collect_before": _number},
    "rejected": _count,
    "bench": {"stages": [{"name": _text, "rate": _number, "concurrency": _count}],
              "slos": [_text]},
    "stages": [_STAGE],
    "saturation": _SATURATION,
}
BENCH_JSON: dict[str, Any] = {"stages": [_STAGE], "saturation": _SATURATION, "status": _text}


def checked_run_info(info: Any, path: str,
                     spec: dict[str, Any] = RUN_JSON) -> tuple[dict[str, Any], list[str]]:
    """*info* (``run.json`` as parsed; ``bench.json`` with *spec* :data:`BENCH_JSON`) with
    every field of a wrong type left out.

    :param path: how to name the file in warnings.
    :return: the fields kept (new containers; *info* is not changed), and one warning per field
        left out, naming it and saying what it should be.
    """
    warnings: list[str] = []
    if not isinstance(info, dict):
        warnings.append(f"{path} holds {_kind(info)}, not the run's description: reported from "
                        "the rows alone (no status, config, sessions or async jobs)")
        return {}, warnings
    return _object_fields(info, spec, path, "", warnings), warnings


def _object_fields(obj: dict[str, Any], spec: dict[str, Any], path: str, prefix: str,
                   warnings: list[str]) -> dict[str, Any]:
    out = dict(obj)
    for key, field_spec in spec.items():
        value = out.get(key)
        if value is None:
            continue
        kept, problem = _checked(value, field_spec, path, f"{prefix}{key}", warnings)
        if problem is None:
            out[key] = kept
        else:
            del out[key]
            warnings.append(f"{path}: {prefix}{key} is {_kind(value)}, expected {problem}; "
                            "left out")
    return out


def _checked(value: Any, spec: Any, path: str, where: str,
             warnings: list[str]) -> tuple[Any, str | None]:
    """(value kept, None), or (None, what it should have been)."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return None, "an object"
        return _object_fields(value, spec, path, f"{where}.", warnings), None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return None, "a list"
        items = []
        for i, item in enumerate(value):
            kept, problem = (_checked(item, spec[0], path, f"{where}[{i}]", warnings)
                             if item is not None else (None, _describe(spec[0])))
            if problem is None:
                items.append(kept)
            else:
                warnings.append(f"{path}: {where}[{i}] is {_kind(item)}, not {problem}; "
                                "left out")
        return items, None
    return (value, None) if spec(value) else (None, _WHAT[spec])


def _describe(spec: Any) -> str:
    if isinstance(spec, dict):
        return "an object"
    if isinstance(spec, list):
        return "a list"
    return _WHAT[spec]


def _kind(value: Any) -> str:
    """How a JSON value is described in a warning (its type, and a short value)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    name = names.get(type(value), type(value).__name__)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return f"{name} ({shown})"
    return name
