"""Pruning plans: what each strategy gives up first, what it never touches."""

from __future__ import annotations

from typing import Any

import pytest
from codingjob_agent.context.conversation import Conversation
from codingjob_agent.context.pruning import ContextOverflow, plan_prune, smallest_window
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


def plan(
    conv: Conversation,
    strategy: Strategy,
    budget: int,
    keep_turns: int = 2,
    target: int | None = None,
) -> Any:
    return plan_prune(
        conv,
        budget=budget,
        target=int(budget * 0.75) if target is None else target,
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
    conv = conversation(8)
    smallest = smallest_window(conv, 2, strategy=strategy, summary_tokens=100)
    room = 100 if strategy is Strategy.SUMMARIZE else 0
    assert smallest == COUNTER.request(conv.messages[:2] + conv.messages[-4:]) + room
    assert smallest_window(conv, 2, 40, strategy=strategy, summary_tokens=100) == smallest + 40
    # Dropping every turn but the last two reaches it; one token less cannot be reached.
    reached = plan(conv, strategy, smallest, target=0)
    assert reached is not None and reached.tokens == smallest
    with pytest.raises(ContextOverflow):
        plan(conv, strategy, smallest - 1, target=0)


def pruned_before(summary_words: int | None) -> Conversation:
    """Eight turns of which an earlier prune dropped the first, leaving a summary of
    ``summary_words`` words in its place (None: no summary)."""
    conv = conversation(8)
    summary = None if summary_words is None else {"role": "user", "content": "s " * summary_words}
    conv.apply({"op": "drop", "start": 4, "summary": summary})
    return conv


@pytest.mark.parametrize("summary_words", [None, 120])
@pytest.mark.parametrize("strategy", [Strategy.WINDOW, Strategy.MASK_OBSERVATIONS])
def test_a_strategy_that_keeps_an_earlier_summary_counts_it_in_the_smallest_window(
    strategy: Strategy, summary_words: int | None
) -> None:
    # A summary written under summarize stays in the window when a suspended job resumes with
    # another strategy: dropping more turns cannot remove it.
    conv = pruned_before(summary_words)
    smallest = smallest_window(conv, 2, strategy=strategy, summary_tokens=100)
    kept = [conv.summary] if conv.summary else []
    assert smallest == COUNTER.request(conv.messages[:2] + kept + conv.messages[-4:])
    reached = plan(conv, strategy, smallest, target=0)
    assert reached is not None and reached.start == len(conv.messages) - 4
    conv.apply({"op": "mask", "indices": reached.mask})
    conv.apply({"op": "drop", "start": reached.start, "summary": conv.summary})
    assert conv.window_tokens == reached.tokens == smallest
    with pytest.raises(ContextOverflow):
        plan(conv, strategy, smallest - 1, target=0)


def test_summarize_replaces_an_earlier_summary_larger_than_its_room() -> None:
    # The room for a summary shrinks with the budget (a suspended job resumed with a smaller
    # maxTokens): dropping one more turn swaps the old summary for a smaller one.
    conv = pruned_before(400)
    smallest = smallest_window(conv, 2, strategy=Strategy.SUMMARIZE, summary_tokens=100)
    assert smallest == COUNTER.request(conv.messages[:2] + conv.messages[-4:]) + 100
    budget = conv.window_tokens - 1
    result = plan(conv, Strategy.SUMMARIZE, budget, target=budget)
    assert result.summarize and result.start == 6
    conv.apply({"op": "drop", "start": result.start, "summary": None})
    assert result.tokens == conv.window_tokens + 100 <= budget


def test_summarize_with_nothing_to_drop_leaves_an_earlier_summary_as_it_is() -> None:
    conv = pruned_before(400)
    conv.apply({"op": "drop", "start": len(conv.messages) - 4, "summary": conv.summary})
    window = conv.window_tokens
    assert smallest_window(conv, 2, strategy=Strategy.SUMMARIZE, summary_tokens=100) == window
    assert plan(conv, Strategy.SUMMARIZE, window, target=0) is None
    with pytest.raises(ContextOverflow):
        plan(conv, Strategy.SUMMARIZE, window - 1, target=0)


def test_summarize_never_plans_a_window_larger_than_the_present_one() -> None:
    # A summary room larger than all there is to drop: the window as it is is the smallest.
    conv = conversation(3, output_words=5)
    window = conv.window_tokens
    smallest = smallest_window(conv, 2, strategy=Strategy.SUMMARIZE, summary_tokens=window)
    assert smallest == window
    with pytest.raises(ContextOverflow):
        plan_prune(
            conv,
            budget=window - 1,
            target=0,
            strategy=Strategy.SUMMARIZE,
            keep_turns=2,
            summary_tokens=window,
        )
