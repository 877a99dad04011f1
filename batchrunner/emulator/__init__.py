"""The built-in Bifrost gateway emulator: ``POST /anthropic/v1/messages`` (sync, SSE, ``x-bf-async``
jobs with TTL), virtual keys, fallbacks, a seeded latency/token model, fault injection and a
ground-truth log of everything it did.

This package imports nothing from the rest of batchrunner, so a bug on the client side cannot
hide a bug here (and vice versa). Typical use::

    from batchrunner.emulator import EmulatorConfig, running_emulator

    with running_emulator(EmulatorConfig(fault_529=0.1)) as emu:
        ...  # point a client at emu.base_url + "/anthropic"
        emu.ground_truth(), emu.stats()

See ``docs/emulator.md`` for every option, fault and endpoint.
"""

from __future__ import annotations

from batchrunner.emulator.config import (
    FIELD_NAMES,
    LIVE_FIELDS,
    ConfigError,
    Dist,
    EmulatorConfig,
    load_profile,
)
from batchrunner.emulator.server import Emulator, running_emulator, serve

__all__ = [
    "FIELD_NAMES",
    "LIVE_FIELDS",
    "ConfigError",
    "Dist",
    "Emulator",
    "EmulatorConfig",
    "load_profile",
    "running_emulator",
    "serve",
]
