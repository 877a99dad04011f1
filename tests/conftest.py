"""Shared fixtures.

``emulator``: a running built-in gateway emulator with the default (instant, no faults, no keys)
configuration, fresh for each test. ``make_emulator(**overrides)``: start more emulators with
any :class:`~batchrunner.emulator.EmulatorConfig` fields overridden; all are stopped at the end of
the test. Both give :class:`~batchrunner.emulator.Emulator` handles (``base_url``,
``ground_truth()``, ``stats()``, ``reset()``, live ``config``). A handle is also a context
manager: ``with make_emulator(ttft="fixed:0.05") as emu:`` stops it at the end of the block.
``server``: the misbehaving raw HTTP/1.1 server of ``rawserver.py``, for client-level tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rawserver import server  # noqa: F401  (a fixture, shared with every test module)

from batchrunner.emulator import Emulator, EmulatorConfig, running_emulator


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator on 127.0.0.1:<ephemeral>, default instant configuration."""
    with running_emulator() as emu:
        yield emu


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    """Factory: ``make_emulator(fault_529=0.5, ttft="fixed:0.05")`` → a running emulator."""
    with contextlib.ExitStack() as stack:

        def make(**overrides: Any) -> Emulator:
            return stack.enter_context(running_emulator(EmulatorConfig(**overrides)))

        yield make
