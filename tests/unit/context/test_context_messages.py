"""Checks of the messages the agent adds to the conversation."""

from __future__ import annotations

from typing import Any

import pytest
from codingjob_agent.context.messages import MessageError, check_additions, pending_tool_call_ids

SYSTEM: dict[str, Any] = {"role": "system", "content": "You are an agent."}
TASK: dict[str, Any] = {"role": "user", "content": "Build it."}
CALLS: dict[str, Any] = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "bash", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "view", "arguments": "{}"}},
    ],
}
STORED = [SYSTEM, TASK, CALLS]


def tool(call_id: str, content: Any = "ok") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def test_first_step_and_tool_answers_are_accepted() -> None:
    assert check_additions([], [SYSTEM, TASK]) == [SYSTEM, TASK]
    note = {"role": "user", "content": [{"type": "text", "text": "see"}]}
    assert check_additions(STORED, [tool("b"), tool("a"), note]) == [tool("b"), tool("a"), note]
    assert pending_tool_call_ids([*STORED, tool("a")]) == ["b"]


@pytest.mark.parametrize(
    ("stored", "additions", "message"),
    [
        ([], [TASK], "must start with a system message"),
        ([], [], "must start with a system message"),
        (STORED, [tool("a")], r"missing tool results for tool call ids \['b'\]"),
        (STORED, [tool("a"), tool("a"), tool("b")], "answers no pending tool call"),
        (STORED, [tool("zzz"), tool("a"), tool("b")], "'zzz' answers no pending"),
        (STORED, [TASK, tool("a"), tool("b")], "must come before user messages"),
        (STORED, [SYSTEM], "only allowed first"),
        (STORED, [CALLS], "assistant messages come from the model"),
        (STORED, [{"role": "tool", "content": "x"}], "needs a string tool_call_id"),
        (STORED, [{**tool("a"), "extra": 1}, tool("b")], r"unknown field\(s\).*extra"),
        (STORED, [{"role": "user"}], "content is required"),
        (STORED, [{"role": "user", "content": 5}], "content must be a string"),
        (STORED, [{"role": "user", "content": []}], "non-empty list"),
        (STORED, [{"role": "user", "content": [{"type": "audio"}]}], "text or image_url"),
        (STORED, [{"role": "user", "content": "\ud800"}], "not valid Unicode"),
        (STORED, ["just text"], "must be an object"),
        (
            [],
            [
                {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                TASK,
            ],
            "cannot carry images",
        ),
    ],
)
def test_bad_additions_are_refused(
    stored: list[dict[str, Any]], additions: list[Any], message: str
) -> None:
    with pytest.raises(MessageError, match=message):
        check_additions(stored, additions)
