"""Phases, condition types and reasons of a CodingJob, and the function that sets one."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    """The coarse lifecycle state in `kubectl get codingjobs`; conditions carry the details."""

    PENDING = "Pending"
    RUNNING = "Running"
    ARCHIVING = "Archiving"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


# Condition types.
READY = "Ready"  # the agent pod runs and its sidecar is healthy
SUSPENDED = "Suspended"
# Like a Kubernetes Job's: a finished job has exactly one of Succeeded=True or Failed=True, and
# Complete=True only on success, so `kubectl wait --for=condition=Complete` cannot be fooled by a
# failure. The reason of either is the job's final reason.
SUCCEEDED = "Succeeded"
FAILED = "Failed"
COMPLETE = "Complete"
ARCHIVED = "Archived"  # the workspace ZIP is confirmed in object storage
BUDGET_EXCEEDED = "BudgetExceeded"  # the sidecar refused a step: token budget spent
MODEL_DEGRADED = "ModelDegraded"  # model calls keep failing transiently; the sidecar retries

# Reasons (CamelCase, as Kubernetes wants them).
CREATED = "Created"
POD_PENDING = "PodPending"
POD_RUNNING = "PodRunning"
POD_DELETED = "PodDeleted"
POD_LOST = "PodLost"
POD_EVICTED = "PodEvicted"  # evicted (API or node pressure): infrastructure, retried
SUSPENDED_BY_USER = "SuspendedByUser"
RESUMED = "Resumed"
AGENT_TERMINATED = "AgentTerminated"
COMPLETED = "Completed"
AGENT_ERROR = "AgentError"
OOM_KILLED = "OOMKilled"  # the agent container went over its memory limit
DEADLINE_EXCEEDED = "DeadlineExceeded"
DELETED = "Deleted"  # the CodingJob was deleted while the agent ran; archived before it goes
MAX_STEPS_EXCEEDED = "MaxStepsExceeded"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
INVALID_IMAGE = "InvalidImage"
IMAGE_PULL_FAILED = "ImagePullFailed"
CREATE_CONTAINER_FAILED = "CreateContainerFailed"
SIDECAR_FAILED = "SidecarFailed"
MODEL_NOT_CONFIGURED = "ModelNotConfigured"
INVALID_SPEC = "InvalidSpec"
ARCHIVING = "Archiving"
ARCHIVE_CONFIRMED = "ArchiveConfirmed"
ARCHIVE_FAILED = "ArchiveFailed"
ARCHIVE_TOO_LARGE = "ArchiveTooLarge"  # the same string as report.TOO_LARGE (a test pins it)
ARCHIVE_MISMATCH = "ArchiveMismatch"
STORAGE_UNAVAILABLE = "StorageUnavailable"
STORAGE_NOT_CONFIGURED = "StorageNotConfigured"
MODEL_ENDPOINT_UNRESOLVED = "ModelEndpointUnresolved"
TTL_EXPIRED = "TTLExpired"
URL_REFRESHED = "URLRefreshed"
NOT_REQUESTED = "NotRequested"
WITHIN_BUDGET = "WithinBudget"
TOKEN_BUDGET_SPENT = "TokenBudgetSpent"
#: The agent's reason when the sidecar refused a step for the token budget (the same word as
#: the condition type).
TOKEN_BUDGET_REASON = "BudgetExceeded"
CLASS_VIOLATION = "ClassViolation"  # the spec leaves its CodingJobClass's bounds
CLASS_NOT_FOUND = "ClassNotFound"  # spec.className names no class, or no default class
SECRET_NOT_ALLOWED = "SecretNotAllowed"  # apiKeySecretRef without the owner's consent label
NAME_CONFLICT = "NameConflict"  # a child's name is taken by an object this job does not own
STATUS_REJECTED = "StatusRejected"  # the API server refused a status patch
PROVIDER_UNAVAILABLE = "ProviderUnavailable"
PROVIDER_AVAILABLE = "ProviderAvailable"


@dataclass(frozen=True)
class ConditionUpdate:
    """A condition the reconciler wants; :func:`set_condition` fills in the timestamps."""

    type: str
    status: bool
    reason: str
    message: str = ""


def _status_str(value: bool) -> str:
    return "True" if value else "False"


def set_condition(
    conditions: Sequence[dict[str, object]],
    update: ConditionUpdate,
    *,
    now: datetime.datetime,
    generation: int | None,
) -> list[dict[str, object]]:
    """Return ``conditions`` with ``update`` applied; lastTransitionTime moves only when the
    condition's status changes (Kubernetes API conventions)."""
    status = _status_str(update.status)
    result: list[dict[str, object]] = []
    found = False
    for existing in conditions:
        if existing.get("type") != update.type:
            result.append(dict(existing))
            continue
        found = True
        transition = existing.get("lastTransitionTime")
        if existing.get("status") != status or not transition:
            transition = format_time(now)
        result.append(_condition(update, status, transition, generation))
    if not found:
        result.append(_condition(update, status, format_time(now), generation))
    return result


def _condition(
    update: ConditionUpdate, status: str, transition: object, generation: int | None
) -> dict[str, object]:
    condition: dict[str, object] = {
        "type": update.type,
        "status": status,
        "reason": update.reason,
        "message": update.message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def remove_condition(
    conditions: Sequence[dict[str, object]], type_: str
) -> list[dict[str, object]]:
    """Return ``conditions`` without the condition of that type."""
    return [dict(x) for x in conditions if x.get("type") != type_]


def find_condition(conditions: Sequence[dict[str, object]], type_: str) -> dict[str, object] | None:
    """The condition of that type, or None."""
    return next((c for c in conditions if c.get("type") == type_), None)


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes timestamps."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
