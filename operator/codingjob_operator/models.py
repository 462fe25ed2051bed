"""The CodingJob resource as pydantic models: the one source of truth for the CRD schema.

``crds/codingjob.yaml`` is generated from these models by :mod:`codingjob_operator.crd`; a unit
test fails when the committed file and the models disagree. Field names are the camelCase names
users write in YAML; Python code uses the snake_case attributes.
"""

from __future__ import annotations

import datetime
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from codingjob_operator.conditions import Phase

GROUP = "codingjob.dev"
VERSION = "v1alpha1"
KIND = "CodingJob"
PLURAL = "codingjobs"
SINGULAR = "codingjob"
#: Not "cj": that is the built-in short name of CronJobs, which kubectl prefers over any CRD's.
SHORT_NAMES = ["cjob"]
API_VERSION = f"{GROUP}/{VERSION}"

#: Longest task text: it travels to the agent as an environment variable.
TASK_MAX_LENGTH = 32768
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
#: A container image reference: [registry[:port]/]path[:tag][@digest] (distribution/reference).
IMAGE_PATTERN = (
    r"^(([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*"
    r"(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[a-z0-9]+([+._-][a-z0-9]+)*:[a-fA-F0-9]{32,})?$"
)
#: IPv4 or IPv6 CIDR, checked loosely here and exactly by the NetworkPolicy admission.
CIDR_PATTERN = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9a-fA-F:]+/[0-9]{1,3})$"
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
#: The API server's resource.Quantity syntax.
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"


def _quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2Gi)")
    return value


#: A Kubernetes resource quantity ("500m", "2Gi", 1): the API server's int-or-string shape.
Quantity = Annotated[
    str | int,
    AfterValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


#: A free-form Kubernetes object (e.g. an Affinity) kept as written.
FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class SecretKeyRef(_Model):
    """A key in a Secret in the CodingJob's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name."
    )
    key: str = Field(
        min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN, description="Key in the Secret."
    )


class ModelSpec(_Model):
    """The OpenAI-compatible model endpoint the context-manager sidecar talks to."""

    base_url: str | None = Field(
        None,
        alias="baseURL",
        max_length=2048,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Base URL of the OpenAI-compatible API, e.g. https://api.openai.com/v1. "
        "Defaults to the operator's CODINGJOB_DEFAULT_MODEL_BASE_URL.",
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Model name sent to the API. Defaults to the operator's "
        "CODINGJOB_DEFAULT_MODEL_NAME.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Secret key holding the API key; only the sidecar receives it. "
        "Omit for endpoints that need no key.",
    )
    provider: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Provider configured by the admin in the model relay; defaults to the "
        "chart's relay.defaultProvider. Used when baseURL is unset and the relay is enabled.",
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    max_output_tokens: int | None = Field(
        None, ge=1, le=1_000_000, description="Upper bound on tokens per model reply."
    )


class ContextStrategy(StrEnum):
    WINDOW = "window"
    MASK_OBSERVATIONS = "mask-observations"
    SUMMARIZE = "summarize"


class ContextSpec(_Model):
    """How the sidecar keeps the conversation within the model's context window."""

    max_tokens: int = Field(
        1_000_000, ge=1024, le=10_000_000, description="Context window size in tokens."
    )
    # Only encodings whose BPE file ships in the agent image: nothing is downloaded at run time,
    # so any other name would fail in the sidecar instead of at `kubectl apply`.
    encoding: Literal["cl100k_base"] = Field(
        "cl100k_base", description="tiktoken encoding used to count tokens (shipped offline)."
    )
    strategy: ContextStrategy = Field(
        ContextStrategy.MASK_OBSERVATIONS,
        description="What to drop first when the window is full: the oldest messages (window), "
        "old tool outputs (mask-observations) or a summary of old turns (summarize).",
    )


class LimitsSpec(_Model):
    """Hard limits on one run of the agent."""

    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=2_592_000,
        description="Wall-clock limit for the agent pod; on expiry the job fails with reason "
        "DeadlineExceeded (the workspace is still archived when uploadOnFailure).",
    )
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Most agent steps (model calls); unset = unlimited."
    )
    max_total_tokens: int | None = Field(
        None,
        ge=1,
        le=10_000_000_000,
        description="Most tokens sent to and received from the model in total; unset = unlimited.",
    )
    max_cost_usd: float | None = Field(
        None,
        alias="maxCostUSD",
        ge=0.0001,
        le=1_000_000,
        description="Cost budget in USD, enforced by the model relay with the admin's prices; "
        "unset = unlimited.",
    )


class ToggleSpec(_Model):
    enabled: bool = Field(True, description="Whether the feature runs in the agent pod.")


class ResourcesSpec(_Model):
    """Compute resources of the agent container (Kubernetes ResourceRequirements)."""

    requests: dict[str, Quantity] | None = Field(None, description="Minimum resources.")
    limits: dict[str, Quantity] | None = Field(None, description="Maximum resources.")


class WorkspaceSpec(_Model):
    size: Quantity | None = Field(
        None,
        description="Size of the workspace PersistentVolumeClaim; unset = the class's "
        "workspace.defaultSize, at most its workspace.maxSize.",
    )
    storage_class_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="StorageClass of the workspace PVC; unset = the class's choice.",
    )


class Toleration(_Model):
    """A Kubernetes toleration, passed through to the agent pod."""

    key: str | None = Field(None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class EgressMode(StrEnum):
    RESTRICTED = "Restricted"
    OPEN = "Open"


class OnDelete(StrEnum):
    ARCHIVE = "Archive"
    DISCARD = "Discard"


class NetworkSpec(_Model):
    egress: EgressMode = Field(
        EgressMode.RESTRICTED,
        description="Restricted: DNS, the model endpoint and allowedCIDRs only. Open: any.",
    )
    allowed_cidrs: list[Annotated[str, Field(pattern=CIDR_PATTERN, max_length=43)]] = Field(
        default_factory=list,
        alias="allowedCIDRs",
        max_length=64,
        description="Extra destinations (CIDRs) the agent may reach when egress is Restricted.",
    )


class ArtifactsSpec(_Model):
    url_expiry_seconds: int = Field(
        3600,
        ge=60,
        le=604800,
        description="Lifetime of the presigned download URL; the operator signs a new one "
        "before it expires (when a tenth of the lifetime is left).",
    )
    upload_on_failure: bool = Field(
        True, description="Archive the workspace also when the agent failed."
    )
    on_delete: OnDelete = Field(
        OnDelete.ARCHIVE,
        description="Deleting an unfinished CodingJob: Archive stops the agent and archives the "
        "workspace before the CodingJob goes (bounded by the archive deadline); Discard drops it.",
    )


class CodingJobSpec(_Model):
    """What the user asks for: a task, a model and the sandbox to run the agent in."""

    task: str = Field(
        min_length=1, max_length=TASK_MAX_LENGTH, description="What the agent should do."
    )
    class_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="The CodingJobClass whose bounds and defaults apply; unset = the class "
        "annotated codingjob.dev/is-default-class.",
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="The model endpoint.")
    context: ContextSpec = Field(default_factory=ContextSpec, description="Context management.")
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="Run limits.")
    backoff_limit: int = Field(
        2,
        ge=0,
        le=10,
        description="How often an agent pod lost to infrastructure (eviction, node loss, deleted "
        "pod) is recreated before the job fails. The agent's own non-zero exit is never retried.",
    )
    suspend: bool = Field(
        False, description="true deletes the agent pod and keeps the workspace; false resumes."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the CodingJob this long after it finished."
    )
    gui: ToggleSpec = Field(default_factory=ToggleSpec, description="Desktop with VNC and noVNC.")
    jupyter: ToggleSpec = Field(default_factory=ToggleSpec, description="Jupyter server.")
    image: str | None = Field(
        None,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="Agent image override; defaults to the operator's CODINGJOB_AGENT_IMAGE.",
    )
    resources: ResourcesSpec | None = Field(None, description="Agent container resources.")
    workspace: WorkspaceSpec = Field(default_factory=WorkspaceSpec, description="Workspace PVC.")
    runtime_class_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="RuntimeClass of the agent pod, e.g. gvisor or kata for stronger isolation.",
    )
    node_selector: dict[str, str] | None = Field(None, description="Node selector of the pod.")
    tolerations: list[Toleration] | None = Field(None, description="Tolerations of the pod.")
    network: NetworkSpec = Field(default_factory=NetworkSpec, description="Egress policy.")
    artifacts: ArtifactsSpec = Field(default_factory=ArtifactsSpec, description="Archive.")


class Condition(_Model):
    """A Kubernetes condition (metav1.Condition shape)."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: datetime.datetime
    observed_generation: int | None = None


class TokensStatus(_Model):
    """Token counts reported by the context-manager sidecar."""

    used: int = Field(0, description="Tokens used so far (prompt and completion).")
    limit: int = Field(0, description="The context window (context.maxTokens).")
    pruned: int = Field(0, description="Tokens pruned from the context so far.")
    prompt: int | None = Field(None, description="Prompt tokens counted by the model relay.")
    completion: int | None = Field(
        None, description="Completion tokens counted by the model relay."
    )
    cached: int | None = Field(
        None, description="Cached prompt tokens (part of prompt) counted by the model relay."
    )
    cost_usd: float | None = Field(
        None, alias="costUSD", description="Cost in USD so far, from the relay's prices."
    )


class ServicePortStatus(_Model):
    name: str = Field(description="vnc, novnc or jupyter.")
    port: int = Field(description="Service port.")


class ServiceStatus(_Model):
    """The desktop Service: `kubectl port-forward svc/<name> <port>` reaches the agent pod."""

    name: str = Field(description="Service name.")
    ports: list[ServicePortStatus] = Field(default_factory=list, description="Desktop ports.")


class ArtifactStatus(_Model):
    """The archived workspace in object storage."""

    bucket: str = Field(description="Bucket of the archive.")
    key: str = Field(description="Object key: <namespace>/<name>/<uid>/workspace.zip.")
    size: int = Field(description="Size of the ZIP in bytes, confirmed in the store.")
    sha256: str = Field(description="SHA-256 of the ZIP, confirmed in the store.")
    files: int | None = Field(None, description="Entries in the ZIP.")
    skipped: int | None = Field(
        None,
        description="Entries left out (special files, unreadable, unsafe links, large sparse "
        "files), listed with their reasons in the archive's .codingjob-manifest.jsonl.",
    )
    transcript_key: str | None = Field(None, description="Object key of context.txt.")
    url: str | None = Field(None, description="Presigned download URL.")
    url_expires_at: datetime.datetime | None = Field(
        None, description="When the URL expires; it is refreshed before."
    )


class ResolvedClass(_Model):
    """The class a job runs under, resolved once when the job starts: later edits of the class
    never change a running job."""

    name: str = Field(description="Name of the CodingJobClass.")
    generation: int = Field(description="metadata.generation of the class when resolved.")
    agent_image: str = Field(description="Image of the agent container.")
    sidecar_image: str = Field(description="Image of the context-manager (the operator's).")
    service_account_name: str = Field(description="ServiceAccount of the sandbox pod.")
    runtime_class_name: str | None = Field(None, description="RuntimeClass of the pod.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations.")
    affinity: FreeForm | None = Field(None, description="Affinity of the pod.")
    priority_class_name: str | None = Field(None, description="PriorityClass of the pod.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Pull Secrets.")
    resources: ResourcesSpec = Field(description="Agent container requests and limits.")
    workspace_size: Quantity = Field(description="Workspace PVC size.")
    storage_class_name: str | None = Field(None, description="Workspace StorageClass.")
    active_deadline_seconds: int | None = Field(None, description="Pod deadline.")
    max_steps: int | None = Field(None, description="Agent step budget.")
    max_total_tokens: int | None = Field(None, description="Token budget.")
    providers: list[str] = Field(default_factory=list, description="Allowed model providers.")
    model_retry_seconds: int | None = Field(
        None, description="Cap on one step's retries while the model is unavailable."
    )


class CodingJobStatus(_Model):
    """What the operator observed; derived from the children on every reconcile."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Suspended, Succeeded, Failed, Complete, Archived, BudgetExceeded.",
        # One entry per type, merged by type (server-side apply, `kubectl wait --for=condition`),
        # as metav1.Condition lists are declared in Kubernetes' own APIs.
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        None, description="The spec generation this status was derived from."
    )
    start_time: datetime.datetime | None = Field(
        None, description="When the agent container started."
    )
    completion_time: datetime.datetime | None = Field(
        None, description="When the job reached Succeeded or Failed."
    )
    pod_name: str | None = Field(None, description="The agent pod.")
    service: ServiceStatus | None = None
    steps: int | None = Field(None, description="Agent steps so far.")
    tokens: TokensStatus | None = None
    outcome: Literal["Succeeded", "Failed"] | None = Field(
        None, description="The agent's outcome; the final phase once the archive is done."
    )
    reason: str | None = Field(None, description="Why the job is in its phase (CamelCase).")
    message: str | None = Field(None, description="Details for humans.")
    summary: str | None = Field(None, description="The agent's summary of its work.")
    pod_failures: int = Field(0, description="Agent pods lost to infrastructure so far.")
    archive_attempts: int = Field(0, description="Archiver Jobs started so far.")
    cleaned_up: bool | None = Field(
        None, description="The agent pod, workspace and archiver objects were deleted (once)."
    )
    artifact: ArtifactStatus | None = None
    resolved_class: ResolvedClass | None = Field(
        None,
        alias="class",
        description="The CodingJobClass and the values this job runs with.",
    )
    download_url: str | None = Field(
        None, alias="downloadURL", description="Presigned URL of the workspace ZIP."
    )


class CodingJob(BaseModel):
    """A whole CodingJob object as read from the API server."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field(API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: CodingJobSpec
    status: CodingJobStatus = Field(default_factory=CodingJobStatus)
