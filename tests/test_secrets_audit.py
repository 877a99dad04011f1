"""Credentials that reached rows, run.json, stderr or a repr by ways the first redaction missed.

Each test is one way found by an audit: a gateway quoting the request target (with the URL's
query credentials) or a key in ``error.type``, an ``httpx.AsyncClient`` that carries the auth
headers itself, a bench worker, a repr, a mistyped ``-H``, a header named unlike the usual ones,
the ``BATCHRUNNER_DEBUG`` traceback and the bench's internal-error line.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from keyecho import RefusingHandler, serving

import batchrunner
from batchrunner.bench import StageSpec
from batchrunner.bench_run import BenchConfig, run_bench
from batchrunner.cli import main
from batchrunner.cli.resume_hint import resume_command
from batchrunner.config import ConfigError, RunConfig
from batchrunner.retry import RetryPolicy
from batchrunner.runner import RunResult, run_sync, run_sync_coro

KEY = "sk-ant-AUDIT-KEY-0001"
VK = "sk-bf-AUDIT-VK-0002"
QUERY_SECRET = "QSECRET0003"
TYPE_SECRET_SERVER_PATHS = ("/type",)


class _EchoEverythingHandler(RefusingHandler):
    """Quotes the request line and every header it got in the error message; on the ``/type``
    path the ``x-api-key`` goes into ``error.type`` too."""

    def error(self) -> dict[str, str]:
        quoted = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
        error_type = "authentication_error"
        if self.path.startswith(TYPE_SECRET_SERVER_PATHS):
            error_type = f"invalid_key_{self.headers.get('x-api-key')}"
        return {"type": error_type, "message": f"refused POST {self.path}; {quoted}"}


def echo_server() -> AbstractContextManager[str]:
    return serving(_EchoEverythingHandler)


def _refused_run(tmp_path: Path, gateway: str, n: int, **options: object) -> RunResult:
    """A run of *n* requests against the echo server (every one refused), printing."""
    config = RunConfig(requests=_requests(tmp_path / "in.jsonl", n), gateway=gateway,
                       out=tmp_path / "out", api_key=KEY, retry=RetryPolicy(max_retries=0),
                       **options)  # type: ignore[arg-type]  # fmt: skip
    return run_sync(config, quiet=False)


def _requests(path: Path, n: int) -> Path:
    with path.open("wb") as fh:
        for i in range(n):
            params = {
                "model": "m",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
            }
            fh.write(orjson.dumps({"custom_id": f"r{i}", "params": params}) + b"\n")
    return path


def _assert_nowhere(secret: str, run_dir: Path, *texts: str) -> None:
    for text in texts:
        assert secret not in text
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    # Parquet parts are compressed: read the columns back as well.
    table = pq.read_table(run_dir / "data")
    assert secret not in repr(table.to_pylist()), "a row holds the secret"


def test_query_credentials_of_the_gateway_url_are_cut_from_quoted_errors(tmp_path, capsys):
    out = tmp_path / "out"
    with echo_server() as url:
        result = _refused_run(tmp_path, f"{url}/?key={QUERY_SECRET}", 25, concurrency=1)
    assert result.exit_code == 3 and "refused POST /anthropic/v1/messages?key=" in result.message
    captured = capsys.readouterr()
    _assert_nowhere(QUERY_SECRET, out, result.message, captured.err, captured.out)
    _assert_nowhere(KEY, out, result.message, captured.err, captured.out)


def test_a_key_in_the_error_type_is_cut_from_rows_run_json_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    with echo_server() as url:
        result = _refused_run(tmp_path, f"{url}/type", 3)
    assert result.summary["error_types"] == {"invalid_key_<redacted>": 3}
    captured = capsys.readouterr()
    _assert_nowhere(KEY, out, repr(result), captured.err, captured.out)


def test_auth_headers_of_the_callers_own_http_client_are_redacted(tmp_path):
    out = tmp_path / "out"
    with echo_server() as url:
        client = httpx.AsyncClient(headers={"x-api-key": KEY, "authorization": f"Bearer {VK}"})
        result = batchrunner.run(
            _requests(tmp_path / "in.jsonl", 3), gateway=url, out=out, http_client=client,
            max_retries=0,
        )  # fmt: skip
    rows = pq.read_table(out / "data").to_pylist()
    assert all("x-api-key: <redacted>" in r["error_message"] for r in rows)
    _assert_nowhere(KEY, out, repr(result))
    _assert_nowhere(VK, out, repr(result))


def test_bench_workers_cut_query_credentials_too(tmp_path):
    out = tmp_path / "out"
    with echo_server() as url:
        run = RunConfig(
            requests=Path(), gateway=f"{url}/?key={QUERY_SECRET}", out=out, api_key=KEY,
            retry=RetryPolicy(max_retries=0),
        )  # fmt: skip
        stages = [StageSpec("c=1", concurrency=1, duration_s=0.3)]
        run_sync_coro(run_bench(BenchConfig(run=run, stages=stages, workers=2), quiet=True))
    rows = pq.read_table(out / "data").to_pylist()
    assert rows and all("?key=<redacted>" in r["error_message"] for r in rows)
    _assert_nowhere(QUERY_SECRET, out)


def test_the_config_repr_shows_no_credential_of_the_gateway_url() -> None:
    config = RunConfig(
        requests=Path("x.jsonl"), gateway=f"http://bob:PWSECRET@127.0.0.1:1/?key={QUERY_SECRET}",
        api_key=KEY,
    )  # fmt: skip
    for text in (repr(config), (config.validate(), repr(config))[1]):
        assert "PWSECRET" not in text and QUERY_SECRET not in text and KEY not in text
        assert "127.0.0.1:1" in text
    assert "gateway=None" in repr(RunConfig(requests=Path("x.jsonl")))
    # never raises, even for a URL that does not parse
    assert "PWSECRET" not in repr(RunConfig(requests=Path("x"), gateway="http://a:PWSECRET@h:x/"))


def test_a_header_without_its_colon_is_not_quoted_past_the_name() -> None:
    # -H 'X-Auth-Token abc:def' (the ':' forgotten) parses as the name 'X-Auth-Token abc'
    config = RunConfig(requests=Path("x.jsonl"), headers={"X-Auth-Token TOKSECRET": "rest"})
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert "TOKSECRET" not in str(info.value) and "X-Auth-Token" in str(info.value)


@pytest.mark.parametrize("name", ["Ocp-Apim-Subscription-Key", "X-Custom-Auth", "Helicone-Auth"])
def test_credential_headers_with_other_names_are_redacted(name: str) -> None:
    config = RunConfig(requests=Path("x.jsonl"), headers={name: "HDRSECRET77"})
    assert "HDRSECRET77" not in str(config.public_dict())
    command, left_out = resume_command(
        ["x.jsonl", "-H", f"{name}: HDRSECRET77"], Path("out"), secrets=config.secret_values()
    )
    assert "HDRSECRET77" not in command and left_out == [f"-H '{name}: …'"]


def test_the_debug_traceback_of_run_shows_no_key(monkeypatch, tmp_path) -> None:
    def boom(config, **_kw):
        raise RuntimeError(f"boom with {config.api_key} in it")

    monkeypatch.setattr("batchrunner.runner.run_sync", boom)
    monkeypatch.setenv("BATCHRUNNER_DEBUG", "1")
    result = CliRunner().invoke(
        main, ["run", str(_requests(tmp_path / "in.jsonl", 1)), "--api-key", KEY]
    )
    assert result.exit_code == 1 and "Traceback" in result.output
    assert "boom with <redacted> in it" in result.output and KEY not in result.output


@pytest.mark.parametrize("debug", ["", "1"])
def test_an_internal_error_of_bench_shows_no_key(monkeypatch, debug: str) -> None:
    async def boom(config, **_kw):
        raise RuntimeError(f"boom with {config.run.api_key} and {config.run.gateway}")

    monkeypatch.setattr("batchrunner.bench_run.run_bench", boom)
    monkeypatch.setenv("BATCHRUNNER_DEBUG", debug)
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "-c",
            "1",
            "--api-key",
            KEY,
            "--gateway",
            f"http://127.0.0.1:1/?key={QUERY_SECRET}",
        ],
    )
    assert result.exit_code == 1 and "Internal error: RuntimeError: boom with <redacted>" in (
        result.output
    )
    assert KEY not in result.output and QUERY_SECRET not in result.output


def test_the_resume_hint_survives_a_gateway_argument_ending_in_a_newline() -> None:
    # The run strips the URL; the hint read the raw argument and crashed after the run.
    args = ["x.jsonl", "--gateway", "http://bob:PWSECRET@127.0.0.1:1/\n"]
    command, left_out = resume_command(args, Path("out"))
    assert "PWSECRET" not in command and left_out == ["--gateway (its URL holds credentials)"]
    kept, _ = resume_command(["x.jsonl", "--gateway", "http://127.0.0.1:1/x\n"], Path("out"))
    assert "--gateway" in kept


def test_collect_asks_for_a_credential_header_again_instead_of_polling_without_it(
    make_emulator, tmp_path, monkeypatch
) -> None:
    # A virtual key given as -H 'Authorization: Bearer sk-bf-…' is not in run.json: polled
    # without it, every job reads as not found and ends expired, with no way back.
    monkeypatch.delenv("BATCHRUNNER_GATEWAY", raising=False)
    monkeypatch.delenv("BIFROST_VK", raising=False)
    out = tmp_path / "out"
    header = ["-H", f"Authorization: Bearer {VK}"]
    with make_emulator(virtual_keys=(VK,)) as emu:
        detached = CliRunner().invoke(
            main,
            ["run", str(_requests(tmp_path / "in.jsonl", 3)), "--mode", "async", "--detach",
             "--gateway", emu.base_url, "--out", str(out), "-q", *header],
        )  # fmt: skip
        assert detached.exit_code == 0, detached.output
        refused = CliRunner().invoke(main, ["collect", str(out), "-q"])
        assert refused.exit_code == 2 and "-H 'Authorization: …'" in refused.output
        collected = CliRunner().invoke(main, ["collect", str(out), "--json", *header])
    assert collected.exit_code == 0, collected.output
    assert orjson.loads(collected.stdout)["summary"]["status"] == {"ok": 3}
    assert VK not in (out / "run.json").read_text()


def test_collect_asks_for_a_gateway_url_holding_credentials_again(
    make_emulator, tmp_path, monkeypatch
) -> None:
    # run.json keeps the URL without its user:password; polled without them, a real gateway
    # refuses every poll and the jobs end as error rows.
    monkeypatch.delenv("BATCHRUNNER_GATEWAY", raising=False)
    out = tmp_path / "out"
    with make_emulator() as emu:
        gateway = emu.base_url.replace("http://", "http://bob:PWSECRET@")
        detached = CliRunner().invoke(
            main,
            ["run", str(_requests(tmp_path / "in.jsonl", 3)), "--mode", "async", "--detach",
             "--gateway", gateway, "--out", str(out), "-q"],
        )  # fmt: skip
        assert detached.exit_code == 0, detached.output
        info = orjson.loads((out / "run.json").read_bytes())
        assert info["config"]["gateway_credentials_set"] and "PWSECRET" not in str(info)
        refused = CliRunner().invoke(main, ["collect", str(out), "-q"])
        assert refused.exit_code == 2 and "give the same --gateway" in refused.output
        collected = CliRunner().invoke(main, ["collect", str(out), "--json", "--gateway", gateway])
    assert collected.exit_code == 0, collected.output
    assert orjson.loads(collected.stdout)["summary"]["status"] == {"ok": 3}
    assert "PWSECRET" not in collected.output


@pytest.mark.parametrize("bad", ["\ufeff", "\u200b", "\u00e9"])
def test_a_key_with_an_invisible_or_non_ascii_character_is_refused_unquoted(
    tmp_path, monkeypatch, bad: str
) -> None:
    # A key file saved with a byte-order mark failed every request, and a gateway that quoted
    # the key back re-encoded (Latin-1) was not recognised: the real key was stored whole.
    key = f"{bad}sk-ant-INVISIBLE-0004" if bad == "\ufeff" else f"sk-ant-INVISIBLE-0004{bad}"
    requests = _requests(tmp_path / "in.jsonl", 1)
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(requests), "--gateway", "http://127.0.0.1:9",
                                       "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "--api-key: the key contains" in result.output
    assert f"(U+{ord(bad):04X}) at character" in result.output
    assert "INVISIBLE" not in result.output and not out.exists()
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    result = CliRunner().invoke(main, ["run", str(requests), "--gateway", "http://127.0.0.1:9",
                                       "-H", f"X-Api-Key: {key}", "--out", str(out)])
    assert result.exit_code == 2 and "-H X-Api-Key: the value contains" in result.output
    assert "INVISIBLE" not in result.output


def test_text_headers_with_credential_like_names_may_hold_any_text() -> None:
    # Refused when the non-ASCII check covered every credential-like name.
    for name, value in (("X-Author-Name", "José"), ("X-Keywords", "café"),
                        ("Cookie", "a=1;\tb=2")):
        RunConfig(requests=Path("x.jsonl"), headers={name: value}).validate()


def test_keys_in_a_rejected_line_stay_out_of_rejects_and_validate(tmp_path) -> None:
    # A rejected line was kept whole: its own headers' keys, and the run's --api-key.
    lines = [
        {"custom_id": "a", "params": {"model": "m", "max_tokens": 5, "messages": []},
         "headers": {"x-api-key": "sk-ant-LINE-KEY-0005", "Authorization": "Bearer LINETOK6"}},
        {"custom_id": "b", "params": {"model": "m", "max_tokens": 0,
                                      "messages": [{"role": "user", "content": KEY}]}},
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines)
                     + b'{"x-api-key": "sk-ant-BROKEN-0007", oops\n')
    checked = CliRunner().invoke(main, ["validate", str(path), "--json"])
    assert checked.exit_code == 1 and '\\"x-api-key\\":\\"<redacted>\\"' in checked.output
    out = tmp_path / "out"
    with echo_server() as url:
        result = CliRunner().invoke(main, ["run", str(path), "--gateway", url, "--api-key", KEY,
                                           "--out", str(out)])
    rejects = (out / "rejects.jsonl").read_text()
    assert result.exit_code == 2 and rejects.count("<redacted>") == 4, rejects
    for secret in ("sk-ant-LINE-KEY-0005", "LINETOK6", "sk-ant-BROKEN-0007"):
        assert secret not in checked.output and secret not in rejects
    _assert_nowhere(KEY, out, result.output)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_short_x_api_key_quoted_back_is_cut_out_in_run_and_bench(tmp_path, workers) -> None:
    # A 7-character -H X-Api-Key was under the 8 characters a credential-named value needed to
    # be cut from error texts (bench workers the same for --api-key): it was stored whole.
    out = tmp_path / "out"
    with echo_server() as url:
        run = RunConfig(requests=Path(), gateway=url, out=out, api_key="Zq7SHRT",
                        headers={"X-Api-Key": "Zq8SHRT"}, retry=RetryPolicy(max_retries=0))
        stages = [StageSpec("c=1", concurrency=1, duration_s=0.3)]
        run_sync_coro(run_bench(BenchConfig(run=run, stages=stages, workers=workers),
                                quiet=True))
    rows = pq.read_table(out / "data").to_pylist()
    assert rows and all("x-api-key: <redacted>" in r["error_message"] for r in rows)
    _assert_nowhere("Zq8SHRT", out)


@pytest.mark.parametrize("command", ["run", "bench", "collect"])
def test_an_unquoted_header_value_is_not_echoed_as_extra_arguments(tmp_path, command) -> None:
    # click's "Got unexpected extra arguments (Bearer sk-…)" printed the key.
    args = [str(_requests(tmp_path / "in.jsonl", 1))] if command != "collect" else [str(tmp_path)]
    result = CliRunner().invoke(main, [command, *args, "-H", "Authorization:", "Bearer",
                                       "sk-ant-UNQUOTED-0008"])
    assert result.exit_code == 2 and "Got 2 unexpected extra arguments" in result.output
    assert "UNQUOTED" not in result.output

