"""A gateway address that cannot work (port empty or out of range, a host that does not resolve)
is a usage error before anything is created or sent, for run, collect and bench."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest

import batchrunner
from batchrunner.config import ConfigError, RunConfig
from batchrunner.gateway_address import check_resolves
from batchrunner.runner import run_sync

from .conftest import read_rows
from .conftest import run_in_process as invoke

#: RFC 6761: names under .invalid never resolve, offline or not.
UNRESOLVABLE = "batchrunner-gateway.invalid"

BAD_GATEWAYS = [
    ("http://127.0.0.1:378333", "--gateway: the gateway URL's port 378333 is out of range"),
    ("http://127.0.0.1:", "--gateway: the gateway URL has an empty port"),
    ("http://[::1]:99999/x", "port 99999 is out of range"),
    ("http://127.0.0.1:0", "port 0 is out of range"),
    ("http://127.0.0.1:-5", "port is not a number"),
    # the credentials around the port are not quoted
    ("http://bob:sk-SECRET5@127.0.0.1:/?key=QSECRET6", "has an empty port"),
    # a '/' in the password ends the authority early: its digits read as the port
    ("http://admin:31415926/SECRET9@127.0.0.1:1/", "the gateway URL's port is out of range"),
    (f"http://{UNRESOLVABLE}:37833", f"--gateway: the gateway host {UNRESOLVABLE} does not"),
    (f"http://bob:sk-SECRET7@{UNRESOLVABLE}/?key=QSECRET8", f"host {UNRESOLVABLE} does not"),
]


@pytest.mark.parametrize(("gateway", "message"), BAD_GATEWAYS)
def test_run_refuses_a_gateway_that_cannot_work_before_creating_anything(
    requests_file, tmp_path, gateway, message
):
    root = tmp_path / "results"
    args = ("run", str(requests_file(3)), "--gateway", gateway, "--results-root", str(root))
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.startswith("Error: ")
    assert len(result.output.strip().splitlines()) == 1
    assert "SECRET" not in result.output and "Traceback" not in result.output
    assert "31415926" not in result.output
    assert not root.exists()


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize(("gateway", "message"), [BAD_GATEWAYS[0], BAD_GATEWAYS[6]])
def test_a_bad_gateway_from_the_environment_is_named_as_such(
    requests_file, tmp_path, command, gateway, message
):
    # The user typed no --gateway: the message names the variable they set.
    out = tmp_path / "out"
    load = ("-c", "1", "--stage-requests", "1") if command == "bench" else ()
    args = (command, *((str(requests_file(2)),) if command == "run" else ()), *load)
    result = invoke(*args, "--out", str(out), env={"BATCHRUNNER_GATEWAY": gateway})
    assert result.exit_code == 2, result.output
    told = message.replace("--gateway:", "BATCHRUNNER_GATEWAY (environment):")
    assert told in result.output and "--gateway" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("gateway", "message"), [BAD_GATEWAYS[0], BAD_GATEWAYS[1], BAD_GATEWAYS[6]]
)
def test_bench_refuses_a_gateway_that_cannot_work(tmp_path, gateway, message):
    out = tmp_path / "bench"
    result = invoke(
        "bench", "-c", "1", "--stage-requests", "1", "--gateway", gateway, "--out", str(out)
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("gateway", "message"), [BAD_GATEWAYS[0], BAD_GATEWAYS[1], BAD_GATEWAYS[6]]
)
def test_collect_refuses_a_gateway_that_cannot_work_and_changes_nothing(
    make_emulator, requests_file, tmp_path, gateway, message
):
    out = tmp_path / "out"
    emu = make_emulator()
    detached = run_sync(
        RunConfig(requests=requests_file(2), gateway=emu.base_url, out=out, mode="async",
                  detach=True),
        quiet=True,
    )  # fmt: skip
    assert detached.status == "detached"
    before = (out / "run.json").read_bytes()
    result = invoke("collect", str(out), "--gateway", gateway)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert (out / "run.json").read_bytes() == before
    assert orjson.loads(before)["status"] == "detached"


def test_a_gateway_given_by_name_that_resolves_runs(make_emulator, requests_file, tmp_path):
    emu = make_emulator()
    gateway = emu.base_url.replace("127.0.0.1", "localhost")
    assert "localhost" in gateway
    result = batchrunner.run(requests_file(3), gateway=gateway, out=tmp_path / "out", quiet=True)
    assert result.status == "finished"
    assert set(read_rows(tmp_path / "out")["status"]) == {"ok"}


def test_the_library_refuses_an_unresolvable_host_with_a_config_error(requests_file, tmp_path):
    with pytest.raises(ConfigError, match=f"host {UNRESOLVABLE} does not resolve"):
        batchrunner.run(requests_file(2), gateway=f"http://{UNRESOLVABLE}", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


class _ToLoopback(httpx.AsyncBaseTransport):
    """What a proxy does: the URL's host is not resolved here."""

    def __init__(self, port: int) -> None:
        self.port = port
        # no keep-alive: the run's loop ends with it, and nothing is left open after
        self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
        self.hosts: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.add(request.url.host)
        request.url = request.url.copy_with(host="127.0.0.1", port=self.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_callers_own_http_client_is_trusted_to_reach_the_host(
    make_emulator, requests_file, tmp_path
):
    emu = make_emulator()
    transport = _ToLoopback(httpx.URL(emu.base_url).port)
    result = batchrunner.run(
        requests_file(2), gateway=f"http://{UNRESOLVABLE}", out=tmp_path / "out",
        transport=transport, quiet=True,
    )  # fmt: skip
    assert result.status == "finished" and transport.hosts == {UNRESOLVABLE}
    assert len(read_rows(tmp_path / "out")) == 2


def test_an_ip_address_is_not_looked_up(monkeypatch):
    def no_lookup(*args, **kwargs):
        raise AssertionError("looked up")

    monkeypatch.setattr("socket.getaddrinfo", no_lookup)
    asyncio.run(check_resolves("http://10.255.255.1:9/anthropic/v1/messages"))
    asyncio.run(check_resolves("http://[::1]:9/anthropic/v1/messages"))
    with pytest.raises(AssertionError, match="looked up"):
        asyncio.run(check_resolves("http://example.test:9/anthropic/v1/messages"))


def test_a_resolver_that_hangs_is_refused_after_the_timeout(monkeypatch):
    # Mocked: a hanging DNS cannot be had on 127.0.0.1. The lookup thread is a daemon, so it
    # does not keep the process alive.
    import threading

    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr("socket.getaddrinfo", hang)
    try:
        with pytest.raises(ValueError, match=r"host slow\.test did not resolve within 0\.05 s"):
            asyncio.run(check_resolves("http://slow.test/anthropic/v1/messages", timeout_s=0.05))
    finally:
        release.set()


def test_paths_are_not_confused_with_ports(tmp_path: Path) -> None:
    for gateway in ("https://h/a:b", "http://u:p:q@h", "http://h:080/x", "http://[::1]/x"):
        config = RunConfig(requests=tmp_path / "x.jsonl", gateway=gateway)
        config.validate()
