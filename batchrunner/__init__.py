"""batchrunner: run Anthropic Messages request sets through an LLM gateway, one Parquet row per
request.

Public names are imported lazily, so ``import batchrunner`` (and the CLI's start) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "batchrunner.config",
    "InputError": "batchrunner.sources",
    "Mode": "batchrunner.schema",
    "RESULT_SCHEMA": "batchrunner.schema",
    "RequestRecord": "batchrunner.schema",
    "RunConfig": "batchrunner.config",
    "RunDirError": "batchrunner.rundir",
    "RunResult": "batchrunner.runner",
    "Status": "batchrunner.schema",
    "run": "batchrunner.api",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batchrunner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
