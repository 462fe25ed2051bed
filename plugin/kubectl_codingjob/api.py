"""The plugin's only door to the Kubernetes API (the official client, configured like kubectl).

Everything returns plain dicts in the API's camelCase shape; failures raise :class:`ApiError`, so
the rest of the plugin never sees the client's classes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from codingjob_operator.models import GROUP, PLURAL, VERSION
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

# The client's config and watch modules carry no type hints.
_config: Any = config
_watch: Any = watch
T = TypeVar("T")


class ApiError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _call(func: Callable[[], T]) -> T:
    try:
        return func()
    except ApiException as error:
        raise ApiError(int(error.status or 0), _reason(error)) from error
    except OSError as error:  # connection refused, DNS, TLS: the server was not reached
        raise ApiError(0, str(error)) from error


def _object(func: Callable[[], object]) -> dict[str, Any]:
    """The result of a custom-objects call (typed ``object`` by the client) as a dict."""
    result: Any = _call(func)
    return dict(result)


def _reason(error: ApiException) -> str:
    """The API server's own message (a Status object's ``message``) when there is one."""
    try:
        body = json.loads(error.body) if isinstance(error.body, str | bytes) else {}
    except ValueError:
        body = {}
    return str(body.get("message") or error.reason or error)


class Api:
    """The calls ``kubectl codingjob`` makes, against the cluster of a kubeconfig context."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        try:
            self.api: client.ApiClient = _config.new_client_from_config(
                config_file=kubeconfig, context=context
            )
            contexts, active = _config.list_kube_config_contexts(config_file=kubeconfig)
            if context:
                active = next(c for c in contexts if c["name"] == context)
        except (config.ConfigException, OSError, StopIteration) as error:
            raise ApiError(0, f"no usable kubeconfig: {error}") from error
        #: The context's namespace, as kubectl uses it when no -n is given.
        self.namespace: str = (active.get("context") or {}).get("namespace") or "default"
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return _object(
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body
            )
        )

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return _object(
            lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        )

    def list_jobs(self, namespace: str | None) -> list[dict[str, Any]]:
        """The CodingJobs of ``namespace``, or of every namespace when it is None."""
        listing: dict[str, Any]
        if namespace is None:
            listing = _object(
                lambda: self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            )
        else:
            listing = _object(
                lambda: self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
            )
        return list(listing.get("items") or [])

    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return _object(
            lambda: self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
            )
        )

    def watch(self, namespace: str, name: str, timeout: int) -> Iterator[dict[str, Any]]:
        """The job as it is now, then again after every change, for up to ``timeout`` seconds."""
        stream = _watch.Watch().stream(
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, timeout),
        )
        try:
            for event in stream:
                if event["type"] == "DELETED":
                    raise ApiError(404, f"codingjob {name} was deleted")
                if event["type"] == "ERROR":
                    raise ApiError(0, str(event["object"]))
                yield dict(event["object"])
        except ApiException as error:
            raise ApiError(int(error.status or 0), _reason(error)) from error

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        secret = _call(lambda: self.core.read_namespaced_secret(name, namespace))
        data = secret.data or {}
        if key not in data:
            raise ApiError(404, f"secret {name} has no key {key}")
        return base64.b64decode(data[key]).decode()

    def pod_logs(self, namespace: str, pod: str, container: str, *, follow: bool) -> Iterator[str]:
        """The container's log, line by line; with ``follow`` until the container ends."""
        response: Any = _call(
            lambda: self.core.read_namespaced_pod_log(
                pod, namespace, container=container, follow=follow, _preload_content=False
            )
        )
        try:
            pending = b""
            for chunk in response.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if pending:
                yield pending.decode(errors="replace")
        finally:
            response.release_conn()
