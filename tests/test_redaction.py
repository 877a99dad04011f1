"""Secrets cut out of text that came back from a gateway (error messages, URLs)."""

from __future__ import annotations

from pathlib import Path

from batchrunner.config import Redactor, RunConfig

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
