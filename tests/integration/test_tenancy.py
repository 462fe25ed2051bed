"""Tenancy on the real API server: a foreign object holding a child's name ends the job
NameConflict and stays untouched; a Secret without its owner's consent label fails the job
SecretNotAllowed and its value appears in no pod, event or status."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from codingjob_operator import names
from kopf.testing import KopfRunner
from kubernetes import client

from tests.integration.test_operator import (
    GROUP,
    PLURAL,
    VERSION,
    api,
    codingjob,
    core,
    crd,
    operator,
    phase,
    wait_cj,
)

__all__ = ["api", "core", "crd", "operator"]  # fixtures re-used from the operator tests

pytestmark = pytest.mark.cluster

FOREIGN_LABELS = {"owner": "someone-else"}


def _create_foreign(kind: str, namespace: str, name: str, kube_api: client.ApiClient) -> Any:
    core = client.CoreV1Api(kube_api)
    meta = client.V1ObjectMeta(name=name, labels=FOREIGN_LABELS)
    if kind == "PersistentVolumeClaim":
        return core.create_namespaced_persistent_volume_claim(
            namespace,
            client.V1PersistentVolumeClaim(
                metadata=meta,
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"],
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "1Mi"}),
                ),
            ),
        )
    if kind == "Secret":
        return core.create_namespaced_secret(
            namespace, client.V1Secret(metadata=meta, string_data={"vnc-password": "tenant"})
        )
    if kind == "Service":
        return core.create_namespaced_service(
            namespace,
            client.V1Service(
                metadata=meta,
                spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)]),
            ),
        )
    if kind == "NetworkPolicy":
        return client.NetworkingV1Api(kube_api).create_namespaced_network_policy(
            namespace,
            client.V1NetworkPolicy(
                metadata=meta,
                spec=client.V1NetworkPolicySpec(pod_selector=client.V1LabelSelector()),
            ),
        )
    assert kind == "Pod"
    return core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=meta,
            spec=client.V1PodSpec(
                # Pinned nowhere: it only has to exist.
                node_selector={"codingjob.dev/test": "nowhere"},
                security_context=client.V1PodSecurityContext(
                    run_as_non_root=True,
                    run_as_user=1000,
                    seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
                ),
                containers=[
                    client.V1Container(
                        name="c",
                        image="codingjob/base:bookworm",
                        security_context=client.V1SecurityContext(
                            allow_privilege_escalation=False,
                            capabilities=client.V1Capabilities(drop=["ALL"]),
                        ),
                    )
                ],
            ),
        ),
    )


def _read(kind: str, namespace: str, name: str, kube_api: client.ApiClient) -> Any:
    core = client.CoreV1Api(kube_api)
    return {
        "PersistentVolumeClaim": core.read_namespaced_persistent_volume_claim,
        "Secret": core.read_namespaced_secret,
        "Service": core.read_namespaced_service,
        "NetworkPolicy": client.NetworkingV1Api(kube_api).read_namespaced_network_policy,
        "Pod": core.read_namespaced_pod,
    }[kind](name, namespace)


CHILD = names.child_names("taken")
TAKEN = {
    "PersistentVolumeClaim": CHILD.workspace,
    "Secret": CHILD.session,
    "Service": CHILD.service,
    "NetworkPolicy": CHILD.network_policy,
    "Pod": CHILD.pod,
}


@pytest.mark.parametrize("kind", list(TAKEN))
def test_a_foreign_object_with_a_childs_name_is_left_alone(
    operator: KopfRunner, api: Any, kube_api: client.ApiClient, namespace: str, kind: str
) -> None:
    name = TAKEN[kind]
    before = _create_foreign(kind, namespace, name, kube_api)
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, codingjob("taken", className="it-nowhere")
    )
    obj = wait_cj(api, namespace, "taken", phase("Failed"))
    assert obj["status"]["reason"] == "NameConflict"
    assert f"{kind} {namespace}/{name}" in obj["status"]["message"]
    after = _read(kind, namespace, name, kube_api)
    if kind == "Pod":
        # The scheduler records the unschedulable pod's status, so its resourceVersion moves;
        # nobody else may have written to it.
        writers = {m.manager for m in after.metadata.managed_fields or []}
        assert writers <= {m.manager for m in before.metadata.managed_fields} | {"kube-scheduler"}
        assert after.spec.containers[0].image == before.spec.containers[0].image
    else:
        assert after.metadata.resource_version == before.metadata.resource_version
    assert not after.metadata.owner_references
    assert after.metadata.labels == FOREIGN_LABELS


def test_a_secret_without_consent_is_not_used_and_its_value_goes_nowhere(
    operator: KopfRunner, api: Any, core: client.CoreV1Api, namespace: str
) -> None:
    value = "s3cr3t-value-of-the-db-team"
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="db"), string_data={"pw": value}),
    )
    spec = {"model": {"apiKeySecretRef": {"name": "db", "key": "pw"}}}
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, codingjob("confused", className="it-nowhere", **spec)
    )
    obj = wait_cj(api, namespace, "confused", phase("Failed"))
    assert obj["status"]["reason"] == "SecretNotAllowed"
    assert core.list_namespaced_pod(namespace).items == []
    events = core.list_namespaced_event(namespace).items
    encoded = base64.b64encode(value.encode()).decode()
    said = json.dumps(
        [
            obj,
            [e.message for e in events],
            [p.to_dict() for p in core.list_namespaced_pod(namespace).items],
        ],
        default=str,
    )
    assert value not in said and encoded not in said
