"""Secrets cut out of text that came back from a gateway (error messages, URLs)."""

from __future__ import annotations

from pathlib import Path

from batchrunner.config import Redactor, RunConfig
from batchrunner.redaction import cut_credentials_from_line, key_problem

KEY = "sk-ant-api03-LONGKEY"


def test_a_key_is_replaced_wherever_it_stands_as_a_token() -> None:
    redact = Redactor([KEY, "vk-2"])
    text = f"invalid x-api-key {KEY}, x-bf-vk 'vk-2'; url /{KEY}/x?k={KEY}"
    assert redact(text) == (
        "invalid x-api-key <redacted>, x-bf-vk '<redacted>'; url /<redacted>/x?k=<redacted>"
    )


def test_a_message_cut_short_inside_a_key_loses_the_piece() -> None:
    # Error texts are capped at a fixed length, which may fall inside a quoted key.
    redact = Redactor([KEY])
    assert redact("bad key sk-ant-api0") == "bad key <redacted>"
    assert redact("bad key xsk-ant-api0") == "bad key xsk-ant-api0"  # not a key's start
    assert redact("ends in sk-") == "ends in sk-"  # too short a piece to tell


def test_a_short_key_does_not_cut_words_apart() -> None:
    redact = Redactor(["a", "d"])
    assert redact("invalid data: a d") == "invalid data: <redacted> <redacted>"


def test_the_run_redacts_its_keys_trimmed_and_bearer_tokens_alone() -> None:
    config = RunConfig(
        requests=Path("x.jsonl"),
        api_key=f" {KEY} ",
        headers={"Authorization": "Bearer tok-3", "X-Team": "evals"},
    )
    redact = Redactor(config.secret_values())
    assert redact(f"{KEY} tok-3 Bearer tok-3 evals") == "<redacted> <redacted> <redacted> evals"


def test_a_key_in_the_gateway_path_is_not_recorded() -> None:
    config = RunConfig(
        requests=Path("x.jsonl"), gateway=f"http://127.0.0.1:9/{KEY}", api_key=KEY
    )
    config.validate()
    assert KEY not in str(config.public_dict())


def test_a_long_key_is_replaced_even_inside_a_longer_token() -> None:
    # A URL-encoded echo ("Bearer%20sk-…") or a key glued to a word: no word is that long by chance.
    redact = Redactor([KEY])
    assert redact(f"authorization=Bearer%20{KEY}&x=1") == "authorization=Bearer%20<redacted>&x=1"
    assert redact(f"invalid_key_{KEY}") == "invalid_key_<redacted>"
    assert redact("cut short at Bearer%20sk-ant-api03-LO") == "cut short at Bearer%20<redacted>"


def test_the_gateway_urls_password_and_query_values_are_secrets_too() -> None:
    config = RunConfig(
        requests=Path("x.jsonl"), gateway="http://bob:pa%24%24word@127.0.0.1:9/?key=QKEY1&v=1"
    )
    redact = Redactor(config.secret_values())
    assert redact("POST /v1/messages?key=QKEY1&v=1 by bob:pa%24%24word (pa$$word)") == (
        "POST /v1/messages?key=<redacted>&v=1 by <redacted> (<redacted>)"
    )


def test_a_short_query_value_with_a_plain_name_is_no_secret() -> None:
    # Blanking it would cut "anthropic" out of every message and of the recorded gateway.
    config = RunConfig(requests=Path("x.jsonl"), gateway="http://127.0.0.1:9/?provider=anthropic")
    config.validate()
    assert config.public_dict()["gateway"] == "http://127.0.0.1:9/anthropic/v1/messages"


def test_bifrost_key_selectors_and_short_values_do_not_blank_words_in_errors() -> None:
    # x-bf-api-key names a stored key and x-bf-cache-key is a cache key: matching "key" made
    # every "anthropic" and "1" of every error message read <redacted>, and collect asked for
    # them again.
    config = RunConfig(
        requests=Path("r.jsonl"),
        headers={"x-bf-api-key": "anthropic", "x-bf-cache-key": "1", "X-Auth-Token": "prod",
                 "Authorization": "Bearer sk-bf-LONGVIRTUALKEY"},
    )  # fmt: skip
    stored = config.public_dict()["headers"]
    assert stored["x-bf-api-key"] == "anthropic" and stored["x-bf-cache-key"] == "1"
    assert stored["X-Auth-Token"] == "<redacted>"  # a short credential is still never stored
    assert stored["Authorization"] == "<redacted>"
    redact = Redactor(config.secret_values())
    assert redact("no healthy key for provider anthropic: retry in 1 s (env prod)") == (
        "no healthy key for provider anthropic: retry in 1 s (env prod)"
    )
    assert redact("bad token sk-bf-LONGVIRTUALKEY") == "bad token <redacted>"


def test_a_raw_line_loses_its_credentials_but_not_its_text_or_counts() -> None:
    line = ('{"headers": {"x-api-key": "k-123", "Authorization": "Bearer t", "x-title": "t"}, '
            '"api_key": "k", "max_tokens": "100", "author": "Jane", "keywords": "kw", '
            '"content": "Bearer of bad news", "c2": "sk-learn rocks", '
            '"note": "sk-ant-api03-abcdefghijklmnop", "q": "say \\"hi\\"", "broken": ')
    assert cut_credentials_from_line(line) == (
        '{"headers": {"x-api-key": "<redacted>", "Authorization": "<redacted>", "x-title": "t"}, '
        '"api_key": "<redacted>", "max_tokens": "100", "author": "Jane", "keywords": "kw", '
        '"content": "Bearer of bad news", "c2": "sk-learn rocks", '
        '"note": "<redacted>", "q": "say \\"hi\\"", "broken": ')


def test_a_key_problem_names_the_character_never_the_key() -> None:
    assert key_problem("sk-ant-fine") is None and key_problem("Bearer sk-a") is None
    assert key_problem("\ufeffsk-x") == ("contains a byte-order mark, as some editors save at "
                                         "the start of a file (U+FEFF) at character 1")
    assert key_problem("sk-x\n") == "contains a line break (read from a file?)"
    assert key_problem("sk-é") == (
        "contains a character that is not plain ASCII (U+00E9) at character 4")
