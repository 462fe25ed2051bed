"""The sandbox's security promises asserted directly on the built manifests (not through the
goldens): a table of every sandbox pod variant by every promise, and for each promise a manifest
that breaks it, to show the check can fail."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from codingjob_operator import builders
from codingjob_operator.models import CodingJobSpec

from tests.fixtures.security import (
    ARCHIVER_CHECKS,
    SANDBOX_CHECKS,
    archiver_violations,
    sandbox_violations,
)

JOB = builders.JobRef(name="j", namespace="team-a", uid="u-1")
IMAGES = builders.Images(agent="codingjob/agent:dev", operator="codingjob/operator:dev")
MODEL = builders.ModelEndpoint(base_url="http://m.models.svc:8000/v1", name="m")
KEY = {
    "baseURL": "https://api.example.com/v1",
    "name": "m",
    "apiKeySecretRef": {"name": "s", "key": "k"},
}

#: Spec variants that change the pod: every one must keep every promise.
SPECS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "api-key": {"model": KEY},
    "headless": {"gui": {"enabled": False}, "jupyter": {"enabled": False}},
    "deadline": {"limits": {"activeDeadlineSeconds": 600, "maxSteps": 3}},
    "resources": {"resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}}},
    "gvisor-node": {
        "runtimeClassName": "gvisor",
        "nodeSelector": {"sandbox": "true"},
        "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}],
        "image": "registry.example.com/agent:1",
    },
    "open-egress": {"network": {"egress": "Open"}},
}


def agent_pod_spec(variant: str) -> dict[str, Any]:
    spec = CodingJobSpec.model_validate({"task": "t", **SPECS[variant]})
    pod: dict[str, Any] = builders.agent_pod(JOB, spec, images=IMAGES, model=MODEL)["spec"]
    return pod


def archive_job() -> dict[str, Any]:
    target = builders.ArchiveTarget(key="k/workspace.zip", transcript_key="k/context.txt")
    job: dict[str, Any] = builders.archive_job(JOB, images=IMAGES, target=target)
    return job


@pytest.mark.parametrize("check", sorted(SANDBOX_CHECKS))
@pytest.mark.parametrize("variant", sorted(SPECS))
def test_every_sandbox_pod_keeps_every_promise(variant: str, check: str) -> None:
    assert SANDBOX_CHECKS[check](agent_pod_spec(variant)) == []


def test_the_archiver_keeps_its_promises() -> None:
    assert archiver_violations(archive_job()) == {}


def _sidecar(spec: dict[str, Any]) -> dict[str, Any]:
    sidecar: dict[str, Any] = spec["initContainers"][0]
    assert sidecar["name"] == "context-manager"
    return sidecar


def _agent(spec: dict[str, Any]) -> dict[str, Any]:
    agent: dict[str, Any] = spec["containers"][0]
    return agent


#: For each promise, a change to a built pod spec that breaks it.
BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no-service-account-token": lambda s: s.pop("automountServiceAccountToken"),
    "no-service-links": lambda s: s.update(enableServiceLinks=True),
    "no-shared-process-namespace": lambda s: s.pop("shareProcessNamespace"),
    "no-host-access": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "non-root-uid-1000": lambda s: _agent(s)["securityContext"].update(runAsUser=0),
    "no-privilege-escalation": lambda s: _sidecar(s)["securityContext"].update(privileged=True),
    "no-capabilities": lambda s: _agent(s)["securityContext"]["capabilities"].update(
        add=["NET_RAW"]
    ),
    "seccomp-runtime-default": lambda s: _agent(s)["securityContext"].update(
        seccompProfile={"type": "Unconfined"}
    ),
    "read-only-root-where-promised": lambda s: _sidecar(s)["securityContext"].pop(
        "readOnlyRootFilesystem"
    ),
    "llm-key-only-in-sidecar": lambda s: _agent(s)["env"].extend(
        e for e in _sidecar(s)["env"] if e["name"] == "CODINGJOB_MODEL_API_KEY"
    ),
    "sidecar-state-hidden-from-agent": lambda s: _agent(s).update(
        volumeMounts=[m for m in _agent(s)["volumeMounts"] if m["name"] != "sidecar-state-mask"]
    ),
}


def test_every_promise_has_a_breaking_case() -> None:
    assert set(BREAKS) == set(SANDBOX_CHECKS)


@pytest.mark.parametrize("check", sorted(BREAKS))
def test_each_check_fails_on_a_pod_that_breaks_it(check: str) -> None:
    spec = agent_pod_spec("api-key")
    BREAKS[check](spec)
    assert check in sandbox_violations(spec)


ARCHIVER_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "permanent-errors-fail-the-job": lambda j: j["spec"].pop("podFailurePolicy"),
    "crashes-retried-three-times": lambda j: j["spec"].pop("activeDeadlineSeconds"),
    "workspace-read-only": lambda j: j["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][
        0
    ].pop("readOnly"),
    "read-only-root-where-promised": lambda j: j["spec"]["template"]["spec"]["containers"][0][
        "securityContext"
    ].update(readOnlyRootFilesystem=False),
    "no-service-account-token": lambda j: j["spec"]["template"]["spec"].update(
        automountServiceAccountToken=True
    ),
}


@pytest.mark.parametrize("check", sorted(ARCHIVER_BREAKS))
def test_each_archiver_check_fails_on_a_job_that_breaks_it(check: str) -> None:
    job = copy.deepcopy(archive_job())
    ARCHIVER_BREAKS[check](job)
    assert check in archiver_violations(job)


def test_the_archiver_is_exempt_from_two_sandbox_checks_only() -> None:
    assert set(SANDBOX_CHECKS) - set(ARCHIVER_CHECKS) == {
        "llm-key-only-in-sidecar",
        "no-shared-process-namespace",
        "sidecar-state-hidden-from-agent",
    }


@pytest.mark.parametrize(
    "expose",
    [
        # The sidecar as the agent's uid: the agent could write its journal.
        lambda s: _sidecar(s)["securityContext"].update(runAsUser=1000),
        lambda s: _sidecar(s)["securityContext"].pop("runAsGroup"),
        # The mask writable, or not an empty volume.
        lambda s: next(
            m for m in _agent(s)["volumeMounts"] if m["name"] == "sidecar-state-mask"
        ).pop("readOnly"),
        lambda s: s.update(
            volumes=[
                {"name": v["name"], "configMap": {"name": "x"}}
                if v["name"] == "sidecar-state-mask"
                else v
                for v in s["volumes"]
            ]
        ),
        # A scratch volume shared between the two containers.
        lambda s: _sidecar(s)["volumeMounts"].append({"name": "tmp", "mountPath": "/scratch"}),
    ],
)
def test_every_way_to_expose_the_sidecars_state_is_caught(
    expose: Callable[[dict[str, Any]], None],
) -> None:
    spec = agent_pod_spec("defaults")
    expose(spec)
    assert "sidecar-state-hidden-from-agent" in sandbox_violations(spec)
