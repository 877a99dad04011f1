"""The built-in emulator as the default gateway of ``run`` (no ``--gateway`` configured).

The emulator runs on its own thread in this process. That is right for a first run and for
demos; for benchmarks, start ``batchrunner emulate`` as a separate process so that it does not
share a core (and the GIL) with the client being measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

#: Ready profiles shipped in ``jobs/emulator/`` of the source tree.
PROFILE_DIR = Path(__file__).resolve().parent.parent / "jobs" / "emulator"


@contextlib.contextmanager
def embedded_emulator(profile: str | None, *, seed: int = 0) -> Iterator[tuple[str, str]]:
    """Start the emulator and yield ``(base URL, description)``.

    :param profile: ``None`` for the demo profile, a ready profile name, or a TOML file path.
    :raises ConfigError: unknown profile.
    """
    from batchrunner.config import ConfigError
    from batchrunner.emulator import EmulatorConfig, load_profile, running_emulator
    from batchrunner.emulator.config import Dist

    if profile is None:
        # Small but real delays, so that a demo run shows meaningful TTFT and latency figures
        # and still finishes in a few seconds.
        config = EmulatorConfig(
            seed=seed,
            ttft=Dist("lognormal", 0.05, 0.3),
            token_delay=Dist("uniform", 0.001, 0.003),
            output_tokens=Dist("uniform", 20, 200),
        )
        label = "demo profile"
    else:
        path = Path(profile)
        if not path.is_file():
            path = PROFILE_DIR / f"{profile}.toml"
        if not path.is_file():
            names = sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
            raise ConfigError(
                f"--emulator-profile {profile!r}: no such file or ready profile "
                f"(ready: {', '.join(names) or 'none found'})"
            )
        try:
            config = load_profile(path, seed=seed)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"--emulator-profile {profile}: {exc}") from None
        label = f"profile {path.stem}"
    with running_emulator(config) as emu:
        yield emu.base_url, label
