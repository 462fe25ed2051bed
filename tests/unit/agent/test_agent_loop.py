"""The agent loop against an in-process stand-in for the sidecar (no network): start, resume,
limits, signals and sidecar errors."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from codingjob_agent.agent.config import AgentConfig
from codingjob_agent.agent.gateway import GatewayError, GatewayUnavailable
from codingjob_agent.agent.loop import NO_TOOL_CALL_NOTE, Agent
from codingjob_agent.agent.tools import Toolbox, ToolOutput
from codingjob_agent.protocol import (
    AgentReason,
    ConversationState,
    ErrorCode,
    Outcome,
    Stats,
    StepRequest,
    StepResponse,
    TokenStats,
)


def assistant(*calls: tuple[str, dict[str, Any]], content: str | None = None) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for i, (name, args) in enumerate(calls)
        ]
        or None,
    }


FINISH = assistant(("finish", {"summary": "all done"}))


@dataclass
class FakeGateway:
    """Plays assistant messages in order and records every step request."""

    replies: list[dict[str, Any] | Exception]
    state: ConversationState = field(
        default_factory=lambda: ConversationState(messages=0, stats=Stats())
    )
    requests: list[StepRequest] = field(default_factory=list)
    conversation_calls: int = 0
    used: int = 0

    def conversation(self) -> ConversationState:
        self.conversation_calls += 1
        return self.state

    def step(self, request: StepRequest, timeout: float | None = None) -> StepResponse:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        self.used += 100
        stats = Stats(tokens=TokenStats(window=self.used, limit=1000, used=self.used))
        return StepResponse(message=reply, stats=stats)


def make_agent(
    tmp_path: Path, gateway: FakeGateway, toolbox: Toolbox | None = None, **config: Any
) -> tuple[Agent, list[str]]:
    settings: dict[str, Any] = {"started_at": time.time(), "gateway_wait": 5, **config}
    cfg = AgentConfig(
        workspace=tmp_path, task="Write hello.txt", gateway_url="http://127.0.0.1:1", **settings
    )
    lines: list[str] = []
    box = toolbox or Toolbox(workspace=tmp_path)
    agent = Agent(config=cfg, gateway=gateway, toolbox=box, log=lines.append)  # type: ignore[arg-type]
    box.time_left = agent._time_left
    return agent, lines


def test_fresh_start_runs_tools_and_finishes(tmp_path: Path) -> None:
    gw = FakeGateway(
        [
            assistant(
                ("create", {"path": "hello.txt", "file_text": "hi\n"}),
                ("bash", {"command": "cat hello.txt"}),
                content="Plan: write it.",
            ),
            FINISH,
        ]
    )
    agent, lines = make_agent(tmp_path, gw, max_steps=5)
    result = agent.run()
    assert (result.outcome, result.reason) == (Outcome.SUCCEEDED, AgentReason.COMPLETED)
    assert (result.steps, result.tokens, result.summary) == (2, 200, "all done")
    first, second = gw.requests
    assert [m["role"] for m in first.messages] == ["system", "user"]
    assert first.messages[1]["content"] == "Write hello.txt"
    assert f"home is `{tmp_path}`" in first.messages[0]["content"]
    assert {t["function"]["name"] for t in first.tools} >= {"bash", "finish"}
    assert [m["tool_call_id"] for m in second.messages] == ["call_0", "call_1"]
    assert "hi" in second.messages[1]["content"]
    assert not (tmp_path / ".codingjob/agent-state.json").exists(), "no step count on disk"
    assert lines[1].startswith("step 1/5 | create hello.txt | ok |")
    assert "tokens 100 total" in lines[1]


def test_resume_runs_pending_calls_without_resending_the_task(tmp_path: Path) -> None:
    pending = assistant(("bash", {"command": "echo first"}), ("bash", {"command": "echo second"}))
    gw = FakeGateway(
        [FINISH],
        state=ConversationState(
            messages=5,
            lastMessage=pending,
            pendingToolCallIds=["call_1"],
            stats=Stats(steps=2),
        ),
    )
    agent, lines = make_agent(tmp_path, gw)
    result = agent.run()
    assert result.outcome is Outcome.SUCCEEDED
    (request,) = gw.requests
    assert [m["role"] for m in request.messages] == ["tool"]
    assert request.messages[0]["tool_call_id"] == "call_1"
    assert "second" in request.messages[0]["content"]
    assert result.steps == 3
    assert lines[0].startswith("resuming a conversation of 5 messages at step 2")


def test_resume_after_stored_results_asks_for_the_next_message(tmp_path: Path) -> None:
    gw = FakeGateway(
        [FINISH],
        state=ConversationState(
            messages=4,
            lastMessage={"role": "tool", "tool_call_id": "call_0", "content": "ok"},
            stats=Stats(steps=1),
        ),
    )
    agent, _ = make_agent(tmp_path, gw)
    assert agent.run().outcome is Outcome.SUCCEEDED
    assert gw.requests[0].messages == []


def test_resume_of_a_finished_run_finishes_again(tmp_path: Path) -> None:
    gw = FakeGateway(
        [],
        state=ConversationState(
            messages=3, lastMessage=FINISH, pendingToolCallIds=["call_0"], stats=Stats()
        ),
    )
    agent, _ = make_agent(tmp_path, gw)
    assert agent.run().outcome is Outcome.SUCCEEDED
    assert gw.requests == []


def test_give_up_is_a_failure_with_the_summary(tmp_path: Path) -> None:
    gw = FakeGateway([assistant(("finish", {"summary": "impossible", "success": False}))])
    result = make_agent(tmp_path, gw)[0].run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.AGENT_ERROR)
    assert result.message == "the agent gave up: impossible"


def test_max_steps(tmp_path: Path) -> None:
    gw = FakeGateway([assistant(("bash", {"command": "true"}))] * 5)
    result = make_agent(tmp_path, gw, max_steps=2)[0].run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.MAX_STEPS_EXCEEDED)
    assert result.steps == 2 and len(gw.requests) == 2


def test_the_sidecars_step_count_is_the_one_that_counts(tmp_path: Path) -> None:
    """A forged step count on disk changes nothing; the sidecar's count (and its refusal of the
    step after the last) ends the run."""
    (tmp_path / ".codingjob").mkdir()
    (tmp_path / ".codingjob/agent-state.json").write_text('{"steps": 0}')
    limit = GatewayError(409, ErrorCode.MAX_STEPS_EXCEEDED, "the job used its 3 steps")
    gw = FakeGateway(
        [limit],
        state=ConversationState(
            messages=8,
            lastMessage={"role": "tool", "tool_call_id": "call_0", "content": "ok"},
            stats=Stats(steps=3, maxSteps=3),
        ),
    )
    result = make_agent(tmp_path, gw)[0].run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.MAX_STEPS_EXCEEDED)
    assert result.steps == 3


def test_deadline_interrupts_a_running_command(tmp_path: Path) -> None:
    gw = FakeGateway([assistant(("bash", {"command": "sleep 30", "timeout": 600}))] * 3)
    agent, _ = make_agent(tmp_path, gw, deadline_seconds=2)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    started = time.monotonic()
    result = agent.run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 10
    # The handlers are the ones from before the run, and no alarm is pending.
    assert {s: signal.getsignal(s) for s in before} == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_sigterm_stops_the_run_and_kills_the_command(tmp_path: Path) -> None:
    gw = FakeGateway([assistant(("bash", {"command": "echo $$ > shell.pid; sleep 30"}))] * 2)
    agent, _ = make_agent(tmp_path, gw)
    before = signal.getsignal(signal.SIGTERM)

    def terminate_when_running() -> None:
        while not (tmp_path / "shell.pid").exists():
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_running, daemon=True).start()
    started = time.monotonic()
    result = agent.run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.TERMINATED)
    assert time.monotonic() - started < 10
    shell = int((tmp_path / "shell.pid").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{shell}").exists()
    assert signal.getsignal(signal.SIGTERM) == before
    assert result.steps == 1


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (ErrorCode.BUDGET_EXCEEDED, AgentReason.BUDGET_EXCEEDED),
        (ErrorCode.MAX_STEPS_EXCEEDED, AgentReason.MAX_STEPS_EXCEEDED),
        (ErrorCode.CONTEXT_OVERFLOW, AgentReason.CONTEXT_OVERFLOW),
        (ErrorCode.MODEL_UNAVAILABLE, AgentReason.MODEL_ERROR),
        (ErrorCode.WORKSPACE_FULL, AgentReason.WORKSPACE_FULL),
        (ErrorCode.BAD_REQUEST, AgentReason.AGENT_ERROR),
        (None, AgentReason.AGENT_ERROR),
    ],
)
def test_sidecar_errors_end_the_run(
    tmp_path: Path, code: ErrorCode | None, reason: AgentReason
) -> None:
    gw = FakeGateway([GatewayError(429 if code else 500, code, "over budget")])
    result = make_agent(tmp_path, gw)[0].run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, reason)
    assert "over budget" in result.message


def test_unreachable_sidecar_resyncs_from_the_conversation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    gw = FakeGateway([GatewayUnavailable("connection refused"), FINISH])
    result = make_agent(tmp_path, gw)[0].run()
    assert result.outcome is Outcome.SUCCEEDED
    assert gw.conversation_calls == 2


def test_replies_without_tool_calls_are_nudged_then_fail(tmp_path: Path) -> None:
    gw = FakeGateway([assistant(content="thinking")] * 3)
    result = make_agent(tmp_path, gw)[0].run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.AGENT_ERROR)
    assert gw.requests[1].messages == [{"role": "user", "content": NO_TOOL_CALL_NOTE}]


class ShotBox(Toolbox):
    def run(self, name: str, arguments: str | None) -> ToolOutput:
        if name == "screenshot":
            return ToolOutput("Screenshot saved.", image_png=b"\x89PNG fake")
        return super().run(name, arguments)


@pytest.mark.parametrize("images", [True, False])
def test_screenshots_reach_the_model_as_images_only_when_supported(
    tmp_path: Path, images: bool
) -> None:
    gw = FakeGateway([assistant(("screenshot", {})), FINISH])
    agent, _ = make_agent(
        tmp_path, gw, toolbox=ShotBox(workspace=tmp_path), model_supports_images=images
    )
    assert agent.run().outcome is Outcome.SUCCEEDED
    messages = gw.requests[1].messages
    assert messages[0] == {"role": "tool", "tool_call_id": "call_0", "content": "Screenshot saved."}
    if images:
        parts = messages[1]["content"]
        assert messages[1]["role"] == "user"
        assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    else:
        assert len(messages) == 1


def test_empty_task_on_a_fresh_conversation_fails(tmp_path: Path) -> None:
    gw = FakeGateway([])
    agent, _ = make_agent(tmp_path, gw)
    agent.config = AgentConfig(workspace=tmp_path, task=" ", gateway_url="http://x")
    result = agent.run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.AGENT_ERROR)


class DeadGateway(FakeGateway):
    def conversation(self) -> ConversationState:
        self.conversation_calls += 1
        raise GatewayUnavailable("connection refused")


def test_a_sidecar_that_stays_unreachable_fails_the_run(tmp_path: Path) -> None:
    gw = DeadGateway([])
    started = time.monotonic()
    result = make_agent(tmp_path, gw, gateway_wait=1)[0].run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.AGENT_ERROR)
    assert "unreachable" in result.message
    assert time.monotonic() - started < 10


class BrokenBox(Toolbox):
    def run(self, name: str, arguments: str | None) -> ToolOutput:
        raise RuntimeError("bug")


def test_an_internal_error_still_ends_with_a_result(tmp_path: Path) -> None:
    gw = FakeGateway([assistant(("bash", {"command": "true"}))])
    agent, lines = make_agent(tmp_path, gw, toolbox=BrokenBox(workspace=tmp_path))
    result = agent.run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.AGENT_ERROR)
    assert result.message == "internal error: RuntimeError: bug"
    assert any("Traceback" in line for line in lines)


def test_a_malformed_assistant_message_ends_the_run(tmp_path: Path) -> None:
    gw = FakeGateway([{"role": "assistant", "content": None, "tool_calls": "not a list"}])
    result = make_agent(tmp_path, gw)[0].run()
    assert (result.outcome, result.reason) == (Outcome.FAILED, AgentReason.AGENT_ERROR)
    assert result.message.startswith("unexpected sidecar answer")
