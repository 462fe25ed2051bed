"""The conversation and its window, rebuilt from journal events, with cached token counts.

Every change is an event (a JSON-able dict) applied by :meth:`Conversation.apply`; the journal
stores the same events, so replaying it after a restart yields the same state. The full history
is kept; the window is the system prompt and the task, an optional summary, and the history from
``start`` on, with masked tool outputs replaced by a placeholder. Each message's count is cached,
so an append or a prune costs time in the size of what changed, not of the conversation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from codingjob_agent.context.messages import pending_tool_call_ids
from codingjob_agent.context.tokens import REPLY_PRIMING_TOKENS, TokenCounter

#: Index of the first history message after the system prompt (0) and the task (1).
HEAD = 2


@dataclass
class Counters:
    """Totals across the job, persisted through ``call`` and ``error`` events."""

    used: int = 0
    steps: int = 0
    model_calls: int = 0
    errors: int = 0
    pruned: int = 0
    last_error: str | None = None


def mask_placeholder(message: Mapping[str, Any], tool_name: str) -> dict[str, Any]:
    """The short stand-in for an old tool output (as SWE-agent and OpenHands do)."""
    return {
        "role": "tool",
        "tool_call_id": message.get("tool_call_id"),
        "content": f"[Old output of {tool_name} hidden to save context. "
        "Run the tool again if you need it.]",
    }


def image_placeholder(message: Mapping[str, Any]) -> dict[str, Any]:
    """A user message with its images replaced by a note (old screenshots are costly)."""
    parts = message.get("content") or []
    texts = [p for p in parts if p.get("type") == "text"]
    images = len(parts) - len(texts)
    note = {"type": "text", "text": f"[{images} old image(s) hidden to save context.]"}
    return {**message, "content": [*texts, note]}


@dataclass
class Conversation:
    """Full history plus the window over it; see the module docstring."""

    counter: TokenCounter
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: Token count of each message as stored.
    tokens: list[int] = field(default_factory=list)
    #: Masked message index -> (placeholder, its token count).
    masked: dict[int, tuple[dict[str, Any], int]] = field(default_factory=dict)
    start: int = HEAD
    summary: dict[str, Any] | None = None
    summary_tokens: int = 0
    tools: list[dict[str, Any]] = field(default_factory=list)
    tools_tokens: int = 0
    counters: Counters = field(default_factory=Counters)
    #: Sum of the counts of the messages in the window (summary included).
    _window_sum: int = 0
    _placeholders: dict[int, tuple[dict[str, Any], int]] = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------------

    @property
    def window_tokens(self) -> int:
        """Tokens of the request the window makes: messages, tool schemas, reply priming."""
        priming = REPLY_PRIMING_TOKENS if self.messages else 0
        return self._window_sum + self.tools_tokens + priming

    def cost(self, index: int) -> int:
        """Tokens message ``index`` takes in the window (its placeholder's when masked)."""
        masked = self.masked.get(index)
        return masked[1] if masked else self.tokens[index]

    def window_indices(self) -> Iterator[int]:
        """History indices in the window, in order."""
        yield from range(min(HEAD, len(self.messages)))
        yield from range(self.start, len(self.messages))

    def window(self) -> list[dict[str, Any]]:
        """The messages sent to the model."""
        head = self.messages[:HEAD]
        summary = [self.summary] if self.summary is not None else []
        rest = [
            self.masked[i][0] if i in self.masked else self.messages[i]
            for i in range(self.start, len(self.messages))
        ]
        return head + summary + rest

    def pending_tool_call_ids(self) -> list[str]:
        return pending_tool_call_ids(self.messages)

    def turn_units(self, begin: int, end: int) -> Iterator[tuple[int, int]]:
        """``[begin, end)`` split into units pruning never splits: an assistant message with its
        tool results, or a single other message; oldest first."""
        index = begin
        while index < end:
            stop = index + 1
            if self.messages[index].get("role") == "assistant":
                while stop < end and self.messages[stop].get("role") == "tool":
                    stop += 1
            yield index, stop
            index = stop

    def protected_from(self, keep_turns: int) -> int:
        """First index of the last ``keep_turns`` assistant turns, which are never pruned."""
        keep_turns = max(1, keep_turns)
        found = 0
        for index in range(len(self.messages) - 1, self.start - 1, -1):
            if self.messages[index].get("role") == "assistant":
                found += 1
                if found >= keep_turns:
                    return index
        # Fewer turns than that: everything in the window is recent and stays.
        return self.start

    def tool_name(self, index: int) -> str:
        """Name of the tool whose result is message ``index``."""
        call_id = self.messages[index].get("tool_call_id")
        for back in range(index - 1, -1, -1):
            message = self.messages[back]
            if message.get("role") == "assistant":
                for call in message.get("tool_calls") or ():
                    if call.get("id") == call_id:
                        return str((call.get("function") or {}).get("name") or "the tool")
                break
        return "the tool"

    def maskable(self, index: int) -> bool:
        """Whether message ``index`` is an observation: a tool result or an image note."""
        message = self.messages[index]
        if message.get("role") == "tool":
            return True
        content = message.get("content")
        return (
            index >= HEAD
            and message.get("role") == "user"
            and isinstance(content, list)
            and any(part.get("type") == "image_url" for part in content)
        )

    def placeholder(self, index: int) -> tuple[dict[str, Any], int]:
        """The masked form of observation ``index`` and its token count."""
        cached = self._placeholders.get(index)
        if cached is not None:
            return cached
        message = self.messages[index]
        if message.get("role") == "tool":
            masked = mask_placeholder(message, self.tool_name(index))
        else:
            masked = image_placeholder(message)
        # Planning computes it, applying the plan uses it again.
        self._placeholders[index] = (masked, self.counter.message(masked))
        return self._placeholders[index]

    # -- changing --------------------------------------------------------------------------

    def apply(self, event: Mapping[str, Any]) -> None:
        """Apply one journal event; unknown events are an error (the journal is ours).

        Any event may carry the ``call`` (usage) of the model call that produced it, so that
        the answer and its cost are stored in one record.
        """
        call = event.get("call")
        if call is not None:
            self.apply({"op": "call", **call})
        op = event.get("op")
        if op == "messages":
            for message in event["messages"]:
                cost = self.counter.message(message)
                self.messages.append(message)
                self.tokens.append(cost)
                self._window_sum += cost
        elif op == "tools":
            self.tools = list(event["tools"])
            self.tools_tokens = self.counter.tools(self.tools)
        elif op == "mask":
            for index in event["indices"]:
                if index in self.masked or index < max(self.start, HEAD):
                    continue
                placeholder, cost = self.placeholder(index)
                self.masked[index] = (placeholder, cost)
                self._window_sum += cost - self.tokens[index]
                self.counters.pruned += 1
            self._placeholders.clear()
        elif op == "drop":
            self._placeholders.clear()
            new_start = int(event["start"])
            for index in range(self.start, min(new_start, len(self.messages))):
                self._window_sum -= self.cost(index)
                if index not in self.masked:
                    self.counters.pruned += 1
            self.start = max(self.start, new_start)
            self._window_sum -= self.summary_tokens
            self.summary = event.get("summary")
            self.summary_tokens = self.counter.message(self.summary) if self.summary else 0
            self._window_sum += self.summary_tokens
        elif op == "call":
            self.counters.used += int(event["prompt"]) + int(event["completion"])
            self.counters.model_calls += 1
            if event.get("purpose") == "step":
                self.counters.steps += 1
        elif op == "error":
            self.counters.errors += 1
            self.counters.last_error = str(event.get("message", ""))
        else:
            raise ValueError(f"unknown journal event {op!r}")

    def replay(self, events: Sequence[Mapping[str, Any]]) -> None:
        for event in events:
            self.apply(event)
