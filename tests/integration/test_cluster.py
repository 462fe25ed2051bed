"""The cluster under the tests is real: storage, DNS, services, port-forward, GC, native sidecars.

Every pod uses the project's base image (there is no registry) and runs as the agent does:
uid/gid 1000, no capabilities, no privilege escalation.
"""
# The client accepts plain manifests (dicts) wherever its signatures name a model class.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from tests.fixtures.cluster import (
    pod_finished,
    pod_ready,
    tool,
    unavailable,
    wait_for_deletion,
    wait_for_pod,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("BASE_IMAGE", "codingjob/base:bookworm")
#: A one-connection-at-a-time TCP server in the base image (perl-base is always installed):
#: answers every connection with $REPLY and closes it.
PERL_SERVER = (
    "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => $ENV{PORT}, Listen => 5,"
    " ReuseAddr => 1) or die $!; while (my $c = $s->accept) { print $c $ENV{REPLY}; close $c }"
)


def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A container of the base image that runs `script` with the agent's restrictions."""
    return {
        "name": name,
        "image": BASE_IMAGE,
        # No registry: the image was loaded into the node's containerd.
        "imagePullPolicy": "IfNotPresent",
        "command": ["bash", "-c", script],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        **extra,
    }


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """A pod manifest running as uid/gid 1000 with fsGroup 1000, like the agent's sandbox."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": containers,
            **spec,
        },
    }


def server_pod(name: str, port: int, reply: str) -> dict[str, Any]:
    """A pod whose port `port` answers every connection with `reply`."""
    return pod(
        name,
        [
            container(
                "server",
                f"exec perl -e '{PERL_SERVER}'",
                env=[{"name": "PORT", "value": str(port)}, {"name": "REPLY", "value": reply}],
                ports=[{"containerPort": port}],
                readinessProbe={"tcpSocket": {"port": port}, "periodSeconds": 1},
            )
        ],
    )


def claim(name: str) -> dict[str, Any]:
    """A 1Gi ReadWriteOnce PVC without storageClassName: the default StorageClass provisions it."""
    return {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def as_dict(kube_api: client.ApiClient, obj: Any) -> dict[str, Any]:
    """An API object as its JSON manifest (camelCase keys, optional fields absent)."""
    manifest: dict[str, Any] = cast(Any, kube_api).sanitize_for_serialization(obj)
    return manifest


def logs(core: client.CoreV1Api, namespace: str, name: str, container: str | None = None) -> str:
    return str(core.read_namespaced_pod_log(name, namespace, container=container))


def test_pod_writes_pvc_and_resolves_cluster_dns(
    kube_api: client.ApiClient, namespace: str
) -> None:
    """A non-root pod writes to a dynamically provisioned PVC and resolves the API service."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_persistent_volume_claim(namespace, claim("data"))
    script = (
        "set -e; echo written-by-$(id -u) > /data/proof; cat /data/proof;"
        " getent hosts kubernetes.default.svc.cluster.local"
    )
    mount = {"name": "data", "mountPath": "/data"}
    manifest = pod("writer", [container("main", script, volumeMounts=[mount])])
    manifest["spec"]["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    core.create_namespaced_pod(namespace, manifest)

    done = as_dict(kube_api, wait_for_pod(core, namespace, "writer", pod_finished, timeout=180))

    out = logs(core, namespace, "writer")
    assert done["status"]["phase"] == "Succeeded", out
    assert "written-by-1000" in out
    service = as_dict(kube_api, core.read_namespaced_service("kubernetes", "default"))
    service_ip = service["spec"]["clusterIP"]
    assert re.search(rf"^{re.escape(service_ip)}\s+kubernetes\.default\.svc", out, re.M), out


def test_deleting_a_pvc_deletes_its_volume_and_data(
    kube_api: client.ApiClient, namespace: str
) -> None:
    """The default StorageClass reclaims with Delete: the PV and its directory go with the PVC."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_persistent_volume_claim(namespace, claim("scratch"))
    mount = {"name": "data", "mountPath": "/data"}
    manifest = pod("filler", [container("main", "echo data > /data/file", volumeMounts=[mount])])
    manifest["spec"]["volumes"] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "scratch"}}
    ]
    core.create_namespaced_pod(namespace, manifest)
    filled = as_dict(kube_api, wait_for_pod(core, namespace, "filler", pod_finished, 180))
    assert filled["status"]["phase"] == "Succeeded"
    bound = core.read_namespaced_persistent_volume_claim("scratch", namespace)
    pv_name = as_dict(kube_api, bound)["spec"]["volumeName"]
    pv = as_dict(kube_api, core.read_persistent_volume(pv_name))
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    host_path = Path((pv["spec"].get("hostPath") or pv["spec"]["local"])["path"])

    core.delete_namespaced_pod("filler", namespace, grace_period_seconds=0)
    core.delete_namespaced_persistent_volume_claim("scratch", namespace)

    wait_for_deletion(core.list_persistent_volume, name=pv_name, timeout=120)
    if os.environ.get("KUBECONFIG", "").startswith(_local_cluster_dir()):
        # On the local cluster the node is this machine: the data itself must be gone.
        assert not host_path.exists()


def _local_cluster_dir() -> str:
    return os.environ.get("CODINGJOB_CLUSTER_DIR", "/var/lib/codingjob-cluster")


def test_pod_reaches_another_pods_service_by_dns_name(
    kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    token = uuid.uuid4().hex
    core.create_namespaced_pod(namespace, server_pod("echo", 8080, token))
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "echo"},
            "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    wait_for_pod(core, namespace, "echo", pod_ready, timeout=120)

    # Retries cover the moment between the endpoint appearing and kube-proxy's rules landing.
    fqdn = f"echo.{namespace}.svc.cluster.local"
    script = (
        "for i in $(seq 30); do"
        f" if out=$(timeout 3 bash -c 'exec 3<>/dev/tcp/{fqdn}/80 && cat <&3'); then"
        ' echo "reply: $out"; exit 0; fi; sleep 1; done; exit 1'
    )
    core.create_namespaced_pod(namespace, pod("client", [container("main", script)]))
    done = as_dict(kube_api, wait_for_pod(core, namespace, "client", pod_finished, timeout=120))

    out = logs(core, namespace, "client")
    assert done["status"]["phase"] == "Succeeded", out
    assert f"reply: {token}" in out


def test_port_forward_returns_the_pods_bytes(
    kube_api: client.ApiClient, namespace: str, kubeconfig: str
) -> None:
    core = client.CoreV1Api(kube_api)
    token = uuid.uuid4().hex
    core.create_namespaced_pod(namespace, server_pod("web", 8080, token))
    wait_for_pod(core, namespace, "web", pod_ready, timeout=120)

    proc = subprocess.Popen(
        [
            tool("kubectl"),
            "--kubeconfig",
            kubeconfig,
            "-n",
            namespace,
            "port-forward",
            "pod/web",
            ":8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # kubectl announces the chosen local port on its first line.
        first = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+) ->", first)
        assert match, f"unexpected port-forward output: {first!r}"
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=10) as conn:
            received = b""
            while chunk := conn.recv(4096):
                received += chunk
        assert received.decode() == token
    finally:
        proc.terminate()
        proc.wait(10)


def test_deleting_an_owner_deletes_what_it_owns(kube_api: client.ApiClient, namespace: str) -> None:
    """The garbage collector removes dependents whose owner is gone."""
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": as_dict(kube_api, owner)["metadata"]["uid"],
    }
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}, "data": {"k": "v"}}
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    # The garbage collector, not the client, removes the child.
    wait_for_deletion(core.list_namespaced_config_map, namespace, name="child", timeout=60)


def test_native_sidecar_runs_before_main_and_stops_after_it(
    kube_api: client.ApiClient, namespace: str
) -> None:
    """An init container with restartPolicy Always starts first and is stopped when main exits."""
    core = client.CoreV1Api(kube_api)
    sidecar = container(
        "sidecar",
        # Marks that it runs, then waits to be stopped; a TERM ends it cleanly.
        "trap 'exit 0' TERM; date +%s%N > /shared/sidecar-started; while true; do sleep 0.2; done",
        restartPolicy="Always",
        volumeMounts=[{"name": "shared", "mountPath": "/shared"}],
    )
    main = container(
        "main",
        "test -s /shared/sidecar-started && echo sidecar-was-up",
        volumeMounts=[{"name": "shared", "mountPath": "/shared"}],
    )
    shared = [{"name": "shared", "emptyDir": {}}]
    manifest = pod("sidecar", [main], initContainers=[sidecar], volumes=shared)
    core.create_namespaced_pod(namespace, manifest)

    done = as_dict(kube_api, wait_for_pod(core, namespace, "sidecar", pod_finished, timeout=120))

    main_log = logs(core, namespace, "sidecar", "main")
    assert done["status"]["phase"] == "Succeeded", main_log
    assert "sidecar-was-up" in main_log
    (side,) = done["status"]["initContainerStatuses"]
    (primary,) = done["status"]["containerStatuses"]
    assert "terminated" in side["state"], "the sidecar still runs after the pod completed"
    assert primary["state"]["terminated"]["exitCode"] == 0
    # RFC 3339 UTC timestamps of one clock compare correctly as strings.
    side_run, main_run = side["state"]["terminated"], primary["state"]["terminated"]
    assert side_run["startedAt"] <= main_run["startedAt"]
    assert side_run["finishedAt"] >= main_run["finishedAt"]


def _local_cluster_only(kubeconfig: str) -> Path:
    """The local cluster's runtime dir; skips the test on a cluster the user brought."""
    if not kubeconfig.startswith(_local_cluster_dir()):
        unavailable(
            "this checks hack/cluster/up.sh, which manages only the local cluster "
            "(CI must run on it)"
        )
    return Path(os.environ.get("CODINGJOB_CLUSTER_RUN_DIR", "/run/codingjob-cluster"))


def _up() -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    up = REPO / "hack" / "cluster" / "up.sh"
    return subprocess.run([str(up)], capture_output=True, text=True, env=env, timeout=300)


def test_up_on_a_running_cluster_changes_nothing(kubeconfig: str) -> None:
    run_dir = _local_cluster_only(kubeconfig)
    pids = {p.name: p.read_text() for p in run_dir.glob("*.pid")}

    proc = _up()

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == kubeconfig
    assert "already up" in proc.stderr
    assert {p.name: p.read_text() for p in run_dir.glob("*.pid")} == pids


def test_up_restarts_a_component_that_died(kube_api: client.ApiClient, kubeconfig: str) -> None:
    """A killed component leaves a stale pid file; up.sh notices and starts it again."""
    run_dir = _local_cluster_only(kubeconfig)
    pid_file = run_dir / "kube-scheduler.pid"
    old_pid = int(pid_file.read_text())
    os.kill(old_pid, signal.SIGKILL)

    proc = _up()

    assert proc.returncode == 0, proc.stderr
    assert "starting kube-scheduler" in proc.stderr
    new_pid = int(pid_file.read_text())
    assert new_pid != old_pid
    assert Path(f"/proc/{new_pid}/exe").resolve().name == "kube-scheduler"
    # A daemon holding up.sh's lock would make every later up.sh wait for it.
    open_files = [str(fd.readlink()) for fd in Path(f"/proc/{new_pid}/fd").iterdir()]
    assert not [f for f in open_files if f.endswith(".lock")], open_files
