"""Pure resolution of a CodingJob against its CodingJobClass.

:func:`resolve` takes the author's spec and the admin's class and returns either the settings the
job runs with (:class:`~codingjob_operator.models.ResolvedClass`: class defaults filled in) or the
list of :class:`Violation` s, each naming the field, the value and the class limit. The same rules
run at admission (the ValidatingAdmissionPolicy in the chart) and in the reconciler (Failed
``ClassViolation`` when admission is not installed). No I/O here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from codingjob_operator.classmodels import CodingJobClass, IntBound, QuantityBound
from codingjob_operator.models import (
    CodingJobSpec,
    ResolvedClass,
    ResourcesSpec,
)

#: Addresses no CodingJob may reach, whatever its spec or class says: link-local and the cloud
#: metadata services (instance credentials: AWS/GCP 169.254.169.254, AWS IPv6 fd00:ec2::254,
#: Azure wireserver 168.63.129.16, Alibaba 100.100.100.200) and IPv6 link-local.
ALWAYS_DENIED_CIDRS = (
    "169.254.0.0/16",
    "fd00:ec2::254/128",
    "168.63.129.16/32",
    "100.100.100.200/32",
    "fe80::/10",
)
#: The resources the class bounds; any other resource name in a spec is refused.
RESOURCE_NAMES = {"cpu": "cpu", "memory": "memory", "ephemeral-storage": "ephemeral_storage"}

_SUFFIXES = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")


def parse_quantity(value: str | int) -> Decimal:
    """A Kubernetes quantity as a number (``"500m"`` -> 0.5, ``"1Gi"`` -> 1073741824)."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a quantity")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        # An exponent (`1e3`, `1E3`); `E` and `Ei` alone are the exa and exbi suffixes.
        if suffix not in _SUFFIXES:
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIXES[suffix]
    except InvalidOperation as error:
        raise ValueError(f"{value!r} is not a quantity") from error


@dataclass(frozen=True)
class Violation:
    """One field of the spec outside its class."""

    field: str
    value: object
    limit: str

    def __str__(self) -> str:
        return f"{self.field}: {self.value!r} is not allowed: {self.limit}"


@dataclass(frozen=True)
class OperatorDefaults:
    """What the operator itself decides, beneath any class."""

    agent_image: str
    default_model_base_url: str | None = None
    #: The model relay's provider for jobs that name none (chart ``relay.defaultProvider``);
    #: None when the relay is off.
    relay_default_provider: str | None = None
    #: The egress floor beyond :data:`ALWAYS_DENIED_CIDRS`: node, pod and service CIDRs and the
    #: API server's addresses (chart values).
    denied_cidrs: tuple[str, ...] = ()

    @property
    def floor(self) -> tuple[str, ...]:
        return (*ALWAYS_DENIED_CIDRS, *self.denied_cidrs)


def select_class(classes: Sequence[CodingJobClass], class_name: str | None) -> CodingJobClass | str:
    """The class a spec names, or the single default class; else a message saying why none."""
    if class_name:
        for cls in classes:
            if cls.name == class_name:
                return cls
        return f"spec.className: CodingJobClass {class_name!r} does not exist"
    defaults = sorted((c for c in classes if c.is_default), key=lambda c: c.name)
    if not defaults:
        return "spec.className is unset and no CodingJobClass is annotated as the default"
    if len(defaults) > 1:
        # Like StorageClass admission: two defaults is an admin error, not a coin toss.
        names = ", ".join(c.name for c in defaults)
        return f"spec.className is unset and several classes are the default: {names}"
    return defaults[0]


def url_has_prefix(url: str, prefix: str) -> bool:
    """``url`` starts with ``prefix`` at a path boundary: scheme, host and port equal, and the
    path continues the prefix's path at a ``/`` (so ``https://api.x.com`` never admits
    ``https://api.x.com.evil.net`` nor ``/v1`` admits ``/v1beta``)."""
    u, p = urlsplit(url), urlsplit(prefix)
    if (u.scheme, u.hostname, u.port) != (p.scheme, p.hostname, p.port) or u.username:
        return False
    base = p.path.rstrip("/")
    return u.path == base or u.path.startswith(base + "/")


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def within(cidr: str, ranges: Iterable[str]) -> bool:
    """``cidr`` lies wholly inside one of ``ranges`` (same IP version)."""
    net = _network(cidr)
    for other in ranges:
        outer = _network(other)
        if outer.version == net.version and net.subnet_of(outer):  # type: ignore[arg-type]
            return True
    return False


def floor_except(cidr: str, floor: Iterable[str]) -> list[str] | None:
    """The floor ranges to cut out of an allow rule for ``cidr``; None when ``cidr`` lies wholly
    inside the floor (the rule must not exist at all)."""
    net = _network(cidr)
    cut: list[str] = []
    for denied in floor:
        inner = _network(denied)
        if inner.version != net.version:
            continue
        if net.subnet_of(inner):  # type: ignore[arg-type]
            return None
        if inner.subnet_of(net):  # type: ignore[arg-type]
            cut.append(str(inner))
    return cut


def _int_bound(
    field: str, value: int | None, bound: IntBound, *, unlimited_ok: bool, out: list[Violation]
) -> int | None:
    if value is not None and bound.max is not None and value > bound.max:
        out.append(Violation(field, value, f"the class maximum is {bound.max}"))
    effective = value if value is not None else bound.default
    if effective is None and bound.max is not None:
        effective = bound.max
    if effective is None and not unlimited_ok:
        out.append(Violation(field, None, "the class requires a value"))
    return effective


def _resources(spec: CodingJobSpec, cls: CodingJobClass, out: list[Violation]) -> ResourcesSpec:
    given = spec.resources or ResourcesSpec()
    requests: dict[str, str | int] = {}
    limits: dict[str, str | int] = {}
    for kind, values, target in (
        ("requests", given.requests or {}, requests),
        ("limits", given.limits or {}, limits),
    ):
        for resource, quantity in values.items():
            if resource not in RESOURCE_NAMES:
                out.append(
                    Violation(
                        f"spec.resources.{kind}.{resource}",
                        quantity,
                        "the class bounds only cpu, memory and ephemeral-storage",
                    )
                )
                continue
            bound: QuantityBound = getattr(cls.spec.resources, RESOURCE_NAMES[resource])
            if bound.max is not None and parse_quantity(quantity) > parse_quantity(bound.max):
                out.append(
                    Violation(
                        f"spec.resources.{kind}.{resource}",
                        quantity,
                        f"the class maximum is {bound.max}",
                    )
                )
            target[resource] = quantity
    for resource, attr in RESOURCE_NAMES.items():
        bound = getattr(cls.spec.resources, attr)
        if resource not in limits:
            # Every sandbox gets a limit on each bounded resource: the class default, else its
            # ceiling, so no sandbox runs unbounded.
            limit = bound.default_limit if bound.default_limit is not None else bound.max
            if limit is not None:
                limits[resource] = limit
        if resource not in requests and bound.default_request is not None:
            request = bound.default_request
            if resource in limits and parse_quantity(request) > parse_quantity(limits[resource]):
                request = limits[resource]
            requests[resource] = request
        if (
            resource in requests
            and resource in limits
            and parse_quantity(requests[resource]) > parse_quantity(limits[resource])
        ):
            out.append(
                Violation(
                    f"spec.resources.requests.{resource}",
                    requests[resource],
                    f"exceeds the effective limit {limits[resource]}",
                )
            )
    return ResourcesSpec(requests=requests or None, limits=limits or None)


def resolve(
    spec: CodingJobSpec, cls: CodingJobClass, operator: OperatorDefaults
) -> ResolvedClass | list[Violation]:
    """The settings the job runs with, or every way in which ``spec`` leaves ``cls``."""
    out: list[Violation] = []
    sandbox = cls.spec.sandbox

    # Images: the author may pick only an image the admin's patterns admit.
    agent_image = sandbox.agent_image or operator.agent_image
    if spec.image is not None:
        if not any(re.fullmatch(p, spec.image) for p in sandbox.image_patterns):
            limit = (
                f"the class admits images matching {sandbox.image_patterns}"
                if sandbox.image_patterns
                else "the class admits no author-chosen image"
            )
            out.append(Violation("spec.image", spec.image, limit))
        agent_image = spec.image

    # Placement: the class decides; the spec may only repeat what the class already says.
    if spec.runtime_class_name is not None and spec.runtime_class_name != (
        sandbox.runtime_class_name
    ):
        out.append(
            Violation(
                "spec.runtimeClassName",
                spec.runtime_class_name,
                f"the class sets runtimeClassName {sandbox.runtime_class_name!r}",
            )
        )
    for key, value in (spec.node_selector or {}).items():
        if sandbox.node_selector.get(key) != value:
            out.append(
                Violation(
                    f"spec.nodeSelector.{key}",
                    value,
                    f"the class's nodeSelector is {sandbox.node_selector}",
                )
            )
    for index, toleration in enumerate(spec.tolerations or []):
        if toleration not in sandbox.tolerations:
            out.append(
                Violation(
                    f"spec.tolerations[{index}]",
                    toleration.model_dump(by_alias=True, exclude_none=True),
                    "the class's tolerations do not include it",
                )
            )

    resources = _resources(spec, cls, out)

    # Workspace.
    workspace = cls.spec.workspace
    size = spec.workspace.size if spec.workspace.size is not None else workspace.default_size
    if parse_quantity(size) > parse_quantity(workspace.max_size):
        out.append(
            Violation("spec.workspace.size", size, f"the class maximum is {workspace.max_size}")
        )
    storage_class = spec.workspace.storage_class_name or workspace.storage_class_name
    allowed_sc = {*workspace.allowed_storage_class_names}
    if workspace.storage_class_name:
        allowed_sc.add(workspace.storage_class_name)
    if spec.workspace.storage_class_name and spec.workspace.storage_class_name not in allowed_sc:
        out.append(
            Violation(
                "spec.workspace.storageClassName",
                spec.workspace.storage_class_name,
                f"the class allows {sorted(allowed_sc)}",
            )
        )

    # Run limits.
    limits = cls.spec.limits
    deadline = _int_bound(
        "spec.limits.activeDeadlineSeconds",
        spec.limits.active_deadline_seconds,
        limits.active_deadline_seconds,
        unlimited_ok=limits.allow_no_deadline,
        out=out,
    )
    max_steps = _int_bound(
        "spec.limits.maxSteps", spec.limits.max_steps, limits.max_steps, unlimited_ok=True, out=out
    )
    max_tokens = _int_bound(
        "spec.limits.maxTotalTokens",
        spec.limits.max_total_tokens,
        limits.max_total_tokens,
        unlimited_ok=True,
        out=out,
    )

    # Network.
    network = cls.spec.network
    if spec.network.egress not in network.allowed_egress_modes:
        out.append(
            Violation(
                "spec.network.egress",
                spec.network.egress.value,
                f"the class allows {[m.value for m in network.allowed_egress_modes]}",
            )
        )
    for index, cidr in enumerate(spec.network.allowed_cidrs):
        field = f"spec.network.allowedCIDRs[{index}]"
        try:
            inside_floor = floor_except(cidr, operator.floor)
        except ValueError:
            out.append(Violation(field, cidr, "not a CIDR"))
            continue
        if inside_floor is None or inside_floor:
            # A range that is or contains a floor range (metadata, cluster networks, the API
            # server) is refused outright, so the author learns it is never reachable.
            out.append(Violation(field, cidr, "overlaps the operator's egress floor"))
        elif not within(cidr, network.allowed_cidrs):
            out.append(
                Violation(field, cidr, f"the class allows ranges within {network.allowed_cidrs}")
            )

    # Model endpoint: where the prompts (and the API key) go is the admin's choice.
    model = cls.spec.model
    if spec.model.base_url is not None:
        allowed = [*model.base_url_prefixes]
        if operator.default_model_base_url:
            allowed.append(operator.default_model_base_url)
        if not any(url_has_prefix(spec.model.base_url, p) for p in allowed):
            out.append(
                Violation(
                    "spec.model.baseURL",
                    spec.model.base_url,
                    f"the class allows endpoints under {allowed}"
                    if allowed
                    else "the class allows only the operator's default endpoint",
                )
            )

    # Relay provider: which provider a job's prompts go to, under whose key and on whose bill, is
    # the admin's choice, like the endpoint. The relay's default provider is always allowed (as
    # the default endpoint is): a job that names it gets what a job naming nothing gets.
    if spec.model.provider is not None:
        providers = [*model.providers]
        if operator.relay_default_provider and operator.relay_default_provider not in providers:
            providers.append(operator.relay_default_provider)
        if spec.model.provider not in providers:
            out.append(
                Violation(
                    "spec.model.provider",
                    spec.model.provider,
                    f"the class allows providers {providers}"
                    if providers
                    else "the class allows no provider by name",
                )
            )

    if out:
        return out
    return ResolvedClass(
        name=cls.name,
        generation=cls.generation,
        agent_image=agent_image,
        # The sidecar holds the model credential: it always runs the operator's own image.
        sidecar_image=operator.agent_image,
        service_account_name=sandbox.service_account_name,
        runtime_class_name=sandbox.runtime_class_name,
        node_selector=dict(sandbox.node_selector),
        tolerations=list(sandbox.tolerations),
        affinity=sandbox.affinity,
        priority_class_name=sandbox.priority_class_name,
        image_pull_secrets=list(sandbox.image_pull_secrets),
        resources=resources,
        workspace_size=size,
        storage_class_name=storage_class,
        active_deadline_seconds=deadline,
        max_steps=max_steps,
        max_total_tokens=max_tokens,
        providers=list(model.providers),
        model_retry_seconds=model.max_retry_seconds,
    )


def violation_message(class_name: str, violations: Sequence[Violation]) -> str:
    """One message for the status and the event, listing every violation."""
    return f"outside CodingJobClass {class_name!r}: " + "; ".join(str(v) for v in violations)


def effective_spec(spec: CodingJobSpec, resolved: ResolvedClass) -> CodingJobSpec:
    """``spec`` with the resolved class values in the fields the builders read."""
    return spec.model_copy(
        update={
            "image": resolved.agent_image,
            "resources": resolved.resources,
            "workspace": spec.workspace.model_copy(
                update={
                    "size": resolved.workspace_size,
                    "storage_class_name": resolved.storage_class_name,
                }
            ),
            "runtime_class_name": resolved.runtime_class_name,
            "node_selector": dict(resolved.node_selector) or None,
            "tolerations": list(resolved.tolerations) or None,
            "limits": spec.limits.model_copy(
                update={
                    "active_deadline_seconds": resolved.active_deadline_seconds,
                    "max_steps": resolved.max_steps,
                    "max_total_tokens": resolved.max_total_tokens,
                }
            ),
        }
    )
