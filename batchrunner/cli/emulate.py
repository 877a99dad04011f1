"""`batchrunner emulate`: the built-in Bifrost gateway emulator as a standalone server.

Thin by design: flags are mapped one-to-one onto :class:`batchrunner.emulator.EmulatorConfig`
fields (a flag left out keeps the profile's value), then :func:`batchrunner.emulator.serve` runs
until SIGINT/SIGTERM.
"""

from __future__ import annotations

from typing import Any

import click

from batchrunner.cli import main

_DIST_HELP = "DIST: 0.2 | fixed:0.2 | uniform:LOW,HIGH | normal:MEAN,SD | lognormal:MEDIAN,SIGMA."


def _rate(name: str, what: str) -> Any:
    return click.option(
        f"--{name}",
        type=click.FloatRange(0, 1),
        default=None,
        metavar="P",
        help=f"Probability (0-1) of {what}.",
    )


@main.command(
    epilog=(
        "\b\n" + _DIST_HELP + "\n"
        "Profiles: jobs/emulator/{demo,instant,realistic,flaky}.toml (a bare name such as\n"
        "'flaky' works from any directory). Profile keys are the option names with '_' for\n"
        "'-', except\n"
        "--virtual-key -> virtual_keys, --fail-model -> fail_models, --ping -> stream_ping.\n"
        "\n"
        "\b\n"
        "Endpoints: POST /anthropic/v1/messages   GET /health\n"
        "           GET /_emulator/ground-truth[?since=N&limit=M]   GET /_emulator/stats\n"
        "           POST /_emulator/reset   GET|POST /_emulator/config\n"
        "\n"
        "\b\n"
        "Examples:\n"
        "  batchrunner emulate                                  # instant, no faults\n"
        "  batchrunner emulate --profile realistic --port 9000\n"
        "  batchrunner emulate --profile flaky --fault-529 0.2 --fail-model claude-opus-4\n"
        "  batchrunner emulate --virtual-key sk-bf-team1 --rate-limit-rps 50 --slots 32"
    )
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0 = any free).",
)
@click.option(
    "--profile", default=None, metavar="FILE", help="TOML profile; flags given here override it."
)
@click.option(
    "--seed", type=int, default=None, help="Seed of the behaviour model and fault sequence [0]."
)
@click.option("--ttft", default=None, metavar="DIST", help="Time to first token, seconds [0].")
@click.option(
    "--token-delay", default=None, metavar="DIST", help="Delay between output tokens, seconds [0]."
)
@click.option(
    "--output-tokens",
    default=None,
    metavar="DIST",
    help="Output length in tokens, capped by max_tokens [uniform:10,40].",
)
@click.option(
    "--prefill-s-per-token",
    type=click.FloatRange(0),
    default=None,
    metavar="S",
    help="Extra TTFT per uncached input token, seconds [0].",
)
@click.option(
    "--chars-per-token",
    type=click.FloatRange(0.01),
    default=None,
    metavar="N",
    help="Characters per input token for the prompt-size estimate [4].",
)
@click.option(
    "--ping/--no-ping", "stream_ping", default=None, help="Send a ping event in streams [on]."
)
@click.option(
    "--slots",
    type=click.IntRange(0),
    default=None,
    metavar="N",
    help="Serve at most N requests/jobs at once; the rest wait in FIFO order (0 = unlimited) [0].",
)
@click.option(
    "--virtual-key",
    "virtual_keys",
    multiple=True,
    metavar="KEY",
    help="Accepted virtual key (sk-bf-...); repeatable. Unknown keys get 401 [no key check].",
)
@click.option(
    "--require-virtual-key/--no-require-virtual-key",
    default=None,
    help="With --virtual-key: refuse requests without any key (401) [on].",
)
@click.option(
    "--rate-limit-rps",
    type=click.FloatRange(0),
    default=None,
    metavar="R",
    help="Requests per second per key; excess gets 429 without retry-after, as Bifrost's "
    "governance does (0 = off) [0].",
)
@click.option(
    "--rate-limit-burst",
    type=click.IntRange(0),
    default=None,
    metavar="N",
    help="Burst of the per-key limit (0 = max(1, rps)) [0].",
)
@click.option(
    "--fail-model",
    "fail_models",
    multiple=True,
    metavar="NAME",
    help="Model that always fails (bare or provider/model); repeatable. Fallbacks then serve.",
)
@click.option(
    "--fail-model-status",
    type=click.IntRange(100, 599),
    default=None,
    metavar="S",
    help="Status of a failing model [500].",
)
@_rate("fault-429", "a 429 rate_limit_error with retry-after (sync/stream) [0]")
@_rate("fault-500", "a 500 api_error (sync/stream) [0]")
@_rate("fault-529", "a 529 overloaded_error (sync/stream) [0]")
@_rate("fault-drop", "closing the connection before any response byte (all requests) [0]")
@_rate("fault-midstream", "a stream ending with an error event after some tokens [0]")
@_rate("fault-stall", "holding a request unanswered for --stall-s (all requests) [0]")
@_rate("fault-job", "an async job ending failed with --job-failure-status [0]")
@click.option(
    "--job-failure-status",
    type=click.IntRange(100, 599),
    default=None,
    metavar="S",
    help="Status stored in a failed job [500].",
)
@click.option(
    "--retry-after-s",
    type=click.IntRange(0),
    default=None,
    metavar="S",
    help="retry-after of the injected 429 [1].",
)
@click.option(
    "--stall-s",
    type=click.FloatRange(0),
    default=None,
    metavar="S",
    help="How long a stall holds a request [3600].",
)
@click.option(
    "--job-result-ttl-s",
    type=click.IntRange(1),
    default=None,
    metavar="S",
    help="Async result TTL when x-bf-async-job-result-ttl is missing/invalid/negative [3600].",
)
@click.option(
    "--job-not-found-status",
    type=click.Choice(["404", "400"]),
    default=None,
    help="Status for unknown/expired/other-key jobs: 404 (newest gateway) or 400 (older) [404].",
)
@click.option(
    "--job-store-max",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="Most async jobs kept [1000000].",
)
@click.option(
    "--prompt-cache-max",
    type=click.IntRange(0),
    default=None,
    metavar="N",
    help="Most prompt-cache prefixes kept [100000].",
)
@click.option(
    "--ground-truth/--no-ground-truth",
    default=None,
    help="Record one ground-truth entry per request [on].",
)
@click.option(
    "--ground-truth-max",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="Most ground-truth entries kept [1000000].",
)
def emulate(host: str, port: int, profile: str | None, **options: Any) -> None:
    """Run the built-in Bifrost gateway emulator (POST /anthropic/v1/messages: sync, SSE,
    x-bf-async jobs, virtual keys, fallbacks, faults) until Ctrl-C.

    Point clients at http://HOST:PORT/anthropic. Values in [brackets] are the defaults of the
    instant profile.
    """
    from batchrunner.emulator import ConfigError, load_profile, serve

    for name in ("virtual_keys", "fail_models"):
        options[name] = options[name] or None  # not given: keep the profile's list
    if options["job_not_found_status"] is not None:
        options["job_not_found_status"] = int(options["job_not_found_status"])
    try:
        cfg = load_profile(profile, **options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None

    def ready(url: str) -> None:
        click.echo(
            f"batchrunner emulator listening on {url}  (Anthropic base URL: {url}/anthropic)",
            err=True,
        )
        click.echo(
            f"ground truth: {url}/_emulator/ground-truth   stats: {url}/_emulator/stats", err=True
        )

    try:
        serve(cfg, host=host, port=port, on_ready=ready)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    click.echo("batchrunner emulator stopped", err=True)
