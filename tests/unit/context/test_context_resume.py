"""A suspended job resumes from its journal with the spec it has then: another strategy or a
smaller window. A summary written before stays in the journal, and pruning still fits the window
whenever the protected part does, refusing the rest before anything is stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from codingjob_agent.context.conversation import Conversation
from codingjob_agent.context.service import ContextService, StepError
from codingjob_agent.context.settings import Settings, Strategy
from codingjob_agent.context.tokens import counter_for
from codingjob_agent.protocol import ErrorCode, StepRequest

from tests.fixtures.bash_model import TOOLS, BashCallModel

COUNTER = counter_for("cl100k_base")
OUTPUT_TOKENS = 200


def service(workspace: Path, strategy: Strategy, budget: int) -> ContextService:
    settings = Settings(
        model_base_url="http://model.invalid/v1",
        model_name="m",
        workspace=workspace,
        strategy=strategy,
        max_tokens=budget + OUTPUT_TOKENS,
        model_max_output_tokens=OUTPUT_TOKENS,
    )
    svc = ContextService(settings, COUNTER, BashCallModel(summary="done " * 5000))
    svc.load()
    return svc


def answer(svc: ContextService, words: int) -> None:
    """Send the result of the pending tool call, ``words`` words long."""
    (call_id,) = svc.conversation.pending_tool_call_ids()
    content = "word " * words
    request = StepRequest(messages=[{"role": "tool", "tool_call_id": call_id, "content": content}])
    asyncio.run(svc.step(request))


def stored(workspace: Path) -> Conversation:
    """The conversation the journal holds."""
    svc = service(workspace, Strategy.SUMMARIZE, 16_000)
    svc.close()
    return svc.conversation


def summarized(workspace: Path) -> None:
    """A summarize job whose first, huge output was replaced by a summary of 2000 tokens (the
    room of a 16 000-token budget), with four turns after it, short but for one."""
    svc = service(workspace, Strategy.SUMMARIZE, 16_000)
    first = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"}]
    asyncio.run(svc.step(StepRequest(messages=first, tools=TOOLS)))
    answer(svc, 16_000 - 1000 - svc.conversation.window_tokens)
    answer(svc, 10)
    answer(svc, 1500)
    assert svc.conversation.summary is not None and svc.conversation.start == 4
    assert svc.conversation.summary_tokens > 1900
    answer(svc, 10)
    answer(svc, 10)
    svc.close()


def test_a_summary_larger_than_the_room_of_a_smaller_window_is_replaced(tmp_path: Path) -> None:
    summarized(tmp_path)
    # maxTokens lowered while suspended: the window as stored is the new budget, the summary is
    # more than its room, and the turns besides it are well under the new target.
    svc = service(tmp_path, Strategy.SUMMARIZE, stored(tmp_path).window_tokens)
    room = svc.settings.summary_tokens
    assert svc.conversation.summary_tokens > room
    answer(svc, 10)
    assert svc.conversation.window_tokens <= svc.settings.budget
    assert 0 < svc.conversation.summary_tokens <= room
    assert svc.conversation.start == 6
    svc.close()


def test_a_step_no_window_could_fit_under_another_strategy_is_refused_before_it_is_stored(
    tmp_path: Path,
) -> None:
    summarized(tmp_path)
    before = stored(tmp_path)
    # Resumed with the window strategy, which keeps the summary: the smallest window is the
    # task, the summary and the last two turns. A budget of one token less cannot be met.
    assert before.summary is not None
    kept = [*before.messages[:2], before.summary, *before.messages[-3:]]
    (call_id,) = before.pending_tool_call_ids()
    tool = {"role": "tool", "tool_call_id": call_id, "content": "word " * 10}
    smallest = COUNTER.request([*kept, tool], TOOLS)
    svc = service(tmp_path, Strategy.WINDOW, smallest - 1)
    with pytest.raises(StepError) as refused:
        answer(svc, 10)
    assert refused.value.code is ErrorCode.CONTEXT_OVERFLOW
    assert svc.conversation.messages == before.messages
    svc.close()
    svc = service(tmp_path, Strategy.WINDOW, smallest)
    answer(svc, 10)
    assert svc.conversation.window_tokens == smallest + COUNTER.message(
        svc.conversation.messages[-1]
    )
    svc.close()
