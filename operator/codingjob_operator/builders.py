"""Pure builders: typed inputs in, plain Kubernetes manifest dicts out (no I/O, no clock, no
randomness). The agent pod follows docs/pod-contract.md; handlers add owner references.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from codingjob_operator import names
from codingjob_operator.classes import ALWAYS_DENIED_CIDRS, floor_except
from codingjob_operator.models import CodingJobSpec, EgressMode, ResolvedClass

Manifest = dict[str, Any]

AGENT_UID = 1000
AGENT_GID = 1000
#: The context-manager's own uid/gid (``SIDECAR_UID`` of the agent image's protocol module; a
#: unit test pins them): its journal and counters must be out of the agent's reach.
SIDECAR_UID = 1001
SIDECAR_GID = 1001
WORKSPACE_PATH = "/workspace"
#: The sidecar's private directory on the workspace volume (``STATE_DIR`` of the protocol).
SIDECAR_STATE_DIR = ".context-manager"
#: Sizes of the scratch volumes: the agent's /tmp (desktop runtime files, caches, the agent's
#: own scratch) and the sidecar's. Bounded so that filling them evicts this pod only.
AGENT_TMP_SIZE = "2Gi"
SIDECAR_TMP_SIZE = "64Mi"
SESSION_PATH = "/var/run/codingjob/session"
GATEWAY_PORT = 8080
STATS_PORT = 8081
VNC_PORT = 5900
NOVNC_PORT = 6080
JUPYTER_PORT = 8888
#: Seconds the agent waits for a step beyond the sidecar's outage retries (one model call).
STEP_TIMEOUT_MARGIN = 900
AGENT_CONTAINER = "agent"
SIDECAR_CONTAINER = "context-manager"
ARCHIVER_CONTAINER = "archiver"
SIDECAR_COMMAND = "codingjob-context-manager"
ARCHIVER_COMMAND = "codingjob-archiver"
#: Exit code of the archiver for permanent storage errors: the Job must not retry those.
ARCHIVER_PERMANENT_EXIT_CODE = 1
#: Secret-volume mode: owner read only; the kubelet adds group read for the pod's fsGroup.
SESSION_FILE_MODE = 0o400
DEFAULT_WORKSPACE_SIZE = "5Gi"


@dataclass(frozen=True)
class ClusterDNS:
    """The cluster's DNS pods (and a NodeLocal DNSCache address): the only resolvers a sandbox
    may ask, since an outside resolver is a tunnel out."""

    namespace: str = "kube-system"
    pod_labels: Mapping[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    node_local_ip: str | None = None
    #: The DNS Service's ClusterIP, for engines that match before the Service's address
    #: translation (most match its pods, after it).
    service_ip: str | None = None


@dataclass(frozen=True)
class JobRef:
    """Identity of the CodingJob the children belong to."""

    name: str
    namespace: str
    uid: str

    @property
    def names(self) -> names.ChildNames:
        return names.child_names(self.name)


@dataclass(frozen=True)
class ModelEndpoint:
    """The resolved model endpoint for the sidecar (spec values with operator defaults)."""

    base_url: str
    name: str
    #: Secret (a child of the job) whose ``credential`` key holds the job's relay credential;
    #: None when the job talks to its own endpoint directly.
    relay_credential_secret: str | None = None
    #: How long the sidecar retries while the provider is unavailable.
    retry_seconds: int = 0


#: Key of the relay credential in the per-job Secret.
RELAY_CREDENTIAL_KEY = "credential"


@dataclass(frozen=True)
class EgressPeer:
    """Where the model endpoint lives, for the NetworkPolicy: IP blocks or a Service's pods."""

    cidrs: tuple[str, ...] = ()
    namespace: str | None = None
    pod_selector: Mapping[str, str] | None = None
    ports: tuple[int | str, ...] = ()


@dataclass(frozen=True)
class Images:
    agent: str
    operator: str
    pull_policy: str = "IfNotPresent"


def _metadata(job: JobRef, name: str, component: str) -> Manifest:
    return {"name": name, "namespace": job.namespace, "labels": names.labels(job.name, component)}


def _container_security() -> Manifest:
    # Non-root, no privilege escalation, no capabilities: a compromised agent stays an
    # unprivileged process even if the image contains setuid binaries.
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(name: str, value: str) -> Manifest:
    return {"name": name, "value": value}


def _bool(value: bool) -> str:
    return "true" if value else "false"


def workspace_pvc(job: JobRef, spec: CodingJobSpec) -> Manifest:
    """The workspace PersistentVolumeClaim (ReadWriteOnce: one agent pod at a time)."""
    pvc_spec: Manifest = {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Filesystem",
        # The reconciler passes the class's size; the fallback serves callers without a class.
        "resources": {"requests": {"storage": str(spec.workspace.size or DEFAULT_WORKSPACE_SIZE)}},
    }
    if spec.workspace.storage_class_name:
        pvc_spec["storageClassName"] = spec.workspace.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(job, job.names.workspace, "workspace"),
        "spec": pvc_spec,
    }


def session_secret(job: JobRef, *, vnc_password: str, jupyter_token: str) -> Manifest:
    """The per-job Secret with the VNC password and Jupyter token, generated by the caller once."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(job, job.names.session, "session"),
        "type": "Opaque",
        # Immutable: the credentials must stay stable for the life of the job.
        "immutable": True,
        "stringData": {"vnc-password": vnc_password, "jupyter-token": jupyter_token},
    }


def desktop_ports(spec: CodingJobSpec) -> list[tuple[str, int]]:
    """The (name, port) pairs the agent container serves, per the enabled features."""
    ports: list[tuple[str, int]] = []
    if spec.gui.enabled:
        ports += [("vnc", VNC_PORT), ("novnc", NOVNC_PORT)]
    if spec.jupyter.enabled:
        ports.append(("jupyter", JUPYTER_PORT))
    return ports


def desktop_service(job: JobRef, spec: CodingJobSpec) -> Manifest | None:
    """ClusterIP Service naming the desktop ports (target of `kubectl port-forward svc/...`);
    None when neither the GUI nor Jupyter is enabled."""
    ports = desktop_ports(spec)
    if not ports:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, job.names.service, "desktop"),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(job.name, "agent"),
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                for name, port in ports
            ],
        },
    }


def deadline_seconds(active_deadline: int | None) -> int:
    """The agent's soft deadline: the pod's hard deadline minus time to write its result."""
    if not active_deadline:
        return 0
    margin = min(300, max(30, active_deadline // 10))
    return max(1, active_deadline - margin)


def log_env(job: JobRef, log_format: str) -> dict[str, str]:
    """CODINGJOB_LOG_FORMAT (and the job's identity for the ``job`` field) for the sidecar and
    the archiver when the operator's chart asks for JSON logs; nothing for plain logs."""
    if log_format == "plain":
        return {}
    return {
        "CODINGJOB_LOG_FORMAT": log_format,
        "CODINGJOB_NAME": job.name,
        "CODINGJOB_NAMESPACE": job.namespace,
        "CODINGJOB_UID": job.uid,
    }


def agent_pod(
    job: JobRef,
    spec: CodingJobSpec,
    *,
    images: Images,
    model: ModelEndpoint,
    log_format: str = "plain",
    sandbox: ResolvedClass | None = None,
) -> Manifest:
    """The agent pod: the agent container plus the context-manager as a native sidecar.

    ``spec`` is the effective spec (class defaults filled in); ``sandbox`` adds what only the
    class sets (ServiceAccount, affinity, priority, pull Secrets, the sidecar image).
    """
    image = spec.image or images.agent
    # The sidecar holds the model credential: it runs the operator's own image, never one the
    # author or the class picked for the agent.
    sidecar_image = sandbox.sidecar_image if sandbox is not None else images.agent
    common_env = [
        _env("CODINGJOB_NAME", job.name),
        _env("CODINGJOB_NAMESPACE", job.namespace),
        _env("CODINGJOB_UID", job.uid),
        _env("CODINGJOB_WORKSPACE", WORKSPACE_PATH),
        _env("CODINGJOB_MAX_STEPS", str(spec.limits.max_steps or 0)),
    ]
    # Fresh dicts per container: a manifest must not alias parts of itself.
    agent_env = [
        *(dict(e) for e in common_env),
        _env("CODINGJOB_TASK", spec.task),
        _env("CODINGJOB_GATEWAY_URL", f"http://127.0.0.1:{GATEWAY_PORT}"),
        _env(
            "CODINGJOB_DEADLINE_SECONDS", str(deadline_seconds(spec.limits.active_deadline_seconds))
        ),
        _env("CODINGJOB_GUI_ENABLED", _bool(spec.gui.enabled)),
        _env("CODINGJOB_JUPYTER_ENABLED", _bool(spec.jupyter.enabled)),
        _env("CODINGJOB_SESSION_DIR", SESSION_PATH),
        _env("DISPLAY", ":1"),
        _env("HOME", WORKSPACE_PATH),
    ]
    if model.retry_seconds:
        # The sidecar may hold a step through a provider outage for up to retry_seconds; the
        # agent waits for it (still bounded by its own deadline) instead of giving up at 15 min.
        agent_env.append(
            _env("CODINGJOB_STEP_TIMEOUT_SECONDS", str(model.retry_seconds + STEP_TIMEOUT_MARGIN))
        )
    sidecar_env = [
        *(dict(e) for e in common_env),
        # Its own scratch, not the image's HOME (the workspace, where the agent writes).
        _env("HOME", "/tmp"),
        _env("CODINGJOB_MODEL_BASE_URL", model.base_url),
        _env("CODINGJOB_MODEL_NAME", model.name),
    ]
    if spec.model.temperature is not None:
        sidecar_env.append(_env("CODINGJOB_MODEL_TEMPERATURE", repr(spec.model.temperature)))
    if spec.model.max_output_tokens is not None:
        sidecar_env.append(
            _env("CODINGJOB_MODEL_MAX_OUTPUT_TOKENS", str(spec.model.max_output_tokens))
        )
    if model.retry_seconds:
        sidecar_env.append(_env("CODINGJOB_MODEL_RETRY_SECONDS", str(model.retry_seconds)))
    ref = spec.model.api_key_secret_ref
    if model.relay_credential_secret is not None:
        # The job's relay credential, not a provider key: it works only for this job, only
        # while it runs, within its budget. It too goes to the sidecar only.
        sidecar_env.append(
            {
                "name": "CODINGJOB_MODEL_API_KEY",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": model.relay_credential_secret,
                        "key": RELAY_CREDENTIAL_KEY,
                    }
                },
            }
        )
    elif ref is not None:
        # The LLM key goes to the sidecar only: the agent runs untrusted code and must never
        # be able to read it (it reaches the model through the sidecar's gateway).
        sidecar_env.append(
            {
                "name": "CODINGJOB_MODEL_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    sidecar_env += [
        _env("CODINGJOB_CONTEXT_MAX_TOKENS", str(spec.context.max_tokens)),
        _env("CODINGJOB_CONTEXT_ENCODING", spec.context.encoding),
        _env("CODINGJOB_CONTEXT_STRATEGY", spec.context.strategy.value),
        _env("CODINGJOB_MAX_TOTAL_TOKENS", str(spec.limits.max_total_tokens or 0)),
        {"name": "CODINGJOB_STATS_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    # The job's identity is in common_env already.
    sidecar_env += [_env(k, v) for k, v in log_env(job, log_format).items() if k.endswith("FORMAT")]
    sidecar: Manifest = {
        "name": SIDECAR_CONTAINER,
        "image": sidecar_image,
        "imagePullPolicy": images.pull_policy,
        "command": [SIDECAR_COMMAND],
        # Native sidecar: starts before the agent, stops after it, never blocks pod completion.
        "restartPolicy": "Always",
        "env": sidecar_env,
        "ports": [{"name": "stats", "containerPort": STATS_PORT, "protocol": "TCP"}],
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": STATS_PORT},
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE_PATH},
            # Its own /tmp: nothing the agent drops into a shared /tmp can reach the sidecar.
            {"name": "sidecar-tmp", "mountPath": "/tmp"},
        ],
        # Bounded like the agent: the sidecar parses model replies the agent can influence.
        "resources": {
            "requests": {"cpu": "50m", "memory": "128Mi", "ephemeral-storage": "64Mi"},
            "limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"},
        },
        # The sidecar writes only to /workspace and /tmp; a read-only root keeps it that way.
        # Its own uid: the journal (conversation, step and token counts the limits are enforced
        # on) is a directory of that uid the agent can neither write nor read.
        "securityContext": {
            **_container_security(),
            "readOnlyRootFilesystem": True,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_GID,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    agent: Manifest = {
        "name": AGENT_CONTAINER,
        "image": image,
        "imagePullPolicy": images.pull_policy,
        "env": agent_env,
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE_PATH},
            # An empty read-only volume over the sidecar's directory: the agent sees nothing
            # there and cannot rename it away (a mount point), on top of its 0750 mode.
            {
                "name": "sidecar-state-mask",
                "mountPath": f"{WORKSPACE_PATH}/{SIDECAR_STATE_DIR}",
                "readOnly": True,
            },
            {"name": "session", "mountPath": SESSION_PATH, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        # Read-only root: the agent writes to the workspace and to /tmp (HOME is the
        # workspace; the desktop, Jupyter and caches keep their runtime files in /tmp), so
        # nothing it does survives in the image's directories or outlives the sized volumes.
        "securityContext": {**_container_security(), "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    ports = desktop_ports(spec)
    if ports:
        agent["ports"] = [
            {"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports
        ]
    if spec.gui.enabled:
        # The pod is Ready when noVNC accepts connections: the operator times "desktop ready"
        # by it, and the desktop Service sends no one to a desktop that is not up yet.
        agent["readinessProbe"] = {
            "tcpSocket": {"port": NOVNC_PORT},
            "periodSeconds": 2,
            "failureThreshold": 1,
        }
    if spec.resources is not None:
        resources = spec.resources.model_dump(exclude_none=True)
        if resources:
            agent["resources"] = resources
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        # No API credentials in the sandbox: the agent has no business talking to Kubernetes.
        "automountServiceAccountToken": False,
        # No Service environment variables: they would advertise cluster internals to the agent.
        "enableServiceLinks": False,
        # Separate process namespaces: the agent must not read the sidecar's environment (the
        # LLM key) through /proc.
        "shareProcessNamespace": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_UID,
            "runAsGroup": AGENT_GID,
            "fsGroup": AGENT_GID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [sidecar],
        "containers": [agent],
        "volumes": [
            {"name": "workspace", "persistentVolumeClaim": {"claimName": job.names.workspace}},
            {
                "name": "session",
                "secret": {"secretName": job.names.session, "defaultMode": SESSION_FILE_MODE},
            },
            {"name": "tmp", "emptyDir": {"sizeLimit": AGENT_TMP_SIZE}},
            {"name": "sidecar-tmp", "emptyDir": {"sizeLimit": SIDECAR_TMP_SIZE}},
            {"name": "sidecar-state-mask", "emptyDir": {"sizeLimit": "1Mi"}},
        ],
        "terminationGracePeriodSeconds": 30,
    }
    if spec.limits.active_deadline_seconds:
        pod_spec["activeDeadlineSeconds"] = spec.limits.active_deadline_seconds
    if spec.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.runtime_class_name
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations
        ]
    if sandbox is not None:
        pod_spec["serviceAccountName"] = sandbox.service_account_name
        if sandbox.affinity:
            pod_spec["affinity"] = dict(sandbox.affinity)
        if sandbox.priority_class_name:
            pod_spec["priorityClassName"] = sandbox.priority_class_name
        if sandbox.image_pull_secrets:
            pod_spec["imagePullSecrets"] = [{"name": n} for n in sandbox.image_pull_secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(job, job.names.pod, "agent"),
        "spec": pod_spec,
    }


def _ip_blocks(cidrs: Sequence[str], floor: Sequence[str]) -> list[Manifest]:
    """ipBlock peers for ``cidrs`` with the floor cut out; a range inside the floor is dropped."""
    blocks: list[Manifest] = []
    for cidr in cidrs:
        cut = floor_except(cidr, floor)
        if cut is None:
            continue
        block: Manifest = {"cidr": cidr}
        if cut:
            block["except"] = cut
        blocks.append({"ipBlock": block})
    return blocks


def _peer_rules(peer: EgressPeer, floor: Sequence[str]) -> list[Manifest]:
    to: list[Manifest] = _ip_blocks(peer.cidrs, floor)
    if peer.namespace is not None and peer.pod_selector is not None:
        to.append(
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": peer.namespace}
                },
                "podSelector": {"matchLabels": dict(peer.pod_selector)},
            }
        )
    if not to:
        return []
    rule: Manifest = {"to": to}
    if peer.ports:
        rule["ports"] = [{"protocol": "TCP", "port": port} for port in peer.ports]
    return [rule]


def _host_block(address: str) -> Manifest:
    return {"ipBlock": {"cidr": f"{address}/{128 if ':' in address else 32}"}}


def _dns_rule(dns: ClusterDNS) -> Manifest:
    """Egress to the cluster DNS on 53 only: an outside resolver would be a tunnel out."""
    peers: list[Manifest] = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": dns.namespace}},
            "podSelector": {"matchLabels": dict(dns.pod_labels)},
        }
    ]
    peers += [_host_block(ip) for ip in (dns.service_ip, dns.node_local_ip) if ip]
    return {
        "to": peers,
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def network_policy(
    job: JobRef,
    spec: CodingJobSpec,
    *,
    model_peers: Sequence[EgressPeer] = (),
    floor: Sequence[str] = ALWAYS_DENIED_CIDRS,
    dns: ClusterDNS | None = None,
    stats_sources: Sequence[str] = (),
) -> Manifest:
    """The sandbox's NetworkPolicy: ingress only to `/stats` from ``stats_sources``; egress to
    the cluster DNS, the model (the relay's or the endpoint's pods or addresses) and, per
    spec.network, the allowed CIDRs or (Open) the internet.

    Every ipBlock from the spec has the ``floor`` (metadata, node/pod/service CIDRs, the API
    server) cut out, so no spec, class or resolved model address can open it.
    """
    dns = dns or ClusterDNS()
    # Nothing else may connect in: NetworkPolicy always admits the pod's own node, which is
    # where `kubectl port-forward` (the desktop, Jupyter; through the kubelet, inside the pod's
    # network namespace) and the kubelet's probes come from. Only the read-only stats listener
    # gets a rule, for the API server's pod proxy when the API server runs on other hosts (its
    # addresses, from the admin); another sandbox or workload can never read it.
    ingress: list[Manifest] = []
    if stats_sources:
        ingress.append(
            {
                "from": [{"ipBlock": {"cidr": cidr}} for cidr in stats_sources],
                "ports": [{"protocol": "TCP", "port": STATS_PORT}],
            }
        )
    # The cluster DNS and the model are reachable in both modes: with Open egress the floor
    # (which holds the pod and service CIDRs) would otherwise cut them off.
    egress: list[Manifest] = [_dns_rule(dns)]
    for peer in model_peers:
        egress += _peer_rules(peer, floor)
    if spec.network.egress == EgressMode.OPEN:
        internet = _ip_blocks(["0.0.0.0/0", "::/0"], floor)
    else:
        internet = _ip_blocks(spec.network.allowed_cidrs, floor)
    if internet:
        egress.append({"to": internet})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(job, job.names.network_policy, "sandbox"),
        "spec": {
            "podSelector": {"matchLabels": names.selector(job.name, "agent")},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def model_credential_secret(job: JobRef, credential: str) -> Manifest:
    """Per-job Secret with the job's model relay credential (read by its sidecar only)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(job, job.names.model_credential, "model-credential"),
        "type": "Opaque",
        "stringData": {RELAY_CREDENTIAL_KEY: credential},
    }


def archive_secret(job: JobRef, storage_env: Mapping[str, str]) -> Manifest:
    """Per-job Secret with the object-storage settings for the archiver (CODINGJOB_STORAGE_*)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(job, job.names.archive_secret, "archiver"),
        "type": "Opaque",
        "stringData": dict(sorted(storage_env.items())),
    }


@dataclass(frozen=True)
class ArchiveTarget:
    """Where the archiver writes: object keys in the bucket named by the storage settings."""

    key: str
    transcript_key: str
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ArchiveLimits:
    """How long and how large an archive may be: the operator's settings today, a
    CodingJobClass's tomorrow (whoever resolves the job's class passes its values here)."""

    deadline_seconds: int = 3600
    max_bytes: int | None = None

    @property
    def archiver_deadline_seconds(self) -> int:
        """The archiver's own deadline: a minute before the Job's, so that it still writes why
        it stopped before Kubernetes kills it."""
        return max(60, self.deadline_seconds - 60)


def archive_job(
    job: JobRef, *, images: Images, target: ArchiveTarget, limits: ArchiveLimits | None = None
) -> Manifest:
    """The archiver Job: the operator's trusted image zips the workspace (mounted read-only)
    straight to object storage; the storage credentials live here, never in the sandbox."""
    limits = limits or ArchiveLimits()
    env = [
        _env("CODINGJOB_ARCHIVE_KEY", target.key),
        _env("CODINGJOB_ARCHIVE_TRANSCRIPT_KEY", target.transcript_key),
        _env("CODINGJOB_WORKSPACE", WORKSPACE_PATH),
        _env("CODINGJOB_ARCHIVE_DEADLINE_SECONDS", str(limits.archiver_deadline_seconds)),
        *(
            [_env("CODINGJOB_ARCHIVE_MAX_BYTES", str(limits.max_bytes))]
            if limits.max_bytes is not None
            else []
        ),
        *(_env(k, v) for k, v in sorted(target.extra_env.items())),
    ]
    labels = names.labels(job.name, "archiver")
    container: Manifest = {
        "name": ARCHIVER_CONTAINER,
        "image": images.operator,
        "imagePullPolicy": images.pull_policy,
        "command": [ARCHIVER_COMMAND],
        "env": env,
        "envFrom": [{"secretRef": {"name": job.names.archive_secret}}],
        "volumeMounts": [
            # Read-only: archiving must never change the workspace it is confirming.
            {"name": "workspace", "mountPath": WORKSPACE_PATH, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": {**_container_security(), "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job, job.names.archive_job, "archiver"),
        "spec": {
            # Bounded: the whole Job (every pod retry) ends at the deadline, and a pod lost to the
            # node is retried once; further attempts are new Jobs, counted by the operator.
            "activeDeadlineSeconds": limits.deadline_seconds,
            "backoffLimit": 1,
            # Permanent storage errors (access denied, no bucket) are not retried by the Job;
            # the operator reads the reason from the termination message.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": ARCHIVER_CONTAINER,
                            "operator": "In",
                            "values": [ARCHIVER_PERMANENT_EXIT_CODE],
                        },
                    }
                ]
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    # The archiver needs no Kubernetes API access.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        # The agent's uid: files the agent made private are still readable.
                        "runAsNonRoot": True,
                        "runAsUser": AGENT_UID,
                        "runAsGroup": AGENT_GID,
                        # The sidecar's group: its journal and transcript (mode 0640 in a 0750
                        # directory) go into the archive too.
                        "supplementalGroups": [SIDECAR_GID],
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "workspace",
                            "persistentVolumeClaim": {
                                "claimName": job.names.workspace,
                                "readOnly": True,
                            },
                        },
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
