"""The scripted test model over real HTTP, through the openai SDK as the sidecar uses it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import openai
import pytest
from codingjob_agent.context.summarize import SUMMARY_INSTRUCTION
from codingjob_agent.context.tokens import counter_for
from codingjob_agent.scripted_model.scenario import PACKAGED_SCENARIOS, load_scenario
from codingjob_agent.scripted_model.server import next_turn

from tests.fixtures.scripted_model import ScriptedModel

COUNTER = counter_for("cl100k_base")
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("bash", "finish")
]
SYSTEM: dict[str, Any] = {"role": "system", "content": "You are a test agent."}
TASK: dict[str, Any] = {"role": "user", "content": "Say hello."}


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


SCENARIO = {
    "description": "test scenario",
    "turns": [
        {
            "message": {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [call("bash", command="ls")],
            }
        },
        {
            "expect": {"toolResultsContain": ["README"]},
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [call("bash", command="echo hello"), call("bash", command="pwd")],
            },
        },
        {
            "message": {
                "role": "assistant",
                "content": "Done.",
                "tool_calls": [call("finish", summary="ok")],
            }
        },
    ],
    "afterLastTurn": "error",
}


def client(model: ScriptedModel) -> Any:
    """An OpenAI client; typed Any, as the tests send plain dicts."""
    return openai.OpenAI(base_url=model.base_url, api_key="unused", max_retries=0)


def ask(model: ScriptedModel, messages: list[dict[str, Any]], **options: Any) -> Any:
    return client(model).chat.completions.create(
        model=model.model, messages=messages, tools=TOOLS, **options
    )


def answered(message: Any, *outputs: str) -> list[dict[str, Any]]:
    """The assistant message as the sidecar stores it, followed by its tool results."""
    stored = message.model_dump(exclude_none=True)
    return [stored] + [
        {"role": "tool", "tool_call_id": c.id, "content": out}
        for c, out in zip(message.tool_calls, outputs, strict=True)
    ]


@pytest.fixture
def model(scripted_model: Callable[..., ScriptedModel]) -> ScriptedModel:
    return scripted_model(SCENARIO)


def test_a_scenario_plays_turn_by_turn(model: ScriptedModel) -> None:
    messages: list[dict[str, Any]] = [SYSTEM, TASK]
    first = ask(model, messages)
    assert first.system_fingerprint == "scripted-test-model"
    assert first.choices[0].finish_reason == "tool_calls"
    message = first.choices[0].message
    assert message.content == "Looking."
    assert [c.id for c in message.tool_calls] == ["call_t0_0"]
    assert json.loads(message.tool_calls[0].function.arguments) == {"command": "ls"}
    assert first.usage.prompt_tokens == COUNTER.request(messages, TOOLS)
    assert first.usage.completion_tokens == COUNTER.message(message.model_dump(exclude_none=True))
    messages += answered(message, "README.md\nsrc")
    second = ask(model, messages).choices[0].message
    assert [c.id for c in second.tool_calls] == ["call_t1_0", "call_t1_1"]
    messages += answered(second, "hello", "/workspace")
    third = ask(model, messages).choices[0].message
    assert third.tool_calls[0].function.name == "finish"
    log = model.requests()
    assert [(r["purpose"], r["turn"], r["status"]) for r in log] == [
        ("step", 0, 200),
        ("step", 1, 200),
        ("step", 2, 200),
    ]
    assert log[2]["tokens"] == COUNTER.request(messages, TOOLS)


def test_missing_tool_results_fail_loudly(model: ScriptedModel) -> None:
    message = ask(model, [SYSTEM, TASK]).choices[0].message
    stored = message.model_dump(exclude_none=True)
    with pytest.raises(openai.BadRequestError, match=r"no tool results.*call_t0_0"):
        ask(model, [SYSTEM, TASK, stored, {"role": "user", "content": "next"}])
    log = model.server.wait_for("unexpected request")
    assert re.search(r"ERROR .*unexpected request", log), log
    assert model.requests()[-1]["status"] == 400


def test_an_unmet_expectation_fails_loudly(model: ScriptedModel) -> None:
    message = ask(model, [SYSTEM, TASK]).choices[0].message
    with pytest.raises(
        openai.BadRequestError, match="expected the tool results to contain 'README'"
    ):
        ask(model, [SYSTEM, TASK, *answered(message, "empty directory")])


def test_requests_after_the_last_turn_fail_unless_the_last_turn_repeats(
    scripted_model: Callable[..., ScriptedModel],
) -> None:
    last = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_t2_0",
                "type": "function",
                "function": {"name": "finish", "arguments": "{}"},
            }
        ],
    }
    after = [SYSTEM, TASK, last, {"role": "tool", "tool_call_id": "call_t2_0", "content": "x"}]
    ending = scripted_model(SCENARIO)
    with pytest.raises(openai.BadRequestError, match="there is no turn 3"):
        ask(ending, after)
    repeating = scripted_model({**SCENARIO, "afterLastTurn": "repeat-last"})
    again = ask(repeating, after).choices[0].message
    assert [c.id for c in again.tool_calls] == ["call_t3_0"]
    assert again.tool_calls[0].function.name == "finish"


def test_a_tool_the_request_does_not_offer_fails_loudly(model: ScriptedModel) -> None:
    with pytest.raises(openai.BadRequestError, match="calls tool 'bash'"):
        client(model).chat.completions.create(
            model=model.model, messages=[SYSTEM, TASK], tools=TOOLS[1:]
        )


def test_unknown_models_are_refused(model: ScriptedModel) -> None:
    for name in ("gpt-4o", "scripted/missing", "scripted/../etc"):
        with pytest.raises(openai.NotFoundError, match="scripted test model"):
            client(model).chat.completions.create(model=name, messages=[SYSTEM, TASK])


def test_models_lists_the_scenarios(model: ScriptedModel) -> None:
    assert model.model in [m.id for m in client(model).models.list()]


def test_conversations_are_independent_and_survive_pruning(model: ScriptedModel) -> None:
    """No server state: the turn comes from the ids in the request, whatever was pruned."""
    first = ask(model, [SYSTEM, TASK]).choices[0].message
    other = ask(model, [SYSTEM, {"role": "user", "content": "Another task."}]).choices[0].message
    assert first.tool_calls[0].id == other.tool_calls[0].id == "call_t0_0"
    pruned_history = [SYSTEM, TASK, {"role": "user", "content": "Summary of earlier steps."}]
    second = ask(model, [*pruned_history, *answered(first, "README")]).choices[0].message
    assert second.tool_calls[0].id == "call_t1_0"


def test_streaming_answers_carry_the_same_message(model: ScriptedModel) -> None:
    stream = client(model).chat.completions.create(
        model=model.model,
        messages=[SYSTEM, TASK],
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    content, usage, finish = "", None, None
    calls: list[Any] = []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            calls += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert content == "Looking."
    assert [(c.id, c.function.name) for c in calls] == [("call_t0_0", "bash")]
    assert finish == "tool_calls"
    assert usage is not None and usage.prompt_tokens == COUNTER.request([SYSTEM, TASK], TOOLS)


def test_summary_requests_get_a_fixed_summary(model: ScriptedModel) -> None:
    request = [
        {"role": "system", "content": SUMMARY_INSTRUCTION},
        {
            "role": "user",
            "content": "[assistant]\n-> bash({}) [c1]\n-> bash({}) [c2]\n-> view({}) [c3]",
        },
    ]
    answer = client(model).chat.completions.create(
        model=model.model, messages=request, max_tokens=100
    )
    text = answer.choices[0].message.content
    assert text is not None and text.startswith("Scripted test summary")
    assert "bash x2, view x1" in text
    assert model.requests()[-1]["purpose"] == "summary"


@pytest.mark.parametrize(
    ("messages", "turn"),
    [
        ([SYSTEM, TASK], 0),
        ([SYSTEM, TASK, {"role": "assistant", "content": "thinking"}], 1),
        ([{"role": "assistant", "tool_calls": [{"id": "call_t7_1"}]}, {"role": "tool"}], 8),
        (
            [
                {"role": "assistant", "tool_calls": [{"id": "call_t4_0"}]},
                {"role": "assistant", "content": "no tools"},
                {"role": "user", "content": "use a tool"},
            ],
            6,
        ),
    ],
)
def test_next_turn_comes_from_the_ids(messages: list[dict[str, Any]], turn: int) -> None:
    assert next_turn(messages) == turn


@pytest.mark.parametrize("path", sorted(PACKAGED_SCENARIOS.glob("*.json")), ids=lambda p: p.stem)
def test_packaged_scenarios_are_valid(path: Any) -> None:
    scenario = load_scenario(path)
    assert scenario.description and scenario.turns
