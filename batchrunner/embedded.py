"""The built-in emulator as the default gateway of ``run`` (no ``--gateway`` configured).

The emulator runs on its own thread in this process. That is right for a first run and for
demos; for benchmarks, start ``batchrunner emulate`` as a separate process so that it does not
share a core (and the GIL) with the client being measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Ready profiles shipped in ``jobs/emulator/`` of the source tree.
PROFILE_DIR = Path(__file__).resolve().parent.parent / "jobs" / "emulator"


def load_emulator_profile(profile: str | None, *, seed: int = 0) -> Any:
    """The :class:`~batchrunner.emulator.EmulatorConfig` of ``--emulator-profile``.

    :param profile: ``None`` for the demo profile, a ready profile name, or a TOML file path.
    :param seed: the emulator's seed.
    :return: the emulator's configuration.
    :raises ConfigError: no such profile, or one that does not load.
    """
    from batchrunner.config import ConfigError
    from batchrunner.emulator import load_profile

    # The default is the demo profile (jobs/emulator/demo.toml: small but real delays, so that
    # a first run shows meaningful TTFT and latency figures and still ends in a few seconds).
    if profile is None and not (PROFILE_DIR / "demo.toml").is_file():
        # Installed without the source tree (a wheel): the same profile, from here.
        from batchrunner.emulator import EmulatorConfig
        from batchrunner.emulator.config import Dist

        return EmulatorConfig(seed=seed, ttft=Dist("lognormal", 0.05, 0.3),
                              token_delay=Dist("uniform", 0.001, 0.003),
                              output_tokens=Dist("uniform", 20, 200))
    path = PROFILE_DIR / "demo.toml" if profile is None else Path(profile)
    if not path.is_file():
        path = PROFILE_DIR / f"{profile}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
        raise ConfigError(
            f"--emulator-profile {profile!r}: no such file or ready profile "
            f"(ready: {', '.join(names) or 'none found'})"
        )
    try:
        return load_profile(path, seed=seed)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--emulator-profile {profile}: {exc}") from None


@contextlib.contextmanager
def embedded_emulator(profile: str | None, *, seed: int = 0) -> Iterator[tuple[str, str]]:
    """Start the emulator and yield ``(base URL, description)``.

    :param profile: as :func:`load_emulator_profile`.
    :raises ConfigError: unknown profile.
    """
    from batchrunner.emulator import running_emulator

    config = load_emulator_profile(profile, seed=seed)
    label = "demo profile" if profile is None else f"profile {Path(profile).stem}"
    with running_emulator(config) as emu:
        yield emu.base_url, label
