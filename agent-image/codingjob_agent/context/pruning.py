"""Pure pruning plans: what to mask and where the window must start so the request fits.

A plan never touches the system prompt, the task or the last ``keep_turns`` assistant turns, and
cuts only between units (an assistant message and its tool results stay together). When even
the smallest window allowed does not fit, planning raises :class:`ContextOverflow` instead of
trying again and again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from codingjob_agent.context.conversation import Conversation
from codingjob_agent.context.settings import Strategy


class ContextOverflow(RuntimeError):
    """The protected part of the conversation alone exceeds the budget."""


@dataclass(frozen=True)
class PrunePlan:
    """Indices to mask, the new window start, and whether the dropped span needs a summary."""

    start: int
    mask: list[int] = field(default_factory=list)
    summarize: bool = False
    #: Window tokens after the plan (with the room reserved for a summary).
    tokens: int = 0


def plan_prune(
    conversation: Conversation,
    *,
    budget: int,
    target: int,
    strategy: Strategy,
    keep_turns: int,
    summary_tokens: int = 0,
) -> PrunePlan | None:
    """The cheapest plan bringing the window to ``target`` tokens (at least under ``budget``),
    or None when it already fits ``budget``."""
    total = conversation.window_tokens
    if total <= budget:
        return None
    protected = conversation.protected_from(keep_turns)
    start = conversation.start
    masked: list[int] = []
    if strategy is Strategy.MASK_OBSERVATIONS:
        for index in range(start, protected):
            if total <= target:
                break
            if index in conversation.masked or not conversation.maskable(index):
                continue
            saved = conversation.tokens[index] - conversation.placeholder(index)[1]
            if saved > 0:
                masked.append(index)
                total -= saved
    # Under summarize the first turn dropped brings a new summary with a fixed room, into which
    # the old one is folded. Until then the old summary stays: it may be larger than the room
    # (a suspended job may resume with a smaller budget).
    resummary = 0
    if strategy is Strategy.SUMMARIZE:
        resummary = summary_tokens - conversation.summary_tokens
    masked_set = set(masked)
    new_start = start
    for begin, end in conversation.turn_units(start, protected):
        if total <= target:
            break
        if new_start == start:
            total += resummary
        for index in range(begin, end):
            if index in masked_set:
                total -= conversation.placeholder(index)[1]
            else:
                total -= conversation.cost(index)
        new_start = end
    summarize = strategy is Strategy.SUMMARIZE and new_start != start
    if total > budget:
        raise ContextOverflow(
            f"the context cannot fit {budget} tokens: the system prompt, the task and the last "
            f"{keep_turns} turn(s) alone take {total} tokens"
        )
    return PrunePlan(
        start=new_start,
        mask=[i for i in masked if i >= new_start],
        summarize=summarize,
        tokens=total,
    )


def smallest_window(
    conversation: Conversation,
    keep_turns: int,
    extra: int = 0,
    *,
    strategy: Strategy,
    summary_tokens: int = 0,
) -> int:
    """Tokens of the smallest window ``strategy`` can reach once ``extra`` new tokens are added:
    :func:`plan_prune` with the same arguments overflows exactly for a budget below it."""
    protected = conversation.protected_from(keep_turns)
    window = conversation.window_tokens + extra
    droppable = sum(conversation.cost(i) for i in range(conversation.start, protected))
    if strategy is not Strategy.SUMMARIZE or protected == conversation.start:
        # Nothing to summarize, or a strategy that keeps an earlier summary (the strategy or
        # the budget of a suspended job may change before it resumes from its journal).
        return window - droppable
    # A new summary in its fixed room replaces the dropped turns and the old summary; a budget
    # the window already fits needs no plan, even when that summary would be larger.
    return min(window, window - droppable - conversation.summary_tokens + summary_tokens)
