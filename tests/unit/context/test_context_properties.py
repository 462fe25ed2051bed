"""Property tests of the conversation store: counts, budget, protected messages, pairs.

After any sequence of steps, restarts and torn journal writes, the cached window count equals a
fresh count of the same messages, every request the model gets fits the budget, the system
prompt and the task lead the window, and tool calls and results stay together.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codingjob_agent.context.model import Completion
from codingjob_agent.context.service import ContextService, StepError
from codingjob_agent.context.settings import Settings, Strategy
from codingjob_agent.context.summarize import SUMMARY_MARKER
from codingjob_agent.context.tokens import counter_for
from codingjob_agent.protocol import ErrorCode, StepRequest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

COUNTER = counter_for("cl100k_base")
TOOLS = [
    {"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "view", "parameters": {"type": "object"}}},
]


@dataclass
class PlannedModel:
    """The provider in these tests: answers with the number of tool calls planned next."""

    budget: int
    plan: list[int] = field(default_factory=list)
    seen: list[tuple[str, int]] = field(default_factory=list)
    calls: int = 0

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> Completion:
        self.calls += 1
        tokens = COUNTER.request(messages, tools)
        if str(messages[0]["content"]).startswith(SUMMARY_MARKER):
            self.seen.append(("summary", tokens))
            text = f"summary {self.calls} " * 5
            return Completion({"role": "assistant", "content": text}, "stop", None, None)
        self.seen.append(("step", tokens))
        check_pairs(messages)
        count = self.plan.pop(0) if self.plan else 1
        calls = [
            {
                "id": f"call_{self.calls}_{n}",
                "type": "function",
                "function": {"name": ("bash", "view")[n % 2], "arguments": json.dumps({"n": n})},
            }
            for n in range(count)
        ]
        message: dict[str, Any] = {"role": "assistant", "content": f"step {self.calls}"}
        if calls:
            message["tool_calls"] = calls
        return Completion(message, "tool_calls" if calls else "stop", tokens, None)


def check_pairs(window: Sequence[dict[str, Any]]) -> None:
    """Every tool result follows its call's assistant message, and every call is answered
    before the next non-tool message."""
    open_ids: list[str] = []
    for message in window:
        role = message["role"]
        if role == "tool":
            assert message["tool_call_id"] in open_ids, "a tool result lost its call"
            open_ids.remove(message["tool_call_id"])
            continue
        assert not open_ids, f"tool calls {open_ids} lost their results"
        if role == "assistant":
            open_ids = [c["id"] for c in message.get("tool_calls") or ()]


def snapshot(service: ContextService) -> tuple[Any, ...]:
    conversation = service.conversation
    return (
        conversation.messages,
        conversation.window(),
        conversation.window_tokens,
        conversation.tools,
        service.stats(),
    )


def check_invariants(service: ContextService) -> None:
    conversation = service.conversation
    window = conversation.window()
    assert conversation.window_tokens == COUNTER.request(window, conversation.tools)
    if conversation.messages:
        assert window[0] is conversation.messages[0]
        assert window[1] is conversation.messages[1]
    check_pairs(window[:-1] if window and window[-1]["role"] == "assistant" else window)


texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)


def sized_text(max_chars: int) -> st.SearchStrategy[str]:
    """Text of up to ``max_chars`` characters, made of a short random piece repeated."""
    return st.builds(
        lambda piece, n: (piece * (n // len(piece) + 1))[:n], texts, st.integers(0, max_chars)
    )


step_op = st.tuples(
    st.just("step"),
    st.lists(sized_text(300), min_size=3, max_size=3),
    st.integers(0, 2),
    st.integers(0, 5).map(lambda n: n == 0),
)
#: A PNG header of a 1280x800 screenshot, as the agent sends it.
SCREENSHOT = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAABQAAAAMgCAIAAAA"
operations = st.lists(
    st.one_of(
        step_op,
        step_op,
        step_op,
        st.tuples(st.just("restart")),
        st.tuples(st.just("torn"), st.binary(min_size=1, max_size=40)),
    ),
    min_size=10,
    max_size=30,
)


def new_service(config: Settings, model: PlannedModel) -> ContextService:
    service = ContextService(config, COUNTER, model)
    service.load()
    return service


async def run(config: Settings, task: str, ops: list[tuple[Any, ...]]) -> None:
    model = PlannedModel(budget=config.budget)
    service = new_service(config, model)
    first = StepRequest(
        messages=[
            {"role": "system", "content": "You are a test agent."},
            {"role": "user", "content": task},
        ],
        tools=TOOLS,
    )
    await service.step(first)
    check_invariants(service)
    for op in ops:
        if op[0] == "step":
            _, outputs, calls_next, screenshot = op
            model.plan.append(calls_next)
            pending = service.conversation.pending_tool_call_ids()
            messages: list[dict[str, Any]] = [
                {"role": "tool", "tool_call_id": call_id, "content": outputs[n % 3]}
                for n, call_id in enumerate(pending)
            ]
            if not pending:
                messages.append({"role": "user", "content": outputs[0] or "go on"})
            if screenshot:
                image = {"type": "image_url", "image_url": {"url": SCREENSHOT}}
                messages.append(
                    {"role": "user", "content": [{"type": "text", "text": "Screen:"}, image]}
                )
            before = snapshot(service)
            journal = config.journal_path.read_bytes()
            try:
                await service.step(StepRequest(messages=messages, tools=TOOLS))
            except StepError as exc:
                assert exc.code in {ErrorCode.CONTEXT_OVERFLOW, ErrorCode.MESSAGE_TOO_LARGE}
                if exc.code is ErrorCode.MESSAGE_TOO_LARGE:
                    assert snapshot(service)[:4] == before[:4]
                    assert config.journal_path.read_bytes() == journal
                    continue
                event("stopped by a context overflow")
                return
        else:
            if op[0] == "torn":
                # A crash in the middle of writing a record leaves a partial last line.
                with config.journal_path.open("ab") as handle:
                    handle.write(b'{"op":"messages","messages":[' + op[1].replace(b"\n", b" "))
            before = snapshot(service)
            service.close()
            service = new_service(config, model)
            assert snapshot(service) == before
        check_invariants(service)
    counters = service.conversation.counters
    event(f"pruned: {counters.pruned > 0}, summaries: {counters.model_calls > counters.steps}")
    for purpose, tokens in model.seen:
        assert tokens <= config.budget, f"a {purpose} request of {tokens} tokens"
    service.close()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    strategy=st.sampled_from(list(Strategy)),
    max_tokens=st.integers(900, 3000),
    keep_turns=st.integers(1, 2),
    task=sized_text(400),
    ops=operations,
)
def test_window_properties_hold_across_steps_and_restarts(
    strategy: Strategy, max_tokens: int, keep_turns: int, task: str, ops: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as workspace:
        config = Settings(
            model_base_url="http://model.invalid/v1",
            model_name="planned",
            model_max_output_tokens=200,
            max_tokens=max_tokens,
            strategy=strategy,
            keep_turns=keep_turns,
            workspace=Path(workspace),
        )
        try:
            asyncio.run(run(config, task or "task", ops))
        except StepError as exc:
            # Only a task too large for the whole window may refuse the very first step.
            assert exc.code in {ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.CONTEXT_OVERFLOW}
            assert COUNTER.text(task) > config.budget // 2
