"""Configuration: distributions, coercion on assignment, TOML profiles and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrunner.emulator import (
    FIELD_NAMES,
    LIVE_FIELDS,
    ConfigError,
    Dist,
    EmulatorConfig,
    load_profile,
)

PROFILES = Path(__file__).resolve().parents[2] / "jobs" / "emulator"


@pytest.mark.parametrize(
    ("text", "dist"),
    [
        (0.25, Dist("fixed", 0.25)),
        ("0.25", Dist("fixed", 0.25)),
        ("fixed:3", Dist("fixed", 3)),
        ("uniform:0.1,0.4", Dist("uniform", 0.1, 0.4)),
        (" normal: 0.5, 0.1 ", Dist("normal", 0.5, 0.1)),
        ("lognormal:0.5,0.25", Dist("lognormal", 0.5, 0.25)),
        ({"kind": "lognormal", "median": 0.5, "sigma": 0.25}, Dist("lognormal", 0.5, 0.25)),
        ({"kind": "uniform", "low": 1, "high": 2}, Dist("uniform", 1, 2)),
        ({"kind": "normal", "mean": 1, "stddev": 2}, Dist("normal", 1, 2)),
        ({"kind": "fixed", "value": 4}, Dist("fixed", 4)),
    ],
)
def test_dist_parse(text: object, dist: Dist) -> None:
    assert Dist.parse(text) == dist
    assert Dist.parse(str(dist)) == dist  # str() round-trips


@pytest.mark.parametrize(
    "bad",
    [
        "gamma:1,2",
        "uniform:2,1",
        "normal:1",
        "lognormal:0,1",
        "x",
        {"kind": "fixed", "mu": 1},
        True,
        "normal:1,-1",
    ],
)
def test_dist_rejects(bad: object) -> None:
    with pytest.raises(ConfigError):
        Dist.parse(bad)


@pytest.mark.parametrize(
    "dist",
    [
        Dist("lognormal", 0.0123456789, 1 / 3),
        Dist("uniform", 0.1 + 0.2, 1e-7 + 0.5),
        Dist("normal", 123456789.123, 2.5e-12),
    ],
)
def test_dist_text_is_exact(dist: Dist) -> None:
    assert Dist.parse(str(dist)) == dist  # no rounding: GET /_emulator/config posts back
    assert str(Dist("uniform", 10, 40)) == "uniform:10,40"  # whole numbers stay short


def test_seed_is_a_64_bit_integer() -> None:
    for ok in (0, -(2**63), 2**63, 2**64 - 1):
        assert EmulatorConfig(seed=ok).seed == ok
    bad: object
    for bad in (2**64, 2**127, -(2**63) - 1, 1e30):
        with pytest.raises(ConfigError, match="seed must be a 64-bit integer"):
            EmulatorConfig().update(seed=bad)


def test_defaults_are_instant_without_faults_or_keys() -> None:
    cfg = EmulatorConfig()
    assert cfg.ttft.is_constant and cfg.ttft.constant == 0 and cfg.token_delay.constant == 0
    assert all(getattr(cfg, f) == 0 for f in FIELD_NAMES if f.startswith("fault_"))
    assert cfg.virtual_keys == () and cfg.slots == 0 and cfg.ground_truth


def test_assignment_is_coerced_and_validated() -> None:
    cfg = EmulatorConfig(ttft="uniform:0.1,0.2", virtual_keys=["sk-bf-a"], fail_models="a,b")
    assert (
        cfg.ttft == Dist("uniform", 0.1, 0.2)
        and cfg.virtual_keys == ("sk-bf-a",)
        and cfg.fail_models == ("a", "b")
    )
    cfg.token_delay = 0.01
    assert cfg.token_delay == Dist("fixed", 0.01)
    for field, value in [
        ("fault_500", 1.2),
        ("slots", -1),
        ("job_not_found_status", 500),
        ("stream_ping", "maybe"),
        ("seed", 1.5),
    ]:
        with pytest.raises(ConfigError):
            setattr(cfg, field, value)
    with pytest.raises(AttributeError):
        cfg.fault_42 = 1.0  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        cfg.update(fault_500=0.5, nope=1)
    assert cfg.fault_500 == 0.0  # update() is all or nothing


def test_live_fields() -> None:
    assert "fault_529" in LIVE_FIELDS and "ttft" in LIVE_FIELDS
    assert "slots" not in LIVE_FIELDS and "ground_truth_max" not in LIVE_FIELDS


def test_ready_profiles_load() -> None:
    instant = load_profile(PROFILES / "instant.toml")
    realistic = load_profile(PROFILES / "realistic.toml")
    flaky = load_profile(PROFILES / "flaky.toml")
    assert instant == EmulatorConfig()
    assert realistic.ttft == Dist("lognormal", 0.5, 0.25) and realistic.fault_500 == 0
    assert (
        flaky.fault_429 > 0
        and flaky.fault_529 > 0
        and flaky.fault_midstream > 0
        and flaky.fault_job > 0
    )
    assert load_profile("flaky") == flaky  # a bare name: jobs/emulator/flaky.toml


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text(
        'description = "x"\nfault_500 = 0.1\nttft = "fixed:0.2"\nvirtual_keys = ["sk-bf-1"]\n'
    )
    cfg = load_profile(p, fault_500=0.3, ttft=None)
    assert (
        cfg.fault_500 == 0.3 and cfg.ttft == Dist("fixed", 0.2) and cfg.virtual_keys == ("sk-bf-1",)
    )
    assert load_profile(None, seed=3).seed == 3


def test_profile_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("fault_500 = 0.1\nfault_5OO = 1\n")
    with pytest.raises(ConfigError, match="fault_5OO"):
        load_profile(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("fault_500 = \n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "missing.toml")
    with pytest.raises(ConfigError):
        load_profile(None, nope=1)


def test_public_api_is_complete() -> None:
    import batchrunner.emulator as pkg  # (ruff RUF022 keeps __all__ sorted)

    assert {"EmulatorConfig", "load_profile", "running_emulator", "serve"} <= set(pkg.__all__)
    assert all(hasattr(pkg, name) for name in pkg.__all__)


def test_fields_fixed_at_start_cannot_be_changed_while_the_emulator_runs():
    # Before: emu.config.slots = 1 was taken, and GET /_emulator/config then said slots 1
    # while nothing was limited (POST /_emulator/config already refused it).
    from batchrunner.emulator import running_emulator

    config = EmulatorConfig(slots=4)
    with running_emulator(config):
        with pytest.raises(ConfigError, match="cannot change while running: slots"):
            config.slots = 1
        with pytest.raises(ConfigError, match="cannot change while running: ground_truth_max"):
            config.update(ground_truth_max=5, fault_500=0.5)
        assert (config.slots, config.fault_500) == (4, 0.0)  # nothing of a refused update
        config.slots = 4  # its own value, as GET posts back
        config.fault_500 = 0.2  # a live field
    config.slots = 1  # stopped: the next start takes it
    assert config.slots == 1


def test_an_emulator_that_could_not_start_leaves_its_config_free():
    import socket

    from batchrunner.emulator import running_emulator

    config = EmulatorConfig()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            with running_emulator(config, port=taken.getsockname()[1]):
                pass
    config.slots = 3  # not "cannot change while running": nothing runs
    assert config.slots == 3
