"""Calls toward a provider: always streamed (long replies stay clear of idle timeouts), read as
server-sent-event lines, and reassembled into one completion when the caller did not stream."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import openai

from codingjob_relay.config import Provider


class Clients:
    """One AsyncOpenAI client per provider, rebuilt when its key changes (a rotated Secret)."""

    def __init__(self) -> None:
        self._clients: dict[str, tuple[str | None, openai.AsyncOpenAI]] = {}

    def get(self, provider: Provider) -> openai.AsyncOpenAI:
        key = provider.api_key()
        cached = self._clients.get(provider.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        client = openai.AsyncOpenAI(
            base_url=provider.base_url,
            # Keyless endpoints (a local vLLM or Ollama) still need a value for the SDK.
            api_key=key or "unused",
            # The relay retries itself, with the job's deadline in view.
            max_retries=0,
            timeout=openai.Timeout(provider.timeout_seconds, connect=10.0),
        )
        self._clients[provider.name] = (key, client)
        return client

    async def close(self) -> None:
        for _, client in self._clients.values():
            await client.close()


def data_of(line: str) -> str | None:
    """The payload of an SSE ``data:`` line, or None for other lines."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


@dataclass
class Assembler:
    """Folds stream chunks into a ``chat.completion`` object and remembers the usage."""

    head: dict[str, Any] = field(default_factory=dict)
    content: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    completion_bytes: int = 0

    def add(self, chunk: dict[str, Any]) -> None:
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.content.append(delta["content"])
                self.completion_bytes += len(delta["content"])
            for call in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(
                    int(call.get("index", 0)),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                if function.get("name"):
                    slot["function"]["name"] += function["name"]
                if function.get("arguments"):
                    slot["function"]["arguments"] += function["arguments"]
                    self.completion_bytes += len(function["arguments"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.content) if self.content else None,
        }
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        body: dict[str, Any] = {
            **self.head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def parse_chunk(payload: str) -> dict[str, Any] | None:
    """A stream chunk's JSON, or None for ``[DONE]``."""
    if payload == "[DONE]":
        return None
    chunk = json.loads(payload)
    if not isinstance(chunk, dict):
        raise ValueError("stream chunk is not an object")
    if "error" in chunk:
        raise UpstreamStreamError(str(chunk["error"]))
    return chunk


class UpstreamStreamError(RuntimeError):
    """The provider reported an error inside the stream (after its 200)."""
