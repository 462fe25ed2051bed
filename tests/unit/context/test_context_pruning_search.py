"""The pruner searched with hypothesis against an independent oracle: whenever pruning can bring
the window under the budget, the plan does (and reaches the target when that is reachable);
ContextOverflow only when the protected part (system prompt, task, last turns) alone exceeds it.

The oracle counts the smallest window any plan may leave, built directly from the messages (the
head plus the last ``keep_turns`` assistant turns onward), without the planner's bookkeeping.
"""

from __future__ import annotations

import json
from typing import Any

from codingjob_agent.context.conversation import Conversation, mask_placeholder
from codingjob_agent.context.pruning import ContextOverflow, plan_prune, smallest_window
from codingjob_agent.context.settings import Strategy
from codingjob_agent.context.tokens import counter_for
from hypothesis import assume, event, given, settings
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


def oracle_threshold(
    messages: list[dict[str, Any]],
    start: int,
    summary: dict[str, Any] | None,
    window: int,
    strategy: Strategy,
    keep_turns: int,
    room: int,
) -> int:
    """The smallest budget a plan can meet in a conversation whose window starts at ``start``
    with ``summary`` (from an earlier prune) and now takes ``window`` tokens."""
    assistants = [i for i in range(start, len(messages)) if messages[i]["role"] == "assistant"]
    keep = max(1, keep_turns)
    protected = assistants[-keep] if len(assistants) >= keep else start
    protected_part = build(messages[:2] + messages[protected:]).window_tokens
    if strategy is Strategy.SUMMARIZE and protected > start:
        # A new summary in its room replaces the span and the old summary, unless that is
        # more than the window already takes.
        return min(window, protected_part + room)
    # Dropping keeps the old summary; summarize with nothing to drop changes nothing.
    return protected_part + (COUNTER.message(summary) if summary else 0)


@settings(max_examples=300, deadline=None)
@given(
    messages=conversations(),
    data=st.data(),
    strategy=st.sampled_from(list(Strategy)),
    keep_turns=st.integers(1, 3),
    summary=st.none() | words.map(lambda text: {"role": "user", "content": "Summary: " + text}),
    budget_fraction=st.floats(0.25, 1.2),
    target_fraction=st.floats(0.3, 1.0),
    summary_tokens=st.integers(0, 150),
)
def test_a_conversation_pruned_before_is_pruned_to_the_budget_whenever_pruning_can(
    messages: list[dict[str, Any]],
    data: st.DataObject,
    strategy: Strategy,
    keep_turns: int,
    summary: dict[str, Any] | None,
    budget_fraction: float,
    target_fraction: float,
    summary_tokens: int,
) -> None:
    """An earlier prune left a dropped prefix, masked outputs and perhaps a summary, written
    under any strategy and any room (a suspended job may resume with another strategy or
    budget): the smallest window is still the exact overflow threshold, and plans still reach
    the budget and, when they can, the target."""
    cuts = [
        i
        for i in range(2, len(messages) + 1)
        if i == len(messages) or messages[i]["role"] != "tool"
    ]
    earlier = data.draw(st.sampled_from(cuts), label="earlier start")
    assume(earlier > 2 or summary is None)
    conv = build(messages)
    conv.apply({"op": "drop", "start": earlier, "summary": summary})
    protected = conv.protected_from(keep_turns)
    maskable = [i for i in range(earlier, protected) if conv.maskable(i)]
    masked = data.draw(st.lists(st.sampled_from(maskable)), label="masked") if maskable else []
    conv.apply({"op": "mask", "indices": masked})
    event(f"dropped before: {earlier > 2}, summary: {summary is not None}, masked: {bool(masked)}")
    window = COUNTER.request(conv.window(), TOOLS)
    threshold = oracle_threshold(
        messages, earlier, summary, window, strategy, keep_turns, summary_tokens
    )
    smallest = smallest_window(conv, keep_turns, strategy=strategy, summary_tokens=summary_tokens)
    assert smallest == threshold
    anywhere = max(1, int(window * budget_fraction))
    # Either side of the threshold, one token under the window, and anywhere.
    for budget, target in [
        (threshold - 1, threshold - 1),
        (threshold, threshold),
        (window - 1, window - 1),
        (anywhere, int(anywhere * target_fraction)),
    ]:
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
            assert budget < threshold, "gave up although a plan fits"
            continue
        assert budget >= threshold, "planned under the smallest window"
        if plan is None:
            assert window <= budget
            continue
        assert window > budget
        assert earlier <= plan.start <= protected
        assert plan.start == len(messages) or messages[plan.start]["role"] != "tool"
        assert all(plan.start <= i < protected and conv.maskable(i) for i in plan.mask)
        assert not set(plan.mask) & set(conv.masked)
        assert plan.summarize == (strategy is Strategy.SUMMARIZE and plan.start > earlier)
        after = build(messages)
        after.apply({"op": "drop", "start": earlier, "summary": summary})
        after.apply({"op": "mask", "indices": [*conv.masked, *plan.mask]})
        after.apply(
            {"op": "drop", "start": plan.start, "summary": None if plan.summarize else summary}
        )
        left = COUNTER.request(after.window(), TOOLS) + (summary_tokens if plan.summarize else 0)
        assert plan.tokens == left, "the plan's own count is wrong"
        assert left <= budget
        if threshold <= target:
            assert left <= target, "stopped before the target although it was reachable"


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


def test_dropping_stops_exactly_at_the_target() -> None:
    conv = build(long_turns(4))
    target = conv.window_tokens - conv.tokens[2] - conv.tokens[3]
    plan = plan_prune(conv, budget=target, target=target, strategy=Strategy.WINDOW, keep_turns=1)
    assert plan is not None
    assert (plan.mask, plan.start, plan.tokens) == ([], 4, target)


def test_masking_skips_an_output_no_larger_than_its_placeholder() -> None:
    messages = long_turns(4)
    hidden = mask_placeholder(messages[3], "bash")["content"]
    messages[3] = {**messages[3], "content": hidden}
    messages[5] = {**messages[5], "content": hidden + " ok"}
    conv = build(messages)
    saved = [conv.tokens[i] - conv.placeholder(i)[1] for i in (3, 5, 7)]
    assert saved[:2] == [0, 1]
    # Masking the output that saves one token and the long one reaches the target exactly.
    target = conv.window_tokens - saved[1] - saved[2]
    plan = plan_prune(
        conv, budget=target, target=target, strategy=Strategy.MASK_OBSERVATIONS, keep_turns=1
    )
    assert plan is not None
    assert (plan.mask, plan.start, plan.tokens) == ([5, 7], 2, target)


def test_summary_room_defaults_to_nothing() -> None:
    conv = build(long_turns(4))
    smallest = smallest_window(conv, 1, strategy=Strategy.SUMMARIZE)
    assert smallest == build(long_turns(4)[:2] + long_turns(4)[-2:]).window_tokens
    plan = plan_prune(
        conv, budget=smallest, target=smallest, strategy=Strategy.SUMMARIZE, keep_turns=1
    )
    assert plan is not None and plan.summarize and plan.tokens == smallest
    conv.apply({"op": "drop", "start": plan.start, "summary": None})
    assert plan.tokens == conv.window_tokens
