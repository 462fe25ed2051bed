"""Golden manifests for every builder option, each validated against the Kubernetes 1.34 schemas.

Regenerate the goldens after an intended change with ``UPDATE_GOLDEN=1 pytest tests/unit/operator``
and review the diff.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from codingjob_operator import builders, classes
from codingjob_operator.classmodels import CodingJobClass
from codingjob_operator.models import CodingJobSpec, ResolvedClass

GOLDEN = Path(__file__).parent / "golden"
KUBERNETES_VERSION = "1.34.0"
JOB = builders.JobRef(
    name="todo-app", namespace="team-a", uid="0b7c2a5e-1f7e-4d1a-9a6c-3f1d2e4b5a69"
)
IMAGES = builders.Images(agent="codingjob/agent:dev", operator="codingjob/operator:dev")
MODEL = builders.ModelEndpoint(
    base_url="http://scripted-model.codingjob-system.svc:8000/v1", name="scripted-demo-model"
)
SERVICE_PEER = builders.EgressPeer(
    cidrs=("10.96.12.34/32",),
    namespace="codingjob-system",
    pod_selector={"app.kubernetes.io/name": "scripted-model"},
    ports=("http", 8000),
)
IP_PEER = builders.EgressPeer(cidrs=("104.18.6.192/32", "2606:4700::6812:6c0/128"), ports=(443,))
STORAGE_ENV = {
    "CODINGJOB_STORAGE_ENDPOINT": "codingjob-minio.codingjob-system.svc:9000",
    "CODINGJOB_STORAGE_ACCESS_KEY": "access",
    "CODINGJOB_STORAGE_SECRET_KEY": "secret",
    "CODINGJOB_STORAGE_BUCKET": "codingjob-artifacts",
}


def spec(**fields: Any) -> CodingJobSpec:
    return CodingJobSpec.model_validate({"task": "Build me a todo app in React", **fields})


FULL = {
    "model": {
        "baseURL": "https://api.openai.com/v1",
        "name": "gpt-4.1",
        "apiKeySecretRef": {"name": "openai", "key": "api-key"},
        "temperature": 0.2,
        "maxOutputTokens": 4096,
    },
    "context": {"maxTokens": 128000, "encoding": "cl100k_base", "strategy": "summarize"},
    "limits": {"activeDeadlineSeconds": 7200, "maxSteps": 400, "maxTotalTokens": 5000000},
    "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": 2, "memory": "4Gi"}},
    "workspace": {"size": "20Gi", "storageClassName": "fast-ssd"},
    "network": {"egress": "Restricted", "allowedCIDRs": ["140.82.112.0/20"]},
}
SANDBOXED = {
    "image": "registry.example.com:5000/codingjob/agent:0.1.0",
    "runtimeClassName": "gvisor",
    "nodeSelector": {"codingjob.dev/sandbox": "true"},
    "tolerations": [
        {"key": "codingjob.dev/sandbox", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "spot",
            "operator": "Equal",
            "value": "yes",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        },
    ],
    "network": {"egress": "Open"},
}


def agent_children(s: CodingJobSpec, peers: tuple[builders.EgressPeer, ...]) -> list[Any]:
    return [
        builders.session_secret(JOB, vnc_password="vncpass1", jupyter_token="jupyter-token"),
        builders.workspace_pvc(JOB, s),
        builders.desktop_service(JOB, s),
        builders.network_policy(JOB, s, model_peers=peers),
        builders.agent_pod(JOB, s, images=IMAGES, model=MODEL),
    ]


GVISOR_CLASS = CodingJobClass.model_validate(
    {
        "metadata": {"name": "gvisor", "generation": 3},
        "spec": {
            "sandbox": {
                "agentImage": "registry.example.com/codingjob/agent:0.1.0",
                "runtimeClassName": "gvisor",
                "nodeSelector": {"codingjob.dev/sandbox": "true"},
                "tolerations": [
                    {"key": "codingjob.dev/sandbox", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {
                                        "matchLabels": {"app.kubernetes.io/name": "codingjob-agent"}
                                    },
                                },
                            }
                        ]
                    }
                },
                "priorityClassName": "sandbox-low",
                "imagePullSecrets": ["registry-creds"],
                "serviceAccountName": "sandbox",
            },
            "network": {
                "allowedEgressModes": ["Restricted", "Open"],
                "allowedCIDRs": ["0.0.0.0/1", "128.0.0.0/1"],
            },
        },
    }
)
#: A cluster's floor: node, pod and service CIDRs and the API server, as the chart passes them.
CLUSTER_FLOOR = (*classes.ALWAYS_DENIED_CIDRS, "10.0.0.0/16", "10.244.0.0/16", "10.96.0.0/12")


def classed(s: CodingJobSpec, peers: tuple[builders.EgressPeer, ...]) -> list[Any]:
    resolved = classes.resolve(
        s, GVISOR_CLASS, classes.OperatorDefaults(agent_image="codingjob/agent:dev")
    )
    assert isinstance(resolved, ResolvedClass), resolved
    effective = classes.effective_spec(s, resolved)
    return [
        builders.workspace_pvc(JOB, effective),
        builders.network_policy(
            JOB,
            effective,
            model_peers=peers,
            floor=CLUSTER_FLOOR,
            dns=builders.ClusterDNS(node_local_ip="169.254.20.10", service_ip="10.96.0.10"),
            # A managed control plane: the API server's pod proxy comes from outside the node.
            stats_sources=("203.0.113.10/32",),
        ),
        builders.agent_pod(JOB, effective, images=IMAGES, model=MODEL, sandbox=resolved),
    ]


#: The cases are built when a test runs, not when the module is imported, so a test always
#: sees the builders as they are then (mutation testing switches a mutant on only around the
#: test itself).
CASES: dict[str, Callable[[], list[Any]]] = {
    # The class decides placement, identity and bounds; the spec's CIDR and the resolved
    # model addresses get the cluster floor cut out (10.96.12.34 lies inside it: dropped).
    "classed": lambda: classed(
        spec(network={"allowedCIDRs": ["140.82.112.0/20"]}), (SERVICE_PEER, IP_PEER)
    ),
    # Open egress still reaches the cluster DNS and an in-cluster model (the relay) behind the
    # floor that holds the pod and service CIDRs.
    "classed-open": lambda: classed(spec(network={"egress": "Open"}), (SERVICE_PEER,)),
    "defaults": lambda: agent_children(spec(), (SERVICE_PEER,)),
    "full": lambda: agent_children(spec(**FULL), (IP_PEER,)),
    "sandboxed": lambda: agent_children(spec(**SANDBOXED), ()),
    "gui-only": lambda: agent_children(spec(jupyter={"enabled": False}), (SERVICE_PEER,)),
    "jupyter-only": lambda: agent_children(spec(gui={"enabled": False}), (SERVICE_PEER,)),
    "headless": lambda: agent_children(
        spec(gui={"enabled": False}, jupyter={"enabled": False}), (SERVICE_PEER,)
    ),
    "archive": lambda: [
        builders.archive_secret(JOB, STORAGE_ENV),
        builders.archive_job(
            JOB,
            images=IMAGES,
            target=builders.ArchiveTarget(
                key=f"team-a/todo-app/{JOB.uid}/workspace.zip",
                transcript_key=f"team-a/todo-app/{JOB.uid}/context.txt",
            ),
        ),
    ],
    "archive-limited": lambda: [
        builders.archive_job(
            JOB,
            images=IMAGES,
            target=builders.ArchiveTarget(
                key=f"team-a/todo-app/{JOB.uid}/workspace.zip",
                transcript_key=f"team-a/todo-app/{JOB.uid}/context.txt",
            ),
            limits=builders.ArchiveLimits(deadline_seconds=900, max_bytes=10 * 1024**3),
        ),
    ],
}


def build(name: str) -> list[Any]:
    """The manifests of one case, built now."""
    return CASES[name]()


def render(manifests: list[Any]) -> str:
    return yaml.safe_dump_all(manifests, sort_keys=True, width=100)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    path = GOLDEN / f"{case}.yaml"
    text = render(build(case))
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden {path.name}: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path.name} differs: run with UPDATE_GOLDEN=1 and review"


#: (case, index, kind) of every manifest; the kinds only name the tests.
ALL = [(c, i, m["kind"]) for c in CASES for i, m in enumerate(build(c)) if m is not None]


@pytest.mark.parametrize(
    ("case", "index"), [(c, i) for c, i, _ in ALL], ids=[f"{c}-{k}" for c, _, k in ALL]
)
def test_manifest_validates_against_kubernetes_schema(case: str, index: int) -> None:
    kubernetes_validate.validate(build(case)[index], KUBERNETES_VERSION, strict=True)


def test_schema_check_can_fail() -> None:
    pod = builders.agent_pod(JOB, spec(), images=IMAGES, model=MODEL)
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = "no"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]}


def test_api_key_reaches_only_the_sidecar() -> None:
    pod = builders.agent_pod(JOB, spec(**FULL), images=IMAGES, model=MODEL)
    containers = _containers(pod)
    key_env = [
        e for e in containers["context-manager"]["env"] if e["name"] == "CODINGJOB_MODEL_API_KEY"
    ]
    assert key_env == [
        {
            "name": "CODINGJOB_MODEL_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}},
        }
    ]
    assert "openai" not in yaml.safe_dump(containers["agent"])
    assert not any("MODEL" in e["name"] for e in containers["agent"]["env"])


@pytest.mark.parametrize("case", ["defaults", "full", "sandboxed"])
def test_every_container_is_hardened(case: str) -> None:
    pod = next(m for m in build(case) if m and m["kind"] == "Pod")
    spec_ = pod["spec"]
    assert spec_["automountServiceAccountToken"] is False
    assert spec_["enableServiceLinks"] is False
    assert spec_["restartPolicy"] == "Never"
    assert spec_["securityContext"]["runAsNonRoot"] is True
    assert spec_["securityContext"]["runAsUser"] == 1000
    for container in _containers(pod).values():
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    sidecar = _containers(pod)["context-manager"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/healthz", "port": 8081}


def test_archiver_never_sees_the_sandbox_secrets_and_the_sandbox_never_sees_storage() -> None:
    for manifest in build("full"):
        if manifest is not None:
            assert "CODINGJOB_STORAGE" not in yaml.safe_dump(manifest)
    job = build("archive")[1]
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
    assert pod_spec["containers"][0]["volumeMounts"][0]["readOnly"] is True


@pytest.mark.parametrize(
    ("active", "soft"),
    [
        (None, 0),
        (1, 1),
        (60, 30),
        (300, 270),
        # Between the floor and the cap the margin is exactly a tenth.
        (1000, 900),
        (2990, 2691),
        (3600, 3300),
        (7200, 6900),
        (86400, 86100),
    ],
)
def test_agent_deadline_leaves_time_to_write_the_result(active: int | None, soft: int) -> None:
    assert builders.deadline_seconds(active) == soft


def test_relay_jobs_get_their_credential_in_the_sidecar_only() -> None:
    relay = builders.ModelEndpoint(
        base_url="http://codingjob-model-relay.codingjob-system.svc:8080/v1",
        name="default",
        relay_credential_secret=JOB.names.model_credential,
        retry_seconds=7200,
    )
    pod = builders.agent_pod(JOB, spec(), images=IMAGES, model=relay)
    sidecar = pod["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in sidecar["env"]}
    assert env["CODINGJOB_MODEL_BASE_URL"] == relay.base_url
    assert env["CODINGJOB_MODEL_API_KEY"] == {
        "secretKeyRef": {"name": "todo-app-model-credential", "key": "credential"}
    }
    assert env["CODINGJOB_MODEL_RETRY_SECONDS"] == "7200"
    agent = pod["spec"]["containers"][0]
    assert not any("secretKeyRef" in str(e) for e in agent["env"])
    agent_env = {e["name"]: e.get("value") for e in agent["env"]}
    assert agent_env["CODINGJOB_STEP_TIMEOUT_SECONDS"] == str(7200 + 900)
    secret = builders.model_credential_secret(JOB, "cjr1.payload.mac")
    assert secret["metadata"]["name"] == "todo-app-model-credential"
    assert secret["stringData"] == {"credential": "cjr1.payload.mac"}


POLICIES = [c for c, _, kind in ALL if kind == "NetworkPolicy"]


def policy_of(case: str) -> dict[str, Any]:
    policy: dict[str, Any] = next(m for m in build(case) if m and m["kind"] == "NetworkPolicy")
    return policy


@pytest.mark.parametrize("case", POLICIES)
def test_nothing_but_the_named_sources_may_connect_to_a_sandbox(case: str) -> None:
    policy = policy_of(case)
    # Every ingress rule names its sources (a rule without `from` admits every pod) and
    # opens the stats port alone: the desktop and Jupyter are reached by port-forward only.
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], case
        assert all("ipBlock" in peer for peer in rule["from"]), case
        assert rule["ports"] == [{"protocol": "TCP", "port": builders.STATS_PORT}], case
    assert "Ingress" in policy["spec"]["policyTypes"]


@pytest.mark.parametrize("case", POLICIES)
def test_dns_is_the_cluster_resolver_on_port_53_only(case: str) -> None:
    policy = policy_of(case)
    dns, *_ = policy["spec"]["egress"]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    selectors = [p for p in dns["to"] if "podSelector" in p]
    assert selectors == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    # Any address in the DNS rule is a single host (the DNS Service, a node-local cache).
    assert all(p["ipBlock"]["cidr"].endswith(("/32", "/128")) for p in dns["to"] if "ipBlock" in p)


def _egress(network: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    policy = builders.network_policy(JOB, spec(network=network), floor=CLUSTER_FLOOR, **kwargs)
    rules: list[dict[str, Any]] = policy["spec"]["egress"]
    return rules


def test_restricted_sandbox_reaches_dns_and_the_model_only() -> None:
    dns, model = _egress({"egress": "Restricted"}, model_peers=(SERVICE_PEER,))
    assert {p["port"] for p in dns["ports"]} == {53}
    assert model["to"][-1]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "scripted-model"}
    }
    assert {p["protocol"] for p in model["ports"]} == {"TCP"}


@pytest.mark.parametrize(
    "peer",
    [
        builders.EgressPeer(namespace="models", ports=(8000,)),
        builders.EgressPeer(pod_selector={"app": "model"}, ports=(8000,)),
    ],
    ids=["namespace without pods", "pods without namespace"],
)
def test_a_half_named_service_peer_opens_nothing(peer: builders.EgressPeer) -> None:
    # A namespace alone would open every pod in it; a pod selector alone, pods of the job's
    # own namespace. Only a Service's namespace and selector together name its pods.
    assert _egress({"egress": "Restricted"}, model_peers=(peer,)) == _egress(
        {"egress": "Restricted"}
    )


def test_open_sandbox_reaches_dns_the_model_and_the_internet_minus_the_floor() -> None:
    dns, model, internet = _egress({"egress": "Open"}, model_peers=(SERVICE_PEER,))
    assert "ports" not in internet
    v4 = next(p["ipBlock"] for p in internet["to"] if p["ipBlock"]["cidr"] == "0.0.0.0/0")
    # The floor (metadata, node/pod/service CIDRs) stays out of the internet rule.
    assert set(CLUSTER_FLOOR) - {"fd00:ec2::254/128", "fe80::/10"} == set(v4["except"])
    assert dns["ports"][0]["port"] == 53 and "podSelector" in model["to"][-1]


def test_stats_sources_are_the_only_ingress() -> None:
    policy = builders.network_policy(JOB, spec(), stats_sources=("203.0.113.10/32",))
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"ipBlock": {"cidr": "203.0.113.10/32"}}],
            "ports": [{"protocol": "TCP", "port": builders.STATS_PORT}],
        }
    ]
    # Without sources only the pod's own node (always admitted by NetworkPolicy) reaches it.
    assert builders.network_policy(JOB, spec())["spec"]["ingress"] == []
