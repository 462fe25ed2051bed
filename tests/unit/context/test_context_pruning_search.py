"""The pruner searched with hypothesis against an independent oracle: whenever pruning can bring
the window under the budget, the plan does (and reaches the target when that is reachable);
ContextOverflow only when the protected part (system prompt, task, last turns) alone exceeds it.

The oracle counts the smallest window any plan may leave, built directly from the messages (the
head plus the last ``keep_turns`` assistant turns onward), without the planner's bookkeeping.
"""

from __future__ import annotations

import json
from typing import Any

from codingjob_agent.context.conversation import Conversation
from codingjob_agent.context.pruning import ContextOverflow, plan_prune
from codingjob_agent.context.settings import Strategy
from codingjob_agent.context.tokens import counter_for
from hypothesis import event, given, settings
from hypothesis import strategies as st

COUNTER = counter_for("cl100k_base")
TOOLS = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]
SCREEN = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANS"}}

words = st.integers(0, 300).map(lambda n: " ".join(f"w{i % 97}" for i in range(n)))


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """System prompt, task, then turns: an assistant message with 0-3 tool calls and their
    results, now and then a screenshot note from the user."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "sys " + draw(words)[:400]},
        {"role": "user", "content": "task " + draw(words)[:400]},
    ]
    for n in range(draw(st.integers(0, 10))):
        calls = [
            {
                "id": f"c{n}_{k}",
                "type": "function",
                "function": {"name": "bash", "arguments": json.dumps({"k": k})},
            }
            for k in range(draw(st.integers(0, 3)))
        ]
        assistant: dict[str, Any] = {"role": "assistant", "content": f"turn {n} " + draw(words)}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        messages += [
            {"role": "tool", "tool_call_id": call["id"], "content": draw(words)} for call in calls
        ]
        if not calls or draw(st.booleans()):
            content: Any = [{"type": "text", "text": "Screen:"}, SCREEN]
            messages.append({"role": "user", "content": content if draw(st.booleans()) else "go"})
    return messages


def build(messages: list[dict[str, Any]]) -> Conversation:
    conv = Conversation(COUNTER)
    conv.apply({"op": "tools", "tools": TOOLS})
    conv.apply({"op": "messages", "messages": messages})
    return conv


def oracle_smallest(messages: list[dict[str, Any]], keep_turns: int) -> tuple[int, bool]:
    """Tokens of the smallest window a plan may leave, and whether anything is droppable."""
    assistants = [i for i, m in enumerate(messages) if i >= 2 and m["role"] == "assistant"]
    keep = max(1, keep_turns)
    protected = assistants[-keep] if len(assistants) >= keep else 2
    return build(messages[:2] + messages[protected:]).window_tokens, protected > 2


@settings(max_examples=300, deadline=None)
@given(
    messages=conversations(),
    strategy=st.sampled_from(list(Strategy)),
    keep_turns=st.integers(1, 3),
    budget_fraction=st.floats(0.25, 1.2),
    target_fraction=st.floats(0.3, 1.0),
    summary_tokens=st.integers(0, 150),
)
def test_the_plan_reaches_the_budget_whenever_pruning_can(
    messages: list[dict[str, Any]],
    strategy: Strategy,
    keep_turns: int,
    budget_fraction: float,
    target_fraction: float,
    summary_tokens: int,
) -> None:
    conv = build(messages)
    budget = max(1, int(conv.window_tokens * budget_fraction))
    target = int(budget * target_fraction)
    smallest, droppable = oracle_smallest(messages, keep_turns)
    room = summary_tokens if strategy is Strategy.SUMMARIZE and droppable else 0
    fits = conv.window_tokens <= budget
    try:
        plan = plan_prune(
            conv,
            budget=budget,
            target=target,
            strategy=strategy,
            keep_turns=keep_turns,
            summary_tokens=summary_tokens,
        )
    except ContextOverflow:
        event("overflow")
        assert not fits
        assert smallest + room > budget, "gave up although the protected part fits"
        return
    if plan is None:
        event("fits already")
        assert fits
        return
    event(f"pruned ({strategy.value})")
    assert not fits
    protected = conv.protected_from(keep_turns)
    # Never inside the protected turns, never between a call and its results.
    assert 2 <= plan.start <= protected
    assert plan.start == len(messages) or messages[plan.start]["role"] != "tool"
    assert all(plan.start <= i < protected and conv.maskable(i) for i in plan.mask)
    assert plan.summarize == (strategy is Strategy.SUMMARIZE and plan.start > 2)
    conv.apply({"op": "mask", "indices": plan.mask})
    conv.apply({"op": "drop", "start": plan.start, "summary": None})
    left = conv.window_tokens + (summary_tokens if plan.summarize else 0)
    assert plan.tokens == left, "the plan's own count is wrong"
    assert left <= budget
    if smallest + room <= target:
        assert left <= target, "stopped before the target although it was reachable"
    # The head and the protected turns are all still there, unmasked.
    window = conv.window()
    assert window[:2] == messages[:2]
    assert window[-(len(messages) - protected) :] == messages[protected:] or protected == len(
        messages
    )


def long_turns(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "task"},
    ]
    for n in range(turns):
        call = {"id": f"c{n}", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
        messages.append({"role": "assistant", "content": f"turn {n}", "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": "output " * 200})
    return messages


def test_masking_stops_exactly_at_the_target() -> None:
    conv = build(long_turns(4))
    first = next(i for i in range(2, len(conv.messages)) if conv.maskable(i))
    target = conv.window_tokens - (conv.tokens[first] - conv.placeholder(first)[1])
    plan = plan_prune(
        conv, budget=target, target=target, strategy=Strategy.MASK_OBSERVATIONS, keep_turns=1
    )
    assert plan is not None
    assert (plan.mask, plan.start, plan.tokens) == ([first], 2, target)


def test_summary_room_defaults_to_nothing() -> None:
    conv = build(long_turns(4))
    plan = plan_prune(
        conv,
        budget=conv.window_tokens - 1,
        target=conv.window_tokens - 1,
        strategy=Strategy.SUMMARIZE,
        keep_turns=1,
    )
    assert plan is not None and plan.summarize
    conv.apply({"op": "drop", "start": plan.start, "summary": None})
    assert plan.tokens == conv.window_tokens
