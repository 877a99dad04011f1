"""Reading a messages request the way the gateway does: its virtual key, ``provider/model``
strings, ``fallbacks``, and the validation of the Anthropic body.

Pure functions of the request, no state; used by the gateway before anything is served.
"""

from __future__ import annotations

from typing import Any

VK_PREFIX = "sk-bf-"


def caller_key(h: dict[bytes, bytes]) -> str | None:
    """The virtual key of a request, as the gateway reads it (``lib/ctx.go``): ``x-bf-vk`` as is,
    else ``Authorization: Bearer sk-bf-…``, else ``x-api-key: sk-bf-…`` (prefix case-insensitive).
    """
    v = h.get(b"x-bf-vk")
    if v:
        return v.decode("latin-1")
    v = h.get(b"authorization")
    if v and v[:7].lower() == b"bearer ":
        tok = v[7:].strip().decode("latin-1")
        if tok[:6].lower() == VK_PREFIX:
            return tok
    v = h.get(b"x-api-key")
    if v:
        tok = v.strip().decode("latin-1")
        if tok[:6].lower() == VK_PREFIX:
            return tok
    return None


def split_model(s: str, default_provider: str) -> tuple[str, str]:
    """``provider/model`` → (provider, model); a bare name gets ``default_provider``."""
    prov, sep, name = s.partition("/")
    if sep and prov and name:
        return prov, name
    return default_provider, s


def validate(body: dict[str, Any]) -> str | None:
    """The first problem with a Messages body, or ``None``."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return (
            "model: field required (a non-empty string)"
            if model is None
            else "model: must be a non-empty string"
        )
    mt = body.get("max_tokens")
    if mt is None:
        return "max_tokens: field required"
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        return "max_tokens: must be an integer >= 1"
    msgs = body.get("messages")
    if msgs is None:
        return "messages: field required"
    if not isinstance(msgs, list):
        return "messages: must be a list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages.{i}: must be an object"
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be 'user' or 'assistant'"
        c = m.get("content")
        if not isinstance(c, str | list):
            return f"messages.{i}.content: must be a string or a list of content blocks"
    if "system" in body and not isinstance(body["system"], str | list | type(None)):
        return "system: must be a string or a list of text blocks"
    if "stream" in body and not isinstance(body["stream"], bool | type(None)):
        return "stream: must be a boolean"
    return None


def parse_fallbacks(body: dict[str, Any]) -> list[str] | str:
    """The ``fallbacks`` list (empty strings skipped), or an error message."""
    fb = body.get("fallbacks")
    if fb is None:
        return []
    if not isinstance(fb, list) or not all(isinstance(x, str) for x in fb):
        return 'failed to parse fallbacks: expected a list of "provider/model" strings'
    return [x for x in fb if x]
