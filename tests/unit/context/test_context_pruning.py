"""Pruning plans: what each strategy gives up first, what it never touches."""

from __future__ import annotations

from typing import Any

import pytest
from codingjob_agent.context.conversation import Conversation
from codingjob_agent.context.pruning import ContextOverflow, plan_prune
from codingjob_agent.context.settings import Strategy
from codingjob_agent.context.tokens import counter_for

COUNTER = counter_for("cl100k_base")


def turn(n: int, output: str) -> list[dict[str, Any]]:
    call = {
        "id": f"c{n}",
        "type": "function",
        "function": {"name": "bash", "arguments": '{"command": "make"}'},
    }
    return [
        {"role": "assistant", "content": f"turn {n}", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{n}", "content": output},
    ]


def conversation(turns: int, output_words: int = 200) -> Conversation:
    result = Conversation(COUNTER)
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"}]
    for n in range(turns):
        messages += turn(n, "line of output " * output_words)
    result.apply({"op": "messages", "messages": messages})
    return result


def plan(conv: Conversation, strategy: Strategy, budget: int, keep_turns: int = 2) -> Any:
    return plan_prune(
        conv,
        budget=budget,
        target=int(budget * 0.75),
        strategy=strategy,
        keep_turns=keep_turns,
        summary_tokens=100,
    )


def test_nothing_is_pruned_while_the_window_fits() -> None:
    conv = conversation(3)
    assert plan(conv, Strategy.WINDOW, conv.window_tokens) is None


def test_window_drops_whole_oldest_turns_down_to_the_target() -> None:
    conv = conversation(10)
    budget = conv.window_tokens // 2
    result = plan(conv, Strategy.WINDOW, budget)
    assert result.mask == [] and not result.summarize
    # Cut between turns: the first kept message is an assistant message.
    assert conv.messages[result.start]["role"] == "assistant"
    conv.apply({"op": "drop", "start": result.start, "summary": None})
    assert conv.window_tokens == result.tokens <= int(budget * 0.75)
    assert conv.window_tokens == COUNTER.request(conv.window())
    # Keeping one more turn would have missed the target.
    last_dropped = conv.tokens[result.start - 2] + conv.tokens[result.start - 1]
    assert conv.window_tokens + last_dropped > int(budget * 0.75)


def test_mask_observations_hides_old_outputs_before_dropping_anything() -> None:
    conv = conversation(10)
    budget = conv.window_tokens - 500
    result = plan(conv, Strategy.MASK_OBSERVATIONS, budget)
    assert result.start == conv.start
    assert result.mask and all(conv.messages[i]["role"] == "tool" for i in result.mask)
    assert result.mask == sorted(result.mask) and result.mask[0] == 3
    conv.apply({"op": "mask", "indices": result.mask})
    assert conv.window_tokens == result.tokens <= int(budget * 0.75)
    assert conv.window_tokens == COUNTER.request(conv.window())
    assert "hidden to save context" in conv.window()[3]["content"]


def test_mask_observations_drops_turns_when_masking_is_not_enough() -> None:
    conv = conversation(10, output_words=5)
    result = plan(conv, Strategy.MASK_OBSERVATIONS, conv.window_tokens // 2)
    assert result.start > conv.start


def test_summarize_drops_a_span_and_reserves_room_for_its_summary() -> None:
    conv = conversation(10)
    budget = conv.window_tokens // 2
    result = plan(conv, Strategy.SUMMARIZE, budget)
    assert result.summarize and result.start > conv.start
    summary = {"role": "user", "content": "summary " * 50}
    conv.apply({"op": "drop", "start": result.start, "summary": summary})
    assert conv.window()[2] == summary
    assert conv.window_tokens <= result.tokens
    assert conv.window_tokens == COUNTER.request(conv.window())


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize("keep_turns", [1, 2, 3])
def test_the_last_turns_system_prompt_and_task_are_never_pruned(
    strategy: Strategy, keep_turns: int
) -> None:
    conv = conversation(8)
    protected = conv.protected_from(keep_turns)
    assert protected == len(conv.messages) - 2 * keep_turns
    smallest = 2 * keep_turns * conv.tokens[-1]
    result = plan(conv, strategy, smallest + 300, keep_turns)
    assert result.start <= protected
    assert all(index < protected for index in result.mask)


@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_window_that_cannot_fit_is_an_overflow_not_a_loop(strategy: Strategy) -> None:
    conv = conversation(4)
    with pytest.raises(ContextOverflow, match="the last 2 turn"):
        plan(conv, strategy, conv.tokens[-1])


@pytest.mark.parametrize("strategy", list(Strategy))
def test_the_smallest_window_is_exactly_what_pruning_can_reach(strategy: Strategy) -> None:
    from codingjob_agent.context.pruning import smallest_window

    conv = conversation(8)
    smallest = smallest_window(conv, 2)
    assert smallest_window(conv, 2, extra=40) == smallest + 40
    assert 0 < smallest < conv.window_tokens
    # Dropping every turn but the last two reaches it; one token less cannot be reached.
    reached = plan_prune(conv, budget=smallest, target=0, strategy=Strategy.WINDOW, keep_turns=2)
    assert reached is not None and reached.tokens == smallest
    with pytest.raises(ContextOverflow):
        plan_prune(conv, budget=smallest - 1, target=0, strategy=strategy, keep_turns=2)
