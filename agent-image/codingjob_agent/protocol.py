"""Wire contract between the agent container, the context-manager sidecar and the operator.

The agent never talks to the model provider: it talks to the sidecar on 127.0.0.1 (same pod,
shared network namespace), which holds the API key and the conversation. Messages and tool
schemas are OpenAI Chat Completions shapes, kept as plain dicts here so that any
OpenAI-compatible provider's extra fields pass through untouched.

Endpoints of the sidecar:

* ``GET  /healthz`` on both listeners: 200 once the journal is loaded.
* ``GET  /v1/conversation`` (gateway, 127.0.0.1): :class:`ConversationState`, so a restarted
  agent can resume instead of starting over.
* ``POST /v1/step`` (gateway, 127.0.0.1): :class:`StepRequest` -> :class:`StepResponse`.
* ``GET  /stats`` (stats listener, pod IP, read-only, no secrets): :class:`Stats`. The operator
  reads it through the API server's pod proxy.

Errors from the sidecar are JSON :class:`ErrorBody` with a 4xx/5xx status.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Port of the model gateway, bound to 127.0.0.1 only.
GATEWAY_PORT = 8080
#: Port of the read-only stats listener, bound to the pod IP.
STATS_PORT = 8081

#: Where the agent writes its final result on the workspace volume.
RESULT_PATH = ".codingjob/result.json"
#: uid and gid of the context-manager sidecar. Not the agent's (1000): the sidecar's journal
#: holds the step and token counts the job's limits are enforced on, and the agent must be able
#: neither to write nor to read it. The image has a user ``context-manager`` with these ids.
SIDECAR_UID = 1001
SIDECAR_GID = 1001
#: The sidecar's private directory on the workspace volume (relative to the workspace root):
#: owned by SIDECAR_UID:SIDECAR_GID, mode 0750, hidden in the agent container under an empty
#: read-only mount. On the workspace PVC, so suspend/resume keeps it and the archive has it.
STATE_DIR = ".context-manager"
#: Conversation journal (machine-readable, append-only; its ``call`` and ``error`` events are
#: the job's counters) and readable transcript, both in STATE_DIR.
JOURNAL_PATH = f"{STATE_DIR}/context.jsonl"
TRANSCRIPT_PATH = f"{STATE_DIR}/context.txt"
#: Where they were before STATE_DIR (in the agent's reach); migrated once, see context/state.py.
LEGACY_JOURNAL_PATH = "context.jsonl"
LEGACY_TRANSCRIPT_PATH = "context.txt"
#: The sidecar's termination message file (the kubelet's default terminationMessagePath). It
#: holds :func:`sidecar_termination_message`, rewritten after every step and at shutdown; the
#: operator takes the job's final counters from it, never from the agent's.
TERMINATION_LOG = "/dev/termination-log"
#: Longest text field (lastError, modelDegraded) kept in the sidecar's termination message.
REPORT_TEXT_MAX = 512


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepRequest(_Strict):
    """Messages the agent adds since its last step, plus the tool schemas it offers.

    On the first step ``messages`` is ``[system, user(task)]``; afterwards it is the ``tool``
    messages answering the previous assistant message's tool calls (and any user notes).
    """

    messages: list[dict[str, Any]] = Field(default_factory=list, max_length=256)
    tools: list[dict[str, Any]] = Field(default_factory=list, max_length=64)


class TokenStats(_Strict):
    window: int = 0
    limit: int = 0
    used: int = 0
    pruned: int = 0
    #: The job's totals as counted by the model relay (0 without a relay); cached tokens are
    #: part of prompt. These, not ``used``, are what the relay's budgets are enforced on.
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    cost_usd: float = Field(0.0, alias="costUSD")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Stats(_Strict):
    tokens: TokenStats = Field(default_factory=TokenStats)
    steps: int = 0
    #: ``limits.maxSteps`` (0: none); the sidecar refuses the step after the last one.
    max_steps: int = Field(0, alias="maxSteps")
    model_calls: int = Field(0, alias="modelCalls")
    errors: int = 0
    messages: int = 0
    budget_exceeded: bool = Field(False, alias="budgetExceeded")
    last_error: str | None = Field(None, alias="lastError")
    #: Set while model calls keep failing transiently (provider outage); the sidecar retries
    #: and the operator shows the ModelDegraded condition.
    model_degraded: str | None = Field(None, alias="modelDegraded")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def sidecar_termination_message(stats: Stats) -> str:
    """The sidecar's termination message: ``stats`` as JSON with the wire aliases (``steps``,
    ``maxSteps``, ``tokens.used``, ``budgetExceeded``, ...), well within the kubelet's
    4096-byte cap."""
    short = stats.model_copy(
        update={
            "last_error": None if stats.last_error is None else stats.last_error[:REPORT_TEXT_MAX],
            "model_degraded": None
            if stats.model_degraded is None
            else stats.model_degraded[:REPORT_TEXT_MAX],
        }
    )
    return short.model_dump_json(by_alias=True)


class StepResponse(_Strict):
    """The model's next assistant message (``openai.types.chat.ChatCompletionMessage`` shape)."""

    message: dict[str, Any]
    finish_reason: str | None = Field(None, alias="finishReason")
    stats: Stats

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ConversationState(_Strict):
    """What a (re)starting agent needs to resume the conversation."""

    messages: int
    #: The last stored message, or None for an empty conversation.
    last_message: dict[str, Any] | None = Field(None, alias="lastMessage")
    #: ids of the last assistant message's tool calls that have no tool result yet.
    pending_tool_call_ids: list[str] = Field(default_factory=list, alias="pendingToolCallIds")
    stats: Stats

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ErrorCode(StrEnum):
    BAD_REQUEST = "BadRequest"
    MESSAGE_TOO_LARGE = "MessageTooLarge"
    BUDGET_EXCEEDED = "BudgetExceeded"
    #: The job's ``limits.maxSteps`` model steps are spent; counted and enforced by the sidecar.
    MAX_STEPS_EXCEEDED = "MaxStepsExceeded"
    CONTEXT_OVERFLOW = "ContextOverflow"
    MODEL_ERROR = "ModelError"
    MODEL_UNAVAILABLE = "ModelUnavailable"
    #: The workspace volume is full (ENOSPC, EDQUOT): the step cannot be stored, and an
    #: unstored step is never answered.
    WORKSPACE_FULL = "WorkspaceFull"


class ErrorBody(_Strict):
    error: ErrorCode
    message: str


class Outcome(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class AgentReason(StrEnum):
    """Why the agent stopped; the operator copies it into ``status.reason``."""

    COMPLETED = "Completed"
    AGENT_ERROR = "AgentError"
    MAX_STEPS_EXCEEDED = "MaxStepsExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BUDGET_EXCEEDED = "BudgetExceeded"
    CONTEXT_OVERFLOW = "ContextOverflow"
    MODEL_ERROR = "ModelError"
    TERMINATED = "Terminated"
    INVALID_ENVIRONMENT = "InvalidEnvironment"
    WORKSPACE_FULL = "WorkspaceFull"


class AgentResult(_Strict):
    """Written to ``/workspace/.codingjob/result.json`` and, shortened, to the container's
    termination message (``/dev/termination-log``, at most 4096 bytes), which the operator reads.
    """

    outcome: Outcome
    reason: AgentReason
    message: str = Field("", max_length=2048)
    steps: int = 0
    tokens: int = 0
    summary: str = ""

    def termination_message(self) -> str:
        """The JSON the kubelet keeps as the termination message, within its 4096-byte cap."""
        short = self.model_copy(
            update={"summary": self.summary[:1024], "message": self.message[:1024]}
        )
        return short.model_dump_json()
