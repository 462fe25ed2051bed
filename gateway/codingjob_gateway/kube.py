"""The only module that talks to the Kubernetes API: an async client acting as the gateway or
as the caller it impersonates.

The official client loads the configuration (in-cluster service account or kubeconfig); the
requests go through one aiohttp session, so a status read costs one pooled HTTPS round trip and
watches and the desktop's port-forward websocket share the same connection settings. Every call
has a timeout: an unreachable API server is an :class:`ApiUnavailable`, never a hang.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from multidict import CIMultiDict

Manifest = dict[str, Any]

#: The port-forward websocket protocol: one channel byte before each frame (data 0, error 1).
PORT_FORWARD_PROTOCOL = "v4.channel.k8s.io"


@dataclass(frozen=True)
class Identity:
    """Who the caller is, as the API server's TokenReview said."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    @property
    def service_account_namespace(self) -> str | None:
        """The namespace of a ServiceAccount user (system:serviceaccount:NS:NAME), else None."""
        parts = self.username.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            return parts[2]
        return None


class ApiError(Exception):
    """The API server answered with an error; ``status`` is its HTTP status and ``body`` its
    ``Status`` object (reason, message, details.causes)."""

    def __init__(self, status: int, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body: Mapping[str, Any] = body or {}


class ApiUnavailable(ApiError):
    """The API server could not be reached or did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message)


@dataclass
class ClusterConfig:
    """Where the API server is and how the gateway proves who it is."""

    host: str
    ssl_context: ssl.SSLContext | bool
    token: str | None = None
    #: In a pod the projected token rotates: it is re-read from this file.
    token_file: Path | None = None
    _token_read_at: float = field(default=0.0, repr=False)

    def bearer(self) -> str | None:
        if self.token_file is not None and time.monotonic() - self._token_read_at > 60:
            self.token = self.token_file.read_text().strip()
            self._token_read_at = time.monotonic()
        return self.token


IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def load_cluster_config(kubeconfig: str | None = None) -> ClusterConfig:
    """In-cluster service account when running in a pod, else ``kubeconfig`` / $KUBECONFIG."""
    cfg = k8s_client.Configuration()
    in_cluster = False
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            in_cluster = True
        except k8s_config.ConfigException:
            pass
    if not in_cluster:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg
        )
    context: ssl.SSLContext | bool
    if cfg.verify_ssl:
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
    else:
        context = False
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    token = None
    if auth:
        prefix = (cfg.api_key_prefix or {}).get("authorization", "")
        token = auth.removeprefix("Bearer ").removeprefix("bearer ").strip()
        if prefix and auth.startswith(prefix):
            token = auth[len(prefix) :].strip()
    return ClusterConfig(
        host=cfg.host.rstrip("/"),
        ssl_context=context,
        token=token,
        token_file=IN_CLUSTER_TOKEN if in_cluster else None,
    )


def _status_error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return ApiError(status, str(body.get("message") or text), body)
    return ApiError(status, text.strip() or f"HTTP {status}")


class KubeClient:
    """Async access to the API server; ``as_user`` impersonates a caller, None acts as the
    gateway's own service account."""

    def __init__(self, config: ClusterConfig, timeout: float = 10.0) -> None:
        self.config = config
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.config.ssl_context, limit=100),
                timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(3.0, self.timeout)),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, as_user: Identity | None, content_type: str | None) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Accept"] = "application/json"
        token = self.config.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if as_user is not None:
            # Only the user name and groups are impersonated: RBAC decides on them, and
            # impersonating extras (a token's pod binding) would need a broader grant.
            headers["Impersonate-User"] = as_user.username
            for group in as_user.groups:
                headers.add("Impersonate-Group", group)
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        as_user: Identity | None = None,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Manifest:
        """One API call; the decoded JSON answer, or :class:`ApiError` for an error status."""
        text = await self.request_text(
            method, path, as_user=as_user, body=body, params=params, content_type=content_type
        )
        data: Manifest = json.loads(text) if text else {}
        return data

    async def request_text(
        self,
        method: str,
        path: str,
        *,
        as_user: Identity | None = None,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> str:
        """One API call returning the raw body text (pod logs)."""
        data = None if body is None else json.dumps(body)
        try:
            async with self._client().request(
                method,
                self.config.host + path,
                params=dict(params or {}),
                data=data,
                headers=self._headers(as_user, content_type if data is not None else None),
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _status_error(response.status, text)
                return text
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise ApiUnavailable(
                f"the Kubernetes API server did not answer: {type(error).__name__} {error}".strip()
            ) from error

    async def watch(
        self, path: str, params: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[Manifest]:
        """Watch events (``{"type", "object"}``) of ``path`` as the gateway, until the server
        ends the watch; :class:`ApiError` or :class:`ApiUnavailable` on failure."""
        query = {**params, "watch": "true"}
        timeout = aiohttp.ClientTimeout(total=None, connect=3, sock_read=read_timeout)
        try:
            async with self._client().get(
                self.config.host + path,
                params=query,
                headers=self._headers(None, None),
                timeout=timeout,
            ) as response:
                if response.status >= 400:
                    raise _status_error(response.status, await response.text())
                async for line in response.content:
                    if line.strip():
                        event: Manifest = json.loads(line)
                        yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
            raise ApiUnavailable(f"watch of {path} broke: {error}") from error
        except TimeoutError as error:
            raise ApiUnavailable(f"watch of {path} went silent") from error

    async def review_token(self, token: str) -> Identity | None:
        """TokenReview: the identity behind ``token``, or None when the API server rejects it."""
        review = await self.request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        return Identity(
            username=str(user.get("username", "")),
            groups=tuple(str(g) for g in user.get("groups") or ()),
            uid=str(user.get("uid", "")),
        )

    async def review_access(
        self,
        who: Identity,
        *,
        namespace: str,
        verb: str,
        resource: str,
        group: str,
        name: str = "",
    ) -> tuple[bool, str]:
        """SubjectAccessReview: may ``who`` do ``verb`` on ``resource`` (``name``, if given) in
        ``namespace``?"""
        review = await self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": who.username,
                    "groups": list(who.groups),
                    "uid": who.uid,
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": verb,
                        "group": group,
                        "resource": resource,
                        "name": name,
                    },
                },
            },
        )
        status = review.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")

    async def port_forward(
        self, namespace: str, pod: str, port: int, as_user: Identity
    ) -> PortForward:
        """A byte stream to ``port`` of ``pod`` through the API server and the kubelet, opened
        with the caller's rights (``pods/portforward``, what `kubectl port-forward` needs).

        The kubelet connects inside the pod's network namespace, so the job's NetworkPolicy,
        which admits no ingress to the desktop, stays as strict as it is.
        """
        url = (
            self.config.host.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
            + f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
        )
        headers = self._headers(as_user, None)
        del headers["Accept"]
        try:
            ws = await self._client().ws_connect(
                url,
                params={"ports": str(port)},
                protocols=(PORT_FORWARD_PROTOCOL,),
                headers=headers,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5),
                heartbeat=30,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as error:
            raise ApiError(
                error.status, f"port-forward to {pod}:{port}: {error.message}"
            ) from error
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise ApiUnavailable(f"port-forward to {pod}:{port} failed: {error}") from error
        return PortForward(ws)


class PortForward:
    """One forwarded port over the ``v4.channel.k8s.io`` websocket protocol: each frame starts
    with its channel (0 data, 1 error), and each channel's first frame with the port number."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._port_seen = {0: False, 1: False}

    async def read(self) -> bytes | None:
        """The next bytes from the pod's port; None once the stream has ended."""
        while True:
            message = await self._ws.receive()
            if message.type != aiohttp.WSMsgType.BINARY:
                if message.type in (aiohttp.WSMsgType.TEXT,):
                    continue
                return None
            frame: bytes = message.data
            if not frame:
                continue
            channel, payload = frame[0], frame[1:]
            if channel in self._port_seen and not self._port_seen[channel]:
                self._port_seen[channel] = True
                payload = payload[2:]
            if not payload:
                continue
            if channel == 0:
                return payload
            if channel == 1:
                raise ApiError(502, f"port-forward: {payload.decode(errors='replace')}")

    async def write(self, data: bytes) -> None:
        await self._ws.send_bytes(b"\x00" + data)

    async def close(self) -> None:
        await self._ws.close()
