"""Checks and normalises one Anthropic Messages request body before it is sent.

The rules are the ones that make a request certainly unusable (no model, ``max_tokens`` that is
not a positive integer, no messages, a role the API does not know, content of the wrong shape);
everything else is left to the gateway, so that fields added to the API later (or Bifrost's own
``fallbacks``) pass through untouched. Defaults from the command line fill only what a request
leaves out. A failed check raises :class:`RowError` whose text is the user-facing reason.
"""

from __future__ import annotations

from typing import Any

import orjson

ROLES = ("user", "assistant")


class RowError(ValueError):
    """One input row is unusable; ``str(exc)`` is the reason shown to the user."""


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for messages (``object``, ``array``, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return type(value).__name__


def show(value: Any, limit: int = 60) -> str:
    """A short JSON rendering of ``value`` for a reason text."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def normalize_params(
    params: Any,
    *,
    model: str | None = None,
    max_tokens: int | None = None,
    system: str | None = None,
    model_override: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Fill defaults into a Messages body and check it.

    The body is changed in place. A key whose value is ``null`` counts as missing for the
    defaults. ``stream`` is removed: whether a request streams is chosen by the run's
    ``--mode``, not by the input, so the same file can be run in every mode.

    :param params: the decoded body.
    :param model: default ``model`` for bodies without one.
    :param max_tokens: default ``max_tokens`` for bodies without one.
    :param system: default ``system`` prompt for bodies without one.
    :param model_override: replaces every body's ``model``.
    :return: the body and whether a ``stream`` field was removed from it.
    :raises RowError: when the body cannot be sent.
    """
    if not isinstance(params, dict):
        raise RowError(f"params must be a JSON object, got {json_type(params)}")
    if model_override is not None:
        params["model"] = model_override
    elif params.get("model") is None and model is not None:
        params["model"] = model
    if params.get("max_tokens") is None and max_tokens is not None:
        params["max_tokens"] = max_tokens
    if params.get("system") is None:
        if system is not None:
            params["system"] = system
        else:  # null is no system prompt (it was sent as "system": null)
            params.pop("system", None)
    stream_removed = "stream" in params
    params.pop("stream", None)

    _check_model(params)
    _check_max_tokens(params)
    _check_messages(params)
    if "system" in params and params["system"] is not None:
        _check_system(params["system"])
    return params, stream_removed


def _check_model(params: dict[str, Any]) -> None:
    value = params.get("model")
    if value is None:
        raise RowError("missing model (set it in the request or give --model)")
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"model must be a non-empty string, got {show(value)}")


def _check_max_tokens(params: dict[str, Any]) -> None:
    value = params.get("max_tokens")
    if value is None:
        raise RowError("missing max_tokens (set it in the request or give --max-tokens)")
    # bool is an int subclass: `true` must not pass as 1.
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2**63:
        # JSON integers too large for 64 bits arrive as floats: "got 1e+23" misled.
        raise RowError(f"max_tokens must be a positive integer of at most 64 bits, got "
                       f"{show(value)}")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RowError(f"max_tokens must be a positive integer, got {show(value)}")


def _check_messages(params: dict[str, Any]) -> None:
    messages = params.get("messages")
    if messages is None:
        raise RowError("missing messages")
    if not isinstance(messages, list):
        raise RowError(f"messages must be an array, got {json_type(messages)}")
    if not messages:
        raise RowError("messages is empty")
    last = len(messages) - 1
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RowError(f"{where} must be an object, got {json_type(message)}")
        role = message.get("role")
        if role not in ROLES:
            hint = (
                " (put system prompts in the top-level 'system' field)" if role == "system" else ""
            )
            raise RowError(f"{where}.role must be 'user' or 'assistant', got {show(role)}{hint}")
        if "content" not in message:
            raise RowError(f"{where} has no content")
        content = message["content"]
        if isinstance(content, str):
            empty = not content
        elif isinstance(content, list):
            _check_blocks(content, f"{where}.content")
            empty = not content
        else:
            raise RowError(
                f"{where}.content must be a string or an array of blocks, got {json_type(content)}"
            )
        # The API accepts empty content only on a final assistant turn (an empty prefill).
        if empty and not (i == last and role == "assistant"):
            raise RowError(f"{where}.content is empty")


def _check_system(system: Any) -> None:
    if isinstance(system, str):
        return
    if not isinstance(system, list):
        raise RowError(f"system must be a string or an array of blocks, got {json_type(system)}")
    _check_blocks(system, "system")


def _check_blocks(blocks: list[Any], where: str) -> None:
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        if not isinstance(block, dict):
            raise RowError(f"{at} must be an object, got {json_type(block)}")
        kind = block.get("type")
        if not isinstance(kind, str) or not kind:
            raise RowError(f"{at} has no type")
        if kind == "text" and not isinstance(block.get("text"), str):
            raise RowError(f"{at} is a text block without a string 'text'")
