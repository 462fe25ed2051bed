"""`kubectl codingjob` against the real API server (and kubelet, MinIO), as a user runs it.

The plugin runs as its installed console script. Its namespaces are not `t-*`, so no operator of
the test suite reconciles these jobs: the statuses the tests write stand for the operator's, and
what is tested is the plugin's side of the API.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from minio import Minio

from tests.fixtures.cluster import pod_finished, wait_for_pod, watch_until
from tests.fixtures.minio import MinioServer

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "codingjob.dev", "v1alpha1", "codingjobs"
BASE_IMAGE = os.environ.get("BASE_IMAGE", "codingjob/base:bookworm")


def plugin_command() -> list[str]:
    """The installed `kubectl-codingjob` next to this interpreter (what kubectl would run)."""
    found = shutil.which("kubectl-codingjob", path=str(Path(sys.executable).parent))
    assert found, "kubectl-codingjob is not installed in this environment (make venv)"
    return [found]


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The plugin's error: the last line on stderr (the client may warn above it)."""
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def plugin(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*plugin_command(), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def crd(kube_api: client.ApiClient) -> None:
    """The CodingJob CRD of this checkout, created or replaced, and served."""
    extensions = client.ApiextensionsV1Api(kube_api)
    body = yaml.safe_load((REPO / "crds" / "codingjob.yaml").read_text())
    try:
        extensions.create_custom_resource_definition(body)
    except client.ApiException as error:
        if error.status != 409:
            raise
        current = extensions.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        extensions.replace_custom_resource_definition(body["metadata"]["name"], body)
    watch_until(
        extensions.list_custom_resource_definition,
        name=body["metadata"]["name"],
        until=lambda _, crd: any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        ),
        timeout=60,
    )


@pytest.fixture
def ns(crd: None, kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace no operator watches (the e2e operator watches `t-*`)."""
    name = f"kcj-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def custom(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def get(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return obj


def set_status(custom: client.CustomObjectsApi, ns: str, name: str, **status: Any) -> None:
    """Write the status as the operator would (through the status subresource)."""
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, name, {"status": status}
    )


def test_run_ls_suspend_resume(ns: str, custom: client.CustomObjectsApi) -> None:
    done = plugin("run", "Build me a todo app in React", "-n", ns)
    assert done.returncode == 0, done.stderr
    name = done.stdout.split()[0].removeprefix("codingjob/")
    assert name.startswith("build-me-a-todo-")
    assert get(custom, ns, name)["spec"]["task"] == "Build me a todo app in React"

    second = plugin("run", "Fix the tests", "--name", "fix-tests", "-n", ns)
    assert second.returncode == 0, second.stderr

    listing = plugin("ls", "-n", ns)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert rows[0][:5] == ["NAME", "PHASE", "STEPS", "TOKENS", "AGE"]
    assert sorted(r[0] for r in rows[1:]) == sorted([name, "fix-tests"])
    assert all(r[1] == "Pending" for r in rows[1:])  # no operator here: no status yet

    everywhere = plugin("ls", "-A")
    assert [ns, "fix-tests"] in [line.split()[:2] for line in everywhere.stdout.splitlines()]

    assert plugin("suspend", "fix-tests", "-n", ns).returncode == 0
    assert get(custom, ns, "fix-tests")["spec"]["suspend"] is True
    assert plugin("resume", "fix-tests", "-n", ns).returncode == 0
    assert get(custom, ns, "fix-tests")["spec"]["suspend"] is False


def test_api_server_errors_are_reported(ns: str) -> None:
    bad = plugin("run", "task", "--name", "Not_A_Name", "-n", ns)
    assert bad.returncode == 1
    assert error_line(bad).startswith("error: ") and "Not_A_Name" in error_line(bad)
    missing = plugin("suspend", "nope", "-n", ns)
    assert missing.returncode == 1
    assert error_line(missing) == 'error: codingjobs.codingjob.dev "nope" not found'


def test_watch_follows_the_status_to_the_end(ns: str, custom: client.CustomObjectsApi) -> None:
    assert plugin("run", "task", "--name", "w", "-n", ns).returncode == 0
    proc = subprocess.Popen(
        [*plugin_command(), "watch", "w", "-n", ns, "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()  # the current state: the watch is established
        assert first.split()[1] == "Pending", first
        set_status(custom, ns, "w", phase="Running", steps=3, tokens={"used": 1200})
        second = proc.stdout.readline()
        assert second.split()[1:4] == ["Running", "steps=3", "tokens=1200"], second
        set_status(custom, ns, "w", phase="Succeeded", steps=5, reason="AgentFinished")
        rest = proc.stdout.read()
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
    assert rest.split()[1:3] == ["Succeeded", "steps=5"], rest
    assert "AgentFinished" in rest


def test_watch_exits_nonzero_when_the_job_failed(ns: str, custom: client.CustomObjectsApi) -> None:
    assert plugin("run", "task", "--name", "f", "-n", ns).returncode == 0
    set_status(custom, ns, "f", phase="Failed", reason="DeadlineExceeded", message="1h passed")
    done = plugin("watch", "f", "-n", ns, "--timeout", "30")
    assert done.returncode == 1
    assert done.stdout.strip().endswith("DeadlineExceeded: 1h passed")


@pytest.mark.minio
def test_download_checks_the_recorded_digest(
    ns: str,
    custom: client.CustomObjectsApi,
    minio: MinioServer,
    bucket_name: str,
    tmp_path: Path,
) -> None:
    payload = os.urandom(300_000)
    store = Minio(
        minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False
    )
    store.make_bucket(bucket_name)
    key = f"{ns}/d/uid/workspace.zip"
    store.put_object(bucket_name, key, io.BytesIO(payload), len(payload))
    url = store.presigned_get_object(bucket_name, key, expires=datetime.timedelta(minutes=10))
    digest = hashlib.sha256(payload).hexdigest()
    artifact = {"bucket": bucket_name, "key": key, "size": len(payload), "sha256": digest}

    assert plugin("run", "task", "--name", "d", "-n", ns).returncode == 0
    early = plugin("download", "d", "-n", ns)
    assert early.returncode == 1 and "no download URL yet" in error_line(early)

    set_status(custom, ns, "d", phase="Succeeded", artifact=artifact, downloadURL=url)
    target = tmp_path / "out" / "workspace.zip"
    done = plugin("download", "d", "-n", ns, "-o", str(target))
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == payload
    assert done.stdout.strip() == f"saved {len(payload)} bytes to {target}, sha256 verified"

    # A store that serves other bytes than the operator recorded: refused, nothing written.
    set_status(custom, ns, "d", artifact={**artifact, "sha256": "0" * 64})
    other = tmp_path / "other.zip"
    refused = plugin("download", "d", "-n", ns, "-o", str(other))
    assert refused.returncode == 1
    assert f"sha256 of the download is {digest}" in error_line(refused)
    assert not other.exists()
    assert [p.name for p in other.parent.iterdir()] == ["out"]


def test_logs_of_the_agent_container(
    ns: str, custom: client.CustomObjectsApi, kube_api: client.ApiClient
) -> None:
    assert plugin("run", "task", "--name", "l", "-n", ns).returncode == 0
    core = client.CoreV1Api(kube_api)
    # Pods are refused until the service account controller has made "default".
    watch_until(
        core.list_namespaced_service_account,
        ns,
        name="default",
        until=lambda kind, _: kind != "DELETED",
        timeout=60,
    )
    # A pod shaped like the agent pod where logs are concerned: its name and its `agent` container.
    core.create_namespaced_pod(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "l-agent"},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                # Admitted under Pod Security "restricted", should the cluster enforce it.
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 1000,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "agent",
                        "image": BASE_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "echo 'step 1: bash'; echo 'step 2: finish'"],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            },
        },
    )
    wait_for_pod(core, ns, "l-agent", pod_finished, timeout=120)
    set_status(custom, ns, "l", phase="Running", podName="l-agent")
    done = plugin("logs", "l", "-n", ns)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["step 1: bash", "step 2: finish"]
