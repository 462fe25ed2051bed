"""End-to-end fixtures: the chart installed on the real cluster, with MinIO and the scripted model.

Everything here goes through the same doors a user does: `helm install`, `kubectl apply`,
`kubectl port-forward`, the CodingJob's status and a plain HTTP download.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.fixtures.cluster import kubectl, tool

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "e2e"
GROUP, VERSION, PLURAL = "codingjob.dev", "v1alpha1", "codingjobs"
SYSTEM_NAMESPACE = "codingjob-e2e-system"
RELEASE = "codingjob-e2e"
#: The presigned URLs are signed for this host, so the port-forward must use exactly this port.
MINIO_LOCAL_PORT = 19000
FINAL_PHASES = {"Succeeded", "Failed"}

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def port_forward(
    namespace: str, target: str, remote: int, local: int | None = None
) -> Iterator[int]:
    """`kubectl port-forward` in the background; yields the local port once it accepts."""
    local = local or free_port()
    proc = subprocess.Popen(
        [tool("kubectl"), "-n", namespace, "port-forward", target, f"{local}:{remote}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), 1):
                break
            if proc.poll() is not None:
                raise RuntimeError(
                    f"port-forward {target} ended: {proc.stdout.read() if proc.stdout else ''}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"port-forward {target} did not open {local}")
            time.sleep(0.2)
        yield local
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


@dataclass
class Jobs:
    """Creates and observes CodingJobs in one test namespace."""

    namespace: str
    api: client.CustomObjectsApi
    core: client.CoreV1Api
    kubectl: Callable[..., subprocess.CompletedProcess[str]]
    system_namespace: str

    def manifest(self, name: str, scenario: str, **spec: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "task": f"Scripted scenario {scenario}",
            "model": {
                "baseURL": f"http://scripted-model.{self.system_namespace}.svc:8000/v1",
                "name": f"scripted/{scenario}",
                "apiKeySecretRef": {"name": "llm-credentials", "key": "api-key"},
            },
            "workspace": {"size": "1Gi"},
        }
        body.update(spec)
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CodingJob",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": body,
        }

    def apply(
        self, manifest: dict[str, Any], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=check)

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def wait_phase(self, name: str, phases: set[str], timeout: float) -> dict[str, Any]:
        return dict(
            wait_for(
                f"{name} in {sorted(phases)}",
                lambda: (s := self.status(name)).get("phase") in phases and s,
                timeout,
            )
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def children(self, name: str) -> dict[str, list[str]]:
        """Names of the job's children by kind, found by the job label."""
        selector = f"codingjob.dev/job={name}"
        net = client.NetworkingV1Api(self.api.api_client)
        return {
            "pods": [
                p.metadata.name
                for p in self.core.list_namespaced_pod(
                    self.namespace, label_selector=selector
                ).items
            ],
            "pvcs": [
                p.metadata.name
                for p in self.core.list_namespaced_persistent_volume_claim(
                    self.namespace, label_selector=selector
                ).items
            ],
            "services": [
                s.metadata.name
                for s in self.core.list_namespaced_service(
                    self.namespace, label_selector=selector
                ).items
            ],
            "secrets": [
                s.metadata.name
                for s in self.core.list_namespaced_secret(
                    self.namespace, label_selector=selector
                ).items
            ],
            "networkpolicies": [
                n.metadata.name
                for n in net.list_namespaced_network_policy(
                    self.namespace, label_selector=selector
                ).items
            ],
        }

    def agent_pod(self, name: str) -> client.V1Pod | None:
        pods = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"codingjob.dev/job={name},app.kubernetes.io/component=agent",
        ).items
        return pods[0] if pods else None


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("helm"), *args], capture_output=True, text=True, check=check, timeout=600
    )


@pytest.fixture(scope="session")
def operator_release(kubeconfig: str, kube_api: client.ApiClient) -> Iterator[str]:
    """The chart installed with bundled MinIO and the scripted model; yields its namespace."""
    subprocess.run([str(REPO / "hack" / "chart-sync.sh")], check=True, capture_output=True)
    # Bring the shared CRDs up to date: Helm installs a chart's crds/ only when they are absent
    # and never upgrades them, so a cluster that ran an older chart keeps its older schema.
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(REPO / "charts" / "codingjob-operator" / "crds"),
    )
    helm("uninstall", RELEASE, "-n", SYSTEM_NAMESPACE, "--wait", check=False)
    result = helm(
        "upgrade",
        "--install",
        RELEASE,
        str(REPO / "charts" / "codingjob-operator"),
        "--namespace",
        SYSTEM_NAMESPACE,
        "--create-namespace",
        "--set",
        "scriptedModel.enabled=true",
        # Only the tests' namespaces (tests/fixtures/cluster.py names them t-...): an operator
        # installed by `make demo` on the same cluster keeps its own jobs, and so does this one.
        "--set",
        "watchNamespaces={t-*}",
        # Each scripted turn waits a little, like a real model, so a test can watch it running.
        "--set",
        "scriptedModel.turnDelaySeconds=2",
        "--set",
        f"storage.publicEndpoint=http://localhost:{MINIO_LOCAL_PORT}",
        # Two replicas, one active: every e2e test runs against the HA setup, and
        # test_operations.py kills the active one mid-run.
        "--set",
        "replicas=2",
        "--set",
        "peering.enabled=true",
        # The HTTP API and console (tests/e2e/test_gateway_*.py).
        "--set",
        "gateway.enabled=true",
        "--wait",
        "--timeout",
        "5m",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    yield SYSTEM_NAMESPACE
    if os.environ.get("CODINGJOB_E2E_KEEP") != "1":
        # The operator first lets go of the jobs of the tests' deleted namespaces (each holds a
        # finalizer until then): uninstalled first, it would leave them Terminating for good.
        custom = client.CustomObjectsApi(kube_api)
        with contextlib.suppress(AssertionError):
            wait_for(
                "the tests' CodingJobs to be released",
                lambda: (
                    not [
                        j
                        for j in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
                        if j["metadata"]["namespace"].startswith("t-")
                    ]
                ),
                180,
                interval=2,
            )
        helm("uninstall", RELEASE, "-n", SYSTEM_NAMESPACE, "--wait", check=False)
        client.CoreV1Api(kube_api).delete_namespace(SYSTEM_NAMESPACE)


@pytest.fixture(scope="session")
def minio_forward(operator_release: str, kube_api: client.ApiClient) -> Iterator[int]:
    """A port-forward to the bundled MinIO on the port the presigned URLs are signed for."""
    core = client.CoreV1Api(kube_api)
    svc = core.list_namespaced_service(
        operator_release, label_selector="app.kubernetes.io/component=minio"
    ).items[0]
    with port_forward(operator_release, f"svc/{svc.metadata.name}", 9000, MINIO_LOCAL_PORT) as port:
        yield port


@pytest.fixture(scope="session")
def gateway_url(operator_release: str, kube_api: client.ApiClient) -> Iterator[str]:
    """Base URL of the chart's gateway, through a port-forward to its Service."""
    services = (
        client.CoreV1Api(kube_api)
        .list_namespaced_service(
            operator_release, label_selector="app.kubernetes.io/component=gateway"
        )
        .items
    )
    assert services, "no gateway Service: is gateway.enabled on?"
    with port_forward(operator_release, f"svc/{services[0].metadata.name}", 8000) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def jobs(operator_release: str, namespace: str, kube_api: client.ApiClient) -> Jobs:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            # The owner's consent: only labelled Secrets may be a job's model credential.
            metadata=client.V1ObjectMeta(
                name="llm-credentials", labels={"codingjob.dev/model-credentials": "true"}
            ),
            string_data={"api-key": f"sk-scripted-{uuid.uuid4().hex}"},
        ),
    )
    return Jobs(namespace, client.CustomObjectsApi(kube_api), core, kubectl, operator_release)


@pytest.fixture(scope="session")
def operator_restarts(operator_release: str, kube_api: client.ApiClient) -> Callable[[], int]:
    """Total container restarts of the operator pods, to prove bad input never crashes it."""
    core = client.CoreV1Api(kube_api)

    def count() -> int:
        pods = core.list_namespaced_pod(
            operator_release, label_selector="app.kubernetes.io/component=operator"
        ).items
        assert pods, "no operator pod found"
        return sum(cs.restart_count for p in pods for cs in (p.status.container_statuses or []))

    return count


def operator_logs(kube_api: client.ApiClient, since_seconds: int) -> str:
    core = client.CoreV1Api(kube_api)
    pods = core.list_namespaced_pod(
        SYSTEM_NAMESPACE, label_selector="app.kubernetes.io/component=operator"
    ).items
    return "\n".join(
        core.read_namespaced_pod_log(p.metadata.name, SYSTEM_NAMESPACE, since_seconds=since_seconds)
        for p in pods
    )
