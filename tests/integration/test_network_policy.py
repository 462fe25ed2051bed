"""The cluster enforces NetworkPolicy: a default deny blocks and an allow rule admits.

Every promise the sandbox's NetworkPolicy makes rests on an engine that enforces it (the local
cluster runs kube-router's firewall, see hack/cluster/README.md); a cluster without one accepts
the policies and ignores them. Here a server pod answers on TCP and UDP in one namespace and two
client pods probe it from another, first with no policy (so a blocked probe later means the policy,
not a broken probe), then under default-deny and allow rules for ingress and egress. All traffic
stays between pods of this cluster.
"""
# The client accepts plain manifests (dicts) wherever its signatures name a model class.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.cluster import kubectl, pod_ready, wait_for_pod

pytestmark = pytest.mark.cluster

BASE_IMAGE = os.environ.get("BASE_IMAGE", "codingjob/base:bookworm")
TCP_PORT = 8080
UDP_PORT = 9090
#: How long one probe waits for the server's answer.
PROBE_TIMEOUT_S = 2
#: How long a policy change may take to reach the node's firewall.
ENFORCE_TIMEOUT_S = 45

#: Servers of the base image (perl-base is always installed): TCP answers every connection with
#: `tcp-ok`, UDP answers every datagram with `udp-ok`, to its sender.
TCP_SERVER = (
    "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => $ENV{PORT}, Listen => 16,"
    ' ReuseAddr => 1) or die $!; while (my $c = $s->accept) { print $c "tcp-ok\\n"; close $c }'
)
UDP_SERVER = (
    "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => $ENV{PORT},"
    ' Proto => "udp") or die $!; while (1) { my $peer = $s->recv(my $m, 512) or next;'
    ' $s->send("udp-ok\\n", 0, $peer) }'
)
#: One probe from a client pod: bash's /dev/tcp and /dev/udp, an answer within the timeout.
#: (`head`, not bash's `read`: read takes one byte per call, which truncates a UDP datagram.)
PROBE = (
    'exec 3<>"/dev/$0/$1/$2" || exit 1; [ "$0" = tcp ] || printf ping >&3;'
    f' reply="$(timeout {PROBE_TIMEOUT_S} head -n 1 <&3)" && [ "$reply" = "$0-ok" ]'
)


def _container(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": BASE_IMAGE,
        # No registry: the image was loaded into the node's containerd.
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        **extra,
    }


def _pod(name: str, labels: dict[str, str], containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": containers,
        },
    }


def _server() -> dict[str, Any]:
    def perl(name: str, script: str, port: int, protocol: str) -> dict[str, Any]:
        return _container(
            name,
            ["perl", "-e", script],
            env=[{"name": "PORT", "value": str(port)}],
            ports=[{"containerPort": port, "protocol": protocol}],
        )

    tcp = perl("tcp", TCP_SERVER, TCP_PORT, "TCP")
    # Readiness from the kubelet (the node's own address, which the engine always admits).
    tcp["readinessProbe"] = {"tcpSocket": {"port": TCP_PORT}, "periodSeconds": 1}
    return _pod("server", {"app": "server"}, [tcp, perl("udp", UDP_SERVER, UDP_PORT, "UDP")])


def _client(name: str, role: str) -> dict[str, Any]:
    return _pod(name, {"role": role}, [_container("probe", ["sleep", "infinity"])])


def _policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def _ports() -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": TCP_PORT}, {"protocol": "UDP", "port": UDP_PORT}]


def _in_namespace(namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": labels},
    }


def reaches(namespace: str, client_pod: str, server_ip: str, protocol: str) -> bool:
    """Whether CLIENT_POD gets the server's answer over PROTOCOL (tcp or udp) right now."""
    port = TCP_PORT if protocol == "tcp" else UDP_PORT
    proc = kubectl(
        "exec", "-n", namespace, client_pod, "-c", "probe", "--",
        "timeout", str(PROBE_TIMEOUT_S + 1), "bash", "-c", PROBE, protocol, server_ip, str(port),
        check=False, timeout=30,
    )  # fmt: skip
    return proc.returncode == 0


Probe = tuple[str, str]  # (client pod, protocol)


def settle(namespace: str, server_ip: str, expected: dict[Probe, bool]) -> None:
    """Probe until every (client, protocol) sees its EXPECTED reachability; fail after a while.

    Policies take effect asynchronously (the engine watches the API), so each probe is repeated
    until it agrees; a probe that never does is reported with what it saw.
    """
    deadline = time.monotonic() + ENFORCE_TIMEOUT_S
    pending = dict(expected)
    with ThreadPoolExecutor(max_workers=len(expected)) as pool:
        while pending:
            seen = dict(
                zip(
                    pending,
                    pool.map(lambda p: reaches(namespace, p[0], server_ip, p[1]), pending),
                    strict=True,
                )
            )
            pending = {p: want for p, want in pending.items() if seen[p] != want}
            if pending and time.monotonic() > deadline:
                wrong = ", ".join(
                    f"{pod} {proto} {'is blocked' if want else 'gets through'}"
                    for (pod, proto), want in pending.items()
                )
                raise AssertionError(f"after {ENFORCE_TIMEOUT_S}s: {wrong}")


@pytest.fixture
def pods(
    kube_api: client.ApiClient, namespace: str, second_namespace: str
) -> Iterator[tuple[str, str, str]]:
    """(server namespace, client namespace, server pod IP) with the server and two clients ready."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(namespace, _server())
    core.create_namespaced_pod(second_namespace, _client("allowed", "client"))
    core.create_namespaced_pod(second_namespace, _client("other", "other"))
    server = wait_for_pod(core, namespace, "server", pod_ready)
    for name in ("allowed", "other"):
        wait_for_pod(core, second_namespace, name, pod_ready)
    yield namespace, second_namespace, server.status.pod_ip


ALL = [(c, proto) for c in ("allowed", "other") for proto in ("tcp", "udp")]


def test_default_deny_blocks_and_allow_rules_admit_for_ingress_and_egress(
    kube_api: client.ApiClient, pods: tuple[str, str, str]
) -> None:
    server_ns, client_ns, server_ip = pods
    net = client.NetworkingV1Api(kube_api)

    # No policy: everything reaches the server (the probes work).
    settle(client_ns, server_ip, dict.fromkeys(ALL, True))

    # Ingress: a default deny in the server's namespace blocks both protocols...
    net.create_namespaced_network_policy(
        server_ns, _policy("deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})
    )
    settle(client_ns, server_ip, dict.fromkeys(ALL, False))

    # ...and an allow rule admits exactly the selected pod of the selected namespace.
    allow_ingress = {
        "podSelector": {"matchLabels": {"app": "server"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [_in_namespace(client_ns, {"role": "client"})], "ports": _ports()}],
    }
    net.create_namespaced_network_policy(server_ns, _policy("allow-ingress", allow_ingress))
    settle(
        client_ns,
        server_ip,
        {
            **{("allowed", p): True for p in ("tcp", "udp")},
            **{("other", p): False for p in ("tcp", "udp")},
        },
    )

    # Egress: a default deny in the clients' namespace blocks the admitted client too...
    net.create_namespaced_network_policy(
        client_ns, _policy("deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
    )
    settle(client_ns, server_ip, dict.fromkeys(ALL, False))

    # ...and an allow rule opens exactly its ports to the server for the selected pod: UDP
    # first, then TCP, so each protocol is shown to need its own rule.
    def allow_egress(ports: list[dict[str, Any]]) -> dict[str, Any]:
        return _policy(
            "allow-egress",
            {
                "podSelector": {"matchLabels": {"role": "client"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [_in_namespace(server_ns, {"app": "server"})], "ports": ports}],
            },
        )

    net.create_namespaced_network_policy(client_ns, allow_egress(_ports()[1:]))
    settle(
        client_ns,
        server_ip,
        {("allowed", "udp"): True, ("allowed", "tcp"): False, ("other", "udp"): False},
    )
    net.replace_namespaced_network_policy("allow-egress", client_ns, allow_egress(_ports()))
    settle(
        client_ns,
        server_ip,
        {
            **{("allowed", p): True for p in ("tcp", "udp")},
            **{("other", p): False for p in ("tcp", "udp")},
        },
    )
