"""The per-message overheads of the chat format, pinned to the numbers OpenAI documents ("How to
count tokens with tiktoken": 3 per message, 1 per name, 3 to prime the reply), so a change to
any of them fails a test instead of silently shifting every budget."""

from __future__ import annotations

from codingjob_agent.context.tokens import counter_for

COUNTER = counter_for("cl100k_base")


def ordinary(text: str) -> int:
    return len(COUNTER.encoding.encode_ordinary(text))


def test_a_plain_message() -> None:
    message = {"role": "user", "content": "hello world"}
    assert (ordinary("user"), ordinary("hello world")) == (1, 2)
    assert COUNTER.message(message) == 3 + 1 + 2
    assert COUNTER.request([message]) == 3 + 1 + 2 + 3


def test_a_named_message() -> None:
    message = {"role": "user", "name": "bob", "content": "hi"}
    assert COUNTER.message(message) == 3 + ordinary("user") + 1 + ordinary("bob") + ordinary("hi")
    assert COUNTER.message(message) == 7


def test_a_tool_call_and_its_result() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
    assistant = {"role": "assistant", "content": None, "tool_calls": [call, call]}
    per_call = 7 + ordinary("c1") + ordinary("bash") + ordinary("{}")
    assert COUNTER.message(assistant) == 3 + ordinary("assistant") + 2 * per_call
    result = {"role": "tool", "tool_call_id": "c1", "content": "ok"}
    assert COUNTER.message(result) == 3 + ordinary("tool") + ordinary("c1") + ordinary("ok")
    assert COUNTER.request([assistant, result]) == (
        3 + COUNTER.message(assistant) + COUNTER.message(result)
    )
