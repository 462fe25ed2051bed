"""The only module that talks to the Kubernetes API (via the official client).

Everything returns plain dicts in the API's camelCase shape, so the rest of the operator never
sees client model classes. Calls are synchronous; async callers run them in a thread.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from codingjob_operator.classmodels import CLASS_PLURAL
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


class NamespaceTerminating(KubeError):
    """The namespace is being deleted: the API server refuses anything new in it (403)."""


class NameConflict(KubeError):
    """An object with a child's name exists and is not controlled by this CodingJob."""

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        super().__init__(
            409,
            f"{kind} {namespace}/{name} already exists and is not controlled by this CodingJob",
        )
        self.kind = kind
        self.name = name


#: The label every child carries; Secrets are only ever listed with it (or the consent label).
MANAGED_BY_SELECTOR = "app.kubernetes.io/managed-by=codingjob-operator"


def controlled_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    """``obj`` has a controller ownerReference to the object with ``owner_uid``."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == owner_uid for r in refs)


def _terminating(body: str) -> bool:
    """A 403's Status names the namespace's termination as its cause."""
    try:
        status = json.loads(body)
    except ValueError:
        return False
    details = status.get("details") if isinstance(status, dict) else None
    causes = (details.get("causes") if isinstance(details, dict) else None) or []
    return any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes)


def api_message(error: KubeError) -> str:
    """The API server's own words for ``error``: the ``message`` of its Status (which names the
    object and, for an admission denial, the policy and binding), else the error's text."""
    text = str(error)
    try:
        status = json.loads(text)
    except ValueError:
        return text
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) and message else text


def _wrap(func: Callable[[], T]) -> T:
    try:
        return func()
    except urllib3.exceptions.HTTPError as error:
        # No answer at all (a read timeout, a dropped connection): transient, like a 5xx. A pod
        # proxy call to a sandbox that is going away ends this way, and must not crash a pass.
        raise KubeError(0, f"no answer from the API server: {error}") from error
    except ApiException as error:
        message = error.body if isinstance(error.body, str) and error.body else str(error.reason)
        if error.status == 422:
            raise InvalidObject(422, message) from error
        if error.status == 403 and _terminating(message):
            raise NamespaceTerminating(403, message) from error
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

    def _read_fn(self, kind: str) -> Callable[[str, str], Any]:
        fns: dict[str, Callable[[str, str], Any]] = {
            "Pod": self.core.read_namespaced_pod,
            "Service": self.core.read_namespaced_service,
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "NetworkPolicy": self.net.read_namespaced_network_policy,
            "Job": self.batch.read_namespaced_job,
        }
        return fns[kind]

    def _existing(self, kind: str, namespace: str, name: str) -> Manifest | None:
        """The object ``kind/name``, for an ownership check. Secrets are looked up by a list
        restricted to the operator's managed-by label: the operator never gets a Secret by
        name, so it cannot be made to read one it did not create (or was not given)."""
        if kind != "Secret":
            return self._read(lambda: self._read_fn(kind)(name, namespace))
        result = _wrap(
            lambda: self.core.list_namespaced_secret(
                namespace,
                label_selector=f"{MANAGED_BY_SELECTOR}",
                field_selector=f"metadata.name={name}",
            )
        )
        for item in result.items:
            plain = self._plain(item)
            # Only what an ownership check needs; the values stay here.
            plain.pop("data", None)
            plain.pop("stringData", None)
            return plain
        return None

    def ensure(self, manifest: Manifest, *, owner_uid: str, update: bool = False) -> bool:
        """Create ``manifest``; True when created, False when this owner's object already existed.

        Ownership is by UID, never by name: an existing object that is not controlled by
        ``owner_uid`` raises :class:`NameConflict` and is left untouched (otherwise anyone who
        may create a Secret or PVC could have it mounted into, or adopted by, someone's job).
        With ``update``, an owned object gets the manifest merged in (Service, NetworkPolicy:
        their desired state can change during a job's life), guarded by its resourceVersion.
        """
        kind, namespace = manifest["kind"], manifest["metadata"]["namespace"]
        name = manifest["metadata"]["name"]
        create = self._create_fn(kind)
        try:
            _wrap(lambda: create(namespace, manifest))
            return True
        except KubeError as error:
            if error.status != 409:
                raise
        existing = self._existing(kind, namespace, name)
        if existing is None and kind == "Secret":
            # Secrets are looked up only among the operator's own (managed-by label): one that
            # exists but is not among them was made by someone else.
            raise NameConflict(kind, namespace, name)
        if existing is None:
            # Deleted between the create and the read: the next pass creates it.
            raise KubeError(409, f"{kind} {namespace}/{name} is being deleted")
        if not controlled_by(existing, owner_uid):
            raise NameConflict(kind, namespace, name)
        if update:
            patch = self._patch_fn(kind)
            body = {**manifest, "metadata": {**manifest["metadata"]}}
            # Optimistic concurrency: the patch applies only to the object just checked.
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            _wrap(lambda: patch(name, namespace, body))
        return False

    def delete(self, kind: str, namespace: str, name: str, *, owner_uid: str) -> bool:
        """Delete a child, its dependents in the background; False when it was already gone or
        is not this owner's. The delete carries a UID precondition, so an object recreated
        under the same name by someone else in between is never deleted."""
        existing = self._existing(kind, namespace, name)
        if existing is None or not controlled_by(existing, owner_uid):
            return False
        options = client.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=client.V1Preconditions(uid=existing["metadata"]["uid"]),
        )
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
            if error.status in (404, 409):
                return False
            raise

    def ensure_service_account(self, namespace: str, name: str) -> None:
        """Create the sandbox ServiceAccount (no token automount) unless it exists. It is shared
        by the namespace's sandboxes and owned by no job; pods never mount its token, so what
        it may do in the API never reaches a sandbox."""
        body: Any = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "codingjob-operator"},
            },
            "automountServiceAccountToken": False,
        }
        try:
            _wrap(lambda: self.core.create_namespaced_service_account(namespace, body))
        except KubeError as error:
            if error.status != 409:
                raise

    def model_credential_secrets(self, namespace: str, label: str) -> dict[str, set[str]]:
        """``{name: keys}`` of the Secrets in ``namespace`` labelled ``label=true``.

        A label-selected list, not a get by name: the operator can only ever see Secrets
        whose owners consented to their use as model credentials. Values are dropped here.
        """
        result = _wrap(
            lambda: self.core.list_namespaced_secret(namespace, label_selector=f"{label}=true")
        )
        found: dict[str, set[str]] = {}
        for item in result.items:
            plain = self._plain(item)
            found[plain["metadata"]["name"]] = set((plain.get("data") or {}).keys())
        return found

    def list_codingjob_classes(self) -> list[Manifest]:
        """Every CodingJobClass (cluster-scoped)."""
        result: Any = _wrap(
            lambda: self.custom.list_cluster_custom_object(GROUP, VERSION, CLASS_PLURAL)
        )
        items: list[Manifest] = result.get("items") or []
        return items

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

    def read_pvc(self, namespace: str, name: str) -> Manifest | None:
        return self._read(
            lambda: self.core.read_namespaced_persistent_volume_claim(name, namespace)
        )

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[Manifest]:
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        result = _wrap(
            lambda: self.core.list_namespaced_pod(namespace, label_selector=label_selector)
        )
        return [self._plain(pod) for pod in result.items]

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
