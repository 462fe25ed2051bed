"""Names and labels of a CodingJob's children, all derived from the job's name in one place.

Names are deterministic (a retried handler finds the child it already made), DNS-safe and capped in
length; a name that had to be shortened gets a hash of the full name so two long names that share
a prefix never collide.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

#: Labels on every child; `codingjob.dev/job` is what the operator selects on.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
COMPONENT_LABEL = "app.kubernetes.io/component"
JOB_LABEL = "codingjob.dev/job"
APP_NAME = "codingjob-agent"
MANAGED_BY = "codingjob-operator"

#: Longest DNS label (RFC 1123): Services, and pods' hostnames, must fit.
DNS_LABEL_MAX = 63
#: Label values have the same cap as DNS labels.
LABEL_VALUE_MAX = 63
_HASH_LEN = 8


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LEN]


def dns_label(base: str, suffix: str = "", max_length: int = DNS_LABEL_MAX) -> str:
    """``<base>-<suffix>`` as a valid RFC 1123 label of at most ``max_length`` characters.

    Invalid characters become ``-``; when the result must be shortened (or was changed), the base
    is cut and a hash of the original ``base`` keeps it unique.
    """
    cleaned = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-") or "x"
    tail = f"-{suffix}" if suffix else ""
    candidate = f"{cleaned}{tail}"
    if cleaned == base and len(candidate) <= max_length:
        return candidate
    keep = max_length - len(tail) - _HASH_LEN - 1
    head = cleaned[:keep].rstrip("-") or "x"
    return f"{head}-{_hash(base)}{tail}"


def label_value(value: str) -> str:
    """A label value (at most 63 characters, alphanumeric at both ends) that stays unique."""
    if len(value) <= LABEL_VALUE_MAX:
        return value
    return f"{value[: LABEL_VALUE_MAX - _HASH_LEN - 1].rstrip('-.')}-{_hash(value)}"


@dataclass(frozen=True)
class ChildNames:
    """Names of everything the operator creates for one CodingJob."""

    pod: str
    workspace: str
    session: str
    service: str
    network_policy: str
    archive_job: str
    archive_secret: str
    model_credential: str


def child_names(job: str) -> ChildNames:
    """The children's names for the CodingJob named ``job`` (a DNS subdomain of up to 253)."""
    return ChildNames(
        pod=dns_label(job, "agent"),
        workspace=dns_label(job, "workspace"),
        session=dns_label(job, "session"),
        service=dns_label(job, "desktop"),
        network_policy=dns_label(job, "sandbox"),
        # A Job's name becomes a pod label value (`job-name`), so it is held to 63 as well.
        archive_job=dns_label(job, "archive"),
        archive_secret=dns_label(job, "archive-credentials"),
        model_credential=dns_label(job, "model-credential"),
    )


def labels(job: str, component: str) -> dict[str, str]:
    """The labels of one child; ``component`` is e.g. ``agent``, ``workspace``, ``archiver``."""
    return {
        NAME_LABEL: APP_NAME,
        INSTANCE_LABEL: label_value(job),
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: component,
        JOB_LABEL: label_value(job),
    }


def selector(job: str, component: str) -> dict[str, str]:
    """The labels that pick exactly one job's children of one component."""
    return {JOB_LABEL: label_value(job), COMPONENT_LABEL: component}


def archive_key(namespace: str, name: str, uid: str) -> str:
    """Object key of the workspace ZIP."""
    return f"{archive_prefix(namespace, name, uid)}workspace.zip"


def transcript_key(namespace: str, name: str, uid: str) -> str:
    """Object key of the conversation transcript."""
    return f"{archive_prefix(namespace, name, uid)}context.txt"


def archive_prefix(namespace: str, name: str, uid: str) -> str:
    """Every object of one CodingJob lives under this prefix (deleted together on retention)."""
    return f"{namespace}/{name}/{uid}/"
