"""The agent loop: ask the sidecar for the next assistant message, run its tool calls, repeat.

The loop is stateless between steps apart from a step counter: where it stands is derived from the
sidecar's :class:`ConversationState`, at start and after the sidecar was unreachable. Starting,
resuming after a container restart and recovering from a sidecar restart are the same code path.
"""

from __future__ import annotations

import json
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from types import FrameType
from typing import Any

from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from pydantic import ValidationError

from codingjob_agent.agent.config import AgentConfig
from codingjob_agent.agent.gateway import Gateway, GatewayError, GatewayUnavailable
from codingjob_agent.agent.results import AgentState
from codingjob_agent.agent.tools import TOOL_SCHEMAS, Toolbox, ToolOutput, image_data_url
from codingjob_agent.protocol import (
    AgentReason,
    AgentResult,
    ConversationState,
    ErrorCode,
    Outcome,
    Stats,
    StepRequest,
)

#: Replies in a row without a tool call after which the run fails instead of nudging forever.
MAX_REPLIES_WITHOUT_TOOLS = 3
NO_TOOL_CALL_NOTE = (
    "Your last reply did not call a tool. Continue the task by calling a tool; when the task is "
    "done and verified, call finish with a summary."
)

_GATEWAY_REASONS = {
    ErrorCode.BUDGET_EXCEEDED: AgentReason.BUDGET_EXCEEDED,
    ErrorCode.MAX_STEPS_EXCEEDED: AgentReason.MAX_STEPS_EXCEEDED,
    ErrorCode.CONTEXT_OVERFLOW: AgentReason.CONTEXT_OVERFLOW,
    ErrorCode.MODEL_ERROR: AgentReason.MODEL_ERROR,
    ErrorCode.MODEL_UNAVAILABLE: AgentReason.MODEL_ERROR,
    ErrorCode.WORKSPACE_FULL: AgentReason.WORKSPACE_FULL,
}


class Stop(BaseException):
    """Ends the run with ``reason``; raised from signal handlers and the loop's own checks.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (a tool's
    error handling, a library) can swallow a SIGTERM or the deadline.
    """

    def __init__(self, reason: AgentReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def system_prompt(config: AgentConfig) -> str:
    """The system message: environment, tools and working method, filled in for this job."""
    template = resources.files("codingjob_agent.agent").joinpath("system_prompt.md").read_text()
    budget = f"at most {config.max_steps} steps" if config.max_steps else "no fixed step limit"
    if config.deadline_seconds:
        budget += f" and {config.deadline_seconds} seconds in total"
    return template.format(workspace=config.workspace, display=config.display, step_budget=budget)


def _short(text: str, limit: int = 80) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


@dataclass
class Agent:
    """Runs one job to an :class:`AgentResult`; never raises for what the model or tools do."""

    config: AgentConfig
    gateway: Gateway
    toolbox: Toolbox
    log: Callable[[str], None] = print
    state: AgentState = field(default_factory=AgentState)
    stats: Stats = field(default_factory=Stats)
    _replies_without_tools: int = 0
    #: Set once the result is decided, so a late SIGTERM or alarm cannot overwrite it.
    _decided: bool = False

    # --- public --------------------------------------------------------------------------------

    def run(self) -> AgentResult:
        """Start or resume the conversation and drive it to a result."""
        self.state = AgentState()
        previous = self._install_signals()
        try:
            return self._run()
        except Stop as stop:
            return self._result(Outcome.FAILED, stop.reason, stop.message)
        except Exception as e:
            # A bug of ours still ends with a result the operator can show, and the traceback.
            self.log("internal error:\n" + traceback.format_exc().rstrip())
            return self._result(
                Outcome.FAILED, AgentReason.AGENT_ERROR, f"internal error: {type(e).__name__}: {e}"
            )
        finally:
            self._restore_signals(previous)

    # --- signals and limits --------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        def on_term(signum: int, frame: FrameType | None) -> None:
            if self._decided:
                return
            raise Stop(AgentReason.TERMINATED, f"stopped by signal {signal.Signals(signum).name}")

        def on_alarm(signum: int, frame: FrameType | None) -> None:
            if self._decided:
                return
            raise Stop(AgentReason.DEADLINE_EXCEEDED, self._deadline_message())

        previous: dict[int, Any] = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
            signal.SIGINT: signal.signal(signal.SIGINT, on_term),
            signal.SIGALRM: signal.signal(signal.SIGALRM, on_alarm),
        }
        left = self._time_left()
        if left is not None:
            # The alarm interrupts whatever runs at the deadline: a tool or a model call.
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _time_left(self) -> float | None:
        deadline = self.config.deadline
        return None if deadline is None else deadline - time.time()

    def _deadline_message(self) -> str:
        return f"the deadline of {self.config.deadline_seconds} s passed"

    def _check_limits(self) -> None:
        left = self._time_left()
        if left is not None and left <= 0:
            raise Stop(AgentReason.DEADLINE_EXCEEDED, self._deadline_message())
        if self.config.max_steps and self.state.steps >= self.config.max_steps:
            raise Stop(
                AgentReason.MAX_STEPS_EXCEEDED,
                f"the step limit of {self.config.max_steps} was reached before finish",
            )

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> AgentResult:
        resyncing = False
        while True:
            try:
                conversation = self._conversation()
                resyncing = False
                return self._drive(conversation)
            except GatewayUnavailable as e:
                # The sidecar restarts in place (native sidecar): resync from its journal, which
                # _conversation waits for; a second failure in a row means it did not come back.
                if resyncing:
                    return self._result(
                        Outcome.FAILED,
                        AgentReason.AGENT_ERROR,
                        f"the context sidecar was unreachable for {self.config.gateway_wait:.0f} s:"
                        f" {e}",
                    )
                resyncing = True
                self.log(f"context sidecar unreachable ({e}); resyncing")
            except GatewayError as e:
                reason = _GATEWAY_REASONS.get(e.code, AgentReason.AGENT_ERROR) if e.code else None
                return self._result(
                    Outcome.FAILED, reason or AgentReason.AGENT_ERROR, f"context sidecar: {e}"
                )
            except ValidationError as e:
                return self._result(
                    Outcome.FAILED, AgentReason.AGENT_ERROR, f"unexpected sidecar answer: {e}"
                )

    def _conversation(self) -> ConversationState:
        deadline = time.monotonic() + self.config.gateway_wait
        while True:
            try:
                state = self.gateway.conversation()
                self.stats = state.stats
                return state
            except GatewayUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _drive(self, conversation: ConversationState) -> AgentResult:
        """Continue from ``conversation`` until a result."""
        outgoing: list[dict[str, Any]]
        if conversation.messages == 0:
            if not self.config.task.strip():
                raise Stop(AgentReason.AGENT_ERROR, "CODINGJOB_TASK is empty")
            self.log(f"starting: {_short(self.config.task, 200)}")
            outgoing = [
                {"role": "system", "content": system_prompt(self.config)},
                {"role": "user", "content": self.config.task},
            ]
        else:
            self.state.steps = max(self.state.steps, conversation.stats.steps)
            self.log(
                f"resuming a conversation of {conversation.messages} messages at step "
                f"{self.state.steps}"
            )
            outgoing, done = self._resume(conversation)
            if done is not None:
                return done
        while True:
            self._check_limits()
            started = time.monotonic()
            left = self._time_left()
            timeout = (
                self.config.step_timeout
                if left is None
                else min(self.config.step_timeout, max(left, 1.0))
            )
            response = self.gateway.step(
                StepRequest(messages=outgoing, tools=TOOL_SCHEMAS), timeout=timeout
            )
            model_s = time.monotonic() - started
            self.stats = response.stats
            # The sidecar's count is the one that is enforced; ours only fills in for a sidecar
            # that reports none.
            self.state.steps = max(self.state.steps + 1, response.stats.steps)
            message = ChatCompletionMessage.model_validate(response.message)
            outgoing, done = self._act(message, model_s)
            if done is not None:
                return done

    def _resume(
        self, conversation: ConversationState
    ) -> tuple[list[dict[str, Any]], AgentResult | None]:
        """What to send first when the conversation already exists."""
        last = conversation.last_message or {}
        pending = set(conversation.pending_tool_call_ids)
        if last.get("role") == "assistant":
            message = ChatCompletionMessage.model_validate(last)
            if message.tool_calls:
                calls = [c for c in message.tool_calls if not pending or c.id in pending]
                return self._act(message.model_copy(update={"tool_calls": calls}), 0.0)
            return self._act(message, 0.0)
        # Results for calls we can no longer see are lost: say so instead of leaving a hole.
        lost = [
            {
                "role": "tool",
                "tool_call_id": call_id,
                "content": "Error: the agent restarted before this call's result was saved. "
                "Check the workspace and repeat the call if it is still needed.",
            }
            for call_id in conversation.pending_tool_call_ids
        ]
        return lost, None

    def _act(
        self, message: ChatCompletionMessage, model_s: float
    ) -> tuple[list[dict[str, Any]], AgentResult | None]:
        """Run the tool calls of ``message``; return the messages answering them, or the result."""
        step = self.state.steps
        calls = message.tool_calls or []
        if not calls:
            self._replies_without_tools += 1
            self._log_step(step, "no tool call", 0.0, model_s, message.content or "")
            if self._replies_without_tools >= MAX_REPLIES_WITHOUT_TOOLS:
                raise Stop(
                    AgentReason.AGENT_ERROR,
                    f"the model replied {MAX_REPLIES_WITHOUT_TOOLS} times in a row without a tool "
                    "call",
                )
            return [{"role": "user", "content": NO_TOOL_CALL_NOTE}], None
        self._replies_without_tools = 0
        replies: list[dict[str, Any]] = []
        images: list[bytes] = []
        for call in calls:
            if not isinstance(call, ChatCompletionMessageFunctionToolCall):
                replies.append(
                    {
                        "role": "tool",
                        "tool_call_id": call.id,
                        "content": "Error: only function tools are supported.",
                    }
                )
                continue
            name = call.function.name
            started = time.monotonic()
            output = self.toolbox.run(name, call.function.arguments)
            tool_s = time.monotonic() - started
            self._log_step(step, _describe(name, call.function.arguments), tool_s, model_s, output)
            model_s = 0.0
            if output.finish:
                outcome = Outcome.SUCCEEDED if output.success else Outcome.FAILED
                reason = AgentReason.COMPLETED if output.success else AgentReason.AGENT_ERROR
                text = "" if output.success else "the agent gave up: " + _short(output.summary, 900)
                return [], self._result(outcome, reason, text, summary=output.summary)
            replies.append({"role": "tool", "tool_call_id": call.id, "content": output.text})
            if output.image_png is not None and self.config.model_supports_images:
                images.append(output.image_png)
        if images:
            # Chat Completions tool messages carry text only: images follow as a user message.
            parts: list[dict[str, Any]] = [{"type": "text", "text": "Screenshot of the desktop:"}]
            parts += [
                {"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in images
            ]
            replies.append({"role": "user", "content": parts})
        return replies, None

    # --- output --------------------------------------------------------------------------------

    def _log_step(
        self, step: int, action: str, tool_s: float, model_s: float, output: ToolOutput | str
    ) -> None:
        if isinstance(output, ToolOutput):
            status = "error" if output.error else "ok"
            if output.finish:
                status = "finish" if output.success else "gave up"
        else:
            status = _short(output, 60) if output else "empty reply"
        limit = f"/{self.config.max_steps}" if self.config.max_steps else ""
        tokens = self.stats.tokens
        self.log(
            f"step {step}{limit} | {action} | {status} | tool {tool_s:.2f}s model {model_s:.2f}s"
            f" | tokens {tokens.used:,} total, {tokens.window:,} in window"
        )

    def _result(
        self, outcome: Outcome, reason: AgentReason, message: str, summary: str = ""
    ) -> AgentResult:
        self._decided = True
        result = AgentResult(
            outcome=outcome,
            reason=reason,
            message=message[:2048],
            steps=self.state.steps,
            tokens=self.stats.tokens.used,
            summary=summary,
        )
        return result


def _describe(name: str, arguments: str | None) -> str:
    """A short human description of a tool call for the step log."""
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return f"{name} (invalid arguments)"
    if not isinstance(args, dict):
        return name
    detail = args.get("command") or args.get("path") or args.get("summary") or ""
    return f"{name} {_short(str(detail), 70)}".rstrip()
