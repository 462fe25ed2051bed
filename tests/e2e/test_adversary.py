"""The adversary suite: hostile code in a sandbox, probing everything the product promises to
keep from it, on the real cluster.

The scripted scenario ``adversary`` (agent-image/scenario_sources/adversary/) writes a probe
script into its workspace and runs it from the agent container: the API server, the kubelet,
the node, MinIO, the operator, the provider behind the relay, a neighbouring sandbox's desktop,
Jupyter and stats ports, a decoy server whose address lies in the egress floor, resolvers other
than the cluster DNS, the relay with forged credentials; secrets in /proc and in files, the
sidecar's memory and journal, request-body floods and a parse bomb against the sidecar, a fork
bomb; then it drives the sidecar past maxSteps itself, forges its result and termination
message, fills the writable paths past the ephemeral-storage limit and kills the agent.

This test sets up the neighbour and the decoy, passes their addresses (and the cluster's) in the
task, reads both reports from the archived workspace, adds what only the outside can judge (the
pod evicted, the sidecar never restarted, the node Ready, the neighbour untouched, the decoy
contacted by nobody, the status carrying the real counts) and fails on any success of the
adversary. Every address probed belongs to this cluster: nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import secrets
import threading
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from codingjob_agent.protocol import JOURNAL_PATH
from codingjob_operator.classes import parse_quantity
from kubernetes import client

from tests.e2e.conftest import ARTIFACTS, REPO, free_port, helm, port_forward, wait_for
from tests.fixtures.cluster import kubectl

# One module, one release of its own: its test stays on one worker (--dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("adversary")]

GROUP, VERSION, PLURAL = "codingjob.dev", "v1alpha1", "codingjobs"
#: A release of its own (the relay, MinIO, the scripted model, the cluster's networks in the
#: egress floor), so the suite depends on no other test's release and can run beside them. Its
#: operator watches only PREFIX* namespaces, which the main e2e release (`t-*`) never touches.
SYSTEM = "codingjob-adversary-e2e-system"
RELEASE = "codingjob-adversary-e2e"
PREFIX = "adversary-e2e-"
CLASS = "adversary-e2e"
MAX_STEPS = 8
#: The agent's ephemeral-storage limit: small, so that filling past it is quick and bounded.
AGENT_EPHEMERAL_LIMIT = 256 * 1024**2
MARGIN = 64 * 1024**2
TARGETS_MARKER = "ADVERSARY-TARGETS:"
#: What the probe writes into its termination message and result (FORGED_RESULT there).
FORGED_STEPS, FORGED_TOKENS, FORGED_REASON = 999_999, 123_456_789, "Pwned"
DECOY_TCP_PORT, DECOY_UDP_PORT = 8080, 5353
#: The decoy: answers on TCP 8080, UDP 5353 and DNS (UDP/TCP 53), and logs every contact.
DECOY_SCRIPT = r"""
import socket, socketserver, sys, threading
def log(kind, addr):
    sys.stdout.write(f"contact {kind} from {addr[0]}\n")
    sys.stdout.flush()
class T(socketserver.BaseRequestHandler):
    def handle(self):
        log(f"tcp {self.server.server_address[1]}", self.client_address)
        try:
            self.request.sendall(b"decoy\n")
        except OSError:
            pass
class U(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        log(f"udp {self.server.server_address[1]}", self.client_address)
        sock.sendto(data, self.client_address)
socketserver.ThreadingTCPServer.allow_reuse_address = True
servers = [socketserver.ThreadingTCPServer(("0.0.0.0", 8080), T),
           socketserver.ThreadingTCPServer(("0.0.0.0", 53), T),
           socketserver.ThreadingUDPServer(("0.0.0.0", 5353), U),
           socketserver.ThreadingUDPServer(("0.0.0.0", 53), U)]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("decoy ready", flush=True)
servers[0].serve_forever()
"""


def adversary_class() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CodingJobClass",
        "metadata": {"name": CLASS},
        "spec": {
            "limits": {
                "activeDeadlineSeconds": {"default": 900, "max": 900},
                # The adversary gets the default; the neighbour, which must outlive it, more.
                "maxSteps": {"default": MAX_STEPS, "max": 10_000},
                "maxTotalTokens": {"default": 2_000_000, "max": 2_000_000},
            },
            "resources": {
                "cpu": {"defaultRequest": "100m", "defaultLimit": "1", "max": "2"},
                "memory": {"defaultRequest": "256Mi", "defaultLimit": "2Gi", "max": "2Gi"},
                "ephemeralStorage": {
                    "defaultRequest": "64Mi",
                    "defaultLimit": "256Mi",
                    "max": "256Mi",
                },
            },
            # Open: everything but the floor. The adversary gets the widest egress a class can
            # give, so every block it meets is the floor's (Restricted only allows less).
            "network": {"allowedEgressModes": ["Restricted", "Open"]},
            "model": {"providers": ["scripted"]},
        },
    }


@dataclass(frozen=True)
class Release:
    namespace: str
    #: The port MinIO is forwarded to: the archive's presigned URL is signed for it.
    minio_local_port: int
    #: The egress floor the sandboxes get beyond metadata: the cluster's networks.
    denied_cidrs: tuple[str, ...]


def cluster_networks(core: client.CoreV1Api) -> tuple[str, ...]:
    """The cluster's own networks, for the egress floor: the node addresses, the pod range of
    each node (its podCIDR widened to /16, else the /16 around the cluster DNS pods) and the /16
    around the API server's Service address."""
    nets: set[str] = set()
    for node in core.list_node().items:
        for address in node.status.addresses or []:
            if address.type == "InternalIP":
                nets.add(f"{address.address}/32")
        for cidr in node.spec.pod_cidrs or ([node.spec.pod_cidr] if node.spec.pod_cidr else []):
            nets.add(str(ipaddress.ip_network(cidr).supernet(new_prefix=16)))
    for pod in core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns").items:
        if pod.status.pod_ip:
            nets.add(str(ipaddress.ip_network(f"{pod.status.pod_ip}/16", strict=False)))
    api = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    nets.add(str(ipaddress.ip_network(f"{api}/16", strict=False)))
    return tuple(sorted(nets))


@pytest.fixture(scope="module")
def release(kube_api: client.ApiClient) -> Iterator[Release]:
    """The chart with the relay (its provider the scripted model, with a key from a Secret),
    MinIO, and the cluster's own networks in the sandboxes' egress floor."""
    core = client.CoreV1Api(kube_api)
    key = "sk-e2e-provider-" + secrets.token_hex(16)
    denied = cluster_networks(core)
    minio_port = free_port()
    # Helm installs a chart's CRDs only when absent: bring the shared ones up to date.
    kubectl(
        "apply", "--server-side", "--force-conflicts",
        "-f", str(REPO / "charts" / "codingjob-operator" / "crds"),
    )  # fmt: skip
    helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", check=False)
    kubectl("create", "namespace", SYSTEM, check=False)
    kubectl("-n", SYSTEM, "delete", "secret", "e2e-provider-key", "--ignore-not-found")
    kubectl(
        "-n", SYSTEM, "create", "secret", "generic", "e2e-provider-key",
        f"--from-literal=api-key={key}",
    )  # fmt: skip
    base = f"http://scripted-model.{SYSTEM}.svc:8000/v1"
    result = helm(
        "upgrade", "--install", RELEASE, str(REPO / "charts" / "codingjob-operator"),
        "--namespace", SYSTEM,
        "--set", "scriptedModel.enabled=true",
        "--set", f"watchNamespaces={{{PREFIX}*}}",
        "--set", f"storage.publicEndpoint=http://localhost:{minio_port}",
        "--set", f"sandboxNetwork.deniedCIDRs={{{','.join(denied)}}}",
        "--set", "relay.enabled=true",
        "--set", "relay.providers[0].name=scripted",
        "--set", f"relay.providers[0].baseURL={base}",
        "--set", "relay.providers[0].apiKeySecret.name=e2e-provider-key",
        "--set", "relay.providers[0].apiKeySecret.key=api-key",
        # The default class is cluster-scoped and owned by the main e2e release; this release
        # uses a class of its own.
        "--set", "defaultClass.create=false",
        "--wait", "--timeout", "5m",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    yield Release(SYSTEM, minio_port, denied)
    # Always removed: only this module uses it (CODINGJOB_E2E_KEEP keeps the shared e2e release).
    helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", check=False)
    core.delete_namespace(SYSTEM)


def decoy_pod(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "decoy", "namespace": namespace, "labels": {"app": "decoy"}},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65534,
                "seccompProfile": {"type": "RuntimeDefault"},
                # Port 53 without a capability: a resolver stand-in, not root.
                "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
            },
            "containers": [
                {
                    "name": "decoy",
                    "image": "codingjob/operator:dev",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "-u", "-c", DECOY_SCRIPT],
                    "readinessProbe": {"tcpSocket": {"port": DECOY_TCP_PORT}, "periodSeconds": 1},
                    "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                }
            ],
        },
    }


def decoy_service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "decoy", "namespace": namespace},
        "spec": {
            "selector": {"app": "decoy"},
            "ports": [
                {"name": "tcp", "port": DECOY_TCP_PORT, "protocol": "TCP"},
                {"name": "udp", "port": DECOY_UDP_PORT, "protocol": "UDP"},
            ],
        },
    }


def codingjob(namespace: str, name: str, task: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CodingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"task": task, "className": CLASS, "workspace": {"size": "1Gi"}, **spec},
    }


@dataclass
class PodWatch:
    """Polls the adversary's pod while it lives: what only the outside sees."""

    core: client.CoreV1Api
    namespace: str
    name: str
    sidecar_restarts: int = 0
    #: Why the sidecar last ended (OOMKilled, Error, ...) and how many seconds into the watch.
    sidecar_last: str | None = None
    reason: str | None = None
    message: str | None = None
    pod_ip: str | None = None
    agent_exit: int | None = None
    agent_message: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        while not self.stop.is_set():
            try:
                pod = self.core.read_namespaced_pod(self.name, self.namespace)
            except client.ApiException:
                pod = None
            if pod is not None and pod.status is not None:
                self.pod_ip = pod.status.pod_ip or self.pod_ip
                self.reason = pod.status.reason or self.reason
                self.message = pod.status.message or self.message
                for status in [
                    *(pod.status.init_container_statuses or []),
                    *(pod.status.container_statuses or []),
                ]:
                    # Only while the pod lives: tearing down an evicted pod, the kubelet marks
                    # the sidecar restarted (ContainerStatusUnknown, 137), which no attack did.
                    alive = pod.status.phase == "Running" and not pod.status.reason
                    alive = alive and not pod.metadata.deletion_timestamp
                    if status.name == "context-manager" and alive:
                        if status.restart_count > self.sidecar_restarts:
                            last = status.last_state.terminated if status.last_state else None
                            self.sidecar_last = (
                                f"{last.reason} (exit {last.exit_code}) at {last.finished_at}"
                                if last
                                else "unknown"
                            )
                        self.sidecar_restarts = max(self.sidecar_restarts, status.restart_count)
                    terminated = status.state.terminated if status.state else None
                    if status.name == "agent" and terminated is not None:
                        self.agent_exit = terminated.exit_code
                        self.agent_message = terminated.message
            self.stop.wait(1)

    @contextlib.contextmanager
    def running(self) -> Iterator[PodWatch]:
        thread = threading.Thread(target=self.poll, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join(10)


def record(probe: str, expected: str, observed: str, ok: bool) -> dict[str, Any]:
    return {"probe": probe, "kind": "attack", "expected": expected, "observed": observed, "ok": ok}


def ephemeral_limit(container: client.V1Container) -> int:
    limits = (container.resources.limits if container.resources else None) or {}
    return int(parse_quantity(limits.get("ephemeral-storage", "0")))


def targets(
    core: client.CoreV1Api,
    release: Release,
    neighbour: client.V1Pod,
    neighbour_job: dict[str, Any],
    decoy: client.V1Pod,
    decoy_svc: client.V1Service,
) -> dict[str, Any]:
    """Addresses of this cluster's own parts, for the probes, and the bounds to exceed."""
    system = release.namespace

    def component(kind: str) -> str:
        return f"app.kubernetes.io/component={kind}"

    api = core.read_namespaced_service("kubernetes", "default")
    endpoints = core.read_namespaced_endpoints("kubernetes", "default")
    node = next(
        a.address
        for a in core.read_node(neighbour.spec.node_name).status.addresses
        if a.type == "InternalIP"
    )
    relay = core.list_namespaced_service(system, label_selector=component("model-relay")).items[0]
    model = core.list_namespaced_service(system, label_selector=component("scripted-model")).items
    minio = core.list_namespaced_service(system, label_selector=component("minio")).items
    nb_name = neighbour_job["metadata"]["name"]
    nb_service = core.read_namespaced_service(f"{nb_name}-desktop", neighbour.metadata.namespace)
    # The neighbour's pod has the adversary's shape. Every write counts toward the pod's total
    # (the sum of its containers' limits), so a fill past it is past every bound that applies.
    sidecar = next(c for c in neighbour.spec.init_containers if c.name == "context-manager")
    fill = AGENT_EPHEMERAL_LIMIT + ephemeral_limit(sidecar) + MARGIN
    return {
        "api_service": [api.spec.cluster_ip, 443],
        "api_endpoints": [
            [a.ip, p.port] for s in endpoints.subsets or [] for a in s.addresses for p in s.ports
        ],
        "node_ip": node,
        "minio": {
            "service": minio[0].spec.cluster_ip if minio else None,
            "pods": [
                p.status.pod_ip
                for p in core.list_namespaced_pod(system, label_selector=component("minio")).items
            ],
            "port": 9000,
        },
        "operator_pods": [
            p.status.pod_ip
            for p in core.list_namespaced_pod(system, label_selector=component("operator")).items
        ],
        "operator_ports": [8080, 8082],
        "provider": [model[0].spec.cluster_ip, 8000] if model else None,
        "relay": {
            "host": relay.spec.cluster_ip,
            "port": next(p.port for p in relay.spec.ports if p.name != "metrics"),
            "metrics_port": next((p.port for p in relay.spec.ports if p.name == "metrics"), None),
            "model": "scripted/never-finish",
            "neighbour_claims": {
                "namespace": neighbour.metadata.namespace,
                "name": nb_name,
                "uid": neighbour_job["metadata"]["uid"],
                "provider": "scripted",
            },
        },
        "neighbour": {
            "pod_ip": neighbour.status.pod_ip,
            "ports": {"vnc": 5900, "novnc": 6080, "jupyter": 8888, "stats": 8081, "gateway": 8080},
            "service_ip": nb_service.spec.cluster_ip,
            "service_ports": {"vnc": 5900, "novnc": 6080, "jupyter": 8888},
        },
        "decoy": {
            "pod_ip": decoy.status.pod_ip,
            "service_ip": decoy_svc.spec.cluster_ip,
            "tcp_port": DECOY_TCP_PORT,
            "udp_port": DECOY_UDP_PORT,
        },
        "dns_pods": [
            p.status.pod_ip
            for p in core.list_namespaced_pod(
                "kube-system", label_selector="k8s-app=kube-dns"
            ).items
        ],
        # The sidecar's journal where the contract puts it, and where it used to be.
        "journal_paths": sorted({JOURNAL_PATH, "context.jsonl"}),
        "counter_paths": [],
        "ephemeral_fill_bytes": fill,
    }


@pytest.fixture
def namespaces(release: Release, kube_api: client.ApiClient) -> Iterator[tuple[str, str, str]]:
    """The adversary's, the neighbour's (both watched by the relay release's operator) and the
    decoy's namespaces, Pod Security restricted, deleted afterwards."""
    core = client.CoreV1Api(kube_api)
    suffix = uuid.uuid4().hex[:6]
    names = (
        f"{PREFIX}{suffix}",
        f"{PREFIX}neighbour-{suffix}",
        f"{PREFIX}decoy-{suffix}",
    )
    labels = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "warn")}
    for name in names:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
        )
    try:
        for name in names:
            wait_for(
                f"the default ServiceAccount in {name}",
                lambda n=name: core.list_namespaced_service_account(n).items,
                60,
            )
        yield names
    finally:
        # The jobs go first, while the release's operator still runs to remove its finalizers;
        # a namespace deleted after the release would keep its sandboxes forever.
        for name in names[:2]:
            kubectl("delete", "codingjobs", "--all", "-n", name, "--timeout=120s", check=False)
        for name in names:
            core.delete_namespace(name, propagation_policy="Background")
        kubectl("delete", "codingjobclass", CLASS, "--ignore-not-found", "--wait=false")


def save_report(records: list[dict[str, Any]], line: str) -> None:
    """The CI artifacts: every record as JSON, and the table (probe, expected, observed)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "adversary-report.json").write_text(json.dumps(records, indent=2) + "\n")

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")[:300]

    rows = [
        f"| `{r['probe']}` | {r['kind']} | {cell(r['expected'])} | {cell(r['observed'])} | "
        f"{'ok' if r['ok'] else 'SUCCEEDED' if r['kind'] == 'attack' else 'FAILED'} |"
        for r in records
    ]
    table = [
        f"# {line}",
        "",
        "| probe | kind | expected | observed | verdict |",
        "|---|---|---|---|---|",
        *rows,
    ]
    (ARTIFACTS / "adversary-report.md").write_text("\n".join(table) + "\n")


def archived_reports(core: client.CoreV1Api, release: Release, url: str) -> dict[str, Any]:
    """The probe reports from the job's archived workspace (the pod is gone by now)."""
    minio = core.list_namespaced_service(
        release.namespace, label_selector="app.kubernetes.io/component=minio"
    ).items[0]
    with (
        port_forward(
            release.namespace, f"svc/{minio.metadata.name}", 9000, release.minio_local_port
        ),
        urllib.request.urlopen(url, timeout=60) as response,
    ):
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    names = set(archive.namelist())
    return {
        name: json.loads(archive.read(name))
        for name in ("adversary-report.json", "adversary-final.json")
        if name in names
    }


def model_truth(release: Release, model: str) -> tuple[int, int, int]:
    """(steps, prompt tokens, completion tokens) the scripted model answered for ``model``."""
    with (
        port_forward(release.namespace, "svc/scripted-model", 8000) as port,
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_scripted/requests", timeout=30) as answer,
    ):
        log = json.load(answer)["requests"]
    answered = [r for r in log if r.get("model") == model and r.get("status") == 200]
    steps = sum(1 for r in answered if r.get("purpose") == "step")
    return steps, sum(r["tokens"] for r in answered), sum(r["completionTokens"] for r in answered)


def test_the_adversary_gets_nothing(
    release: Release,
    kube_api: client.ApiClient,
    namespaces: tuple[str, str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    core = client.CoreV1Api(kube_api)
    api = client.CustomObjectsApi(kube_api)
    namespace, nb_namespace, decoy_namespace = namespaces
    started = time.monotonic()
    kubectl("apply", "-f", "-", input=yaml.safe_dump(adversary_class()))
    kubectl("apply", "-f", "-", input=yaml.safe_dump(decoy_pod(decoy_namespace)))
    kubectl("apply", "-f", "-", input=yaml.safe_dump(decoy_service(decoy_namespace)))
    neighbour_job = api.create_namespaced_custom_object(
        GROUP,
        VERSION,
        nb_namespace,
        PLURAL,
        codingjob(
            nb_namespace,
            "neighbour",
            "Scripted scenario never-finish",
            model={"name": "scripted/never-finish"},
            limits={"maxSteps": 10_000},
        ),
    )

    def ready(namespace: str, name: str) -> client.V1Pod | None:
        try:
            pod = core.read_namespaced_pod(name, namespace)
        except client.ApiException:
            return None
        conditions = pod.status.conditions or []
        return pod if any(c.type == "Ready" and c.status == "True" for c in conditions) else None

    neighbour = wait_for(
        "the neighbour's desktop", lambda: ready(nb_namespace, "neighbour-agent"), 300
    )
    decoy = wait_for("the decoy", lambda: ready(decoy_namespace, "decoy"), 120)
    decoy_svc = core.read_namespaced_service("decoy", decoy_namespace)
    aims = targets(core, release, neighbour, neighbour_job, decoy, decoy_svc)
    task = f"Scripted scenario adversary\n{TARGETS_MARKER}{json.dumps(aims)}"
    api.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        codingjob(
            namespace,
            "adversary",
            task,
            model={"name": "scripted/adversary"},
            gui={"enabled": False},
            jupyter={"enabled": False},
            network={"egress": "Open"},
            # An eviction ends the job (and its lies) instead of starting it over.
            backoffLimit=0,
            resources={
                "requests": {"ephemeral-storage": "64Mi"},
                "limits": {"ephemeral-storage": str(AGENT_EPHEMERAL_LIMIT)},
            },
        ),
    )
    with PodWatch(core, namespace, "adversary-agent").running() as watch:
        done = wait_for(
            "the adversary's job to end",
            lambda: (
                (
                    s := (
                        api.get_namespaced_custom_object(
                            GROUP, VERSION, namespace, PLURAL, "adversary"
                        ).get("status")
                        or {}
                    )
                ).get("phase")
                in {"Succeeded", "Failed"}
                and s
            ),
            900,
            interval=2,
        )
    assert done.get("downloadURL"), f"the adversary's workspace was not archived: {done}"
    reports = archived_reports(core, release, done["downloadURL"])
    assert "adversary-report.json" in reports, f"no report in the archive: {sorted(reports)}"
    records: list[dict[str, Any]] = [
        *reports["adversary-report.json"],
        *reports.get("adversary-final.json", []),
    ]

    # What only the outside can judge. The kubelet's Evicted event says why it evicted (the
    # operator may delete the evicted pod before a poll of it sees its reason).
    evictions = [
        f"{e.reason}: {e.message}"
        for e in core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=adversary-agent,reason=Evicted"
        ).items
    ]
    if watch.reason == "Evicted":
        evictions.append(f"pod {watch.reason}: {watch.message}")
    # Evicted for its storage, not for anything else (memory, the node's disk).
    for_storage = [e for e in evictions if "ephemeral local storage" in e or "EmptyDir" in e]
    for r in records:
        if r["probe"] == "ephemeral-storage-fill" and r["kind"] == "pending":
            r.update(
                kind="attack",
                observed="; ".join(evictions) or "never evicted",
                ok=bool(for_storage),
            )
    records.append(
        record(
            "workspace-archived-after-eviction",
            "the evicted job's workspace is still archived (these reports come from it)",
            f"{done.get('phase')} {done.get('reason')}: {done.get('message')}; archive "
            f"{(done.get('artifact') or {}).get('key')}, {sorted(reports)}",
            bool(done.get("downloadURL")) and "adversary-final.json" in reports,
        )
    )
    truth_steps, prompt, completion = model_truth(release, "scripted/adversary")
    tokens = done.get("tokens") or {}
    shown = (done.get("steps"), tokens.get("used"), tokens.get("prompt"), tokens.get("completion"))
    truth = (truth_steps, prompt + completion, prompt, completion)
    for r in records:
        if r["probe"] == "forged-termination-message":
            r.update(
                kind="attack",
                observed=f"{r['observed']}; status steps/used/prompt/completion {shown}, reason "
                f"{done.get('reason')!r}; counted {truth}; the agent's termination message "
                f"{(watch.agent_message or '')[:200]!r}",
                ok=shown == truth and done.get("reason") != FORGED_REASON,
            )
    if not any(r["probe"] == "forged-termination-message" for r in records):
        records.append(
            record("forged-termination-message", "the final phase ran", "it did not", False)
        )
    records.append(
        record(
            "sidecar-restarts",
            "the context-manager never restarted while the pod ran (no flood, bomb or fill "
            "brought it down)",
            f"{watch.sidecar_restarts} restarts; last: {watch.sidecar_last}",
            watch.sidecar_restarts == 0,
        )
    )
    nodes = {
        n.metadata.name: next((c.status for c in n.status.conditions if c.type == "Ready"), None)
        for n in core.list_node().items
    }
    records.append(
        record("node-ready", "every node stays Ready", str(nodes), set(nodes.values()) == {"True"})
    )
    try:
        after = core.read_namespaced_pod("neighbour-agent", nb_namespace)
        restarts = sum(
            s.restart_count
            for s in [
                *(after.status.init_container_statuses or []),
                *(after.status.container_statuses or []),
            ]
        )
        same = after.metadata.uid == neighbour.metadata.uid
        observed = f"{after.status.phase}, {restarts} restarts, same pod: {same}"
        unaffected = after.status.phase == "Running" and restarts == 0 and same
    except client.ApiException as error:
        observed, unaffected = f"the neighbour's pod is gone: {error.reason}", False
    records.append(
        record(
            "neighbour-unaffected",
            "the neighbour's pod is the same, Running, never restarted",
            observed,
            unaffected,
        )
    )
    contacts = [
        line
        for line in core.read_namespaced_pod_log("decoy", decoy_namespace).splitlines()
        if watch.pod_ip and line.endswith(f" from {watch.pod_ip}")
    ]
    records.append(
        record(
            "decoy-contacted",
            "the decoy (in the egress floor) never hears from the sandbox",
            f"{len(contacts)} contacts from {watch.pod_ip}: {contacts[:5]}",
            bool(watch.pod_ip) and not contacts,
        )
    )

    attacks = [r for r in records if r["kind"] == "attack"]
    succeeded = [r for r in attacks if not r["ok"]]
    controls = [r for r in records if r["kind"] == "control" and not r["ok"]]
    line = (
        f"adversary: {len(attacks)} probes, {len(succeeded)} succeeded "
        f"({time.monotonic() - started:.0f} s)"
    )
    save_report(records, line)
    # In the build's log whether the test passes or not.
    with capsys.disabled():
        print()
        for r in records:
            mark = "ok" if r["ok"] else "SUCCEEDED" if r["kind"] == "attack" else "CONTROL FAILED"
            print(f"{mark:14} {r['probe']:45} {r['observed'][:160]}")
        print(line)
    assert len(attacks) >= 30, f"only {len(attacks)} probes ran"
    assert not controls, f"what the sandbox must reach was not reachable: {controls}"
    assert not succeeded, "\n".join(
        f"{r['probe']}: expected {r['expected']}; observed {r['observed'][:400]}" for r in succeeded
    )
