"""The job's final counters and limit reasons come from the context-manager's own termination
message; a forged agent termination message changes neither (issue: "the agent cannot lie")."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from codingjob_agent import protocol
from codingjob_operator import conditions as c
from codingjob_operator.models import CodingJobSpec
from codingjob_operator.status import (
    Action,
    ContainerView,
    Observation,
    PodView,
    derive_status,
    pod_view,
    sidecar_report,
)
from codingjob_operator.untrusted import MESSAGE_MAX

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
EARLIER = NOW - datetime.timedelta(minutes=1)


def forged(reason: str = "Completed", outcome: str = "Succeeded", **fields: Any) -> str:
    """An agent termination message claiming whatever the agent likes."""
    return json.dumps(
        {
            "outcome": outcome,
            "reason": reason,
            "message": "\x1b[2Jall good" + "!" * 10_000,
            "steps": 1,
            "tokens": 2,
            "summary": "s" * 50_000,
            **fields,
        }
    )


def report(steps: int, used: int, *, budget: bool = False, max_steps: int = 0) -> str:
    """The sidecar's termination message, as its own code writes it."""
    stats = protocol.Stats(
        steps=steps,
        max_steps=max_steps,
        budget_exceeded=budget,
        tokens=protocol.TokenStats(used=used, limit=100_000, pruned=3, window=50),
    )
    return protocol.sidecar_termination_message(stats)


def pod(agent_message: str, sidecar: ContainerView | None, exit_code: int = 0) -> PodView:
    return PodView(
        phase="Succeeded" if exit_code == 0 else "Failed",
        created_at=EARLIER,
        agent=ContainerView(terminated=True, exit_code=exit_code, message=agent_message),
        sidecar=sidecar,
    )


def ended_sidecar(message: str) -> ContainerView:
    return ContainerView(terminated=True, exit_code=0, message=message)


def decide(p: PodView, **spec: Any) -> dict[str, Any]:
    s = CodingJobSpec.model_validate({"task": "t", **spec})
    obs = Observation(spec=s, status={"phase": "Running"}, generation=1, now=NOW, pod=p)
    return derive_status(obs).patch


def test_forged_counts_in_the_agents_message_are_ignored() -> None:
    patch = decide(pod(forged(steps=10**9, tokens=10**12), ended_sidecar(report(4, 900))))
    assert patch["steps"] == 4
    assert patch["tokens"] == {"used": 900, "limit": 100_000, "pruned": 3}
    assert patch["outcome"] == "Succeeded"
    # The agent's texts are kept, made inert and clamped.
    assert "\x1b" not in patch["message"] and len(patch["message"]) <= MESSAGE_MAX
    assert len(patch["summary"]) <= MESSAGE_MAX


def test_without_a_sidecar_report_the_agents_counts_are_still_ignored() -> None:
    patch = decide(pod(forged(steps=10**9, tokens=10**12), None))
    assert "steps" not in patch and "tokens" not in patch


@pytest.mark.parametrize(
    ("reason", "sidecar", "spec", "kept"),
    [
        ("MaxStepsExceeded", report(3, 100), {"limits": {"maxSteps": 10}}, False),
        ("MaxStepsExceeded", report(10, 100), {"limits": {"maxSteps": 10}}, True),
        ("MaxStepsExceeded", report(50, 100), {}, False),
        ("BudgetExceeded", report(3, 100), {"limits": {"maxTotalTokens": 5000}}, False),
        (
            "BudgetExceeded",
            report(3, 6000, budget=True),
            {"limits": {"maxTotalTokens": 5000}},
            True,
        ),
        ("DeadlineExceeded", report(3, 100), {}, False),
        ("DeadlineExceeded", report(3, 100), {"limits": {"activeDeadlineSeconds": 600}}, True),
    ],
)
def test_a_limit_reason_stands_only_when_the_sidecars_counts_show_it(
    reason: str, sidecar: str, spec: dict[str, Any], kept: bool
) -> None:
    patch = decide(pod(forged(reason, "Failed"), ended_sidecar(sidecar), exit_code=1), **spec)
    assert patch["outcome"] == "Failed"
    if kept:
        assert patch["reason"] == reason
    else:
        assert patch["reason"] == c.AGENT_ERROR
        assert patch["message"].startswith(f"the agent reported {reason}, but the job has")


def test_a_forged_unknown_reason_is_an_agent_error() -> None:
    patch = decide(pod(forged("ArchiveConfirmed", "Failed"), ended_sidecar(report(1, 1)), 1))
    assert patch["reason"] == c.AGENT_ERROR


def test_the_agents_end_waits_for_the_sidecars_final_counts() -> None:
    running = PodView(
        phase="Running",
        created_at=EARLIER,
        agent=ContainerView(terminated=True, exit_code=0, message=forged(steps=99)),
        sidecar=ContainerView(running=True),
    )
    s = CodingJobSpec.model_validate({"task": "t"})
    obs = Observation(spec=s, status={"phase": "Running"}, generation=1, now=NOW, pod=running)
    decision = derive_status(obs)
    assert "outcome" not in decision.patch and "steps" not in decision.patch
    assert Action.DELETE_POD not in decision.actions


def test_a_restarted_sidecars_previous_report_is_used() -> None:
    sidecar = ContainerView(
        terminated=True, exit_code=137, message="Traceback: killed", last_message=report(7, 70)
    )
    patch = decide(pod(forged(), sidecar))
    assert patch["steps"] == 7


def test_sidecar_report_is_read_from_the_init_container_status() -> None:
    raw = {
        "metadata": {"creationTimestamp": "2026-01-01T11:59:00Z"},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "agent", "state": {"terminated": {"exitCode": 0, "message": forged()}}}
            ],
            "initContainerStatuses": [
                {
                    "name": "context-manager",
                    "state": {"terminated": {"exitCode": 0, "message": report(5, 55)}},
                }
            ],
        },
    }
    parsed = sidecar_report(pod_view(raw))
    assert parsed is not None and (parsed.steps, parsed.tokens.used) == (5, 55)
    # The agent's termination message is no sidecar report, even if it were valid Stats.
    raw["status"]["initContainerStatuses"] = []
    raw["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = report(9, 9)
    assert sidecar_report(pod_view(raw)) is None


def test_an_evicted_pod_that_ends_the_job_reports_the_sidecars_counts() -> None:
    # The adversary forged its termination message, then filled its disk: the kubelet evicts
    # the pod and, with backoffLimit 0, the job ends; the counts are still the sidecar's.
    evicted = PodView(
        phase="Failed",
        created_at=EARLIER,
        reason="Evicted",
        message="Pod ephemeral local storage usage exceeds the total limit of containers.",
        agent=ContainerView(
            terminated=True, exit_code=137, message=forged("Pwned", steps=999_999, tokens=10**8)
        ),
        sidecar=ended_sidecar(report(8, 103_603)),
    )
    s = CodingJobSpec.model_validate({"task": "t", "backoffLimit": 0})
    status = {"phase": "Running", "startTime": "2026-01-01T11:00:00Z"}
    obs = Observation(spec=s, status=status, generation=1, now=NOW, pod=evicted)
    patch = derive_status(obs).patch
    assert (patch["steps"], patch["tokens"]["used"]) == (8, 103_603)
    assert (patch["phase"], patch["outcome"], patch["reason"]) == (
        "Archiving",
        "Failed",
        c.BACKOFF_LIMIT_EXCEEDED,
    )
    assert "Pwned" not in json.dumps(patch)
