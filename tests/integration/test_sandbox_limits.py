"""A sandbox pod made from a default-spec class on the real cluster: cpu, memory and
ephemeral-storage limits on the agent, a pids limit in force (the kubelet's podPidsLimit), the
class's ServiceAccount without a token, and admitted by Pod Security "restricted" (the test
namespaces enforce it, tests/fixtures/cluster.py)."""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from codingjob_operator import names
from kopf.testing import KopfRunner
from kubernetes import client

from tests.fixtures.cluster import kubectl
from tests.integration.test_operator import (
    GROUP,
    PLURAL,
    VERSION,
    api,
    codingjob,
    core,
    crd,
    running_operator,
)

__all__ = ["api", "core", "crd"]  # fixtures re-used from the operator tests

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
#: hack/cluster/lib.sh's POD_PIDS_LIMIT.
POD_PIDS_LIMIT = int(os.environ.get("CODINGJOB_POD_PIDS_LIMIT", "4096"))
#: The chart's default class spec ({}): the model's built-in defaults.
CLASS = "it-default-spec"
AGENT_IMAGE = os.environ.get("AGENT_IMAGE", "codingjob/agent:dev")


@pytest.fixture
def default_spec_class(crd: None, api: Any) -> str:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CodingJobClass",
        "metadata": {"name": CLASS},
        "spec": {},
    }
    try:
        api.create_cluster_custom_object(GROUP, VERSION, "codingjobclasses", body)
    except client.ApiException as error:
        assert error.status == 409, error
    return CLASS


@pytest.fixture
def operator(
    default_spec_class: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KopfRunner]:
    # The real agent image: the pod must run for its cgroup to exist.
    with running_operator(namespace, monkeypatch, {"CODINGJOB_AGENT_IMAGE": AGENT_IMAGE}) as r:
        yield r


def _wait_pod(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}").items
        if pods and pods[0].status.phase == "Running":
            return pods[0]
        time.sleep(1)
    raise AssertionError(f"pod {namespace}/{name} did not run: {pods[0].status if pods else None}")


def test_default_class_sandbox_is_bounded_and_restricted(
    operator: KopfRunner, api: Any, core: client.CoreV1Api, namespace: str
) -> None:
    ns = core.read_namespace(namespace)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, codingjob("bounded", className=CLASS)
    )
    pod = _wait_pod(core, namespace, names.child_names("bounded").pod)
    # Admitted under "restricted" enforce: the pod exists at all. And it passes it cleanly:
    # a server-side dry run of the same spec draws no Pod Security warning.
    raw = client.ApiClient().sanitize_for_serialization(pod)
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "psa-probe"},
        "spec": {k: v for k, v in raw["spec"].items() if k != "nodeName"},
    }
    probe = kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(manifest)
    )
    assert "PodSecurity" not in probe.stderr and "violate" not in probe.stderr, probe.stderr

    agent = next(c for c in pod.spec.containers if c.name == "agent")
    assert set(agent.resources.limits) == {"cpu", "memory", "ephemeral-storage"}
    assert agent.resources.limits == {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi"}
    sidecar = next(c for c in pod.spec.init_containers if c.name == "context-manager")
    assert set(sidecar.resources.limits) == {"cpu", "memory", "ephemeral-storage"}
    assert pod.spec.active_deadline_seconds == 3600
    # The class's ServiceAccount, and no token anywhere.
    assert pod.spec.service_account_name == "codingjob-sandbox"
    assert pod.spec.automount_service_account_token is False
    assert not any(v.projected for v in pod.spec.volumes or [])
    sa = core.read_namespaced_service_account("codingjob-sandbox", namespace)
    assert sa.automount_service_account_token is False

    # The pids limit: configured on the kubelet, and applied to this pod's cgroup.
    node = pod.spec.node_name
    configz = json.loads(kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/configz").stdout)
    assert configz["kubeletconfig"]["podPidsLimit"] == POD_PIDS_LIMIT
    if Path("/sys/fs/cgroup/pids/kubepods").is_dir():  # the local cluster runs on this host
        found = glob.glob(
            f"/sys/fs/cgroup/pids/kubepods*/**/pod{pod.metadata.uid}/pids.max", recursive=True
        )
        assert found, f"no pids cgroup for pod {pod.metadata.uid}"
        assert Path(found[0]).read_text().strip() == str(POD_PIDS_LIMIT)
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bounded")
