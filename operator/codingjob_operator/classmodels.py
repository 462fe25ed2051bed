"""The CodingJobClass resource as pydantic models: what a platform admin decides for every
CodingJob that names the class (or gets the default class).

A class is cluster-scoped and owned by platform admins, like a StorageClass or an IngressClass.
The CodingJob author picks a class with ``spec.className``; everything the author must not choose
freely (images, placement, ceilings on resources and budgets, egress, model endpoints) is here.
``crds/codingjobclass.yaml`` is generated from these models by :mod:`codingjob_operator.crd`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from codingjob_operator.models import (
    CIDR_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    GROUP,
    IMAGE_PATTERN,
    VERSION,
    EgressMode,
    FreeForm,
    Quantity,
    Toleration,
    _Model,
)

CLASS_KIND = "CodingJobClass"
CLASS_PLURAL = "codingjobclasses"
CLASS_SINGULAR = "codingjobclass"
CLASS_SHORT_NAMES = ["cjobclass"]
#: The class a CodingJob without ``spec.className`` gets (like StorageClass's annotation).
DEFAULT_CLASS_ANNOTATION = "codingjob.dev/is-default-class"
#: The ServiceAccount sandbox pods run as when the class names none; it never gets a token.
DEFAULT_SANDBOX_SERVICE_ACCOUNT = "codingjob-sandbox"


class SandboxClassSpec(_Model):
    """How sandbox pods of this class run: images, placement, identity."""

    agent_image: str | None = Field(
        None,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="Agent image of this class; unset = the operator's CODINGJOB_AGENT_IMAGE. "
        "The context-manager sidecar (which holds the model credential) always runs the "
        "operator's own image, never this one or the author's.",
    )
    image_patterns: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default_factory=list,
        max_length=64,
        description="Regular expressions (RE2, matched against the whole reference) that "
        "spec.image may match. Empty (the default): authors may not choose an image.",
    )
    runtime_class_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="RuntimeClass of every sandbox pod (e.g. gvisor); spec.runtimeClassName may "
        "only repeat it.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node selector of every sandbox pod; spec.nodeSelector may only repeat "
        "entries of it.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations of every sandbox pod; spec.tolerations may only repeat them.",
    )
    affinity: FreeForm | None = Field(None, description="Affinity of every sandbox pod.")
    priority_class_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="PriorityClass of every sandbox pod.",
    )
    image_pull_secrets: list[Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN)]] = Field(
        default_factory=list,
        max_length=16,
        description="Names of Secrets (in the job's namespace) for pulling the agent image.",
    )
    service_account_name: str = Field(
        DEFAULT_SANDBOX_SERVICE_ACCOUNT,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="ServiceAccount of every sandbox pod, created by the operator in the job's "
        "namespace when missing. No API token is ever mounted.",
    )


class QuantityBound(_Model):
    """Default request, default limit and the ceiling of one resource."""

    default_request: Quantity | None = Field(None, description="Request when the spec sets none.")
    default_limit: Quantity | None = Field(None, description="Limit when the spec sets none.")
    max: Quantity | None = Field(None, description="Ceiling of the spec's request and limit.")


class ResourcesClassSpec(_Model):
    """Bounds of the agent container's resources. Other resource names are refused."""

    # Plain defaults (not factories): they appear in the CRD schema, so the API server stores
    # them and the admission policy reads the same numbers the operator does. Requests are
    # small (what a node must reserve), limits are the bound.
    cpu: QuantityBound = Field(
        QuantityBound(default_request="100m", default_limit="2", max="4"), description="CPU."
    )
    memory: QuantityBound = Field(
        QuantityBound(default_request="256Mi", default_limit="4Gi", max="8Gi"),
        description="Memory.",
    )
    ephemeral_storage: QuantityBound = Field(
        QuantityBound(default_request="256Mi", default_limit="10Gi", max="20Gi"),
        alias="ephemeralStorage",
        description="Ephemeral storage (container writable layer, logs, emptyDirs).",
    )


class WorkspaceClassSpec(_Model):
    default_size: Quantity = Field("5Gi", description="Workspace size when the spec sets none.")
    max_size: Quantity = Field("20Gi", description="Largest workspace a spec may ask for.")
    storage_class_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="StorageClass when the spec sets none; unset = the cluster default.",
    )
    allowed_storage_class_names: list[Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN)]] = Field(
        default_factory=list,
        max_length=32,
        description="StorageClasses spec.workspace.storageClassName may name (besides "
        "storageClassName).",
    )


class IntBound(_Model):
    """A default and a ceiling; unset default = unlimited unless max is set."""

    default: int | None = Field(None, ge=1, description="Value when the spec sets none.")
    max: int | None = Field(None, ge=1, description="Largest value a spec may ask for.")

    @model_validator(mode="after")
    def _default_within_max(self) -> IntBound:
        if self.default is not None and self.max is not None and self.default > self.max:
            raise ValueError(f"default {self.default} exceeds max {self.max}")
        return self


class LimitsClassSpec(_Model):
    """Defaults and ceilings of the run limits."""

    active_deadline_seconds: IntBound = Field(
        IntBound(default=3600, max=86400),
        description="Wall-clock limit of the sandbox pod.",
    )
    allow_no_deadline: bool = Field(
        False,
        description="Jobs of this class may run without a deadline. Must be true when "
        "activeDeadlineSeconds has no default: an unbounded sandbox is an explicit choice.",
    )
    max_steps: IntBound = Field(IntBound(), description="Agent steps.")
    max_total_tokens: IntBound = Field(
        IntBound(), description="Tokens sent to and received from the model."
    )

    @model_validator(mode="after")
    def _deadline_is_explicit(self) -> LimitsClassSpec:
        if self.active_deadline_seconds.default is None and not self.allow_no_deadline:
            raise ValueError(
                "activeDeadlineSeconds.default is unset: set it, or set allowNoDeadline: true"
            )
        return self


class NetworkClassSpec(_Model):
    """Which egress authors may ask for. The floor (metadata, node/pod/service CIDRs, the API
    server) is the operator's and no class can open it."""

    allowed_egress_modes: list[EgressMode] = Field(
        [EgressMode.RESTRICTED],
        min_length=1,
        description="Egress modes spec.network.egress may pick.",
    )
    allowed_cidrs: list[Annotated[str, Field(pattern=CIDR_PATTERN, max_length=43)]] = Field(
        default_factory=list,
        alias="allowedCIDRs",
        max_length=64,
        description="Ranges spec.network.allowedCIDRs must lie within. Empty: none allowed.",
    )


class ModelClassSpec(_Model):
    """The model endpoints authors may send their prompts (and API keys) to."""

    providers: list[Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]] = Field(
        default_factory=list,
        max_length=32,
        description="Providers of the model relay spec.model.provider may name. The relay's "
        "default provider is always allowed. Empty: only the default.",
    )
    base_url_prefixes: list[Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]] = Field(
        default_factory=list,
        alias="baseURLPrefixes",
        max_length=32,
        description="URL prefixes spec.model.baseURL must start with (at a path boundary). "
        "Empty: only the operator's default endpoint.",
    )
    max_retry_seconds: int | None = Field(
        None,
        ge=60,
        le=604800,
        description="Longest time one agent step keeps retrying while the model is unavailable "
        "(429, 5xx, timeouts, the relay's 503; the job shows ModelDegraded meanwhile). Unset: "
        "until the job's deadline. A shorter cap ends the job ModelUnavailable sooner, so an "
        "outage cannot hold a sandbox (and its resources) for the whole deadline.",
    )


class CodingJobClassSpec(_Model):
    """What the platform admin decides for every CodingJob of this class."""

    sandbox: SandboxClassSpec = Field(default_factory=SandboxClassSpec, description="Pods.")
    resources: ResourcesClassSpec = Field(
        default_factory=ResourcesClassSpec, description="Agent container resources."
    )
    workspace: WorkspaceClassSpec = Field(
        default_factory=WorkspaceClassSpec, description="Workspace PVC."
    )
    limits: LimitsClassSpec = Field(default_factory=LimitsClassSpec, description="Run limits.")
    network: NetworkClassSpec = Field(default_factory=NetworkClassSpec, description="Egress.")
    model: ModelClassSpec = Field(default_factory=ModelClassSpec, description="Model endpoints.")


class CodingJobClass(BaseModel):
    """A whole CodingJobClass object as read from the API server."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field(f"{GROUP}/{VERSION}", alias="apiVersion")
    kind: str = CLASS_KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: CodingJobClassSpec = Field(default_factory=CodingJobClassSpec)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation") or 0)

    @property
    def is_default(self) -> bool:
        annotations = self.metadata.get("annotations") or {}
        return annotations.get(DEFAULT_CLASS_ANNOTATION) == "true"
