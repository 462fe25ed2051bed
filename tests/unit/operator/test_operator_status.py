"""derive_status tables: phase, reason, actions and events from observed children."""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from codingjob_operator import conditions as c
from codingjob_operator.models import CodingJobSpec
from codingjob_operator.report import TOO_LARGE
from codingjob_operator.status import (
    Action,
    ArchiveJobView,
    ContainerView,
    Decision,
    Observation,
    PodView,
    StatsMessage,
    StorageResult,
    StorageState,
    archive_view,
    deletion_patch,
    derive_status,
    fail_now,
    pod_view,
    sidecar_report,
)

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
EARLIER = NOW - datetime.timedelta(minutes=1)
OK_RESULT = json.dumps(
    {
        "outcome": "Succeeded",
        "reason": "Completed",
        "message": "done",
        "steps": 9,
        "tokens": 500,
        "summary": "built",
    }
)
FAILED_RESULT = json.dumps(
    {
        "outcome": "Failed",
        "reason": "MaxStepsExceeded",
        "message": "out of steps",
        "steps": 200,
        "tokens": 9,
    }
)
ARTIFACT = {
    "bucket": "b",
    "key": "ns/j/u/workspace.zip",
    "size": 10,
    "sha256": "ab",
    "files": 2,
    "url": "http://localhost:9000/x",
    "urlExpiresAt": "2026-01-02T12:00:00Z",
}


def spec(**fields: Any) -> CodingJobSpec:
    return CodingJobSpec.model_validate({"task": "t", **fields})


def running_pod() -> PodView:
    return PodView(
        phase="Running",
        created_at=EARLIER,
        started_at=EARLIER,
        agent=ContainerView(running=True),
        sidecar=ContainerView(running=True),
    )


def ended_pod(exit_code: int, result: str | None = None, **pod: Any) -> PodView:
    fields: dict[str, Any] = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "created_at": EARLIER,
    }
    fields.update(pod)
    return PodView(
        **fields, agent=ContainerView(terminated=True, exit_code=exit_code, message=result)
    )


def waiting_pod(reason: str, created: datetime.datetime = EARLIER) -> PodView:
    return PodView(
        phase="Pending",
        created_at=created,
        agent=ContainerView(waiting_reason=reason, waiting_message="details"),
    )


def observe(
    status: dict[str, Any] | None = None, s: CodingJobSpec | None = None, **kw: Any
) -> Observation:
    return Observation(spec=s or spec(), status=status or {}, generation=1, now=NOW, **kw)


def phase_of(decision: Decision, status: dict[str, Any]) -> str | None:
    phase: str | None = decision.patch.get("phase", status.get("phase"))
    return phase


# (id, status before, spec, observation extras, phase after, reason after, actions)
TABLE: list[
    tuple[str, dict[str, Any], CodingJobSpec, dict[str, Any], str, str | None, list[Action]]
] = [
    ("new job creates children", {}, spec(), {}, "Pending", None, [Action.ENSURE_CHILDREN]),
    (
        "pod pending",
        {"phase": "Pending"},
        spec(),
        {"pod": PodView(phase="Pending", created_at=EARLIER)},
        "Pending",
        None,
        [],
    ),
    ("agent running", {"phase": "Pending"}, spec(), {"pod": running_pod()}, "Running", None, []),
    (
        "agent succeeded -> archiving",
        {"phase": "Running"},
        spec(),
        {"pod": ended_pod(0, OK_RESULT)},
        "Archiving",
        "Completed",
        [Action.DELETE_POD],
    ),
    (
        "agent failed, upload on failure -> archiving",
        {"phase": "Running"},
        spec(),
        {"pod": ended_pod(1, FAILED_RESULT)},
        "Archiving",
        "MaxStepsExceeded",
        [Action.DELETE_POD],
    ),
    (
        "agent failed, no upload -> failed",
        {"phase": "Running"},
        spec(artifacts={"uploadOnFailure": False}),
        {"pod": ended_pod(1, FAILED_RESULT)},
        "Failed",
        "MaxStepsExceeded",
        [Action.DELETE_POD],
    ),
    (
        "crash without result -> AgentError",
        {"phase": "Running"},
        spec(artifacts={"uploadOnFailure": False}),
        {"pod": ended_pod(2, "Traceback: boom")},
        "Failed",
        "AgentError",
        [Action.DELETE_POD],
    ),
    (
        # Not a success: the contract is exit 0 and a result (a bare image's shell exits 0).
        "exit 0 without result -> AgentError",
        {"phase": "Running"},
        spec(),
        {"pod": ended_pod(0)},
        "Archiving",
        "AgentError",
        [Action.DELETE_POD],
    ),
    (
        # The flaky case of a bare image: its shell exits 0 before the sidecar's StartError is
        # reported. Undecided until the pod is final, then the sidecar's problem is seen.
        "exit 0 without result, sidecar not reported yet -> wait",
        {"phase": "Running"},
        spec(),
        {
            "pod": PodView(
                phase="Running",
                created_at=EARLIER,
                agent=ContainerView(terminated=True, exit_code=0),
                sidecar=ContainerView(waiting_reason="PodInitializing"),
            )
        },
        "Running",
        None,
        [],
    ),
    (
        "exit 0 without result, sidecar StartError -> CreateContainerFailed",
        {"phase": "Running"},
        spec(),
        {
            "pod": PodView(
                phase="Succeeded",
                created_at=EARLIER,
                agent=ContainerView(terminated=True, exit_code=0),
                sidecar=ContainerView(terminated=True, exit_code=128, reason="StartError"),
            )
        },
        "Failed",
        "CreateContainerFailed",
        [Action.DELETE_POD],
    ),
    (
        "OOM-killed agent -> OOMKilled, archived",
        {"phase": "Running"},
        spec(),
        {
            "pod": PodView(
                phase="Failed",
                created_at=EARLIER,
                agent=ContainerView(terminated=True, exit_code=137, reason="OOMKilled"),
            )
        },
        "Archiving",
        "OOMKilled",
        [Action.DELETE_POD],
    ),
    (
        # agent_start.sh writes AgentError after the kill; the container's reason says why.
        "OOM-killed agent with its entry script's result -> OOMKilled",
        {"phase": "Running"},
        spec(),
        {
            "pod": PodView(
                phase="Failed",
                created_at=EARLIER,
                agent=ContainerView(
                    terminated=True,
                    exit_code=137,
                    reason="OOMKilled",
                    message=json.dumps(
                        {"outcome": "Failed", "reason": "AgentError", "message": "exit 137"}
                    ),
                ),
            )
        },
        "Archiving",
        "OOMKilled",
        [Action.DELETE_POD],
    ),
    (
        # A tool's child was OOM-killed (the runtime keeps the reason) but the agent succeeded.
        "OOM in a child of a successful agent -> Completed",
        {"phase": "Running"},
        spec(),
        {
            "pod": PodView(
                phase="Succeeded",
                created_at=EARLIER,
                agent=ContainerView(
                    terminated=True, exit_code=0, reason="OOMKilled", message=OK_RESULT
                ),
            )
        },
        "Archiving",
        "Completed",
        [Action.DELETE_POD],
    ),
    (
        # The kubelet killed the agent under node pressure: exit 137, no result. Infrastructure.
        "kubelet eviction with a killed agent -> recreate, not AgentError",
        {"phase": "Running"},
        spec(),
        {"pod": ended_pod(137, None, reason="Evicted", message="The node was low on memory.")},
        "Pending",
        None,  # status.reason is the job's final reason; the Ready condition says PodEvicted
        [Action.DELETE_POD],
    ),
    (
        "kubelet eviction after the agent succeeded -> its success counts",
        {"phase": "Running"},
        spec(),
        {"pod": ended_pod(0, OK_RESULT, reason="Evicted")},
        "Archiving",
        "Completed",
        [Action.DELETE_POD],
    ),
    (
        # The Eviction API: the pod is deleted gracefully, the agent writes Failed/Terminated.
        "API eviction while running -> counted once, recreated when gone",
        {"phase": "Running"},
        spec(),
        {
            "pod": ended_pod(
                143,
                json.dumps({"outcome": "Failed", "reason": "Terminated", "message": "SIGTERM"}),
                deleting=True,
                disruption="EvictionByEvictionAPI: Eviction API: evicting",
            )
        },
        "Pending",
        None,  # status.reason is the job's final reason; the Ready condition says PodEvicted
        [Action.DELETE_POD],  # already on its way out: a no-op
    ),
    (
        "API eviction already counted -> wait for the pod to go",
        {"phase": "Pending", "podFailures": 1},
        spec(),
        {"pod": ended_pod(143, None, deleting=True, disruption="EvictionByEvictionAPI: x")},
        "Pending",
        None,
        [],
    ),
    (
        "workspace PVC gone while archiving -> ArchiveFailed",
        {"phase": "Archiving", "outcome": "Succeeded", "reason": "Completed"},
        spec(),
        {"workspace_gone": "the workspace PersistentVolumeClaim x is gone"},
        "Failed",
        "ArchiveFailed",
        [],
    ),
    (
        "workspace PVC gone under a waiting archiver -> ArchiveFailed, Job deleted",
        {"phase": "Archiving", "outcome": "Succeeded", "reason": "Completed"},
        spec(),
        {"workspace_gone": "gone", "archive": ArchiveJobView()},
        "Failed",
        "ArchiveFailed",
        [Action.DELETE_ARCHIVE_JOB],
    ),
    (
        "deadline exceeded -> archived failure",
        {"phase": "Running"},
        spec(),
        {"pod": ended_pod(137, None, reason="DeadlineExceeded", message="Pod was active too long")},
        "Archiving",
        "DeadlineExceeded",
        [Action.DELETE_POD],
    ),
    (
        "deadline exceeded, no upload",
        {"phase": "Running"},
        spec(artifacts={"uploadOnFailure": False}),
        {
            "pod": PodView(
                phase="Failed",
                created_at=EARLIER,
                reason="DeadlineExceeded",
                agent=ContainerView(running=True),
            )
        },
        "Failed",
        "DeadlineExceeded",
        [Action.DELETE_POD],
    ),
    (
        "evicted -> recreate",
        {"phase": "Running"},
        spec(),
        {"pod": PodView(phase="Failed", created_at=EARLIER, reason="Evicted")},
        "Pending",
        None,
        [Action.DELETE_POD],
    ),
    (
        "evicted past backoff limit",
        {"phase": "Running", "podFailures": 2},
        spec(),
        {"pod": PodView(phase="Failed", created_at=EARLIER, reason="Evicted")},
        "Failed",
        "BackoffLimitExceeded",
        [Action.DELETE_POD],
    ),
    ("running pod vanished -> recreate", {"phase": "Running"}, spec(), {}, "Pending", None, []),
    (
        "vanished with backoffLimit 0",
        {"phase": "Running"},
        spec(backoffLimit=0),
        {},
        "Failed",
        "BackoffLimitExceeded",
        [],
    ),
    (
        "missing secret",
        {},
        spec(),
        {"semantic_error": ("SecretNotFound", "Secret 'openai' not found")},
        "Failed",
        "SecretNotFound",
        [],
    ),
    (
        "invalid image name",
        {"phase": "Pending"},
        spec(),
        {"pod": waiting_pod("InvalidImageName")},
        "Failed",
        "InvalidImage",
        [Action.DELETE_POD],
    ),
    (
        "missing secret key at container creation",
        {"phase": "Pending"},
        spec(),
        {"pod": waiting_pod("CreateContainerConfigError")},
        "Failed",
        "CreateContainerFailed",
        [Action.DELETE_POD],
    ),
    (
        "sidecar command missing",
        {"phase": "Pending"},
        spec(),
        {
            "pod": PodView(
                phase="Pending",
                created_at=EARLIER,
                sidecar=ContainerView(
                    waiting_reason="CrashLoopBackOff",
                    restart_count=1,
                    last_reason="StartError",
                    last_message='exec: "codingjob-context-manager": executable file not found',
                ),
            )
        },
        "Failed",
        "CreateContainerFailed",
        [Action.DELETE_POD],
    ),
    (
        "sidecar crash looping",
        {"phase": "Pending"},
        spec(),
        {
            "pod": PodView(
                phase="Pending",
                created_at=EARLIER,
                sidecar=ContainerView(
                    waiting_reason="CrashLoopBackOff", restart_count=3, last_reason="Error"
                ),
            )
        },
        "Failed",
        "SidecarFailed",
        [Action.DELETE_POD],
    ),
    (
        "sidecar restarted once",
        {"phase": "Pending"},
        spec(),
        {
            "pod": PodView(
                phase="Pending",
                created_at=EARLIER,
                sidecar=ContainerView(running=True, restart_count=1, last_reason="Error"),
            )
        },
        "Pending",
        None,
        [],
    ),
    (
        "agent command missing",
        {"phase": "Running"},
        spec(),
        {
            "pod": PodView(
                phase="Failed",
                created_at=EARLIER,
                agent=ContainerView(
                    terminated=True, exit_code=128, reason="StartError", message="not found"
                ),
            )
        },
        "Failed",
        "CreateContainerFailed",
        [Action.DELETE_POD],
    ),
    (
        "image pull backoff, young",
        {"phase": "Pending"},
        spec(),
        {"pod": waiting_pod("ImagePullBackOff")},
        "Pending",
        None,
        [],
    ),
    (
        "image pull backoff, old",
        {"phase": "Pending"},
        spec(),
        {"pod": waiting_pod("ImagePullBackOff", NOW - datetime.timedelta(minutes=10))},
        "Failed",
        "ImagePullFailed",
        [Action.DELETE_POD],
    ),
    (
        "suspend deletes the pod",
        {"phase": "Running"},
        spec(suspend=True),
        {"pod": running_pod()},
        "Suspended",
        None,
        [Action.DELETE_POD],
    ),
    ("suspended stays", {"phase": "Suspended"}, spec(suspend=True), {}, "Suspended", None, []),
    ("new job created suspended", {}, spec(suspend=True), {}, "Suspended", None, []),
    (
        "resume recreates",
        {"phase": "Suspended"},
        spec(),
        {},
        "Pending",
        None,
        [Action.ENSURE_CHILDREN],
    ),
    (
        "finished agent wins over suspend",
        {"phase": "Running"},
        spec(suspend=True),
        {"pod": ended_pod(0, OK_RESULT)},
        "Archiving",
        "Completed",
        [Action.DELETE_POD],
    ),
    (
        "suspended pod terminating: killed agent is not an outcome",
        {"phase": "Suspended"},
        spec(suspend=True),
        {"pod": ended_pod(143, None, deleting=True)},
        "Suspended",
        None,
        [],
    ),
    (
        "resumed while the old pod terminates: wait",
        {"phase": "Suspended"},
        spec(),
        {"pod": ended_pod(143, None, deleting=True)},
        "Suspended",
        None,
        [],
    ),
    (
        "evicted through the API: wait for the pod to go",
        {"phase": "Running"},
        spec(),
        {"pod": ended_pod(143, None, deleting=True)},
        "Running",
        None,
        [],
    ),
    (
        "finished just before deletion counts",
        {"phase": "Running"},
        spec(),
        {"pod": ended_pod(0, OK_RESULT, deleting=True)},
        "Archiving",
        "Completed",
        [Action.DELETE_POD],
    ),
    # Archiving.
    (
        "archiving waits for the pod to go",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {"pod": ended_pod(0, OK_RESULT)},
        "Archiving",
        None,
        [Action.DELETE_POD],
    ),
    (
        "archiving checks storage",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {},
        "Archiving",
        None,
        [Action.CHECK_STORAGE],
    ),
    (
        "storage ok -> start archiver",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {"storage": StorageResult(StorageState.OK)},
        "Archiving",
        None,
        [Action.START_ARCHIVE],
    ),
    (
        "storage down -> stay",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {"storage": StorageResult(StorageState.TRANSIENT, "connection refused")},
        "Archiving",
        None,
        [],
    ),
    (
        "storage denied -> failed",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {"storage": StorageResult(StorageState.PERMANENT, "AccessDenied")},
        "Failed",
        "ArchiveFailed",
        [],
    ),
    (
        "no storage configured -> agent outcome, PVC kept",
        {"phase": "Archiving", "outcome": "Succeeded", "reason": "Completed"},
        spec(),
        {"storage": StorageResult(StorageState.NOT_CONFIGURED, "not configured")},
        "Succeeded",
        "Completed",
        [],
    ),
    (
        "archiver running",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {"archive": ArchiveJobView()},
        "Archiving",
        None,
        [],
    ),
    (
        "archiver done -> confirm",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {"archive": ArchiveJobView(succeeded=True)},
        "Archiving",
        None,
        [Action.CONFIRM_ARCHIVE],
    ),
    (
        "confirmed -> agent's success, cleanup",
        {"phase": "Archiving", "outcome": "Succeeded", "reason": "Completed"},
        spec(),
        {
            "archive": ArchiveJobView(succeeded=True),
            "storage": StorageResult(StorageState.OK, artifact=ARTIFACT),
        },
        "Succeeded",
        "Completed",
        [Action.CLEANUP],
    ),
    (
        "confirmed -> agent's failure, cleanup",
        {"phase": "Archiving", "outcome": "Failed", "reason": "DeadlineExceeded"},
        spec(),
        {
            "archive": ArchiveJobView(succeeded=True),
            "storage": StorageResult(StorageState.OK, artifact=ARTIFACT),
        },
        "Failed",
        "DeadlineExceeded",
        [Action.CLEANUP],
    ),
    (
        "size mismatch -> retry archiver",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {
            "archive": ArchiveJobView(succeeded=True),
            "storage": StorageResult(StorageState.MISMATCH, "size"),
        },
        "Archiving",
        None,
        [Action.DELETE_ARCHIVE_JOB],
    ),
    (
        "archiver permanent error -> failed",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {
            "archive": ArchiveJobView(
                failed=True, termination_message='{"error": "AccessDenied", "permanent": true}'
            )
        },
        "Failed",
        "ArchiveFailed",
        [],
    ),
    (
        "archiver crashed -> retry",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {"archive": ArchiveJobView(failed=True, termination_message="OOMKilled")},
        "Archiving",
        None,
        [Action.DELETE_ARCHIVE_JOB],
    ),
    (
        "archive too large -> failed with its own reason, PVC kept",
        {"phase": "Archiving", "outcome": "Succeeded", "archiveAttempts": 1},
        spec(),
        {
            "archive": ArchiveJobView(
                failed=True,
                termination_message='{"error": "exceeds 10 bytes", "permanent": true, '
                '"reason": "ArchiveTooLarge"}',
            )
        },
        "Failed",
        "ArchiveTooLarge",
        [],
    ),
    (
        "archiver failed on its last attempt -> failed, PVC kept",
        {"phase": "Archiving", "outcome": "Succeeded", "archiveAttempts": 3},
        spec(),
        {
            "archive": ArchiveJobView(
                failed=True, job_failure="DeadlineExceeded: Job was active longer than specified"
            )
        },
        "Failed",
        "ArchiveFailed",
        [],
    ),
    (
        "mismatch on the last attempt -> failed, PVC kept",
        {"phase": "Archiving", "outcome": "Succeeded", "archiveAttempts": 3},
        spec(),
        {
            "archive": ArchiveJobView(succeeded=True),
            "storage": StorageResult(StorageState.MISMATCH, "size"),
        },
        "Failed",
        "ArchiveFailed",
        [],
    ),
    (
        "archiver transient error -> retry",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(),
        {
            "archive": ArchiveJobView(
                failed=True, termination_message='{"error": "timeout", "permanent": false}'
            )
        },
        "Archiving",
        None,
        [Action.DELETE_ARCHIVE_JOB],
    ),
    (
        "suspend is ignored while archiving",
        {"phase": "Archiving", "outcome": "Succeeded"},
        spec(suspend=True),
        {"archive": ArchiveJobView()},
        "Archiving",
        None,
        [],
    ),
    # Finished.
    (
        "finished stays, leftover pod deleted",
        {"phase": "Failed"},
        spec(),
        {"pod": ended_pod(1)},
        "Failed",
        None,
        [Action.DELETE_POD],
    ),
    (
        "succeeded with artifact finishes cleanup",
        {"phase": "Succeeded", "artifact": ARTIFACT},
        spec(),
        {},
        "Succeeded",
        None,
        [Action.CLEANUP],
    ),
]


@pytest.mark.parametrize(
    ("before", "s", "extra", "phase", "reason", "actions"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_derive_status(
    before: dict[str, Any],
    s: CodingJobSpec,
    extra: dict[str, Any],
    phase: str,
    reason: str | None,
    actions: list[Action],
) -> None:
    decision = derive_status(observe(before, s, **extra))
    assert phase_of(decision, before) == phase
    if reason is not None:
        assert decision.patch.get("reason", before.get("reason")) == reason
    assert decision.actions == actions
    if phase in ("Succeeded", "Failed") and before.get("phase") not in ("Succeeded", "Failed"):
        assert decision.patch["completionTime"] == "2026-01-01T12:00:00Z"
        assert terminal_conditions(decision.patch["conditions"]) == (
            {c.SUCCEEDED: "True", c.COMPLETE: "True"}
            if phase == "Succeeded"
            else {c.FAILED: "True"}
        )
        final = c.find_condition(decision.patch["conditions"], phase)
        assert final is not None
        assert final["reason"] == decision.patch.get("reason", before.get("reason"))


def terminal_conditions(conditions: list[dict[str, Any]]) -> dict[str, object]:
    """The Job-like end conditions present, by type."""
    ends = (c.SUCCEEDED, c.FAILED, c.COMPLETE)
    return {x["type"]: x["status"] for x in conditions if x["type"] in ends}


def test_conditions_have_one_entry_per_type_in_every_table_row() -> None:
    # The CRD declares conditions a list map keyed by type: duplicates would be refused.
    for _, before, s, extra, *_ in TABLE:
        conditions = derive_status(observe(before, s, **extra)).patch.get("conditions", [])
        types = [x["type"] for x in conditions]
        assert len(types) == len(set(types))


@pytest.mark.parametrize(
    ("phase", "reason", "expected"),
    [
        ("Succeeded", "Completed", {c.SUCCEEDED: "True", c.COMPLETE: "True"}),
        ("Failed", "AgentError", {c.FAILED: "True"}),
    ],
)
def test_jobs_finished_by_an_older_operator_get_their_end_condition(
    phase: str, reason: str, expected: dict[str, str]
) -> None:
    # Before Succeeded/Failed existed, Complete=True was set either way.
    old = {
        "type": c.COMPLETE,
        "status": "True",
        "reason": reason,
        "message": "",
        "lastTransitionTime": "2025-12-31T00:00:00Z",
    }
    status = {"phase": phase, "reason": reason, "conditions": [old]}
    decision = derive_status(observe(status))
    assert terminal_conditions(decision.patch["conditions"]) == expected
    again = {**status, **decision.patch}
    assert "conditions" not in derive_status(observe(again)).patch


def test_phase_change_posts_one_event() -> None:
    decision = derive_status(observe({"phase": "Pending"}, pod=running_pod()))
    assert [(e.type, e.reason) for e in decision.events] == [("Normal", "PodRunning")]
    again = derive_status(observe({**decision.patch, "phase": "Running"}, pod=running_pod()))
    assert again.events == []


def test_failures_post_warnings_naming_the_problem() -> None:
    decision = derive_status(
        observe({}, semantic_error=("SecretNotFound", "Secret 'openai' not found in namespace 'a'"))
    )
    warnings = [e for e in decision.events if e.type == "Warning"]
    assert [(e.reason, e.message) for e in warnings] == [
        ("SecretNotFound", "Failed: SecretNotFound: Secret 'openai' not found in namespace 'a'")
    ]
    assert decision.patch["message"] == "Secret 'openai' not found in namespace 'a'"


def test_steady_state_patches_nothing() -> None:
    first = derive_status(observe({"phase": "Pending"}, pod=running_pod()))
    status = {"phase": "Pending", **first.patch}
    assert derive_status(observe(status, pod=running_pod())).patch == {}


def test_condition_transition_time_moves_only_on_status_change() -> None:
    status = {
        "phase": "Pending",
        **derive_status(observe({"phase": "Pending"}, pod=running_pod())).patch,
    }
    later = Observation(
        spec=spec(),
        status=status,
        generation=1,
        now=NOW + datetime.timedelta(hours=1),
        pod=running_pod(),
    )
    assert "conditions" not in derive_status(later).patch
    suspended = Observation(
        spec=spec(suspend=True),
        status=status,
        generation=2,
        now=NOW + datetime.timedelta(hours=1),
        pod=running_pod(),
    )
    ready = c.find_condition(derive_status(suspended).patch["conditions"], c.READY)
    assert ready is not None and ready["status"] == "False"
    assert ready["lastTransitionTime"] == "2026-01-01T13:00:00Z"


def test_stats_fill_steps_tokens_and_budget_condition() -> None:
    stats = StatsMessage.model_validate(
        {
            "steps": 4,
            "tokens": {"used": 900, "limit": 1000, "pruned": 12, "window": 5},
            "budgetExceeded": True,
            "lastError": "budget spent",
        }
    )
    decision = derive_status(observe({"phase": "Running"}, pod=running_pod(), stats=stats))
    assert decision.patch["steps"] == 4
    assert decision.patch["tokens"] == {"used": 900, "limit": 1000, "pruned": 12}
    budget = c.find_condition(decision.patch["conditions"], c.BUDGET_EXCEEDED)
    assert budget is not None and budget["status"] == "True"


def test_agent_result_lands_in_status() -> None:
    decision = derive_status(observe({"phase": "Running"}, pod=ended_pod(0, OK_RESULT)))
    assert decision.patch["outcome"] == "Succeeded"
    assert decision.patch["summary"] == "built"
    # The agent's own counts are never taken (see test_operator_status_forgery.py).
    assert "steps" not in decision.patch and "tokens" not in decision.patch


def test_confirmed_archive_sets_artifact_and_url() -> None:
    decision = derive_status(
        observe(
            {"phase": "Archiving", "outcome": "Succeeded", "reason": "Completed"},
            archive=ArchiveJobView(succeeded=True),
            storage=StorageResult(StorageState.OK, artifact=ARTIFACT),
        )
    )
    assert decision.patch["artifact"] == ARTIFACT
    assert decision.patch["downloadURL"] == ARTIFACT["url"]
    archived = c.find_condition(decision.patch["conditions"], c.ARCHIVED)
    assert archived is not None and archived["status"] == "True"


def test_archive_attempts_count() -> None:
    decision = derive_status(
        observe(
            {"phase": "Archiving", "outcome": "Succeeded", "archiveAttempts": 2},
            storage=StorageResult(StorageState.OK),
        )
    )
    assert decision.patch["archiveAttempts"] == 3


def test_the_last_attempt_says_why_it_failed() -> None:
    obs = observe(
        {"phase": "Archiving", "outcome": "Succeeded", "archiveAttempts": 2},
        archive=ArchiveJobView(
            failed=True, job_failure="DeadlineExceeded: Job was active longer than specified"
        ),
        archive_max_attempts=2,
    )
    decision = derive_status(obs)
    assert decision.patch["phase"] == "Failed"
    assert decision.patch["message"] == (
        "archiving failed 2 times; last: DeadlineExceeded: Job was active longer than specified"
    )
    assert Action.CLEANUP not in decision.actions


def test_too_large_is_the_same_reason_on_both_sides() -> None:
    assert c.ARCHIVE_TOO_LARGE == TOO_LARGE


def test_archive_view_reads_the_jobs_failure() -> None:
    job = {
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "late",
                }
            ]
        }
    }
    view = archive_view(job, [])
    assert view.failed
    assert view.job_failure == "DeadlineExceeded: late"


def test_storage_outage_warns_once() -> None:
    status = {"phase": "Archiving", "outcome": "Succeeded"}
    down = StorageResult(StorageState.TRANSIENT, "connection refused")
    first = derive_status(observe(status, storage=down))
    assert [e.reason for e in first.events] == ["StorageUnavailable"]
    second = derive_status(observe({**status, **first.patch}, storage=down))
    assert second.events == [] and second.patch == {}


POD = {
    "metadata": {"name": "j-agent", "creationTimestamp": "2026-01-01T11:59:00Z"},
    "status": {
        "phase": "Failed",
        "reason": "DeadlineExceeded",
        "startTime": "2026-01-01T11:59:01Z",
        "initContainerStatuses": [{"name": "context-manager", "state": {"running": {}}}],
        "containerStatuses": [
            {
                "name": "agent",
                "state": {"terminated": {"exitCode": 137, "reason": "Error", "message": "x"}},
            }
        ],
    },
}


def test_eviction_reason_and_count_reach_the_status() -> None:
    before = {"phase": "Running", "podFailures": 0}
    pod = ended_pod(137, None, deleting=True, disruption="EvictionByEvictionAPI: evicting")
    decision = derive_status(observe(before, pod=pod))
    assert decision.patch["podFailures"] == 1
    ready = c.find_condition(decision.patch["conditions"], c.READY)
    assert ready is not None and ready["reason"] == c.POD_EVICTED
    assert "evicted: EvictionByEvictionAPI" in str(ready["message"])
    assert [e.reason for e in decision.events] == [c.POD_EVICTED, c.POD_EVICTED]
    assert "outcome" not in decision.patch  # not the agent's failure


def test_eviction_past_the_backoff_limit_says_eviction() -> None:
    pod = ended_pod(137, None, reason="Evicted", message="The node was low on memory.")
    decision = derive_status(observe({"phase": "Running", "podFailures": 2}, pod=pod))
    assert decision.patch["reason"] == c.BACKOFF_LIMIT_EXCEEDED
    assert "Evicted: The node was low on memory." in decision.patch["message"]


def test_an_agent_that_ran_and_was_lost_past_the_backoff_limit_is_archived() -> None:
    pod = ended_pod(137, None, reason="Evicted", message="ephemeral local storage")
    before = {"phase": "Running", "startTime": "2026-01-01T11:00:00Z", "podFailures": 2}
    decision = derive_status(observe(before, pod=pod))
    assert decision.patch["phase"] == "Archiving"
    assert (decision.patch["outcome"], decision.patch["reason"]) == (
        "Failed",
        c.BACKOFF_LIMIT_EXCEEDED,
    )
    assert decision.actions == [Action.DELETE_POD]
    archived = c.find_condition(decision.patch["conditions"], c.ARCHIVED)
    assert archived is not None and archived["reason"] == c.ARCHIVING
    assert "completionTime" not in decision.patch  # the archive ends the job


def test_exit_0_without_result_names_a_broken_sidecar() -> None:
    pod = PodView(
        phase="Succeeded",
        created_at=EARLIER,
        agent=ContainerView(terminated=True, exit_code=0),
        sidecar=ContainerView(
            waiting_reason="CrashLoopBackOff", last_reason="Error", restart_count=1
        ),
    )
    decision = derive_status(observe({"phase": "Running"}, pod=pod))
    assert decision.patch["outcome"] == "Failed"
    assert "without writing its result" in decision.patch["message"]
    assert "context-manager: CrashLoopBackOff" in decision.patch["message"]


def test_exit_0_without_result_and_a_sidecar_that_says_nothing() -> None:
    pod = PodView(
        phase="Succeeded",
        created_at=EARLIER,
        agent=ContainerView(terminated=True, exit_code=0),
        sidecar=ContainerView(),
    )
    decision = derive_status(observe({"phase": "Running"}, pod=pod))
    assert decision.patch["message"] == (
        "agent exited with code 0 without writing its result; "
        "container context-manager: not running"
    )


@pytest.mark.parametrize(
    ("reason", "message", "expected"),
    [
        ("Error", None, "agent exited with code 2"),
        ("ContainerStatusUnknown", None, "agent exited with code 2 (ContainerStatusUnknown)"),
        ("Error", "no such file", "agent exited with code 2: no such file"),
    ],
)
def test_an_exit_without_result_names_the_code_the_container_reason_and_its_message(
    reason: str, message: str | None, expected: str
) -> None:
    pod = PodView(
        phase="Failed",
        created_at=EARLIER,
        agent=ContainerView(terminated=True, exit_code=2, reason=reason, message=message),
    )
    decision = derive_status(observe({"phase": "Running"}, pod=pod))
    assert (decision.patch["reason"], decision.patch["message"]) == (c.AGENT_ERROR, expected)


def test_the_deadline_does_not_wait_for_the_sidecars_counts() -> None:
    # The kubelet kills both containers at the deadline; the job ends at once, with the
    # deadline's own reason and message.
    pod = PodView(
        phase="Running",
        reason="DeadlineExceeded",
        message="Pod was active on the node longer than the specified deadline",
        created_at=EARLIER,
        agent=ContainerView(terminated=True, exit_code=137),
        sidecar=ContainerView(running=True),
    )
    decision = derive_status(observe({"phase": "Running"}, pod=pod))
    assert decision.patch["reason"] == c.DEADLINE_EXCEEDED
    assert decision.patch["message"] == pod.message
    assert Action.DELETE_POD in decision.actions
    ready = c.find_condition(decision.patch["conditions"], c.READY)
    assert ready is not None and ready["reason"] == c.AGENT_TERMINATED


def test_failing_at_once_with_an_archive_problem_explains_it_in_the_archived_condition() -> None:
    decision = fail_now(
        observe({"phase": "Running"}),
        c.ARCHIVE_FAILED,
        "no archiver credentials: AccessDenied",
        archived="no archiver credentials: AccessDenied",
    )
    assert decision.patch["phase"] == "Failed"
    archived = c.find_condition(decision.patch["conditions"], c.ARCHIVED)
    assert archived is not None
    assert (archived["status"], archived["reason"], archived["message"]) == (
        "False",
        c.ARCHIVE_FAILED,
        "no archiver credentials: AccessDenied",
    )


def test_pod_view_reads_the_disruption_target() -> None:
    raw = {
        "metadata": {"creationTimestamp": "2026-01-01T11:59:00Z"},
        "status": {
            "phase": "Running",
            "conditions": [
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "TerminationByKubelet",
                    "message": "The node was low on resource: memory.",
                }
            ],
        },
    }
    view = pod_view(raw)
    assert view.disruption == "TerminationByKubelet: The node was low on resource: memory."
    del raw["status"]["conditions"][0]["message"]
    assert pod_view(raw).disruption == "TerminationByKubelet"
    raw["status"]["conditions"][0]["status"] = "False"
    assert pod_view(raw).disruption is None


def test_pod_view() -> None:
    view = pod_view(POD)
    assert view.phase == "Failed" and view.reason == "DeadlineExceeded"
    assert view.created_at == EARLIER
    assert view.agent == ContainerView(terminated=True, exit_code=137, reason="Error", message="x")
    assert view.sidecar is not None and view.sidecar.running


def test_a_new_pod_is_pending_and_ready_only_by_its_ready_condition() -> None:
    fresh = pod_view({"metadata": {"creationTimestamp": "2026-01-01T11:59:00Z"}})
    assert (fresh.phase, fresh.ready) == ("Pending", False)
    conditions = [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Ready", "status": "False"},
    ]
    running = {"metadata": {}, "status": {"phase": "Running", "conditions": conditions}}
    assert pod_view(running).ready is False
    conditions[1]["status"] = "True"
    assert pod_view(running).ready is True


def test_the_sidecar_report_falls_back_to_the_previous_termination() -> None:
    report = json.dumps({"steps": 7})
    pod = PodView(
        phase="Running",
        created_at=EARLIER,
        sidecar=ContainerView(terminated=True, message="not json", last_message=report),
    )
    found = sidecar_report(pod)
    assert found is not None and found.steps == 7


@pytest.mark.parametrize(
    "sidecar",
    [
        # Restarted and running again: only the termination before holds counts.
        ContainerView(running=True, restart_count=1, last_message=json.dumps({"steps": 7})),
        # Terminated again before writing its message.
        ContainerView(terminated=True, message="", last_message=json.dumps({"steps": 7})),
    ],
)
def test_a_restarted_sidecar_without_a_message_yet_reports_its_previous_termination(
    sidecar: ContainerView,
) -> None:
    pod = PodView(phase="Running", created_at=EARLIER, sidecar=sidecar)
    found = sidecar_report(pod)
    assert found is not None and found.steps == 7


def test_archive_view_takes_the_newest_pod() -> None:
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}

    def pod(created: str, message: str) -> dict[str, Any]:
        return {
            "metadata": {"creationTimestamp": created},
            "status": {
                "containerStatuses": [
                    {
                        "name": "archiver",
                        "state": {"terminated": {"exitCode": 0, "message": message}},
                    }
                ]
            },
        }

    view = archive_view(
        job, [pod("2026-01-01T12:00:00Z", "new"), pod("2026-01-01T11:00:00Z", "old")]
    )
    assert view == ArchiveJobView(succeeded=True, termination_message="new")


def test_archive_view_explains_the_newest_waiting_pod() -> None:
    def pod(created: str, reason: str) -> dict[str, Any]:
        waiting = {"reason": reason, "message": "details"}
        return {
            "metadata": {"creationTimestamp": created},
            "status": {"containerStatuses": [{"name": "archiver", "state": {"waiting": waiting}}]},
        }

    newest_first = [pod("2026-01-01T12:00:00Z", "ErrImagePull"), pod("2026-01-01T11:00:00Z", "Old")]
    assert archive_view({}, newest_first).waiting == "ErrImagePull: details"
    assert archive_view({}, newest_first[::-1]).waiting == "ErrImagePull: details"


def test_archiver_that_cannot_start_is_explained() -> None:
    job: dict[str, Any] = {"status": {}}
    pod = {
        "metadata": {"creationTimestamp": "2026-01-01T12:00:00Z"},
        "status": {
            "containerStatuses": [
                {
                    "name": "archiver",
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}},
                }
            ]
        },
    }
    view = archive_view(job, [pod])
    assert view == ArchiveJobView(waiting="ErrImagePull: not found")
    decision = derive_status(observe({"phase": "Archiving", "outcome": "Succeeded"}, archive=view))
    assert "phase" not in decision.patch
    archived = c.find_condition(decision.patch["conditions"], c.ARCHIVED)
    assert (
        archived is not None
        and archived["message"] == "archiver pod waiting: ErrImagePull: not found"
    )


def test_relay_usage_and_model_degraded_reach_status() -> None:
    stats = StatsMessage.model_validate(
        {
            "steps": 2,
            "tokens": {
                "used": 90,
                "limit": 1000,
                "pruned": 0,
                "prompt": 70,
                "completion": 20,
                "cached": 10,
                "costUSD": 0.00123456789,
            },
            "modelDegraded": "model provider refused the request: provider unavailable",
        }
    )
    decision = derive_status(observe({"phase": "Running"}, pod=running_pod(), stats=stats))
    assert decision.patch["tokens"] == {
        "used": 90,
        "limit": 1000,
        "pruned": 0,
        "prompt": 70,
        "completion": 20,
        "cached": 10,
        "costUSD": 0.001235,
    }
    degraded = c.find_condition(decision.patch["conditions"], c.MODEL_DEGRADED)
    assert degraded is not None and degraded["status"] == "True"
    assert degraded["reason"] == c.PROVIDER_UNAVAILABLE
    recovered = derive_status(
        observe(
            {"phase": "Running", "conditions": decision.patch["conditions"]},
            pod=running_pod(),
            stats=StatsMessage.model_validate({"steps": 3}),
        )
    )
    back = c.find_condition(recovered.patch["conditions"], c.MODEL_DEGRADED)
    assert back is not None and back["status"] == "False"
    assert back["reason"] == c.PROVIDER_AVAILABLE


@pytest.mark.parametrize(
    ("phase", "archives"),
    [
        (None, False),  # never started: nothing to archive
        ("Pending", True),
        ("Running", True),
        ("Suspended", True),
        ("Archiving", False),  # already on its way
        ("Succeeded", False),
        ("Failed", False),
    ],
)
def test_deleting_an_unfinished_job_archives_it_first(phase: str | None, archives: bool) -> None:
    patch = deletion_patch({"phase": phase} if phase else {})
    assert (patch is not None) == archives
    if patch is not None:
        assert patch["phase"] == "Archiving"
        assert patch["reason"] == c.DELETED
        # The Archiving phase stops the agent first: its pod is deleted before the archiver runs.
        after = derive_status(observe(patch, pod=running_pod()))
        assert after.actions == [Action.DELETE_POD]


# set_condition on its own: the Kubernetes API conventions for one condition list.
T0 = "2026-01-01T11:00:00Z"


def test_a_new_condition_is_appended_with_the_time_and_generation() -> None:
    other = {"type": c.READY, "status": "True", "reason": c.POD_RUNNING, "message": ""}
    update = c.ConditionUpdate(c.ARCHIVED, True, c.ARCHIVE_CONFIRMED, "in storage")
    result = c.set_condition([other], update, now=NOW, generation=4)
    assert result == [
        other,
        {
            "type": "Archived",
            "status": "True",
            "reason": "ArchiveConfirmed",
            "message": "in storage",
            "lastTransitionTime": "2026-01-01T12:00:00Z",
            "observedGeneration": 4,
        },
    ]
    # Without a generation the field is left out, not set to null.
    bare = c.set_condition(
        [], c.ConditionUpdate(c.READY, False, c.POD_PENDING), now=NOW, generation=None
    )
    assert bare == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "PodPending",
            "message": "",
            "lastTransitionTime": "2026-01-01T12:00:00Z",
        }
    ]


def test_an_update_keeps_its_place_and_its_time_while_the_status_holds() -> None:
    old = {"type": c.READY, "status": "False", "reason": c.POD_PENDING, "lastTransitionTime": T0}
    after = {"type": c.SUSPENDED, "status": "False", "reason": c.RESUMED, "lastTransitionTime": T0}
    same = c.ConditionUpdate(c.READY, False, c.IMAGE_PULL_FAILED, "pull failed")
    result = c.set_condition([old, after], same, now=NOW, generation=2)
    assert result[0] == {
        "type": "Ready",
        "status": "False",
        "reason": "ImagePullFailed",
        "message": "pull failed",
        "lastTransitionTime": T0,
        "observedGeneration": 2,
    }
    assert result[1] == after and len(result) == 2
    # The status flips: the time moves to now.
    flipped = c.set_condition(
        [old], c.ConditionUpdate(c.READY, True, c.POD_RUNNING), now=NOW, generation=2
    )
    assert flipped[0]["status"] == "True"
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    # A condition without a time (written by hand) gets one.
    untimed = {"type": c.READY, "status": "False", "reason": c.POD_PENDING}
    fixed = c.set_condition([untimed], same, now=NOW, generation=None)
    assert fixed[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    # The input list is not changed.
    assert old["reason"] == c.POD_PENDING and "observedGeneration" not in old


def test_remove_and_find_condition() -> None:
    ready = {"type": c.READY, "status": "True"}
    archived = {"type": c.ARCHIVED, "status": "False"}
    assert c.remove_condition([ready, archived], c.READY) == [archived]
    assert c.remove_condition([ready], c.ARCHIVED) == [ready]
    assert c.find_condition([ready, archived], c.ARCHIVED) is archived
    assert c.find_condition([ready], c.ARCHIVED) is None


def test_times_are_rfc3339_utc_to_the_second(monkeypatch: pytest.MonkeyPatch) -> None:
    # In UTC whatever the host's own zone is.
    moment = datetime.datetime(
        2026, 3, 4, 5, 6, 7, 890000, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert c.format_time(moment) == "2026-03-04T03:06:07Z"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("phase", list(c.Phase))
def test_only_succeeded_and_failed_are_finished(phase: c.Phase) -> None:
    assert phase.finished is (phase in (c.Phase.SUCCEEDED, c.Phase.FAILED))


# Golden decisions: every row of the table, and the paths of a lost pod, with the whole patch
# (messages and conditions included), the events and the actions. The messages are what a user
# reads in `kubectl describe`; a change to any of them must be a reviewed change. Regenerate
# after an intended change with UPDATE_GOLDEN=1 and review the diff.
GOLDEN_DECISIONS = Path(__file__).parent / "golden" / "status-decisions.yaml"
REPORT = json.dumps({"steps": 12, "tokens": {"used": 3400, "limit": 5000, "window": 900}})
LOST_CASES: dict[str, tuple[dict[str, Any], CodingJobSpec, dict[str, Any]]] = {
    "lost below the backoff limit -> recreate": (
        {"phase": "Running", "startTime": "2026-01-01T11:00:00Z", "podFailures": 0},
        spec(),
        {"pod": ended_pod(137, None, reason="Evicted", message="low on memory")},
    ),
    "lost past the limit before it started -> failed": (
        {"phase": "Pending", "podFailures": 2},
        spec(),
        {"pod": ended_pod(137, None, reason="Evicted", message="low on memory")},
    ),
    "lost past the limit, no upload -> failed with the sidecar's counters": (
        {"phase": "Running", "startTime": "2026-01-01T11:00:00Z", "podFailures": 2},
        spec(artifacts={"uploadOnFailure": False}),
        {
            "pod": PodView(
                phase="Failed",
                created_at=EARLIER,
                reason="Evicted",
                message="low on memory",
                agent=ContainerView(terminated=True, exit_code=137),
                sidecar=ContainerView(terminated=True, exit_code=0, message=REPORT),
            )
        },
    ),
    "lost past the limit -> archived with the sidecar's counters": (
        {"phase": "Running", "startTime": "2026-01-01T11:00:00Z", "podFailures": 2},
        spec(),
        {
            "pod": PodView(
                phase="Failed",
                created_at=EARLIER,
                reason="Evicted",
                message="low on memory",
                agent=ContainerView(terminated=True, exit_code=137),
                sidecar=ContainerView(terminated=True, exit_code=0, message=REPORT),
            )
        },
    ),
}


DEGRADED = c.set_condition(
    [],
    c.ConditionUpdate(c.MODEL_DEGRADED, True, c.PROVIDER_UNAVAILABLE, "down"),
    now=EARLIER,
    generation=1,
)
SPENT = c.set_condition(
    [],
    c.ConditionUpdate(c.BUDGET_EXCEEDED, True, c.TOKEN_BUDGET_SPENT, "spent"),
    now=EARLIER,
    generation=1,
)
STATS_CASES: dict[str, tuple[dict[str, Any], CodingJobSpec, dict[str, Any]]] = {
    "stats: budget spent, model degraded": (
        {"phase": "Running"},
        spec(),
        {
            "pod": running_pod(),
            "stats": StatsMessage.model_validate(
                {
                    "steps": 4,
                    "tokens": {
                        "used": 900,
                        "limit": 1000,
                        "pruned": 12,
                        "prompt": 700,
                        "completion": 200,
                        "cached": 50,
                        "costUSD": 0.5,
                    },
                    "budgetExceeded": True,
                    "lastError": "token budget spent",
                    "modelDegraded": "provider unavailable",
                }
            ),
        },
    ),
    "stats: within budget again, model back": (
        {"phase": "Running", "conditions": DEGRADED + SPENT},
        spec(),
        {"pod": running_pod(), "stats": StatsMessage.model_validate({"steps": 5})},
    ),
}


def _decision_record(decision: Decision) -> dict[str, Any]:
    return {
        "patch": decision.patch,
        "actions": [a.name for a in decision.actions],
        "events": [f"{e.type} {e.reason}: {e.message}" for e in decision.events],
    }


def test_golden_decisions() -> None:
    cases = {row[0]: (row[1], row[2], row[3]) for row in TABLE} | LOST_CASES | STATS_CASES
    records = {
        name: _decision_record(derive_status(observe(before, s, **extra)))
        for name, (before, s, extra) in cases.items()
    }
    text = yaml.safe_dump(records, sort_keys=True, width=100, allow_unicode=True)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN_DECISIONS.write_text(text)
    assert GOLDEN_DECISIONS.exists(), "missing golden: run with UPDATE_GOLDEN=1"
    assert text == GOLDEN_DECISIONS.read_text(), "decisions differ: UPDATE_GOLDEN=1 and review"


@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        (0.00123456789, 0.001235),
        (0.0, 0.0),
        (-3.0, 0.0),
        (float("nan"), 0.0),
        (float("inf"), 0.0),
        (5e12, 1e9),
    ],
)
def test_a_reported_cost_is_shown_bounded(cost: float, shown: float) -> None:
    # The cost comes from the sidecar: a negative, infinite or absurd figure is not shown as is.
    stats = StatsMessage.model_validate(
        {"steps": 1, "tokens": {"used": 1, "prompt": 1, "costUSD": cost}}
    )
    decision = derive_status(observe({"phase": "Running"}, pod=running_pod(), stats=stats))
    assert decision.patch["tokens"]["costUSD"] == shown
