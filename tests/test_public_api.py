from __future__ import annotations

import batchrunner


def test_all_is_sorted_and_every_name_resolves():
    assert batchrunner.__all__ == sorted(batchrunner.__all__)
    for name in batchrunner.__all__:
        assert getattr(batchrunner, name) is not None


def test_unknown_attribute_raises():
    try:
        batchrunner.nope  # noqa: B018
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
