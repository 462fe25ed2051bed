"""Fixtures for the gateway tests: the chart's gateway behind a port-forward, and two tenants.

Each tenant is a namespace with a ServiceAccount bound (RoleBinding) to the chart's
``<fullname>-gateway-user`` ClusterRole in its own namespace only, and a token for it from the
TokenRequest API, as a platform admin would hand out.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from kubernetes import client

from tests.fixtures.cluster import kubectl


@dataclass(frozen=True)
class Tenant:
    namespace: str
    token: str

    def client(self, base_url: str) -> httpx.Client:
        return httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


def gateway_service(kube_api: client.ApiClient, namespace: str) -> client.V1Service:
    services = (
        client.CoreV1Api(kube_api)
        .list_namespaced_service(namespace, label_selector="app.kubernetes.io/component=gateway")
        .items
    )
    assert services, f"no gateway Service in {namespace}: is gateway.enabled on?"
    service: client.V1Service = services[0]
    return service


@contextlib.contextmanager
def tenant(kube_api: client.ApiClient, release_namespace: str, label: str) -> Iterator[Tenant]:
    """A namespace (t-gw-LABEL-...) whose ServiceAccount `user` may use the gateway there."""
    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    name = f"t-gw-{label}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        core.create_namespaced_service_account(
            name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="user"))
        )
        role = gateway_service(kube_api, release_namespace).metadata.name + "-user"
        rbac.create_namespaced_role_binding(
            name,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="gateway-user"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="user", namespace=name)],
            ),
        )
        token = kubectl("create", "token", "user", "-n", name, "--duration", "2h").stdout.strip()
        yield Tenant(name, token)
    finally:
        core.delete_namespace(name, propagation_policy="Background")
