"""CodingJobs as the HTTP API shows them: job ids, the submit body, the status view, and the
API server's validation errors turned into field errors. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

GROUP = "codingjob.dev"
VERSION = "v1alpha1"
PLURAL = "codingjobs"
KIND = "CodingJob"
API_VERSION = f"{GROUP}/{VERSION}"
FINAL_PHASES = frozenset({"Succeeded", "Failed"})

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
NAMESPACE_PATTERN = re.compile(rf"^{_DNS_LABEL}$")
NAME_PATTERN = re.compile(rf"^{_DNS_SUBDOMAIN}$")


class BadJobId(ValueError):
    """A job id that names no possible CodingJob."""


@dataclass(frozen=True)
class JobId:
    """A CodingJob's namespace and name. As text ``NAMESPACE.NAME``: a namespace is a DNS label
    and cannot contain a dot, so the first dot separates the two."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}.{self.name}"

    @classmethod
    def parse(cls, text: str, default_namespace: str | None = None) -> JobId:
        """``NS.NAME``, or a bare ``NAME`` in ``default_namespace`` (the caller's own)."""
        namespace, dot, name = text.partition(".")
        if not dot:
            if default_namespace is None:
                raise BadJobId(f"job id {text!r} is not NAMESPACE.NAME")
            namespace, name = default_namespace, text
        if not NAMESPACE_PATTERN.match(namespace) or len(namespace) > 63:
            raise BadJobId(f"job id {text!r}: {namespace!r} is not a namespace name")
        if not NAME_PATTERN.match(name) or len(name) > 253:
            raise BadJobId(f"job id {text!r}: {name!r} is not a CodingJob name")
        return cls(namespace, name)


class SubmitRequest(BaseModel):
    """``POST /submit``: the task, plus any CodingJob spec field in its camelCase YAML name
    (``className``, ``model``, ``limits``, ``context``, ``workspace``, ...).

    Spec fields are passed to the API server as they are, with strict field validation: the
    CodingJob schema (and the class's bounds, where admission checks them) decide what is valid,
    in one place, and their errors come back as 422 naming the field.
    """

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"task": "Build me a todo app in React"},
                {
                    "task": "Fix the failing test in repo X",
                    "namespace": "team-a",
                    "limits": {"maxSteps": 50, "activeDeadlineSeconds": 3600},
                    "model": {"name": "gpt-4.1"},
                },
            ]
        },
    )

    task: str = Field(min_length=1, description="What the agent should do.")
    namespace: str | None = Field(
        None,
        pattern=NAMESPACE_PATTERN.pattern,
        max_length=63,
        description="Namespace of the job; default: a ServiceAccount's own namespace, else the "
        "gateway's default namespace.",
    )
    name_prefix: str = Field(
        "job-",
        alias="namePrefix",
        pattern=r"^[a-z0-9]([-a-z0-9]*)?$",
        max_length=40,
        description="generateName prefix of the CodingJob; the API server appends 5 characters.",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of the CodingJob.")


def build_codingjob(request: SubmitRequest, namespace: str) -> dict[str, Any]:
    """The CodingJob manifest for a submit request, named by the API server (generateName)."""
    spec: dict[str, Any] = {"task": request.task}
    spec.update(request.model_extra or {})
    metadata: dict[str, Any] = {"generateName": request.name_prefix, "namespace": namespace}
    if request.labels:
        metadata["labels"] = dict(request.labels)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


class Condition(BaseModel):
    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(None, alias="lastTransitionTime")

    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class Tokens(BaseModel):
    used: int = 0
    limit: int = 0
    pruned: int = 0

    model_config = ConfigDict(extra="ignore")


class Links(BaseModel):
    status: str = Field(description="This job's status.")
    download: str = Field(description="Redirects to a freshly signed download URL.")
    console: str = Field(description="The job's page in the web console.")


class JobView(BaseModel):
    """What ``GET /status/{job_id}`` answers: the CodingJob's status in the seed's shape."""

    job_id: str
    namespace: str
    name: str
    task: str
    phase: str = Field(description="Pending until the operator has seen the job.")
    steps: int = 0
    tokens: Tokens = Field(default_factory=Tokens)
    reason: str | None = None
    message: str | None = None
    outcome: str | None = None
    summary: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    suspended: bool = False
    created: str | None = None
    started: str | None = None
    completed: str | None = None
    pod: str | None = None
    desktop_service: str | None = None
    download_url: str | None = Field(
        None, description="Presigned URL of the workspace ZIP once archived (plain GET works)."
    )
    download_expires_at: str | None = None
    links: Links


def job_view(obj: dict[str, Any], base_url: str = "") -> JobView:
    """The API view of a CodingJob object (lenient: fields a newer operator adds are ignored)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    job_id = str(JobId(meta.get("namespace", ""), meta.get("name", "")))
    artifact = status.get("artifact") or {}
    service = status.get("service") or {}
    base = base_url.rstrip("/")
    return JobView(
        job_id=job_id,
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        task=spec.get("task", ""),
        phase=status.get("phase") or "Pending",
        steps=status.get("steps") or 0,
        tokens=Tokens.model_validate(status.get("tokens") or {}),
        reason=status.get("reason"),
        message=status.get("message"),
        outcome=status.get("outcome"),
        summary=status.get("summary"),
        conditions=[Condition.model_validate(c) for c in status.get("conditions") or []],
        suspended=bool(spec.get("suspend")),
        created=meta.get("creationTimestamp"),
        started=status.get("startTime"),
        completed=status.get("completionTime"),
        pod=status.get("podName"),
        desktop_service=service.get("name"),
        download_url=status.get("downloadURL"),
        download_expires_at=artifact.get("urlExpiresAt"),
        links=Links(
            status=f"{base}/status/{job_id}",
            download=f"{base}/jobs/{job_id}/download",
            console=f"{base}/ui/jobs/{job_id}",
        ),
    )


def field_errors(status: dict[str, Any], body_fields: set[str]) -> list[dict[str, Any]]:
    """The API server's ``Status`` of a rejected CodingJob as FastAPI-style field errors.

    ``spec.limits.maxSteps`` becomes ``["body", "limits", "maxSteps"]``: the submit body is the
    spec plus a few fields of its own (``body_fields``), so the caller sees its own field names.
    """
    causes = (status.get("details") or {}).get("causes") or []
    errors: list[dict[str, Any]] = []
    for cause in causes:
        path = str(cause.get("field") or "")
        message = str(cause.get("message") or status.get("message") or "invalid")
        errors.append(
            {
                "loc": ["body", *_body_path(path, body_fields)],
                "msg": message,
                "type": str(cause.get("reason") or "FieldValueInvalid"),
            }
        )
    if not errors:
        message = str(status.get("message") or "invalid CodingJob")
        unknown = re.search(r'unknown field "([^"]+)"', message)
        loc = ["body", *_body_path(unknown.group(1), body_fields)] if unknown else ["body"]
        errors.append({"loc": loc, "msg": message, "type": str(status.get("reason") or "Invalid")})
    return errors


def _body_path(field: str, body_fields: set[str]) -> list[str]:
    parts = [p for p in re.split(r"\.|\[(\d+)\]", field) if p]
    if parts[:1] == ["spec"]:
        return parts[1:] or ["spec"]
    if parts[:2] == ["metadata", "labels"]:
        return ["labels", *parts[2:]]
    if parts[:2] == ["metadata", "generateName"]:
        return ["namePrefix"]
    if parts and parts[0] in body_fields:
        return parts
    return parts or ["body"]
