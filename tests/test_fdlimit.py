"""The open-file limit is raised for a run's connections, and a hard limit too low is reported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

resource = pytest.importorskip("resource")


def _in_child(code: str) -> str:
    # A child process: limits changed here must not leak into the test session.
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_soft_limit_is_raised_up_to_what_the_run_needs() -> None:
    out = _in_child(
        """
        import resource
        from batchrunner.fdlimit import ensure_open_files
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        warning = ensure_open_files(500)
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], warning, hard)
        """
    )
    soft, warning, hard = out.split(" ", 2)
    if hard != str(resource.RLIM_INFINITY) and int(hard) < 564:
        pytest.skip("the hard limit here is too low to raise")
    assert int(soft) == 564 and warning == "None"


def test_hard_limit_too_low_gives_a_warning() -> None:
    out = _in_child(
        """
        import resource
        from batchrunner.fdlimit import ensure_open_files
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))
        print(ensure_open_files(1000))
        print(resource.getrlimit(resource.RLIMIT_NOFILE))
        """
    )
    warning, limits = out.splitlines()
    assert "1,000 concurrent connections" in warning and "300" in warning and "ulimit -n" in warning
    assert limits == "(300, 300)"  # raised as far as allowed


def test_enough_already_changes_nothing() -> None:
    out = _in_child(
        """
        import resource
        from batchrunner.fdlimit import ensure_open_files
        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        print(ensure_open_files(1), before == resource.getrlimit(resource.RLIMIT_NOFILE))
        """
    )
    assert out == "None True"
