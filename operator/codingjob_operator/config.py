"""Operator configuration from the environment (``CODINGJOB_*``)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from codingjob_operator.storage import StorageSettings


def _storage_from_env() -> StorageSettings | None:
    # Without credentials there is no archive: finished jobs keep their workspace PVC instead.
    if not os.environ.get("CODINGJOB_STORAGE_ACCESS_KEY"):
        return None
    return StorageSettings()


class OperatorConfig(BaseSettings):
    """Images, defaults and object storage of the operator, read once at startup."""

    model_config = SettingsConfigDict(env_prefix="CODINGJOB_", extra="ignore")

    agent_image: str = "codingjob/agent:dev"
    #: The operator's own image; the archiver Job runs it.
    operator_image: str = "codingjob/operator:dev"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    #: Used when a CodingJob omits spec.model.baseURL / spec.model.name.
    default_model_base_url: str | None = None
    default_model_name: str | None = None
    #: The model relay's OpenAI-compatible URL (``http://<relay>.<ns>.svc:8080/v1``). Set, jobs
    #: without their own ``spec.model.baseURL`` reach their model through it, with a per-job
    #: credential instead of a provider key.
    relay_url: str | None = None
    #: File with the HMAC key shared with the relay (a mounted Secret).
    relay_signing_key_file: str | None = None
    #: Provider a job uses when its ``spec.model.provider`` is unset.
    relay_default_provider: str | None = None
    #: Longest life of a job credential; the relay also refuses it once the job has ended.
    relay_credential_lifetime_seconds: int = Field(7 * 24 * 3600, ge=60)
    #: How long the sidecar keeps retrying while the provider is down, when the job has no
    #: activeDeadlineSeconds (with one, until that deadline).
    model_retry_seconds: int = Field(6 * 3600, ge=0)
    #: A pod stuck pulling its image this long fails the job (ImagePullFailed).
    image_pull_timeout_seconds: int = Field(300, ge=10)
    #: How often a running job's sidecar stats are read.
    stats_interval_seconds: float = Field(5.0, gt=0)
    #: Port of the Prometheus endpoint (`/metrics`); 0 (the default outside the chart) is off.
    metrics_port: int = Field(0, ge=0, le=65535)
    #: With peering: a replica that stopped renewing its presence this long ago is presumed dead
    #: and a standby takes over (kopf renews every lifetime minus 5-10 s).
    peering_lifetime_seconds: int = Field(15, ge=10, le=600)
    #: `json`: the operator, the sidecars and the archivers log one JSON object per line.
    log_format: Literal["plain", "json"] = "plain"
    #: The archiver Job's deadline (activeDeadlineSeconds); its storage credentials expire with it.
    archive_deadline_seconds: int = Field(3600, ge=120, le=43200)
    #: Archiver Jobs started for one CodingJob before it fails with ArchiveFailed (PVC kept).
    archive_max_attempts: int = Field(3, ge=1, le=20)
    #: Largest archive (bytes) before the job fails with ArchiveTooLarge (PVC kept); None: S3's.
    archive_max_bytes: int | None = Field(None, gt=0)
    storage: StorageSettings | None = Field(default_factory=_storage_from_env)
    #: The egress floor beyond link-local and cloud metadata: node, pod and service CIDRs and
    #: the API server's addresses (JSON list; the chart fills it from its values).
    denied_cidrs: list[str] = Field(default_factory=list)
    #: Where the cluster DNS pods run: the only resolvers a sandbox may reach.
    dns_namespace: str = "kube-system"
    dns_pod_labels: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"})
    #: A NodeLocal DNSCache address sandboxes may also query, when the cluster runs one.
    node_local_dns_ip: str | None = None
    #: The cluster DNS Service's ClusterIP, also allowed on port 53 (for engines that match
    #: before the Service's address translation).
    dns_service_ip: str | None = None
    #: Addresses allowed to reach a sandbox's `/stats` port besides its own node: the API
    #: server's, when it runs elsewhere (its pod proxy is how the operator reads the stats).
    stats_source_cidrs: list[str] = Field(default_factory=list)
