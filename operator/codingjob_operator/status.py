"""Level-based status: the phase, conditions and next actions of a CodingJob, derived purely from
what its children are right now (plus the little the status itself must remember).

Phases::

    Pending --pod's agent container runs--> Running --agent terminated--> Archiving
    Archiving --archive confirmed--> Succeeded | Failed        (the agent's outcome)
    Running --agent failed, uploadOnFailure false--> Failed     (workspace kept, not archived)
    Pending|Running --spec.suspend--> Suspended --resume--> Pending
    Pending|Running --semantic error / deadline / backoff limit--> Failed (or Archiving first)

The handler does the I/O (reading pods, asking object storage) and passes the results in as an
:class:`Observation`; :func:`derive_status` returns the status patch, the actions to take and the
events to post, in that order of application.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codingjob_operator import conditions as c
from codingjob_operator.conditions import ConditionUpdate, Phase
from codingjob_operator.models import CodingJobSpec
from codingjob_operator.report import ArchiveError, ArchiveReport
from codingjob_operator.untrusted import MESSAGE_MAX, bounded_int, clean_text, known_reason

#: Pod status reasons that mean the pod was lost to infrastructure, not ended by the agent.
INFRASTRUCTURE_REASONS = frozenset(
    {
        "Evicted",
        "NodeLost",
        "NodeAffinity",
        "Preempting",
        "Shutdown",
        "Terminated",
        "UnexpectedAdmissionError",
    }
)
#: Container waiting reasons that no retry can fix.
INVALID_IMAGE_REASONS = frozenset({"InvalidImageName", "ErrImageNeverPull"})
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff"})
CONFIG_ERROR_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
#: The runtime could not start the command (e.g. not in the image): no retry can fix it.
START_ERROR = "StartError"
#: A sidecar that crashed this often will not come up; the job fails instead of waiting forever.
SIDECAR_MAX_RESTARTS = 3


class AgentResultMessage(BaseModel):
    """The agent's termination message: ``AgentResult`` of the agent image's protocol module.

    Written by the agent, i.e. untrusted: its outcome and reason (an enum) and its clamped
    message and summary texts are used; its ``steps`` and ``tokens`` never are (the counters
    come from the sidecar's own termination message, :func:`sidecar_report`).
    """

    model_config = ConfigDict(extra="ignore")

    outcome: str
    reason: str
    message: str = ""
    steps: int = 0
    tokens: int = 0
    summary: str = ""


@dataclass(frozen=True)
class ContainerView:
    """One container's state as the kubelet reports it."""

    running: bool = False
    terminated: bool = False
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    restart_count: int = 0
    #: The previous run's termination (restarted sidecars), from ``lastState.terminated``.
    last_reason: str | None = None
    last_message: str | None = None


@dataclass(frozen=True)
class PodView:
    """What the operator needs to know about the agent pod."""

    phase: str
    created_at: datetime.datetime
    reason: str | None = None
    message: str | None = None
    deleting: bool = False
    started_at: datetime.datetime | None = None
    agent: ContainerView | None = None
    sidecar: ContainerView | None = None
    #: The pod's Ready condition (with the GUI on: the desktop accepts connections).
    ready: bool = False
    #: Why the pod is being disrupted (``DisruptionTarget`` condition: an eviction through the
    #: API, node pressure, preemption), as ``reason: message``; None when it is not.
    disruption: str | None = None


@dataclass(frozen=True)
class ArchiveJobView:
    """The archiver Job: finished or not, and its pod's termination message."""

    succeeded: bool = False
    failed: bool = False
    termination_message: str | None = None
    #: Why the newest archiver pod's container is not running yet (e.g. ErrImagePull).
    waiting: str | None = None
    #: The Job's own reason for failing (``DeadlineExceeded: ...``, ``BackoffLimitExceeded``).
    job_failure: str | None = None


class StorageState(Enum):
    OK = "ok"
    NOT_CONFIGURED = "not-configured"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class StorageResult:
    """Outcome of the handler's object-storage call (bucket check, or confirm + presign)."""

    state: StorageState
    message: str = ""
    artifact: Mapping[str, Any] | None = None


class StatsMessage(BaseModel):
    """The sidecar's ``GET /stats`` body (``Stats`` of the agent image's protocol module)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    class Tokens(BaseModel):
        model_config = ConfigDict(extra="ignore")
        window: int = 0
        limit: int = 0
        used: int = 0
        pruned: int = 0
        prompt: int = 0
        completion: int = 0
        cached: int = 0
        cost_usd: float = Field(0.0, alias="costUSD")

    tokens: Tokens = Field(default_factory=Tokens)
    steps: int = 0
    budget_exceeded: bool = Field(False, alias="budgetExceeded")
    last_error: str | None = Field(None, alias="lastError")
    #: Model calls that failed, and that were retried, so far (metrics only).
    errors: int = 0
    retries: int = 0
    model_degraded: str | None = Field(None, alias="modelDegraded")


@dataclass(frozen=True)
class Observation:
    """Everything :func:`derive_status` looks at."""

    spec: CodingJobSpec
    status: Mapping[str, Any]
    generation: int | None
    now: datetime.datetime
    pod: PodView | None = None
    archive: ArchiveJobView | None = None
    #: (reason, message) of a problem in the spec the user must fix (missing Secret, ...).
    semantic_error: tuple[str, str] | None = None
    storage: StorageResult | None = None
    stats: StatsMessage | None = None
    image_pull_timeout: datetime.timedelta = datetime.timedelta(minutes=5)
    #: Archiver Jobs tried before the job fails with ArchiveFailed (the PVC is kept).
    archive_max_attempts: int = 3
    #: Archiving only: why the workspace PVC cannot be archived any more (deleted, or being
    #: deleted before an archiver started), or None while it is there.
    workspace_gone: str | None = None


class Action(Enum):
    """What the handler must do after patching the status, in this order."""

    ENSURE_CHILDREN = "ensure-children"  # PVC, session Secret, Service, NetworkPolicy, pod
    DELETE_POD = "delete-pod"
    CHECK_STORAGE = "check-storage"  # ensure the bucket, then pass the result back in
    START_ARCHIVE = "start-archive"  # archiver credentials Secret + Job
    CONFIRM_ARCHIVE = "confirm-archive"  # stat + presign, then pass the result back in
    DELETE_ARCHIVE_JOB = "delete-archive-job"  # a failed attempt, retried on a later pass
    CLEANUP = "cleanup"  # the archive is confirmed: agent pod, PVC, archiver Secret go


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Decision:
    """The status patch (camelCase keys, merged into .status), actions and events."""

    patch: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class AgentOutcome:
    """How the agent container ended (as the agent says; see :func:`corroborate`)."""

    succeeded: bool
    reason: str
    message: str
    summary: str = ""


def _short(text: str | None) -> str:
    # Every message that reaches the status or an event passes here; most come from the
    # sandbox (termination message, logs, stats), so they are made inert, not just shortened.
    return clean_text(text, MESSAGE_MAX)


def parse_agent_result(message: str | None) -> AgentResultMessage | None:
    """The agent's termination message as a result, or None when it is not one (e.g. logs)."""
    if not message:
        return None
    try:
        return AgentResultMessage.model_validate_json(message)
    except ValidationError:
        return None


def parse_archive_message(message: str | None) -> ArchiveReport | ArchiveError | None:
    """The archiver's termination message: a report, an error, or None (crash logs)."""
    if not message:
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    for model in (ArchiveReport, ArchiveError):
        try:
            return model.model_validate(data)
        except ValidationError:
            continue
    return None


def agent_outcome(pod: PodView) -> AgentOutcome | None:
    """How the agent ended, or None while it has not (or the pod was lost to infrastructure)."""
    agent = pod.agent
    if pod.reason == "DeadlineExceeded":
        return AgentOutcome(
            succeeded=False,
            reason=c.DEADLINE_EXCEEDED,
            message=_short(pod.message) or "the pod ran longer than limits.activeDeadlineSeconds",
        )
    if agent is None or not agent.terminated:
        return None
    if agent.reason == "OOMKilled" and not _succeeded(agent):
        # The task's own failure (it used more memory than the job allows), not infrastructure;
        # the container's reason wins over the result its entry script wrote after the kill.
        return AgentOutcome(
            succeeded=False,
            reason=c.OOM_KILLED,
            message=f"the agent container ran out of memory (exit code {agent.exit_code})",
        )
    result = parse_agent_result(agent.message)
    if result is not None:
        succeeded = agent.exit_code == 0 and result.outcome == "Succeeded"
        # The reason is an enum the agent picks from; anything else is the agent's error.
        reason = known_reason(result.reason)
        return AgentOutcome(
            succeeded=succeeded,
            reason=reason if (succeeded or reason != c.COMPLETED) else c.AGENT_ERROR,
            message=_short(result.message),
            summary=_short(result.summary),
        )
    sidecar = pod.sidecar
    if (sidecar is None or not sidecar.running) and pod.phase not in ("Succeeded", "Failed"):
        # No result and no sidecar: the sidecar's own state (e.g. a StartError the kubelet has
        # not reported yet) is the likelier cause; it is known once the pod is final.
        return None
    if agent.exit_code == 0:
        # The contract is exit 0 *and* a result: a container that exits 0 without one (a bare
        # base image, an agent killed before it wrote it) has not shown that it did the task.
        detail = "agent exited with code 0 without writing its result"
        if sidecar is not None and not sidecar.running:
            why = sidecar.reason or sidecar.waiting_reason or sidecar.last_reason or "not running"
            detail += f"; container context-manager: {why}"
        return AgentOutcome(succeeded=False, reason=c.AGENT_ERROR, message=_short(detail))
    detail = f"agent exited with code {agent.exit_code}"
    if agent.reason and agent.reason != "Error":
        detail += f" ({agent.reason})"
    if agent.message:
        detail += f": {clean_text(agent.message[-MESSAGE_MAX * 4 :], MESSAGE_MAX // 2)}"
    return AgentOutcome(succeeded=False, reason=c.AGENT_ERROR, message=_short(detail))


def evicted(pod: PodView) -> str | None:
    """Why the pod was evicted or otherwise lost to infrastructure, or None when it was not."""
    if pod.disruption:
        return f"evicted: {pod.disruption}"
    if pod.reason in INFRASTRUCTURE_REASONS:
        return f"{pod.reason}: {pod.message or ''}".rstrip(": ")
    return None


def _succeeded(agent: ContainerView) -> bool:
    """The agent exited 0 with a Succeeded result (a killed child of it may have OOMed)."""
    result = parse_agent_result(agent.message)
    return agent.exit_code == 0 and result is not None and result.outcome == "Succeeded"


def sidecar_report(pod: PodView) -> StatsMessage | None:
    """The context-manager's counters from its own termination message (``Stats`` as JSON, see
    ``sidecar_termination_message`` in the agent image's protocol module): from its last
    termination, else from the one before a restart; None when there is none."""
    sidecar = pod.sidecar
    if sidecar is None:
        return None
    for message in (sidecar.message if sidecar.terminated else None, sidecar.last_message):
        if not message:
            continue
        try:
            return StatsMessage.model_validate_json(message)
        except ValidationError:
            continue
    return None


def sidecar_stopping(pod: PodView) -> bool:
    """True while the agent has ended but the kubelet has not yet stopped the sidecar, whose
    termination message will hold the final counters (a matter of seconds)."""
    return (
        pod.phase == "Running"
        and not pod.deleting
        and pod.sidecar is not None
        and not pod.sidecar.terminated
    )


#: Reasons that are claims about a limit, and can be checked against the sidecar's counters or
#: the spec.
_LIMIT_REASONS = frozenset({c.MAX_STEPS_EXCEEDED, c.TOKEN_BUDGET_REASON, c.DEADLINE_EXCEEDED})


def corroborate(
    outcome: AgentOutcome, report: StatsMessage | None, spec: CodingJobSpec
) -> AgentOutcome:
    """``outcome`` with a limit reason (MaxStepsExceeded, BudgetExceeded, DeadlineExceeded) the
    sidecar's counts or the spec contradict turned into AgentError: the agent may end its run,
    not blame a limit."""
    if outcome.reason not in _LIMIT_REASONS:
        return outcome
    if outcome.reason == c.DEADLINE_EXCEEDED:
        # The agent's soft deadline exists only with limits.activeDeadlineSeconds.
        if spec.limits.active_deadline_seconds:
            return outcome
        counted = "no deadline in limits.activeDeadlineSeconds"
    elif report is None:
        return outcome
    elif outcome.reason == c.MAX_STEPS_EXCEEDED:
        limit = spec.limits.max_steps or 0
        if limit and report.steps >= limit:
            return outcome
        counted = f"{bounded_int(report.steps)} steps of limits.maxSteps {limit or 'unset'}"
    else:
        if report.budget_exceeded:
            return outcome
        counted = f"{bounded_int(report.tokens.used)} tokens within the budget"
    message = _short(
        f"the agent reported {outcome.reason}, but the job has {counted}"
        + (f": {outcome.message}" if outcome.message else "")
    )
    return AgentOutcome(
        succeeded=False, reason=c.AGENT_ERROR, message=message, summary=outcome.summary
    )


def pod_lost(pod: PodView) -> bool:
    """True when the pod ended without the agent ending: infrastructure, retried per backoff.
    (Evictions and the other infrastructure reasons are caught before, by :func:`evicted`.)"""
    agent_done = pod.agent is not None and pod.agent.terminated
    return pod.phase in ("Failed", "Succeeded", "Unknown") and not agent_done


def _waiting_problem(
    pod: PodView, now: datetime.datetime, pull_timeout: datetime.timedelta
) -> tuple[str, str] | None:
    """A reason the pod's containers will never run, as (reason, message), or None."""
    for name, container in (("context-manager", pod.sidecar), ("agent", pod.agent)):
        if container is None:
            continue
        if START_ERROR in (container.reason, container.last_reason):
            detail = _short(container.message or container.last_message)
            return c.CREATE_CONTAINER_FAILED, f"container {name} could not start: {detail}"
        if name == "context-manager" and container.restart_count >= SIDECAR_MAX_RESTARTS:
            detail = _short(container.last_message or container.last_reason)
            return c.SIDECAR_FAILED, (
                f"container {name} restarted {container.restart_count} times: {detail}"
            )
        reason, detail = container.waiting_reason, _short(container.waiting_message)
        if not reason:
            continue
        if reason in INVALID_IMAGE_REASONS:
            return c.INVALID_IMAGE, f"container {name}: {reason}: {detail}"
        if reason in CONFIG_ERROR_REASONS:
            return c.CREATE_CONTAINER_FAILED, f"container {name}: {reason}: {detail}"
        if reason in IMAGE_PULL_REASONS and now - pod.created_at > pull_timeout:
            return c.IMAGE_PULL_FAILED, (
                f"container {name}: {reason} for more than {pull_timeout}: {detail}"
            )
    return None


class _Builder:
    """Accumulates one pass's decision."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.decision = Decision()
        current = obs.status.get("phase")
        self.phase = Phase(current) if current else None
        self.conditions: list[dict[str, object]] = [
            dict(x) for x in obs.status.get("conditions", [])
        ]

    def condition(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        self.conditions = c.set_condition(
            self.conditions,
            ConditionUpdate(type_, status, reason, message),
            now=self.obs.now,
            generation=self.obs.generation,
        )

    def set(self, **fields: Any) -> None:
        for key, value in fields.items():
            if self.obs.status.get(key) != value:
                self.decision.patch[key] = value

    def act(self, *actions: Action) -> None:
        self.decision.actions.extend(actions)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(type_, reason, message))

    def move(self, phase: Phase, reason: str, message: str = "", *, warn: bool = False) -> None:
        """Enter ``phase`` (an event when it is a change)."""
        if self.phase != phase:
            self.event("Warning" if warn else "Normal", reason, message or f"phase {phase}")
            self.phase = phase
        self.set(phase=phase.value)

    def finish(self, succeeded: bool, reason: str, message: str) -> None:
        phase = Phase.SUCCEEDED if succeeded else Phase.FAILED
        summary = f"{phase.value}: {reason}" + (f": {message}" if message else "")
        self.move(phase, reason, summary, warn=not succeeded)
        self.set(reason=reason, message=message, completionTime=c.format_time(self.obs.now))
        self.terminal_conditions(succeeded, reason, message)
        self.condition(c.READY, False, reason, "the job has finished")

    def terminal_conditions(self, succeeded: bool, reason: str, message: str) -> None:
        """Succeeded+Complete, or Failed alone (Complete never means a failure)."""
        if succeeded:
            self.condition(c.SUCCEEDED, True, reason, message)
            self.condition(c.COMPLETE, True, reason, message)
        else:
            self.condition(c.FAILED, True, reason, message)
            self.conditions = c.remove_condition(self.conditions, c.COMPLETE)

    def result(self) -> Decision:
        if self.conditions != list(self.obs.status.get("conditions", [])):
            self.decision.patch["conditions"] = self.conditions
        if self.obs.generation is not None:
            self.set(observedGeneration=self.obs.generation)
        return self.decision


def derive_status(obs: Observation) -> Decision:
    """The status patch, actions and events for one reconcile pass over ``obs``."""
    b = _Builder(obs)
    if b.phase is not None and b.phase.finished:
        _finished(b)
    elif b.phase == Phase.ARCHIVING:
        _archiving(b)
    else:
        _active(b)
    return b.result()


def fail_now(
    obs: Observation, reason: str, message: str, *, archived: str | None = None
) -> Decision:
    """The decision that ends the job Failed with ``reason`` whatever phase it is in (a name
    conflict, a refused status patch, archiver credentials refused: problems no retry fixes).
    ``archived`` explains the Archived=False condition when the agent did run."""
    b = _Builder(obs)
    if archived is None:
        _fail_semantic(b, reason, _short(message))
    else:
        b.condition(c.ARCHIVED, False, reason, _short(archived))
        b.finish(False, reason, _short(message))
    return b.result()


def _finished(b: _Builder) -> None:
    # Terminal: only finish what a crash may have interrupted, and give jobs finished by an
    # older operator (Complete=True either way) their Succeeded/Failed condition.
    terminal = c.SUCCEEDED if b.phase == Phase.SUCCEEDED else c.FAILED
    if c.find_condition(b.conditions, terminal) is None:
        reason = str(b.obs.status.get("reason") or b.phase)
        b.terminal_conditions(b.phase == Phase.SUCCEEDED, reason, b.obs.status.get("message") or "")
    if b.obs.pod is not None:
        b.act(Action.DELETE_POD)
    # Once per job: the reconciler records cleanedUp after the deletes went through.
    if b.obs.status.get("artifact") and not b.obs.status.get("cleanedUp"):
        b.act(Action.CLEANUP)


def _archiving(b: _Builder) -> None:
    obs = b.obs
    succeeded = obs.status.get("outcome") == "Succeeded"
    reason = obs.status.get("reason") or (c.COMPLETED if succeeded else c.AGENT_ERROR)
    message = obs.status.get("message") or ""
    if obs.pod is not None:
        # The workspace is ReadWriteOnce: the archiver mounts it once the agent pod is gone.
        b.act(Action.DELETE_POD)
        return
    archive = obs.archive
    if obs.workspace_gone and (archive is None or not archive.succeeded):
        # No archiver can ever mount it: its pod would wait Pending forever. Final, and says so.
        b.condition(c.ARCHIVED, False, c.ARCHIVE_FAILED, obs.workspace_gone)
        b.finish(False, c.ARCHIVE_FAILED, obs.workspace_gone)
        if archive is not None:
            b.act(Action.DELETE_ARCHIVE_JOB)
        return
    storage = obs.storage
    if storage is not None and storage.state == StorageState.NOT_CONFIGURED:
        b.condition(c.ARCHIVED, False, c.STORAGE_NOT_CONFIGURED, storage.message)
        b.finish(succeeded, reason, message)
        return
    if storage is not None and storage.state == StorageState.TRANSIENT:
        before = c.find_condition(b.conditions, c.ARCHIVED) or {}
        if before.get("reason") != c.STORAGE_UNAVAILABLE:
            b.event("Warning", c.STORAGE_UNAVAILABLE, storage.message)
        b.condition(c.ARCHIVED, False, c.STORAGE_UNAVAILABLE, storage.message)
        return
    if storage is not None and storage.state == StorageState.PERMANENT:
        b.condition(c.ARCHIVED, False, c.ARCHIVE_FAILED, storage.message)
        b.finish(False, c.ARCHIVE_FAILED, storage.message)
        return
    if archive is None:
        if storage is None:
            b.act(Action.CHECK_STORAGE)
            return
        b.condition(c.ARCHIVED, False, c.ARCHIVING, "archiving the workspace")
        b.set(archiveAttempts=int(obs.status.get("archiveAttempts") or 0) + 1)
        b.act(Action.START_ARCHIVE)
        return
    if archive.failed:
        parsed = parse_archive_message(archive.termination_message)
        if isinstance(parsed, ArchiveError) and parsed.permanent:
            why = c.ARCHIVE_TOO_LARGE if parsed.reason == c.ARCHIVE_TOO_LARGE else c.ARCHIVE_FAILED
            b.condition(c.ARCHIVED, False, why, _short(parsed.error))
            b.finish(False, why, _short(parsed.error))
            return
        detail = parsed.error if isinstance(parsed, ArchiveError) else archive.termination_message
        detail = detail or archive.job_failure or "failed"
        attempts = int(obs.status.get("archiveAttempts") or 0)
        if attempts >= obs.archive_max_attempts:
            # Bounded: a workspace that cannot be archived keeps its PVC and says why.
            message = _short(f"archiving failed {attempts} times; last: {detail}")
            b.condition(c.ARCHIVED, False, c.ARCHIVE_FAILED, message)
            b.finish(False, c.ARCHIVE_FAILED, message)
            return
        b.condition(c.ARCHIVED, False, c.ARCHIVE_FAILED, _short(f"retrying: {detail}"))
        b.act(Action.DELETE_ARCHIVE_JOB)
        return
    if not archive.succeeded:
        # An archiver that cannot start (image missing, ...) is an operator problem, not the
        # job's: it waits, and the condition says why.
        detail = f"archiver pod waiting: {archive.waiting}" if archive.waiting else ""
        b.condition(c.ARCHIVED, False, c.ARCHIVING, detail or "archiving the workspace")
        return
    if storage is None:
        b.act(Action.CONFIRM_ARCHIVE)
        return
    if storage.state == StorageState.MISMATCH:
        b.condition(c.ARCHIVED, False, c.ARCHIVE_MISMATCH, storage.message)
        b.event("Warning", c.ARCHIVE_MISMATCH, storage.message)
        attempts = int(obs.status.get("archiveAttempts") or 0)
        if attempts >= obs.archive_max_attempts:
            message = _short(f"archiving failed {attempts} times; last: {storage.message}")
            b.finish(False, c.ARCHIVE_FAILED, message)
            return
        b.act(Action.DELETE_ARCHIVE_JOB)
        return
    artifact = dict(storage.artifact or {})
    b.condition(
        c.ARCHIVED,
        True,
        c.ARCHIVE_CONFIRMED,
        f"s3://{artifact.get('bucket')}/{artifact.get('key')}",
    )
    b.set(artifact=artifact, downloadURL=artifact.get("url"))
    b.finish(succeeded, reason, message)
    b.act(Action.CLEANUP)


def _active(b: _Builder) -> None:
    obs = b.obs
    spec, pod = obs.spec, obs.pod
    if b.phase is None:
        b.event("Normal", c.CREATED, "creating the agent pod")
        b.phase = Phase.PENDING
        b.set(phase=Phase.PENDING.value)
    if pod is not None and pod.deleting:
        # A pod on its way out was suspended, evicted or deleted by someone: its agent was
        # killed, so a non-zero exit says nothing about the task. Only a finished agent counts;
        # otherwise wait until the pod is gone (then it is resumed, or recreated as lost).
        outcome = agent_outcome(pod)
        if outcome is not None and outcome.succeeded and b.phase != Phase.SUSPENDED:
            _agent_ended(b, outcome)
            return
        lost = evicted(pod)
        if lost is not None and b.phase == Phase.RUNNING and not spec.suspend:
            # Counted once, now, while the pod says why it goes (the phase leaves Running); the
            # new pod is made once this one is gone.
            _lost(b, _short(lost), reason=c.POD_EVICTED)
            return
        if not spec.suspend:
            return
    elif pod is not None:
        problem = _waiting_problem(pod, obs.now, obs.image_pull_timeout)
        if problem is not None:
            _fail_semantic(b, *problem)
            b.act(Action.DELETE_POD)
            return
        outcome = agent_outcome(pod)
        lost = evicted(pod)
        if lost is not None and not (outcome is not None and outcome.succeeded):
            # Before the agent's outcome: an evicted pod's agent was killed (exit 137, or its
            # SIGTERM result), which says nothing about the task. Only a success still counts.
            _lost(b, _short(lost), reason=c.POD_EVICTED)
            return
        if outcome is not None:
            if sidecar_stopping(pod) and pod.reason != "DeadlineExceeded":
                b.condition(
                    c.READY, False, c.AGENT_TERMINATED, "waiting for the context-manager's counts"
                )
                return
            _agent_ended(b, outcome)
            return
        if pod_lost(pod):
            _lost(b, f"pod {pod.phase}: {pod.reason or ''} {_short(pod.message)}".strip())
            return
    if spec.suspend:
        if pod is not None and not pod.deleting:
            b.act(Action.DELETE_POD)
        b.move(Phase.SUSPENDED, c.SUSPENDED_BY_USER, "suspended: agent pod deleted, workspace kept")
        b.condition(c.SUSPENDED, True, c.SUSPENDED_BY_USER, "spec.suspend is true")
        b.condition(c.READY, False, c.SUSPENDED_BY_USER, "the job is suspended")
        return
    if b.phase == Phase.SUSPENDED:
        b.move(Phase.PENDING, c.RESUMED, "resumed: recreating the agent pod")
        b.condition(c.SUSPENDED, False, c.RESUMED, "spec.suspend is false")
    if pod is None:
        if b.phase == Phase.RUNNING:
            _lost(b, "the agent pod disappeared")
            return
        if obs.semantic_error is not None:
            _fail_semantic(b, *obs.semantic_error)
            return
        b.condition(c.READY, False, c.POD_PENDING, "creating the agent pod")
        b.act(Action.ENSURE_CHILDREN)
        return
    if pod.agent is not None and pod.agent.running:
        b.move(Phase.RUNNING, c.POD_RUNNING, "the agent is running")
        if not obs.status.get("startTime"):
            b.set(startTime=c.format_time(pod.started_at or obs.now))
        b.condition(c.READY, True, c.POD_RUNNING, "the agent is running")
        if obs.stats is not None:
            _apply_stats(b, obs.stats)
    else:
        b.condition(c.READY, False, c.POD_PENDING, _short(pod.message) or "waiting for the pod")


def _bounded_cost(value: float) -> float:
    """A cost from /stats as a finite, non-negative amount (NaN or inf from the sandbox reads 0)."""
    return round(min(value, 1e9), 6) if math.isfinite(value) and value > 0 else 0.0


def _apply_stats(b: _Builder, stats: StatsMessage) -> None:
    t = stats.tokens
    tokens: dict[str, Any] = {
        "used": bounded_int(t.used),
        "limit": bounded_int(t.limit),
        "pruned": bounded_int(t.pruned),
    }
    if t.prompt or t.completion:
        # Counted by the model relay, which enforces the budgets on these numbers; still bounded,
        # since /stats is read from the sandbox pod.
        tokens.update(
            prompt=bounded_int(t.prompt),
            completion=bounded_int(t.completion),
            cached=bounded_int(t.cached),
            costUSD=_bounded_cost(t.cost_usd),
        )
    b.set(steps=bounded_int(stats.steps), tokens=tokens)
    if stats.model_degraded:
        b.condition(c.MODEL_DEGRADED, True, c.PROVIDER_UNAVAILABLE, _short(stats.model_degraded))
    elif c.find_condition(b.conditions, c.MODEL_DEGRADED) is not None:
        b.condition(c.MODEL_DEGRADED, False, c.PROVIDER_AVAILABLE)
    if stats.budget_exceeded:
        b.condition(c.BUDGET_EXCEEDED, True, c.TOKEN_BUDGET_SPENT, _short(stats.last_error))
    elif c.find_condition(b.conditions, c.BUDGET_EXCEEDED) is not None:
        b.condition(c.BUDGET_EXCEEDED, False, c.WITHIN_BUDGET)


def _fail_semantic(b: _Builder, reason: str, message: str) -> None:
    b.condition(c.ARCHIVED, False, c.NOT_REQUESTED, "the agent never ran")
    b.finish(False, reason, message)


def _lost(b: _Builder, detail: str, *, reason: str = c.POD_LOST) -> None:
    obs = b.obs
    failures = int(obs.status.get("podFailures") or 0) + 1
    b.set(podFailures=failures)
    if obs.pod is not None:
        b.act(Action.DELETE_POD)
    if failures > obs.spec.backoff_limit:
        message = _short(
            f"agent pod lost {failures} times (backoffLimit {obs.spec.backoff_limit}): {detail}"
        )
        if not (obs.status.get("startTime") or b.decision.patch.get("startTime")):
            _fail_semantic(b, c.BACKOFF_LIMIT_EXCEEDED, message)
            return
        b.condition(c.READY, False, reason, message)
        report = sidecar_report(obs.pod) if obs.pod is not None else None
        if report is not None:
            # The job ends with this pod: its final counters are the sidecar's, as for an agent
            # that ended by itself (never the agent's termination message).
            _apply_stats(b, report)
        if not obs.spec.artifacts.upload_on_failure:
            b.condition(c.ARCHIVED, False, c.NOT_REQUESTED, "artifacts.uploadOnFailure is false")
            b.finish(False, c.BACKOFF_LIMIT_EXCEEDED, message)
            return
        # The agent worked in the workspace before its pods were lost (evicted, say, for filling
        # its disk): that work is archived like any failed agent's, not dropped with the pod.
        b.set(outcome=Phase.FAILED.value, reason=c.BACKOFF_LIMIT_EXCEEDED, message=message)
        b.move(Phase.ARCHIVING, c.BACKOFF_LIMIT_EXCEEDED, message, warn=True)
        b.condition(c.ARCHIVED, False, c.ARCHIVING, "waiting for the agent pod to go")
        return
    b.event("Warning", reason, _short(f"recreating the agent pod: {detail}"))
    b.move(Phase.PENDING, reason, _short(detail), warn=True)
    b.condition(c.READY, False, reason, _short(detail))


def _agent_ended(b: _Builder, outcome: AgentOutcome) -> None:
    obs = b.obs
    report = sidecar_report(obs.pod) if obs.pod is not None else None
    if obs.pod is None or obs.pod.reason != "DeadlineExceeded":
        # The kubelet's deadline is a fact; only the agent's own claims are checked.
        outcome = corroborate(outcome, report, obs.spec)
    if report is not None:
        # The final counters: the sidecar's, never the agent's termination message.
        _apply_stats(b, report)
    fields: dict[str, Any] = {
        "outcome": "Succeeded" if outcome.succeeded else "Failed",
        "reason": outcome.reason,
        "message": outcome.message,
    }
    if outcome.summary:
        fields["summary"] = outcome.summary
    b.set(**fields)
    b.condition(c.READY, False, c.AGENT_TERMINATED, outcome.message or outcome.reason)
    if outcome.succeeded or obs.spec.artifacts.upload_on_failure:
        b.move(
            Phase.ARCHIVING,
            c.AGENT_TERMINATED,
            f"agent {fields['outcome'].lower()} ({outcome.reason}); archiving the workspace",
            warn=not outcome.succeeded,
        )
        b.condition(c.ARCHIVED, False, c.ARCHIVING, "waiting for the agent pod to go")
        b.act(Action.DELETE_POD)
        return
    b.condition(c.ARCHIVED, False, c.NOT_REQUESTED, "artifacts.uploadOnFailure is false")
    b.finish(False, outcome.reason, outcome.message)
    b.act(Action.DELETE_POD)


def _time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _container_view(statuses: list[Mapping[str, Any]] | None, name: str) -> ContainerView | None:
    for status in statuses or []:
        if status.get("name") != name:
            continue
        state = status.get("state") or {}
        running, terminated, waiting = (
            state.get("running"),
            state.get("terminated"),
            state.get("waiting"),
        )
        last = (status.get("lastState") or {}).get("terminated") or {}
        return ContainerView(
            running=running is not None,
            terminated=terminated is not None,
            exit_code=(terminated or {}).get("exitCode"),
            reason=(terminated or {}).get("reason"),
            message=(terminated or {}).get("message"),
            waiting_reason=(waiting or {}).get("reason"),
            waiting_message=(waiting or {}).get("message"),
            restart_count=int(status.get("restartCount") or 0),
            last_reason=last.get("reason"),
            last_message=last.get("message"),
        )
    return None


def pod_view(
    pod: Mapping[str, Any], *, agent: str = "agent", sidecar: str = "context-manager"
) -> PodView:
    """The parts of a Pod (API dict) that :func:`derive_status` looks at."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return PodView(
        phase=status.get("phase") or "Pending",
        created_at=_time(meta.get("creationTimestamp")) or datetime.datetime.now(datetime.UTC),
        reason=status.get("reason"),
        message=status.get("message"),
        deleting=bool(meta.get("deletionTimestamp")),
        started_at=_time(status.get("startTime")),
        agent=_container_view(status.get("containerStatuses"), agent),
        sidecar=_container_view(status.get("initContainerStatuses"), sidecar),
        ready=any(
            cond.get("type") == "Ready" and cond.get("status") == "True"
            for cond in status.get("conditions") or []
        ),
        disruption=_disruption(status.get("conditions") or []),
    )


def _disruption(conditions: Sequence[Mapping[str, Any]]) -> str | None:
    for cond in conditions:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            text = f"{cond.get('reason') or 'DisruptionTarget'}: {cond.get('message') or ''}"
            return _short(text.rstrip(": "))
    return None


def archive_view(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, container: str = "archiver"
) -> ArchiveJobView:
    """The archiver Job's state and its newest finished pod's termination message."""
    status = job.get("status") or {}
    finished: dict[str, bool] = {}
    job_failure = None
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            finished[cond["type"]] = True
            if cond["type"] == "Failed":
                job_failure = _short(f"{cond.get('reason') or ''}: {cond.get('message') or ''}")
    message = waiting = None
    newest: datetime.datetime | None = None
    newest_any: datetime.datetime | None = None
    for pod in pods:
        view = _container_view((pod.get("status") or {}).get("containerStatuses"), container)
        if view is None:
            continue
        created = _time((pod.get("metadata") or {}).get("creationTimestamp"))
        if view.waiting_reason and (newest_any is None or (created and created >= newest_any)):
            newest_any = created
            waiting = _short(f"{view.waiting_reason}: {view.waiting_message or ''}".rstrip(": "))
        if not view.terminated:
            continue
        if newest is None or (created is not None and created >= newest):
            newest, message = created, view.message
    return ArchiveJobView(
        succeeded=finished.get("Complete", False),
        failed=finished.get("Failed", False),
        termination_message=message,
        waiting=waiting,
        job_failure=job_failure,
    )


def deletion_patch(status: Mapping[str, Any]) -> dict[str, Any] | None:
    """What to patch when an unfinished CodingJob is deleted and its workspace must be archived
    first: ``None`` when there is nothing to do (never started, already archiving or final)."""
    phase = status.get("phase")
    if phase in (None, Phase.ARCHIVING, Phase.SUCCEEDED, Phase.FAILED):
        return None
    # The agent is stopped by the Archiving phase itself (its pod is deleted first).
    return {
        "phase": Phase.ARCHIVING.value,
        "outcome": Phase.FAILED.value,
        "reason": c.DELETED,
        "message": "the CodingJob was deleted; the workspace is archived before it goes",
    }
