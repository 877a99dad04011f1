"""Options shared by the commands that talk to a gateway (``run``, ``bench``, ``collect``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def parse_header(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """``-H 'Name: value'`` (repeatable) → a dict."""
    headers: dict[str, str] = {}
    for raw in values:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            # Not quoted back: the value is often a credential (-H 'Authorization Bearer ...').
            what = "no ':' after the header name" if not sep else "no header name before ':'"
            raise click.BadParameter(f"expected 'Name: value', got a value with {what}")
        headers[name.strip()] = value.strip()
    return headers


def credential_options(func: F) -> F:
    """Add ``--api-key``, ``--virtual-key`` and ``-H/--header``. Keys are never stored."""
    decorators = [
        click.option(
            "--api-key",
            envvar=["BATCHRUNNER_API_KEY", "ANTHROPIC_API_KEY"],
            default=None,
            metavar="KEY",
            help="Sent as x-api-key. Env BATCHRUNNER_API_KEY, else ANTHROPIC_API_KEY. "
            "Never written to disk (give it again to resume or collect).",
        ),
        click.option(
            "--virtual-key",
            envvar="BIFROST_VK",
            default=None,
            metavar="SK_BF_KEY",
            help="Bifrost virtual key, sent as x-bf-vk. Env BIFROST_VK. Never written to disk; "
            "an async job can only be read with the key that created it.",
        ),
        click.option(
            "-H",
            "--header",
            "headers",
            multiple=True,
            callback=parse_header,
            metavar="'NAME: VALUE'",
            help="Extra request header (repeatable).",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def name_env_sources(message: str) -> str:
    """``message`` with a leading ``--gateway:`` told as ``BATCHRUNNER_GATEWAY:`` when the
    address came from that variable: the user never typed ``--gateway`` and would look for it
    in the command."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or not message.startswith("--gateway:"):
        return message
    try:
        source = ctx.get_parameter_source("gateway")
    except (KeyError, TypeError):
        return message
    if source is click.core.ParameterSource.ENVIRONMENT:
        return "BATCHRUNNER_GATEWAY (environment):" + message[len("--gateway:") :]
    return message
