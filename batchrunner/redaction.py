"""What counts as a credential, and cutting credentials out of text that came back from elsewhere.

Used by the configuration (``run.json``, the resume hint) and by the client, which knows every
header it sends, even those of a caller's own ``httpx.AsyncClient``: a gateway may quote them in
an error, and such text goes into rows, ``run.json`` and stderr. Its own module, so that
:mod:`batchrunner.client` can use it without importing :mod:`batchrunner.config` (which imports
the client).
"""

from __future__ import annotations

import base64
import re
from urllib.parse import quote, unquote

import httpx

#: Headers whose values are credentials: never stored, never printed. Broad on purpose (``auth``
#: and ``key`` anywhere in the name: ``Ocp-Apim-Subscription-Key``, ``Helicone-Auth``): a header
#: redacted needlessly only has to be given again on resume.
SECRET_HEADER_PATTERN = re.compile(
    r"(auth|key|x-bf-vk|token|secret|cookie|passw|credential)", re.IGNORECASE
)
#: What a secret is replaced with wherever it would be stored or shown.
REDACTED = "<redacted>"
#: Characters a key is made of: a secret is replaced only as a whole token, so that a short one
#: does not cut words apart.
_TOKEN = r"A-Za-z0-9_\-"
#: A message cut short (error texts are capped) may end in the first characters of a key.
_MIN_CUT_PREFIX = 4
#: A secret (or the cut start of one) this long is replaced wherever it stands, even inside a
#: longer token ("Bearer%20sk-…" of a URL-encoded echo, "key_sk-…"): no word is that long by
#: chance.
_ANYWHERE_MIN = 12
_ENDS_IN_TOKEN = re.compile(f"[{_TOKEN}]$")
#: A query value this long is a credential whatever its name (``?code=…`` of Azure Functions,
#: ``?sig=…``); a shorter one only when its name says so (``?key=…``): ``?provider=anthropic``
#: would otherwise blank "anthropic" in every message, and in the gateway's recorded path.
_MIN_QUERY_SECRET = 16


#: Bifrost headers whose names match the pattern but whose values are no credential: a stored
#: key's name or id, and a semantic-cache key (``specs/bifrost-anthropic-protocol.md``).
_NOT_SECRET_HEADERS = frozenset({"x-bf-api-key", "x-bf-api-key-id", "x-bf-cache-key"})
#: A value shorter than this under a credential-like name is still never stored, but not cut
#: out of error texts: "1" or "prod" would blank that word in every message.
_MIN_NAMED_SECRET = 8
#: Headers that hold nothing but a credential: their values are cut out of error texts from
#: :data:`_MIN_KEY_HEADER_SECRET` characters (a 7-character x-api-key was quoted back whole;
#: 4 blanked "test" or "1234" in every message of a run whose key it was).
_KEY_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key",
                          "x-bf-vk"})
_MIN_KEY_HEADER_SECRET = 6


def is_key_header(name: str) -> bool:
    """Whether header *name* holds nothing but a credential (``x-api-key``, ``authorization``).

    :param name: a header name, any case.
    """
    return name.strip().lower() in _KEY_HEADERS


def is_secret_header(name: str, value: str) -> bool:
    """Whether a header's value is a credential: by its name, or by its shape."""
    if looks_secret(value):
        return True
    return name.strip().lower() not in _NOT_SECRET_HEADERS and bool(
        SECRET_HEADER_PATTERN.search(name)
    )


def looks_secret(value: str) -> bool:
    """Key-shaped values (``sk-…``, ``Bearer …``) are redacted whatever their header is called."""
    v = value.strip().lower()
    return v.startswith(("sk-", "bearer "))


def secret_header_values(headers: dict[str, str] | list[tuple[str, str]]) -> list[str]:
    """The values of the headers that are credentials (by name or by shape), and the token of
    a ``Bearer``/``Basic``/``Token`` value on its own (a gateway may quote just that)."""
    values = []
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        shortest = _MIN_KEY_HEADER_SECRET if is_key_header(name) else _MIN_NAMED_SECRET
        if is_secret_header(name, value) and (
            looks_secret(value) or len(value.strip()) >= shortest
        ):
            values.append(value.strip())
            if " " in value.strip():  # "Bearer%20…" of a URL-encoded echo
                values.append(quote(value.strip(), safe=""))
            scheme, _, token = value.strip().partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                values.append(token.strip())
    return values


def key_problem(value: str) -> str | None:
    """Why *value* cannot be a credential as given (a line break, a byte-order mark, a
    zero-width space from a copy), without quoting it. Such a key is refused by the gateway,
    and one that quoted it back re-encoded was not recognised as the secret it is, so it was
    stored whole.

    :param value: the key (or a key header's value), as it would be sent.
    :return: the problem, to follow "the key", or ``None`` when there is none.
    """
    for i, ch in enumerate(value):
        if ch in "\r\n":
            return "contains a line break (read from a file?)"
        if not " " <= ch <= "~":
            what = _INVISIBLE.get(ch, "a character that is not plain ASCII")
            return f"contains {what} (U+{ord(ch):04X}) at character {i + 1}"
    return None


_INVISIBLE = {
    "\ufeff": "a byte-order mark, as some editors save at the start of a file",
    "\u200b": "a zero-width space, as a copy from a web page may carry",
    "\u00a0": "a no-break space",
    "\t": "a tab",
}

#: A JSON string member (``"name": "value"``) of a raw input line.
_JSON_MEMBER = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:\s*)"((?:[^"\\]|\\.)*)"')
#: Member names of a credential: a key header's, or one that ends in a credential word
#: (``api_key``, ``access_token``, ``password``); "author" or "keywords" are no such name.
_CREDENTIAL_MEMBER = re.compile(
    r"(?:^|[-_])(?:api[-_]?key|key|authorization|auth|token|secret|password|passwd|cookie|"
    r"credentials?|vk)$", re.IGNORECASE)
#: A value shaped like a key wherever it stands: ``sk-`` or ``Bearer`` and a long token, with
#: nothing after it ("Bearer of bad news" and "sk-learn rocks" are prompt text).
_KEY_SHAPED = re.compile(r"(?:sk-[A-Za-z0-9_\-]{16,}|Bearer\s+[A-Za-z0-9._~+/=\-]{16,})",
                         re.IGNORECASE)


def cut_credentials_from_line(text: str) -> str:
    """An input line kept as it was (a reject's ``raw``), without its credentials.

    By pattern, not by parsing (a rejected line is often not valid JSON): the value of every
    JSON string member named like a credential (``"x-api-key"``, ``"api_key"``), and every
    string value shaped like a key, is replaced with :data:`REDACTED`.

    :param text: the line.
    :return: the line with those values replaced.
    """

    def cut(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(3)
        if is_key_header(name) or _CREDENTIAL_MEMBER.search(name) or _KEY_SHAPED.fullmatch(
                value.strip()):
            return f'"{name}"{m.group(2)}"{REDACTED}"'
        return m.group(0)

    return _JSON_MEMBER.sub(cut, text)


def url_has_credentials(url: str | None) -> bool:
    """Whether a gateway URL, as given, has a ``user:password`` or a query (both are left out
    of ``run.json`` and the resume hint). It is stripped first, as the run does (a newline
    pasted with it); one that does not parse counts as having them (it is not quoted)."""
    if not url or not url.strip():
        return False
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError):
        return True
    return bool(parsed.userinfo or parsed.query)


def url_secret_values(url: str | None) -> list[str]:
    """The credentials a gateway URL carries: its ``user:password`` (as typed, decoded, and as
    the ``Basic`` token an ``httpx.AsyncClient`` makes of it) and its query values that look
    like one (by name, or long). A gateway may quote the request target back ("no route for
    /v1/messages?key=…")."""
    if not url:
        return []
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError):
        return []
    values: list[str] = []
    userinfo = parsed.userinfo.decode("ascii", "replace")
    if userinfo:
        decoded = unquote(userinfo)
        password = userinfo.partition(":")[2]
        values += [userinfo, decoded, password, unquote(password)]
        values.append(base64.b64encode(decoded.encode()).decode())
    for part in parsed.query.decode("ascii", "replace").split("&"):
        name, _, value = part.partition("=")
        for v in (value, unquote(value.replace("+", " "))):
            if len(v) >= _MIN_QUERY_SECRET or (v and SECRET_HEADER_PATTERN.search(unquote(name))):
                values.append(v)
    return [v for v in values if v]


class Redactor:
    """Replaces a run's secrets in text that came back from elsewhere.

    A gateway may quote the credentials it was sent in an error message ("invalid x-api-key
    sk-…"); such text goes into rows, ``run.json`` and stderr, so every secret is cut out of it
    first: as a whole token, and as the start of one where the text was cut short.
    """

    __slots__ = ("_heads", "_pattern", "_secrets")

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        #: Every match, whole or cut short, holds the start of a secret: text without any is
        #: left as is at the cost of one search.
        heads = sorted({s[:_MIN_CUT_PREFIX] for s in self._secrets})
        self._heads = re.compile("|".join(map(re.escape, heads))) if heads else None
        self._pattern = (
            re.compile("|".join(map(_as_pattern, self._secrets))) if self._secrets else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None or self._heads is None or self._heads.search(text) is None:
            return text
        text = self._pattern.sub(REDACTED, text)
        for secret in self._secrets:
            # The longest start of the secret the text ends with, as a token of its own.
            for n in range(len(secret) - 1, _MIN_CUT_PREFIX - 1, -1):
                if text.endswith(secret[:n]) and (
                    n >= _ANYWHERE_MIN or not _ENDS_IN_TOKEN.search(text, 0, len(text) - n)
                ):
                    return text[: len(text) - n] + REDACTED
        return text


def _as_pattern(secret: str) -> str:
    if len(secret) >= _ANYWHERE_MIN:
        return re.escape(secret)
    return f"(?<![{_TOKEN}]){re.escape(secret)}(?![{_TOKEN}])"


__all__ = [
    "REDACTED",
    "SECRET_HEADER_PATTERN",
    "Redactor",
    "cut_credentials_from_line",
    "is_key_header",
    "is_secret_header",
    "key_problem",
    "looks_secret",
    "secret_header_values",
    "url_has_credentials",
    "url_secret_values",
]
