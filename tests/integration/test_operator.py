"""The operator against a real API server and kubelet, run in-process with kopf's KopfRunner.

Each test gets a fresh namespace and an operator watching only that namespace. Agent pods that
must stay alive are pinned to a node that does not exist (they stay Pending), so the tests do not
depend on the agent image; the failure path uses the base image, which lacks the sidecar command.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from codingjob_agent import protocol
from codingjob_operator import names
from kopf.testing import KopfRunner
from kubernetes import client, watch

from tests.fixtures.cluster import kubectl, tool, watch_until
from tests.fixtures.minio import MinioServer

# The client's watch module carries no type hints.
_watch: Any = watch

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "codingjob.dev", "v1alpha1", "codingjobs"
BASE_IMAGE = os.environ.get("BASE_IMAGE", "codingjob/base:bookworm")
#: A node selector no node matches: the pod exists but never runs.
NOWHERE = {"codingjob.dev/test": "nowhere"}
TIMEOUT = 90
#: Starting the archiver pod (image, volume binding) and uploading take longer than the rest.
ARCHIVE_TIMEOUT = 240
OPERATOR_IMAGE = os.environ.get("OPERATOR_IMAGE", "codingjob/operator:dev")


#: Test classes: pods pinned nowhere (they stay Pending), and any image (the failure path).
TEST_CLASSES = {
    "it-nowhere": {"sandbox": {"nodeSelector": NOWHERE}},
    "it-any-image": {"sandbox": {"imagePatterns": [".*"]}},
}


@pytest.fixture(scope="session")
def crd(kubeconfig: str, kube_api: client.ApiClient) -> None:
    """The CodingJob and CodingJobClass CRDs, applied from the committed files, and the test
    classes."""
    for name in ("codingjob", "codingjobclass"):
        kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(REPO / f"crds/{name}.yaml")
        )
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/codingjobs.codingjob.dev")
    kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/codingjobclasses.codingjob.dev"
    )
    api = client.CustomObjectsApi(kube_api)
    for name, spec in TEST_CLASSES.items():
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CodingJobClass",
            "metadata": {"name": name},
            "spec": spec,
        }
        with contextlib.suppress(client.ApiException):
            api.create_cluster_custom_object(GROUP, VERSION, "codingjobclasses", body)


@contextlib.contextmanager
def running_operator(
    namespace: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> Iterator[KopfRunner]:
    """The operator, in-process, watching only ``namespace``, configured by ``env``."""
    monkeypatch.setenv("CODINGJOB_AGENT_IMAGE", BASE_IMAGE)
    monkeypatch.setenv("CODINGJOB_IMAGE_PULL_POLICY", "IfNotPresent")
    # An address literal: the NetworkPolicy builder resolves the host, and the test host may not
    # resolve cluster names.
    monkeypatch.setenv("CODINGJOB_DEFAULT_MODEL_BASE_URL", "http://10.0.0.1:8000/v1")
    monkeypatch.setenv("CODINGJOB_DEFAULT_MODEL_NAME", "scripted-demo-model")
    monkeypatch.setenv("CODINGJOB_STATS_INTERVAL_SECONDS", "1")
    for key in [k for k in os.environ if k.startswith("CODINGJOB_STORAGE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = ["run", "--standalone", "--namespace", namespace, "-m", "codingjob_operator.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
        # While the operator still runs, so that it releases its finalizers (else the namespace
        # would hang in Terminating).
        delete_all_codingjobs(namespace)
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


@pytest.fixture
def operator(crd: None, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[KopfRunner]:
    """The operator without object storage: finished jobs keep their workspace."""
    with running_operator(namespace, monkeypatch, {}) as runner:
        yield runner


def delete_all_codingjobs(namespace: str) -> None:
    kubectl(
        "delete",
        "codingjobs.codingjob.dev",
        "--all",
        "-n",
        namespace,
        "--wait=true",
        "--timeout=60s",
    )


@pytest.fixture
def api(kube_api: client.ApiClient) -> Any:
    return client.CustomObjectsApi(kube_api)


@pytest.fixture
def core(kube_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


def codingjob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CodingJob",
        "metadata": {"name": name},
        "spec": {"task": "Build me a todo app in React", **spec},
    }


def wait_cj(
    api: Any,
    namespace: str,
    name: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: int = TIMEOUT,
) -> dict[str, Any]:
    """Watch the CodingJob until ``until(obj)`` holds."""
    obj: dict[str, Any] = watch_until(
        api.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name=name,
        until=lambda kind, o: kind != "DELETED" and until(o),
        timeout=timeout,
    )
    return obj


def phase(value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") == value


def wait_gone(list_fn: Callable[..., Any], *args: Any, name: str) -> None:
    """Return once the object NAME listed by ``list_fn(*args)`` does not exist; the watch
    starts at the listing's resourceVersion, so a deletion in between is not missed."""
    selector = f"metadata.name={name}"
    listing = list_fn(*args, field_selector=selector)
    if isinstance(listing, dict):  # custom objects come as plain dicts
        items, version = listing["items"], listing["metadata"]["resourceVersion"]
    else:
        items, version = listing.items, listing.metadata.resource_version
    if not items:
        return
    w = _watch.Watch()
    for event in w.stream(
        list_fn, *args, field_selector=selector, resource_version=version, timeout_seconds=TIMEOUT
    ):
        if event["type"] == "DELETED":
            w.stop()
            return
    raise TimeoutError(f"{name} still exists after {TIMEOUT}s")


def wait_exists(list_fn: Callable[..., Any], namespace: str, name: str) -> Any:
    return watch_until(
        list_fn, namespace, name=name, until=lambda kind, _: kind != "DELETED", timeout=TIMEOUT
    )


def meta(obj: Any) -> client.V1ObjectMeta:
    metadata: client.V1ObjectMeta | None = obj.metadata
    assert metadata is not None
    return metadata


def children(kube_api: client.ApiClient, namespace: str, job: str) -> dict[str, Any]:
    """The job's children as client models (typed Any: their metadata is Optional)."""
    core, net = client.CoreV1Api(kube_api), client.NetworkingV1Api(kube_api)
    n = names.child_names(job)
    return {
        "pod": core.read_namespaced_pod(n.pod, namespace),
        "pvc": core.read_namespaced_persistent_volume_claim(n.workspace, namespace),
        "secret": core.read_namespaced_secret(n.session, namespace),
        "service": core.read_namespaced_service(n.service, namespace),
        "policy": net.read_namespaced_network_policy(n.network_policy, namespace),
    }


def test_children_are_created_with_owner_references_and_a_stable_secret(
    operator: KopfRunner,
    api: Any,
    core: client.CoreV1Api,
    kube_api: client.ApiClient,
    namespace: str,
) -> None:
    body = api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, codingjob("todo", className="it-nowhere")
    )
    uid = body["metadata"]["uid"]
    n = names.child_names("todo")
    wait_exists(core.list_namespaced_pod, namespace, n.pod)
    obj = wait_cj(api, namespace, "todo", lambda o: bool((o.get("status") or {}).get("podName")))
    assert obj["status"]["phase"] == "Pending"
    assert obj["status"]["service"]["name"] == n.service
    assert "codingjob.dev/finalizer" in obj["metadata"]["finalizers"]
    assert not any("kopf.zalando.org" in key for key in obj["metadata"].get("annotations") or {})

    found = children(kube_api, namespace, "todo")
    for kind, child in found.items():
        refs = child.metadata.owner_references or []
        assert [(r.kind, r.name, r.uid, r.controller) for r in refs] == [
            ("CodingJob", "todo", uid, True)
        ], kind
        assert child.metadata.labels[names.JOB_LABEL] == "todo", kind
    pod = found["pod"]
    assert pod.spec.automount_service_account_token is False
    assert [c.name for c in pod.spec.init_containers] == ["context-manager"]
    secret = found["secret"]
    assert set(secret.data) == {"vnc-password", "jupyter-token"}

    # Further passes (woken by spec changes) must keep the generated credentials. Each change
    # bumps the generation, so observedGeneration 4 proves three more passes ran (an annotation
    # would not: the wait would hold before any pass).
    for i in range(3):
        api.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "todo",
            {"spec": {"ttlSecondsAfterFinished": 3600 + i}},
        )
    wait_cj(
        api, namespace, "todo", lambda o: (o.get("status") or {}).get("observedGeneration") == 4
    )
    again = core.read_namespaced_secret(n.session, namespace)
    assert again.data == secret.data
    assert meta(again).uid == meta(secret).uid


def test_suspend_deletes_the_pod_and_keeps_the_workspace_then_resume_recreates_it(
    operator: KopfRunner, api: Any, core: client.CoreV1Api, namespace: str
) -> None:
    n = names.child_names("pausable")
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, codingjob("pausable", className="it-nowhere")
    )
    first = wait_exists(core.list_namespaced_pod, namespace, n.pod)

    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "pausable", {"spec": {"suspend": True}}
    )
    obj = wait_cj(api, namespace, "pausable", phase("Suspended"))
    wait_gone(core.list_namespaced_pod, namespace, name=n.pod)
    pvc = core.read_namespaced_persistent_volume_claim(n.workspace, namespace)
    assert meta(pvc).deletion_timestamp is None
    suspended = {c["type"]: c for c in obj["status"]["conditions"]}["Suspended"]
    assert suspended["status"] == "True"

    api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "pausable", {"spec": {"suspend": False}}
    )
    wait_cj(api, namespace, "pausable", phase("Pending"))
    second = wait_exists(core.list_namespaced_pod, namespace, n.pod)
    assert second.metadata.uid != first.metadata.uid
    same_pvc = core.read_namespaced_persistent_volume_claim(n.workspace, namespace)
    assert meta(same_pvc).uid == meta(pvc).uid

    reasons = {
        e.reason
        for e in core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=pausable"
        ).items
    }
    assert {"SuspendedByUser", "Resumed"} <= reasons


def test_deleting_the_codingjob_removes_its_children(
    operator: KopfRunner,
    api: Any,
    core: client.CoreV1Api,
    kube_api: client.ApiClient,
    namespace: str,
) -> None:
    n = names.child_names("doomed")
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, codingjob("doomed", className="it-nowhere")
    )
    wait_exists(core.list_namespaced_pod, namespace, n.pod)
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "doomed")
    net = client.NetworkingV1Api(kube_api)
    wait_gone(core.list_namespaced_pod, namespace, name=n.pod)
    wait_gone(core.list_namespaced_persistent_volume_claim, namespace, name=n.workspace)
    wait_gone(core.list_namespaced_secret, namespace, name=n.session)
    wait_gone(core.list_namespaced_service, namespace, name=n.service)
    wait_gone(net.list_namespaced_network_policy, namespace, name=n.network_policy)


def test_missing_api_key_secret_fails_with_a_reason_naming_it(
    operator: KopfRunner, api: Any, core: client.CoreV1Api, namespace: str
) -> None:
    spec = {"model": {"apiKeySecretRef": {"name": "no-such-secret", "key": "api-key"}}}
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, codingjob("keyless", **spec)
    )
    obj = wait_cj(api, namespace, "keyless", phase("Failed"))
    assert obj["status"]["reason"] == "SecretNotAllowed"
    assert "no-such-secret" in obj["status"]["message"]
    assert obj["status"].get("completionTime")
    pods = core.list_namespaced_pod(namespace, label_selector=f"{names.JOB_LABEL}=keyless")
    assert pods.items == []
    # kopf posts events in the background, after the status patch: give it a moment.
    deadline = time.monotonic() + 30
    while True:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=keyless")
        if any(e.reason == "SecretNotAllowed" and e.type == "Warning" for e in events.items):
            break
        assert time.monotonic() < deadline, [(e.type, e.reason) for e in events.items]
        time.sleep(0.5)


def test_missing_key_in_existing_secret_fails(
    operator: KopfRunner, api: Any, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="llm", labels={"codingjob.dev/model-credentials": "true"}
            ),
            string_data={"other": "x"},
        ),
    )
    spec = {"model": {"apiKeySecretRef": {"name": "llm", "key": "api-key"}}}
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, codingjob("nokey", **spec)
    )
    obj = wait_cj(api, namespace, "nokey", phase("Failed"))
    assert obj["status"]["reason"] == "SecretKeyNotFound"
    assert "'llm'" in obj["status"]["message"] and "'api-key'" in obj["status"]["message"]


def test_image_without_the_sidecar_command_fails_without_retrying(
    operator: KopfRunner, api: Any, core: client.CoreV1Api, namespace: str
) -> None:
    api.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        codingjob("broken", image=BASE_IMAGE, className="it-any-image"),
    )
    obj = wait_cj(api, namespace, "broken", phase("Failed"))
    assert obj["status"]["reason"] in ("CreateContainerFailed", "SidecarFailed"), obj["status"]
    assert "context-manager" in obj["status"]["message"]
    wait_gone(core.list_namespaced_pod, namespace, name=names.child_names("broken").pod)
    # The workspace stays for inspection: nothing was archived.
    pvc = core.read_namespaced_persistent_volume_claim(
        names.child_names("broken").workspace, namespace
    )
    assert meta(pvc).deletion_timestamp is None


def test_ttl_deletes_the_finished_codingjob(
    operator: KopfRunner, api: Any, core: client.CoreV1Api, namespace: str
) -> None:
    spec = {
        "model": {"apiKeySecretRef": {"name": "no-such-secret", "key": "api-key"}},
        "ttlSecondsAfterFinished": 2,
    }
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, codingjob("brief", **spec)
    )
    wait_cj(api, namespace, "brief", phase("Failed"))
    wait_gone(api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name="brief")


@dataclass
class NodeMinio(MinioServer):
    """MinIO on an address of the node, so that archiver pods can reach it as well."""

    host: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


@pytest.fixture
def node_minio(kube_api: client.ApiClient, tmp_path: Path) -> Iterator[NodeMinio]:
    node = client.CoreV1Api(kube_api).list_node().items[0]
    addresses = {a.type: a.address for a in (node.status.addresses or [])} if node.status else {}
    server = NodeMinio(
        binary=tool("minio"),
        data_dir=tmp_path / "minio",
        log_path=tmp_path / "minio.log",
        host=addresses["InternalIP"],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_finished_agent_is_archived_to_object_storage_then_cleaned_up(
    crd: None,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    node_minio: NodeMinio,
    api: Any,
    core: client.CoreV1Api,
) -> None:
    """The operator's archive flow with the real archiver image and MinIO; the test plays the
    kubelet for an agent pod that was never scheduled (its status is ours to write)."""
    env = {
        **node_minio.storage_env("artifacts"),
        "CODINGJOB_STORAGE_PUBLIC_ENDPOINT": node_minio.url,
        "CODINGJOB_OPERATOR_IMAGE": OPERATOR_IMAGE,
    }
    n = names.child_names("zipme")
    with running_operator(namespace, monkeypatch, env):
        body = api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, codingjob("zipme", className="it-nowhere")
        )
        wait_exists(core.list_namespaced_pod, namespace, n.pod)
        result = protocol.AgentResult(
            outcome=protocol.Outcome.SUCCEEDED,
            reason=protocol.AgentReason.COMPLETED,
            message="done",
            # The agent's own counts are not taken: the sidecar's report below is.
            steps=99,
            tokens=99_999,
            summary="wrote nothing",
        )
        report = protocol.sidecar_termination_message(
            protocol.Stats(steps=3, tokens=protocol.TokenStats(used=1200))
        )
        terminated = {
            "exitCode": 0,
            "reason": "Completed",
            "message": result.termination_message(),
            "startedAt": "2026-01-01T00:00:00Z",
            "finishedAt": "2026-01-01T00:01:00Z",
        }
        core.patch_namespaced_pod_status(
            n.pod,
            namespace,
            {
                "status": {
                    "phase": "Succeeded",
                    "containerStatuses": [
                        {
                            "name": "agent",
                            "ready": False,
                            "restartCount": 0,
                            "image": BASE_IMAGE,
                            "imageID": "",
                            "state": {"terminated": terminated},
                        }
                    ],
                    "initContainerStatuses": [
                        {
                            "name": "context-manager",
                            "ready": False,
                            "restartCount": 0,
                            "image": BASE_IMAGE,
                            "imageID": "",
                            "state": {"terminated": {**terminated, "message": report}},
                        }
                    ],
                }
            },
        )
        obj = wait_cj(api, namespace, "zipme", phase("Succeeded"), timeout=ARCHIVE_TIMEOUT)
        status = obj["status"]
        artifact = status["artifact"]
        uid = body["metadata"]["uid"]
        assert artifact["key"] == f"{namespace}/zipme/{uid}/workspace.zip"
        assert status["downloadURL"] == artifact["url"]
        assert (status["reason"], status["steps"], status["tokens"]["used"]) == (
            "Completed",
            3,
            1200,
        )
        with urllib.request.urlopen(status["downloadURL"], timeout=30) as response:
            data = response.read()
        assert len(data) == artifact["size"]
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"]
        assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None
        # Confirmed, so the workspace and the credentials are gone.
        wait_gone(core.list_namespaced_persistent_volume_claim, namespace, name=n.workspace)
        wait_gone(core.list_namespaced_secret, namespace, name=n.archive_secret)
