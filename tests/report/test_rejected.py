"""Input rows a run rejected (invalid, never sent) have no row: ``report`` counts them from
``run.json`` and names ``rejects.jsonl``, in text, JSON, HTML and comparisons."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from batchrunner.cli import main

from .conftest import REPO, row

INVALID = [b'{"params": {"messages": "x"}}', b"not json"]


@pytest.fixture
def runs(make_emulator, tmp_path, monkeypatch):
    """``clean``: 4 valid requests. ``mixed``: the same 4 and 4 invalid lines."""
    monkeypatch.delenv("BATCHRUNNER_GATEWAY", raising=False)
    valid = (REPO / "jobs" / "demo.jsonl").read_bytes().splitlines()[:4]
    (tmp_path / "clean.jsonl").write_bytes(b"\n".join(valid) + b"\n")
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(valid + INVALID * 2) + b"\n")
    out = {}
    with make_emulator() as emu:
        for name in ("clean", "mixed"):
            out[name] = tmp_path / name
            result = CliRunner().invoke(main, ["run", str(tmp_path / f"{name}.jsonl"), "--gateway",
                                               emu.base_url, "-q", "--out", str(out[name])])
            assert result.exit_code == 0, result.output
    assert orjson.loads((out["mixed"] / "run.json").read_bytes())["rejected"] == 4
    return out


def report(*args: str) -> str:
    result = CliRunner().invoke(main, ["report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_rejected_input_rows_are_named_in_text_json_and_html(runs, tmp_path):
    mixed = runs["mixed"]
    # Before: "requests 4 ok 4 ... error rate 0.0%" and not a word about the other 4.
    lines = report(str(mixed)).splitlines()
    assert (f"rejected   4 input rows were invalid and never sent: no row, so in no figure "
            f"below; each is in {mixed / 'rejects.jsonl'} with its reason") in lines
    run = orjson.loads(report(str(mixed), "--json"))["runs"][0]
    assert run["rows"] == 4 and run["rejected_input_rows"] == 4
    clean = orjson.loads(report(str(runs["clean"]), "--json"))["runs"][0]
    assert clean["rejected_input_rows"] == 0
    assert "rejected " not in report(str(runs["clean"]))
    html = tmp_path / "r.html"
    report(str(mixed), "--html", str(html))
    assert '<p class="meta warn">rejected   4 input rows were invalid' in html.read_text()


def test_a_comparison_names_the_runs_with_rejected_input_rows(runs):
    clean, mixed = str(runs["clean"]), str(runs["mixed"])
    cmp = orjson.loads(report(clean, mixed, "--json"))["comparison"]
    assert cmp["rejected_input_rows"] == {"mixed": 4}
    assert ("  input rows rejected (invalid, never sent, in no figure above): mixed 4"
            in report(clean, mixed).splitlines())


def test_a_rejected_count_of_the_wrong_type_is_left_out_with_a_warning(make_run):
    run_dir = make_run([row()], info={"rejected": "4"})
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (f"warning    {run_dir / 'run.json'}: rejected is a string ('4'), expected a count; "
            "left out" in result.output)
    assert "rejected   " not in result.output
