"""The chart installs on the real cluster with `helm install --wait`: the operator and the bundled
MinIO (or the scripted demo model) become ready, the operator's ServiceAccount may do what the
operator needs (and no more), NOTES.txt prints working commands, and `helm upgrade` keeps the
generated MinIO credentials.

Each fixture installs a release into a fresh namespace, and the release watches only that
namespace, so it never touches CodingJobs of other tests or of an operator installed alongside.
The CRDs are cluster-wide and shared: they are applied (never deleted) before installing, because
Helm installs a chart's crds/ only when they do not exist yet and never upgrades them.
"""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from minio import Minio
from minio.error import S3Error

from tests.fixtures.cluster import kubectl, pod_ready, tool, unavailable

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "codingjob-operator"
#: Images each install runs; there is no registry, so they must be loaded into the node.
OPERATOR_IMAGES = ("codingjob/operator:dev", "codingjob/minio:dev")
DEMO_IMAGES = ("codingjob/operator:dev", "codingjob/agent:dev")
INSTALL_TIMEOUT = "5m"


def helm(*args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    """Run helm against the session's cluster (KUBECONFIG, set by the `kubeconfig` fixture)."""
    return subprocess.run(
        [tool("helm"), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass(frozen=True)
class Release:
    """An installed release of the chart and what `helm install` printed."""

    name: str
    namespace: str
    fullname: str
    notes: str


def plain(kube_api: client.ApiClient, obj: object) -> dict[str, Any]:
    """An API object as the plain JSON dict the API server sent."""
    # The client's serializer carries no type hints.
    api: Any = kube_api
    result: dict[str, Any] = api.sanitize_for_serialization(obj)
    return result


def _missing_images(
    kube_api: client.ApiClient, images: tuple[str, ...], timeout: float = 90
) -> list[str]:
    """IMAGES not on the node; polls a while, since the kubelet reports new images with a lag."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = plain(kube_api, client.CoreV1Api(kube_api).list_node())["items"]
        loaded = {
            name.removeprefix("docker.io/")
            for node in nodes
            for image in node["status"].get("images", [])
            for name in image.get("names", [])
        }
        missing = [image for image in images if image not in loaded]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(5)


@contextlib.contextmanager
def installed(
    kube_api: client.ApiClient, images: tuple[str, ...], *values: str
) -> Iterator[Release]:
    """The chart installed with `--set VALUES` into a fresh namespace it alone watches."""
    missing = _missing_images(kube_api, images)
    if missing:
        unavailable(f"images not loaded into the cluster: {missing} (run `make images`)")
    # Bring the shared CRDs up to date: `helm install` would keep an older CodingJob CRD as is.
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    core = client.CoreV1Api(kube_api)
    suffix = uuid.uuid4().hex[:6]
    namespace, name = f"t-chart-{suffix}", f"chart-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    args = ["install", name, str(CHART), "--namespace", namespace]
    # The default CodingJobClass is cluster-scoped: one release of the module's two owns it.
    defaults = (
        [] if any(v.startswith("defaultClass.") for v in values) else ["defaultClass.create=false"]
    )
    for value in (f"watchNamespaces={{{namespace}}}", *defaults, *values):
        args += ["--set", value]
    try:
        proc = helm(*args, "--wait", "--timeout", INSTALL_TIMEOUT)
        assert proc.returncode == 0, f"helm install failed:\n{proc.stderr}\n{_diagnose(namespace)}"
        yield Release(name, namespace, f"{name}-codingjob-operator", proc.stdout)
    finally:
        # The ClusterRole and its binding are cluster-scoped: deleting the namespace would leave
        # them behind.
        helm("uninstall", name, "--namespace", namespace, "--wait")
        core.delete_namespace(namespace, propagation_policy="Background")


@pytest.fixture(scope="module")
def release(kube_api: client.ApiClient) -> Iterator[Release]:
    """The chart with its default values (bundled MinIO), installed once for this module."""
    with installed(kube_api, OPERATOR_IMAGES) as result:
        yield result


@pytest.fixture(scope="module")
def demo_release(kube_api: client.ApiClient) -> Iterator[Release]:
    """The chart with the scripted demo model and no object storage."""
    with installed(
        kube_api, DEMO_IMAGES, "scriptedModel.enabled=true", "minio.enabled=false"
    ) as result:
        yield result


def _diagnose(namespace: str) -> str:
    """Pods and recent events of the namespace, for a failed install's message."""
    pods = kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
    events = kubectl(
        "-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False
    ).stdout
    return f"pods:\n{pods}\nevents:\n{events[-4000:]}"


def test_install_makes_the_operator_and_minio_ready(
    kube_api: client.ApiClient, release: Release
) -> None:
    apps = client.AppsV1Api(kube_api)
    for name in (release.fullname, f"{release.fullname}-minio"):
        deployment = plain(kube_api, apps.read_namespaced_deployment(name, release.namespace))
        assert deployment["status"].get("readyReplicas") == 1, name
    pods = (
        client.CoreV1Api(kube_api)
        .list_namespaced_pod(
            release.namespace, label_selector="app.kubernetes.io/component=operator"
        )
        .items
    )
    assert len(pods) == 1
    operator = pods[0]
    assert pod_ready(operator)
    # Ready through kopf's /healthz, and not by restarting until it happened to work.
    pod = plain(kube_api, operator)
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_crds_are_established(kube_api: client.ApiClient, release: Release) -> None:
    api = client.ApiextensionsV1Api(kube_api)
    for name in (
        "codingjobs.codingjob.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ):
        crd = plain(kube_api, api.read_custom_resource_definition(name))
        established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
        assert established and established[0]["status"] == "True", name


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("watch", "codingjobs.codingjob.dev", True),
        ("patch", "codingjobs.codingjob.dev/status", True),
        ("create", "pods", True),
        ("get", "pods/proxy", True),
        ("create", "persistentvolumeclaims", True),
        ("delete", "secrets", True),
        ("create", "networkpolicies.networking.k8s.io", True),
        ("create", "jobs.batch", True),
        ("create", "events", True),
        # Secrets are only listed (by the operator's own label, or the model-credentials consent
        # label) and never read by a name a job author chose.
        ("list", "secrets", True),
        # Least privilege: nothing the operator does not use.
        ("get", "secrets", False),
        ("update", "pods", False),
        ("create", "pods/exec", False),
        ("create", "deployments.apps", False),
        ("delete", "namespaces", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
    ],
)
def test_the_service_account_may_do_what_the_operator_needs(
    release: Release, verb: str, resource: str, allowed: bool
) -> None:
    user = f"system:serviceaccount:{release.namespace}:{release.fullname}"
    # `kubectl auth can-i VERB a/b` would read b as an object name: subresources go separately.
    kind, _, subresource = resource.partition("/")
    args = (
        ["auth", "can-i", verb, kind, f"--subresource={subresource}"]
        if subresource
        else ["auth", "can-i", verb, kind]
    )
    # The watched namespace: with plain watchNamespaces the operator's rights are Roles there.
    proc = kubectl(*args, "-n", release.namespace, "--as", user, check=False)
    assert proc.stdout.strip() == ("yes" if allowed else "no"), proc.stderr


def test_notes_print_the_next_steps(release: Release) -> None:
    notes = release.notes
    assert "kubectl get codingjobs -w" in notes
    assert "kubectl get codingjobs -o wide" in notes
    assert "6080:6080" in notes
    assert (
        f"kubectl -n {release.namespace} port-forward svc/{release.fullname}-minio 9000:9000"
        in notes
    )
    # The printed MinIO Service is the one the chart made.
    kubectl("-n", release.namespace, "get", "service", f"{release.fullname}-minio")


def _identity(core: client.CoreV1Api, namespace: str, secret: str) -> tuple[str, str]:
    data = core.read_namespaced_secret(secret, namespace).data or {}
    return (
        base64.b64decode(data["access-key"]).decode(),
        base64.b64decode(data["secret-key"]).decode(),
    )


def _denied(call: Any) -> bool:
    try:
        call()
    except S3Error as error:
        return error.code == "AccessDenied"
    return False


def test_the_setup_hook_gives_the_operator_and_the_signer_their_own_users(
    kube_api: client.ApiClient, release: Release
) -> None:
    """After `helm install`, the storage-setup hook made the bucket and the two users: the
    operator's may write and delete in its bucket and not administer MinIO, the signer's only
    reads."""
    core = client.CoreV1Api(kube_api)
    operator_keys = _identity(core, release.namespace, f"{release.fullname}-storage-operator")
    signer_keys = _identity(core, release.namespace, f"{release.fullname}-storage-signer")
    root_keys = _identity(core, release.namespace, f"{release.fullname}-storage")
    assert len({operator_keys, signer_keys, root_keys}) == 3
    bucket = "codingjob-artifacts"
    with port_forward(release.namespace, f"svc/{release.fullname}-minio", 9000) as port:

        def connect(keys: tuple[str, str]) -> Minio:
            return Minio(
                f"127.0.0.1:{port}",
                access_key=keys[0],
                secret_key=keys[1],
                secure=False,
                region="us-east-1",
            )

        operator, signer = connect(operator_keys), connect(signer_keys)
        assert operator.bucket_exists(bucket)
        operator.put_object(bucket, "t/job/uid/probe", io.BytesIO(b"probe"), 5)
        assert signer.get_object(bucket, "t/job/uid/probe").read() == b"probe"
        assert _denied(lambda: signer.put_object(bucket, "t/x", io.BytesIO(b"x"), 1))
        assert _denied(lambda: signer.remove_object(bucket, "t/job/uid/probe"))
        # Not an administrator: it cannot make buckets of its own.
        assert _denied(lambda: operator.make_bucket("not-the-operators"))
        operator.remove_object(bucket, "t/job/uid/probe")


@contextlib.contextmanager
def port_forward(namespace: str, target: str, remote: int) -> Iterator[int]:
    """`kubectl port-forward` to a free local port; yields it once it accepts connections."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = int(probe.getsockname()[1])
    proc = subprocess.Popen(
        [tool("kubectl"), "-n", namespace, "port-forward", target, f"{local}:{remote}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), 1):
                break
            assert proc.poll() is None, f"port-forward {target} ended"
            assert time.monotonic() < deadline, f"port-forward {target} did not open"
            time.sleep(0.2)
        yield local
    finally:
        proc.terminate()
        proc.wait(10)


def test_upgrade_keeps_the_generated_minio_credentials(
    kube_api: client.ApiClient, release: Release
) -> None:
    core = client.CoreV1Api(kube_api)
    secret = f"{release.fullname}-storage"
    before = core.read_namespaced_secret(secret, release.namespace).data
    proc = helm(
        "upgrade",
        release.name,
        str(CHART),
        "--namespace",
        release.namespace,
        "--reuse-values",
        "--set",
        "storage.bucket=upgraded-bucket",
        "--wait",
        "--timeout",
        INSTALL_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert core.read_namespaced_secret(secret, release.namespace).data == before
    config = plain(kube_api, core.read_namespaced_config_map(release.fullname, release.namespace))
    assert config["data"]["CODINGJOB_STORAGE_BUCKET"] == "upgraded-bucket"
    # The post-upgrade hook made the new bucket and moved the operator's policy to it.
    access, secret_key = _identity(core, release.namespace, f"{release.fullname}-storage-operator")
    with port_forward(release.namespace, f"svc/{release.fullname}-minio", 9000) as port:
        operator = Minio(
            f"127.0.0.1:{port}",
            access_key=access,
            secret_key=secret_key,
            secure=False,
            region="us-east-1",
        )
        assert operator.bucket_exists("upgraded-bucket")
        operator.put_object("upgraded-bucket", "t/job/uid/probe", io.BytesIO(b"probe"), 5)


def test_the_scripted_demo_model_serves_under_the_charts_hardening(
    kube_api: client.ApiClient, demo_release: Release
) -> None:
    apps = client.AppsV1Api(kube_api)
    deployment = plain(
        kube_api, apps.read_namespaced_deployment("scripted-model", demo_release.namespace)
    )
    assert deployment["status"].get("readyReplicas") == 1
    # Through the API server's service proxy: the model answers at the URL the operator defaults to.
    models = kubectl(
        "get",
        "--raw",
        f"/api/v1/namespaces/{demo_release.namespace}/services/scripted-model:8000/proxy/v1/models",
    ).stdout
    assert "scripted-demo-model" in models
    config = plain(
        kube_api,
        client.CoreV1Api(kube_api).read_namespaced_config_map(
            demo_release.fullname, demo_release.namespace
        ),
    )["data"]
    assert config["CODINGJOB_DEFAULT_MODEL_BASE_URL"] == (
        f"http://scripted-model.{demo_release.namespace}.svc:8000/v1"
    )
    assert not [key for key in config if key.startswith("CODINGJOB_STORAGE_")]
