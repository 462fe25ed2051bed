"""Is a credential's job still running? Asked of the Kubernetes API, cached briefly.

A credential outlives its job until it expires; this check makes it useless as soon as the job
has finished, been deleted, or been replaced by another job of the same name (another UID).
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import Protocol

import aiohttp

from codingjob_relay.credentials import JobClaims

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP_VERSION = "codingjob.dev/v1alpha1"
#: Phases in which the job's pod may call the model.
LIVE_PHASES = frozenset({"", "Pending", "Running"})


class JobChecker(Protocol):
    async def is_live(self, claims: JobClaims) -> bool: ...

    async def close(self) -> None: ...


class NoJobCheck:
    """Trusts the credential's expiry alone (tests and benchmarks without a cluster)."""

    async def is_live(self, claims: JobClaims) -> bool:
        return True

    async def close(self) -> None:
        return None


class KubernetesJobCheck:
    """Reads the CodingJob with the relay's service account (RBAC: get codingjobs)."""

    def __init__(self, ttl_seconds: float, host: str, token_path: Path, ca_path: Path) -> None:
        self.ttl = ttl_seconds
        self.host = host
        self.token_path = token_path
        self._ssl = ssl.create_default_context(cafile=str(ca_path))
        self._cache: dict[str, tuple[float, bool]] = {}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def in_cluster(cls, ttl_seconds: float) -> KubernetesJobCheck:
        import os

        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:
            host = f"[{host}]"
        return cls(
            ttl_seconds,
            f"https://{host}:{port}",
            SERVICE_ACCOUNT / "token",
            SERVICE_ACCOUNT / "ca.crt",
        )

    async def is_live(self, claims: JobClaims) -> bool:
        now = time.monotonic()
        cached = self._cache.get(claims.uid)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        live = await self._ask(claims)
        self._cache[claims.uid] = (now, live)
        return live

    async def _ask(self, claims: JobClaims) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        url = (
            f"{self.host}/apis/{GROUP_VERSION}/namespaces/{claims.namespace}"
            f"/codingjobs/{claims.name}"
        )
        # Read the token each time: the kubelet rotates the projected service account token.
        headers = {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}
        async with self._session.get(url, headers=headers, ssl=self._ssl) as response:
            if response.status == 404:
                return False
            if response.status != 200:
                # Fail closed: an unknown job state must not let a possibly ended job spend.
                log.warning("cannot read CodingJob %s: HTTP %d", claims.job, response.status)
                return False
            job = await response.json()
        if job.get("metadata", {}).get("uid") != claims.uid:
            return False
        status = job.get("status") or {}
        return str(status.get("phase") or "") in LIVE_PHASES and not status.get("outcome")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
