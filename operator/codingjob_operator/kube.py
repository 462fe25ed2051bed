"""The only module that talks to the Kubernetes API (via the official client).

Everything returns plain dicts in the API's camelCase shape, so the rest of the operator never
sees client model classes. Calls are synchronous; async callers run them in a thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from codingjob_operator.models import GROUP, PLURAL, VERSION

Manifest = dict[str, Any]
T = TypeVar("T")


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class InvalidObject(KubeError):
    """The API server rejected an object as invalid (422): a spec problem, not worth retrying."""


def _wrap(func: Callable[[], T]) -> T:
    try:
        return func()
    except ApiException as error:
        message = error.body if isinstance(error.body, str) and error.body else str(error.reason)
        if error.status == 422:
            raise InvalidObject(422, message) from error
        raise KubeError(int(error.status or 0), message) from error


def load_config() -> None:
    """In-cluster service account when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


class Kube:
    """Typed-enough access to the few API calls the operator makes."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.net = client.NetworkingV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def _plain(self, obj: Any) -> Manifest:
        data: Manifest = self.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return data

    def _create_fn(self, kind: str) -> Callable[..., Any]:
        fns: dict[str, Callable[..., Any]] = {
            "Pod": self.core.create_namespaced_pod,
            "Secret": self.core.create_namespaced_secret,
            "Service": self.core.create_namespaced_service,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "NetworkPolicy": self.net.create_namespaced_network_policy,
            "Job": self.batch.create_namespaced_job,
        }
        return fns[kind]

    def _patch_fn(self, kind: str) -> Callable[..., Any]:
        return {
            "Secret": self.core.patch_namespaced_secret,
            "Service": self.core.patch_namespaced_service,
            "NetworkPolicy": self.net.patch_namespaced_network_policy,
        }[kind]

    def ensure(self, manifest: Manifest, *, update: bool = False) -> bool:
        """Create ``manifest``; True when created, False when it already existed (409).

        With ``update``, an existing object gets the manifest merged in (Service, Secret,
        NetworkPolicy only: their desired state can change during a job's life).
        """
        namespace = manifest["metadata"]["namespace"]
        create = self._create_fn(manifest["kind"])
        try:
            _wrap(lambda: create(namespace, manifest))
            return True
        except KubeError as error:
            if error.status != 409:
                raise
        if update:
            patch = self._patch_fn(manifest["kind"])
            name = manifest["metadata"]["name"]
            _wrap(lambda: patch(name, namespace, manifest))
        return False

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete an object, its dependents in the background; False when it was already gone."""
        options = client.V1DeleteOptions(propagation_policy="Background")
        fn: Callable[..., Any] = {
            "Pod": self.core.delete_namespaced_pod,
            "Secret": self.core.delete_namespaced_secret,
            "PersistentVolumeClaim": self.core.delete_namespaced_persistent_volume_claim,
            "Job": self.batch.delete_namespaced_job,
        }[kind]
        try:
            _wrap(lambda: fn(name, namespace, body=options))
            return True
        except KubeError as error:
            if error.status == 404:
                return False
            raise

    def _read(self, fn: Callable[[], Any]) -> Manifest | None:
        try:
            return self._plain(_wrap(fn))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def read_pod(self, namespace: str, name: str) -> Manifest | None:
        return self._read(lambda: self.core.read_namespaced_pod(name, namespace))

    def read_job(self, namespace: str, name: str) -> Manifest | None:
        return self._read(lambda: self.batch.read_namespaced_job(name, namespace))

    def read_service(self, namespace: str, name: str) -> Manifest | None:
        return self._read(lambda: self.core.read_namespaced_service(name, namespace))

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[Manifest]:
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        result = _wrap(
            lambda: self.core.list_namespaced_pod(namespace, label_selector=label_selector)
        )
        return [self._plain(pod) for pod in result.items]

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The keys of a Secret, or None when it does not exist (values are not returned)."""
        secret = self._read(lambda: self.core.read_namespaced_secret(name, namespace))
        if secret is None:
            return None
        return set((secret.get("data") or {}).keys()) | set(secret.get("stringData") or {})

    def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str) -> bytes:
        """GET ``path`` on the pod's ``port`` through the API server's pod proxy."""
        # Unparsed: the client would otherwise turn a JSON body into a Python repr string.
        response = _wrap(
            lambda: self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:{port}",
                namespace,
                path.lstrip("/"),
                _preload_content=False,
                _request_timeout=5,
            )
        )
        data: bytes = response.data  # type: ignore[attr-defined]
        return data

    def read_codingjob(self, namespace: str, name: str) -> Manifest | None:
        return self._read(
            lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        )

    def patch_codingjob_status(self, namespace: str, name: str, status: Manifest) -> None:
        """Merge ``status`` into the CodingJob's status subresource."""
        _wrap(
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )
        )

    def delete_codingjob(self, namespace: str, name: str) -> None:
        try:
            _wrap(
                lambda: self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name
                )
            )
        except KubeError as error:
            if error.status != 404:
                raise


@functools.cache
def default_kube() -> Kube:
    """A client for the configured cluster, created on first use."""
    load_config()
    return Kube()
