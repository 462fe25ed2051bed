"""One step of the conversation: check, store, prune, call the model, store the answer.

Steps run one at a time. Everything that can reject a request is checked before the first
record is written, so a refused step leaves the stored context as it was.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from codingjob_agent.context.conversation import HEAD, Conversation
from codingjob_agent.context.journal import Journal, Transcript
from codingjob_agent.context.messages import MessageError, check_additions
from codingjob_agent.context.model import Completion, ModelCallError, RelayUsage
from codingjob_agent.context.pruning import ContextOverflow, plan_prune, smallest_window
from codingjob_agent.context.settings import Settings
from codingjob_agent.context.state import prepare
from codingjob_agent.context.summarize import summary_message, summary_request
from codingjob_agent.context.tokens import REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, TokenCounter
from codingjob_agent.protocol import (
    ConversationState,
    ErrorCode,
    Stats,
    StepRequest,
    StepResponse,
    TokenStats,
    sidecar_termination_message,
)

log = logging.getLogger(__name__)

#: HTTP status of each error the gateway returns.
STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.BUDGET_EXCEEDED: 409,
    ErrorCode.MAX_STEPS_EXCEEDED: 409,
    ErrorCode.CONTEXT_OVERFLOW: 409,
    ErrorCode.MODEL_ERROR: 502,
    ErrorCode.MODEL_UNAVAILABLE: 503,
    ErrorCode.WORKSPACE_FULL: 507,
}
#: Write errors that mean the workspace volume has no room left.
FULL = (errno.ENOSPC, errno.EDQUOT)


class StepError(RuntimeError):
    """A step failed with an error code the agent can act on."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def status(self) -> int:
        return STATUS[self.code]


class Model(Protocol):
    """What the service needs of the provider client (``ModelClient``)."""

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] = (),
        max_tokens: int | None = None,
    ) -> Completion: ...


@dataclass
class _Call:
    completion: Completion
    usage: dict[str, Any]


class _ContextTooLong(Exception):
    """The provider refused the window as longer than its context (``context_length_exceeded``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


#: After ``context_length_exceeded`` the window is pruned to this fraction of what it was.
HARDER_PRUNE_FRACTION = 0.5


class ContextService:
    """The conversation of one job, stored in its journal; :meth:`load` before use."""

    def __init__(self, settings: Settings, counter: TokenCounter, model: Model) -> None:
        self.settings = settings
        self.counter = counter
        self.model = model
        self.conversation = Conversation(counter)
        self.journal = Journal(settings.journal_path)
        self.transcript = Transcript(settings.transcript_path)
        self._lock = asyncio.Lock()
        #: The relay's count of this job's usage, from its last answer (None without a relay).
        self._relay_usage: RelayUsage | None = None
        #: The relay refused a call as over the job's budget (it enforces the budget).
        self._relay_budget_exceeded = False

    def load(self) -> None:
        """Check the state directory (StateError when it is not ours), then rebuild the
        conversation from the journal."""
        prepare(self.settings.workspace)
        events = self.journal.load()
        self.conversation.replay(events)
        # A long conversation is millions of objects that live until the end: keep them out of
        # the cyclic collector's scans, which would otherwise pause steps for 100+ ms.
        gc.freeze()
        log.info(
            "loaded %d messages (%d tokens in the window) from %s",
            len(self.conversation.messages),
            self.conversation.window_tokens,
            self.journal.path,
        )
        self.write_report()

    def close(self) -> None:
        self.write_report()
        self.journal.close()

    def write_report(self) -> None:
        """Put the counters in the container's termination message, where the operator reads
        the job's final steps and tokens (the agent's own message is not trusted with them)."""
        try:
            # No O_CREAT: outside Kubernetes there is no such file, and none is made.
            fd = os.open(self.settings.termination_log, os.O_WRONLY | os.O_TRUNC)
        except OSError:
            return
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(sidecar_termination_message(self.stats()))

    # -- reading ---------------------------------------------------------------------------

    @property
    def budget_exceeded(self) -> bool:
        if self._relay_budget_exceeded:
            return True
        limit = self.settings.max_total_tokens
        return limit > 0 and self.conversation.counters.used >= limit

    def stats(self) -> Stats:
        counters = self.conversation.counters
        relay = self._relay_usage
        return Stats(
            tokens=TokenStats(
                window=self.conversation.window_tokens,
                limit=self.settings.max_tokens,
                used=counters.used,
                pruned=counters.pruned,
                prompt=relay.prompt if relay else 0,
                completion=relay.completion if relay else 0,
                cached=relay.cached if relay else 0,
                cost_usd=relay.cost_usd if relay else 0.0,
            ),
            model_degraded=getattr(self.model, "degraded", None),
            steps=counters.steps,
            max_steps=self.settings.max_steps,
            model_calls=counters.model_calls,
            errors=counters.errors,
            messages=len(self.conversation.messages),
            budget_exceeded=self.budget_exceeded,
            last_error=counters.last_error,
        )

    def state(self) -> ConversationState:
        messages = self.conversation.messages
        return ConversationState(
            messages=len(messages),
            last_message=messages[-1] if messages else None,
            pending_tool_call_ids=self.conversation.pending_tool_call_ids(),
            stats=self.stats(),
        )

    # -- the step --------------------------------------------------------------------------

    async def step(self, request: StepRequest) -> StepResponse:
        """Add the request's messages, fit the window, and return the model's answer."""
        async with self._lock:
            try:
                try:
                    return await self._step(request)
                except OSError as exc:
                    if exc.errno not in FULL:
                        raise
                    # The journal is cut back to its last whole record (Journal.append), so
                    # nothing of this step was stored or applied: the same step may be sent
                    # again once there is room.
                    raise StepError(
                        ErrorCode.WORKSPACE_FULL,
                        f"the workspace volume is full, the step cannot be stored: {exc.strerror}",
                    ) from exc
            except StepError as exc:
                log.error("step failed: %s: %s", exc.code.value, exc)
                raise
            finally:
                self.write_report()

    def _commit(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Store ``events`` (disk first), apply them, and add them to the transcript."""
        self.journal.append(events)
        for event in events:
            self.conversation.apply(event)
        # The transcript is for people and never read back: a write it cannot make (a full
        # workspace) must not leave stored events unapplied, nor fail a stored step.
        try:
            for event in events:
                if event.get("op") == "messages":
                    self.transcript.messages(event["messages"])
        except OSError as exc:
            log.warning("transcript not written: %s", exc)

    def _fail(self, code: ErrorCode, message: str, *, persist: bool = True) -> StepError:
        """A StepError; a failed step (``persist``) is counted in the stats and the journal,
        a refused request (bad input, spent budget) only logged, as it changes nothing."""
        if persist:
            self._commit([{"op": "error", "code": code.value, "message": message}])
        return StepError(code, message)

    def _is_retry(self, additions: list[dict[str, Any]]) -> bool:
        """True when ``additions`` are exactly the messages stored since the last answer,
        i.e. the agent resends a step whose answer it never got."""
        messages = self.conversation.messages
        if not additions or not messages or messages[-1].get("role") == "assistant":
            return False
        index = len(messages)
        while index > 0 and messages[index - 1].get("role") != "assistant":
            index -= 1
        return messages[index:] == additions

    async def _step(self, request: StepRequest) -> StepResponse:
        conversation = self.conversation
        budget = self.settings.budget
        max_steps = self.settings.max_steps
        if max_steps and conversation.counters.steps >= max_steps:
            # Counted here, from the journal only the sidecar can write: the agent cannot
            # reset the count by editing a file or restarting itself.
            raise self._fail(
                ErrorCode.MAX_STEPS_EXCEEDED,
                f"the job used its {max_steps} steps (limits.maxSteps)",
                persist=False,
            )
        if self.budget_exceeded:
            raise self._fail(
                ErrorCode.BUDGET_EXCEEDED,
                f"the job used {conversation.counters.used} tokens of its "
                f"maxTotalTokens {self.settings.max_total_tokens}",
                persist=False,
            )
        additions: list[dict[str, Any]] = []
        if not self._is_retry(request.messages):
            try:
                additions = check_additions(conversation.messages, request.messages)
            except MessageError as exc:
                raise self._fail(ErrorCode.BAD_REQUEST, str(exc), persist=False) from None
            if not additions and (
                not conversation.messages or conversation.messages[-1].get("role") == "assistant"
            ):
                raise self._fail(
                    ErrorCode.BAD_REQUEST,
                    "nothing to answer: send the task, tool results or a user message",
                    persist=False,
                )
        costs = [self.counter.message(m) for m in additions]
        for number, cost in enumerate(costs):
            if cost > budget:
                raise self._fail(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"messages[{number}] has {cost} tokens, more than the whole budget of "
                    f"{budget} tokens (maxTokens minus the reserved output)",
                    persist=False,
                )
        events: list[dict[str, Any]] = []
        extra = sum(costs)
        if request.tools and request.tools != conversation.tools:
            events.append({"op": "tools", "tools": request.tools})
            extra += self.counter.tools(request.tools) - conversation.tools_tokens
        if not conversation.messages:
            extra += REPLY_PRIMING_TOKENS
        if conversation.window_tokens + extra > budget:
            # The loop guard: refuse now what no amount of pruning could fit.
            smallest = smallest_window(
                conversation,
                self.settings.keep_turns,
                extra,
                strategy=self.settings.strategy,
                summary_tokens=self.settings.summary_tokens,
            )
            if smallest > budget:
                raise self._fail(
                    ErrorCode.CONTEXT_OVERFLOW,
                    f"the context cannot fit {budget} tokens: the system prompt, the task and "
                    f"the last {self.settings.keep_turns} turn(s) alone take {smallest} tokens",
                )
        if additions:
            events.append({"op": "messages", "messages": additions})
        if events:
            self._commit(events)
        await self._prune()
        try:
            call = await self._call(
                conversation.window(), conversation.tools, purpose="step", too_long_ok=True
            )
        except _ContextTooLong as exc:
            # The provider's window is smaller than configured (or counts differently): prune
            # harder and try once more; a second refusal fails the step.
            log.warning("provider refused the window (%s); pruning harder and retrying", exc)
            await self._prune(int(conversation.window_tokens * HARDER_PRUNE_FRACTION))
            call = await self._call(conversation.window(), conversation.tools, purpose="step")
        self._commit(
            [{"op": "messages", "messages": [call.completion.message], "call": call.usage}]
        )
        return StepResponse(
            message=call.completion.message,
            finish_reason=call.completion.finish_reason,
            stats=self.stats(),
        )

    async def _prune(self, budget: int | None = None) -> None:
        """Fit the window into ``budget`` (default: the settings' budget) with the job's
        strategy, or raise ContextOverflow."""
        conversation = self.conversation
        settings = self.settings
        budget = settings.budget if budget is None else budget
        try:
            plan = plan_prune(
                conversation,
                budget=budget,
                target=int(budget * settings.prune_target),
                strategy=settings.strategy,
                keep_turns=settings.keep_turns,
                summary_tokens=settings.summary_tokens,
            )
        except ContextOverflow as exc:
            raise self._fail(ErrorCode.CONTEXT_OVERFLOW, str(exc)) from None
        if plan is None:
            return
        before = conversation.window_tokens
        if plan.mask:
            self._commit([{"op": "mask", "indices": plan.mask}])
        if plan.start > conversation.start:
            drop: dict[str, Any] = {"op": "drop", "start": plan.start}
            if plan.summarize:
                summary, usage = await self._summarize(plan.start)
                drop["summary"] = summary
                drop["call"] = usage
            else:
                drop["summary"] = conversation.summary
            self._commit([drop])
        log.info(
            "pruned the window (%s) from %d to %d tokens; it starts at message %d of %d",
            settings.strategy.value,
            before,
            conversation.window_tokens,
            conversation.start,
            len(conversation.messages),
        )
        self.transcript.write(
            f"--- context pruned ({settings.strategy.value}): {before} -> "
            f"{conversation.window_tokens} tokens, window starts at message {conversation.start}"
        )
        if conversation.window_tokens > budget:
            raise self._fail(
                ErrorCode.CONTEXT_OVERFLOW,
                f"pruning left {conversation.window_tokens} tokens, over the budget of {budget}",
            )

    async def _summarize(self, new_start: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The summary message for everything before ``new_start``, and the call's usage."""
        conversation = self.conversation
        room = self.settings.summary_tokens
        request = summary_request(
            self.counter,
            task=conversation.messages[1],
            previous=conversation.summary,
            span=conversation.messages[conversation.start : new_start],
            budget=self.settings.budget,
        )
        call = await self._call(request, (), purpose="summary", max_tokens=room - 32)
        message = summary_message(
            str(call.completion.message.get("content") or ""), new_start - HEAD
        )
        if self.counter.message(message) > room:
            content = self.counter.truncate(message["content"], room - TOKENS_PER_MESSAGE - 8)
            message = {**message, "content": content}
        return message, call.usage

    async def _call(
        self,
        messages: list[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        purpose: str,
        max_tokens: int | None = None,
        too_long_ok: bool = False,
    ) -> _Call:
        try:
            completion = await self.model.complete(messages, tools, max_tokens)
        except ModelCallError as exc:
            if exc.context_length and too_long_ok:
                raise _ContextTooLong(str(exc)) from None
            if exc.code is ErrorCode.BUDGET_EXCEEDED:
                self._relay_budget_exceeded = True
            raise self._fail(exc.code, str(exc)) from None
        if completion.relay_usage is not None:
            self._relay_usage = completion.relay_usage
        prompt = completion.prompt_tokens
        if prompt is None:
            prompt = self.counter.request(messages, tools)
        answer = completion.completion_tokens
        if answer is None:
            answer = self.counter.message(completion.message)
        usage = {"purpose": purpose, "prompt": prompt, "completion": answer}
        return _Call(completion, usage)
