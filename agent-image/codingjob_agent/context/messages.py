"""Shape checks for the messages the agent adds, and helpers over stored conversations.

The agent may add ``system`` (first step only), ``user`` and ``tool`` messages; assistant
messages come only from the model. Every check raises :class:`MessageError` before anything is
stored, so a rejected request leaves the conversation untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Keys each role may carry; anything else is rejected rather than forwarded to the provider.
ALLOWED_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
_PART_TYPES = frozenset({"text", "image_url"})


class MessageError(ValueError):
    """A message the agent sent does not fit the conversation or the Chat Completions shape."""


def _check_content(where: str, role: str, content: Any) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        raise MessageError(f"{where}: content must be a string or a non-empty list of parts")
    for number, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _PART_TYPES:
            raise MessageError(f"{where}: part {number} must be a text or image_url part")
        if part["type"] == "text":
            if set(part) != {"type", "text"} or not isinstance(part["text"], str):
                raise MessageError(f"{where}: text part {number} must be {{type, text: str}}")
        else:
            if role == "system":
                raise MessageError(f"{where}: a system message cannot carry images")
            image = part.get("image_url")
            if (
                set(part) != {"type", "image_url"}
                or not isinstance(image, dict)
                or not isinstance(image.get("url"), str)
                or not set(image) <= {"url", "detail"}
            ):
                raise MessageError(
                    f"{where}: image part {number} must be {{type, image_url: {{url, detail?}}}}"
                )


def check_message(where: str, message: Any) -> dict[str, Any]:
    """``message`` if it is a well-formed system, user or tool message, else MessageError."""
    if not isinstance(message, dict):
        raise MessageError(f"{where}: must be an object")
    role = message.get("role")
    if role not in ALLOWED_KEYS:
        raise MessageError(
            f"{where}: role must be one of system, user, tool (got {role!r}); "
            "assistant messages come from the model"
        )
    unknown = set(message) - ALLOWED_KEYS[role]
    if unknown:
        raise MessageError(f"{where}: unknown field(s) for a {role} message: {sorted(unknown)}")
    if "content" not in message:
        raise MessageError(f"{where}: content is required")
    _check_content(where, role, message["content"])
    if "name" in message and not isinstance(message["name"], str):
        raise MessageError(f"{where}: name must be a string")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise MessageError(f"{where}: a tool message needs a string tool_call_id")
    try:
        # Lone surrogates parse from JSON but cannot be stored or encoded.
        json.dumps(message, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MessageError(f"{where}: text is not valid Unicode ({exc.reason})") from None
    return message


def tool_call_ids(message: Mapping[str, Any]) -> list[str]:
    """Ids of an assistant message's tool calls, in order."""
    return [str(call.get("id")) for call in message.get("tool_calls") or ()]


def pending_tool_call_ids(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Tool call ids of the last assistant message that no later tool message answers."""
    answered: set[str] = set()
    for message in reversed(messages):
        if message.get("role") == "assistant":
            return [i for i in tool_call_ids(message) if i not in answered]
        if message.get("role") == "tool":
            answered.add(str(message.get("tool_call_id")))
    return []


def check_additions(
    stored: Sequence[Mapping[str, Any]], additions: Iterable[Any]
) -> list[dict[str, Any]]:
    """The checked messages of one step; they must continue ``stored`` into a valid request.

    The first step is ``[system, user(task), ...]``. Later steps first answer every pending tool
    call of the last assistant message with one ``tool`` message each, then may add ``user``
    messages. After the additions no tool call may be left unanswered.
    """
    messages = [check_message(f"messages[{n}]", m) for n, m in enumerate(additions)]
    if not stored:
        if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
            raise MessageError("the first step must start with a system message and the task")
        rest = messages[1:]
    else:
        rest = messages
    pending = pending_tool_call_ids(stored)
    seen_user = False
    for number, message in enumerate(rest, start=len(messages) - len(rest)):
        role = message["role"]
        if role == "system":
            raise MessageError(f"messages[{number}]: a system message is only allowed first")
        if role == "user":
            seen_user = True
            continue
        call_id = message["tool_call_id"]
        if call_id not in pending:
            raise MessageError(
                f"messages[{number}]: tool_call_id {call_id!r} answers no pending tool call "
                f"(pending: {pending})"
            )
        if seen_user:
            raise MessageError(f"messages[{number}]: tool results must come before user messages")
        pending.remove(call_id)
    if pending:
        raise MessageError(f"missing tool results for tool call ids {pending}")
    return messages
