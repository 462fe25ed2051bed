"""One reconcile pass over a CodingJob: observe the children, derive the status, act.

Synchronous (the Kubernetes and storage clients block); the kopf daemon runs it in a thread.
The order is always: patch the status first, post events, then act, so a crash between two steps
leaves a status from which the next pass continues (every action is idempotent).
"""

from __future__ import annotations

import datetime
import logging
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast
from urllib.parse import urlsplit

import kopf
from codingjob_relay.credentials import JobClaims
from codingjob_relay.credentials import issue as issue_credential
from pydantic import ValidationError

from codingjob_operator import builders, classes, names
from codingjob_operator import conditions as c
from codingjob_operator.classmodels import CodingJobClass
from codingjob_operator.config import OperatorConfig
from codingjob_operator.kube import (
    InvalidObject,
    Kube,
    KubeError,
    NameConflict,
    api_message,
    controlled_by,
)
from codingjob_operator.logformat import JOB, job_ref
from codingjob_operator.metrics import Metrics, PassFacts
from codingjob_operator.models import (
    API_VERSION,
    KIND,
    CodingJobSpec,
    EgressMode,
    ResolvedClass,
)
from codingjob_operator.report import ArchiveReport
from codingjob_operator.status import (
    Action,
    Decision,
    Observation,
    StatsMessage,
    StorageResult,
    StorageState,
    archive_view,
    deletion_patch,
    derive_status,
    fail_now,
    parse_archive_message,
    pod_view,
)
from codingjob_operator.storage import (
    ArtifactStore,
    PermanentStorageError,
    SessionCredentials,
    StorageSettings,
    TransientStorageError,
)
from codingjob_operator.untrusted import bounded_int, clean_text

log = logging.getLogger(__name__)

_SERVICE_HOST = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.[a-z0-9.-]+)?$")
#: Refresh a download URL when less than this fraction of its lifetime is left.
URL_REFRESH_FRACTION = 0.1
MAX_DELAY = 300.0
#: Largest /stats body read from the sandbox's sidecar.
STATS_MAX_BYTES = 64 * 1024
#: The label a Secret's owner sets to let CodingJobs use it as a model credential.
MODEL_CREDENTIALS_LABEL = "codingjob.dev/model-credentials"
#: The class used when no CodingJobClass is annotated as the default: the model's strict
#: defaults (no author image, Restricted egress, bounded resources, a one-hour deadline).
BUILTIN_CLASS_NAME = "builtin"


class RetryLater(Exception):
    """A condition that resolves by itself (DNS, storage outage); retry with backoff."""


class StatusRejected(Exception):
    """A status patch was refused and the job was marked Failed; this pass stops here."""


@dataclass(frozen=True)
class PassResult:
    """When the next pass should run, in seconds."""

    delay: float


def storage_env(settings: StorageSettings, session: SessionCredentials) -> dict[str, str]:
    """The archiver's CODINGJOB_STORAGE_* environment: where to write, and its own short-lived
    credentials limited to its job's prefix (never the operator's keys)."""
    return {
        "CODINGJOB_STORAGE_ENDPOINT": settings.endpoint,
        "CODINGJOB_STORAGE_ACCESS_KEY": session.access_key,
        "CODINGJOB_STORAGE_SECRET_KEY": session.secret_key,
        "CODINGJOB_STORAGE_SESSION_TOKEN": session.session_token,
        "CODINGJOB_STORAGE_SECURE": str(settings.secure).lower(),
        "CODINGJOB_STORAGE_REGION": settings.region,
        "CODINGJOB_STORAGE_BUCKET": settings.bucket,
        "CODINGJOB_STORAGE_CREATE_BUCKET": "false",
    }


def resolve_model_peers(
    base_url: str,
    read_service: Callable[[str, str], Mapping[str, Any] | None],
    getaddrinfo: Callable[..., list[Any]] = socket.getaddrinfo,
) -> list[builders.EgressPeer]:
    """Where the NetworkPolicy must let the sandbox reach the model endpoint.

    A cluster Service (``name.namespace.svc``) is allowed by its pods (policies match pod IPs
    after the Service's address translation, so its ClusterIP alone would not do); any other
    host by its current addresses as /32 (/128) blocks on the URL's port.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    match = _SERVICE_HOST.match(host)
    if match:
        service = read_service(match.group(2), match.group(1))
        spec = (service or {}).get("spec") or {}
        if spec.get("selector"):
            target_ports: list[int | str] = [
                p.get("targetPort") or p["port"]
                for p in spec.get("ports") or []
                if p.get("port") == port
            ]
            cluster_ip = spec.get("clusterIP")
            return [
                builders.EgressPeer(
                    cidrs=(f"{cluster_ip}/32",) if cluster_ip and cluster_ip != "None" else (),
                    namespace=match.group(2),
                    pod_selector=dict(spec["selector"]),
                    ports=(*target_ports, port) if target_ports else (port,),
                )
            ]
    try:
        infos = getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as error:
        raise RetryLater(f"cannot resolve the model host {host!r}: {error}") from error
    cidrs = sorted({f"{info[4][0]}/{128 if ':' in info[4][0] else 32}" for info in infos})
    return [builders.EgressPeer(cidrs=tuple(cidrs), ports=(port,))]


def _owner(obj: Mapping[str, Any]) -> kopf.Body:
    meta = obj["metadata"]
    # No labels: the author's labels must not be copied onto the children (they could make a
    # child match someone else's Service or NetworkPolicy selector).
    raw = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
    }
    return kopf.Body(cast(kopf.RawBody, raw))


def job_class(obj: Mapping[str, Any]) -> str:
    """The CodingJobClass a job runs in, for metric labels ("" when it names none)."""
    spec = obj.get("spec") or {}
    # The resolved class (the default one included) once the job started, else the spec's.
    resolved = ((obj.get("status") or {}).get("class") or {}).get("name")
    value = resolved or spec.get("className") or ""
    return str(value)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


class Reconciler:
    """Runs reconcile passes with one set of clients and settings."""

    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        store: ArtifactStore | None,
        *,
        clock: Callable[[], datetime.datetime] = _now,
        metrics: Metrics | None = None,
    ) -> None:
        self.kube = kube
        self.metrics = metrics
        self.config = config
        self.store = store
        self.clock = clock
        self.images = builders.Images(
            agent=config.agent_image,
            operator=config.operator_image,
            pull_policy=config.image_pull_policy,
        )
        self.operator_defaults = classes.OperatorDefaults(
            agent_image=config.agent_image,
            default_model_base_url=config.default_model_base_url,
            relay_default_provider=(config.relay_default_provider if config.relay_url else None),
            denied_cidrs=tuple(config.denied_cidrs),
        )
        self.dns = builders.ClusterDNS(
            namespace=config.dns_namespace,
            pod_labels=dict(config.dns_pod_labels),
            node_local_ip=config.node_local_dns_ip,
            service_ip=config.dns_service_ip,
        )

    # Entry point.

    def reconcile(self, namespace: str, name: str, *, deleting: bool = False) -> PassResult:
        """One pass; returns when the next should run at the latest. A CodingJob being deleted
        is left alone unless ``deleting`` (the deletion handler archiving it first)."""
        obj = self.kube.read_codingjob(namespace, name)
        if obj is None or (obj["metadata"].get("deletionTimestamp") and not deleting):
            if self.metrics is not None:
                self.metrics.forget(namespace, name)
            return PassResult(MAX_DELAY)
        owner = _owner(obj)
        status: dict[str, Any] = dict(obj.get("status") or {})
        try:
            spec = CodingJobSpec.model_validate(obj.get("spec") or {})
        except ValidationError as error:
            # The CRD schema should have caught it; a stale CRD may not have.
            if status.get("phase") not in ("Succeeded", "Failed"):
                self._patch(
                    namespace,
                    name,
                    {"phase": "Failed", "reason": c.INVALID_SPEC, "message": str(error)[:1024]},
                )
            return PassResult(MAX_DELAY)
        job = builders.JobRef(name=name, namespace=namespace, uid=obj["metadata"]["uid"])
        resolved: ResolvedClass | None = None
        class_error: tuple[str, str] | None = None
        if status.get("phase") not in ("Succeeded", "Failed"):
            resolved, class_error = self._resolve_class(spec, status)
            if resolved is not None:
                if not status.get("class"):
                    # Recorded once: a later edit of the class never changes this job.
                    recorded = resolved.model_dump(by_alias=True, exclude_none=True, mode="json")
                    self._patch(namespace, name, {"class": recorded})
                    status["class"] = recorded
                spec = classes.effective_spec(spec, resolved)
        obs = self._observe(job, spec, status, obj["metadata"].get("generation"), class_error)
        decision = derive_status(obs)
        # Storage answers feed a second derivation within the same pass.
        if Action.CHECK_STORAGE in decision.actions or Action.CONFIRM_ARCHIVE in decision.actions:
            obs = replace(obs, storage=self._storage(job, decision, obs))
            decision = derive_status(obs)
        after = {**status, **decision.patch}
        try:
            self._apply(owner, job, spec, obs, decision, resolved)
        except StatusRejected:
            return PassResult(MAX_DELAY)
        except RetryLater:
            # The status went through (it is patched before any action): what the pass changed
            # (a job that finished, its archive's size) is counted now, not lost with the retry,
            # whose pass starts from the patched status and so sees no transition.
            if self.metrics is not None:
                self.metrics.record_pass(self._facts(obj, spec, obs, after))
            raise
        except NameConflict as error:
            # Someone else's object holds a child's name: never mount, patch or adopt it.
            self._fail(owner, job, obs, c.NAME_CONFLICT, str(error))
            return PassResult(MAX_DELAY)
        except PermanentStorageError as error:
            # The store refused the archiver its credentials (the operator's identity may not
            # assume the role): no retry fixes that; the workspace PVC is kept.
            message = f"no archiver credentials: {error}"
            self._fail(owner, job, obs, c.ARCHIVE_FAILED, message, archived=message)
            return PassResult(MAX_DELAY)
        if self.metrics is not None:
            self.metrics.record_pass(self._facts(obj, spec, obs, after))
        return PassResult(self._next_delay(job, spec, after))

    def _facts(
        self,
        obj: Mapping[str, Any],
        spec: CodingJobSpec,
        obs: Observation,
        after: Mapping[str, Any],
    ) -> PassFacts:
        meta = obj["metadata"]
        pod, stats = obs.pod, obs.stats
        desktop = None
        if spec.gui.enabled and pod is not None and pod.agent is not None and pod.agent.running:
            desktop = pod.ready
        created = meta.get("creationTimestamp")
        return PassFacts(
            namespace=meta["namespace"],
            name=meta["name"],
            job_class=job_class(obj),
            model=spec.model.name or self.config.default_model_name or "",
            created=_parse(created) if isinstance(created, str) else None,
            now=obs.now,
            before=obs.status,
            after=after,
            desktop_ready=desktop,
            model_errors=stats.errors if stats is not None else None,
            model_retries=stats.retries if stats is not None else None,
        )

    def _fail(
        self,
        owner: kopf.Body,
        job: builders.JobRef,
        obs: Observation,
        reason: str,
        message: str,
        *,
        archived: str | None = None,
    ) -> None:
        """End the job Failed with ``reason`` (a spec or name problem no retry can fix)."""
        decision = fail_now(obs, reason, message, archived=archived)
        self._patch(job.namespace, job.name, decision.patch)
        for event in decision.events:
            kopf.event(owner, type=event.type, reason=event.reason, message=event.message)

    def _resolve_class(
        self, spec: CodingJobSpec, status: Mapping[str, Any]
    ) -> tuple[ResolvedClass | None, tuple[str, str] | None]:
        """The recorded class of a started job, else the class resolved now; or why not."""
        recorded = status.get("class")
        if recorded:
            try:
                return ResolvedClass.model_validate(recorded), None
            except ValidationError:
                log.warning("recorded class is unreadable; resolving again")
        found: list[CodingJobClass] = []
        for item in self.kube.list_codingjob_classes():
            try:
                found.append(CodingJobClass.model_validate(item))
            except ValidationError as error:
                item_name = (item.get("metadata") or {}).get("name")
                if item_name == spec.class_name:
                    return None, (
                        c.CLASS_VIOLATION,
                        f"CodingJobClass {item_name!r} is invalid: {str(error)[:512]}",
                    )
        if not spec.class_name and not any(cls.is_default for cls in found):
            found.append(
                CodingJobClass.model_validate(
                    {
                        "metadata": {
                            "name": BUILTIN_CLASS_NAME,
                            "annotations": {"codingjob.dev/is-default-class": "true"},
                        }
                    }
                )
            )
        chosen = classes.select_class(found, spec.class_name)
        if isinstance(chosen, str):
            return None, (c.CLASS_NOT_FOUND, chosen)
        result = classes.resolve(spec, chosen, self.operator_defaults)
        if isinstance(result, list):
            return None, (c.CLASS_VIOLATION, classes.violation_message(chosen.name, result))
        return result, None

    def archive_before_delete(self, namespace: str, name: str) -> bool:
        """One step of archiving a deleted, unfinished CodingJob; True once nothing is left to
        do (final phase, or it never started) and the CodingJob may go."""
        obj = self.kube.read_codingjob(namespace, name)
        if obj is None or self.store is None:
            return True
        patch = deletion_patch(obj.get("status") or {})
        if patch is not None:
            log.info("%s/%s deleted while unfinished: archiving first", namespace, name)
            self._patch(namespace, name, patch)
        elif (obj.get("status") or {}).get("phase") in (None, "Succeeded", "Failed"):
            return True
        self.reconcile(namespace, name, deleting=True)
        after = self.kube.read_codingjob(namespace, name)
        return after is None or (after.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    # Observe.

    def _observe(
        self,
        job: builders.JobRef,
        spec: CodingJobSpec,
        status: Mapping[str, Any],
        generation: int | None,
        class_error: tuple[str, str] | None = None,
    ) -> Observation:
        n = job.names
        raw_pod = self.kube.read_pod(job.namespace, n.pod)
        if raw_pod is not None and not controlled_by(raw_pod, job.uid):
            # Someone else's pod under the agent's name says nothing about this job; creating
            # ours will end the job NameConflict.
            raw_pod = None
        pod = pod_view(raw_pod) if raw_pod is not None else None
        phase = status.get("phase")
        archive = None
        workspace_gone = None
        if phase == "Archiving":
            raw_job = self.kube.read_job(job.namespace, n.archive_job)
            if raw_job is not None and controlled_by(raw_job, job.uid):
                pods = self.kube.list_pods(job.namespace, names.selector(job.name, "archiver"))
                archive = archive_view(raw_job, pods)
            if archive is None or not archive.succeeded:
                workspace_gone = self._workspace_gone(job, started=archive is not None)
        semantic = None
        if pod is None and phase not in ("Archiving", "Succeeded", "Failed") and not spec.suspend:
            semantic = class_error or self._semantic_error(job, spec)
        stats = None
        if pod is not None and pod.agent is not None and pod.agent.running:
            stats = self._stats(job)
        return Observation(
            spec=spec,
            status=status,
            generation=generation,
            now=self.clock(),
            pod=pod,
            archive=archive,
            semantic_error=semantic,
            stats=stats,
            image_pull_timeout=datetime.timedelta(seconds=self.config.image_pull_timeout_seconds),
            archive_max_attempts=self.config.archive_max_attempts,
            workspace_gone=workspace_gone,
        )

    def _workspace_gone(self, job: builders.JobRef, *, started: bool) -> str | None:
        """Why the workspace PVC can no longer be archived: missing (or someone else's), or
        being deleted before the archiver started; None while the archiver can mount it."""
        name = job.names.workspace
        pvc = self.kube.read_pvc(job.namespace, name)
        if pvc is None or not controlled_by(pvc, job.uid):
            return f"the workspace PersistentVolumeClaim {name} is gone; nothing to archive"
        if pvc["metadata"].get("deletionTimestamp") and not started:
            # A PVC being deleted admits no new pod: an archiver would stay Pending for good.
            # One already mounting it keeps it (pvc-protection) and finishes.
            return f"the workspace PersistentVolumeClaim {name} is being deleted; not archived"
        return None

    def _uses_relay(self, spec: CodingJobSpec) -> bool:
        """Jobs that name no endpoint of their own reach their model through the relay."""
        return (
            bool(self.config.relay_url)
            and not spec.model.base_url
            and (spec.model.api_key_secret_ref is None)
        )

    def _relay_provider(self, spec: CodingJobSpec) -> str | None:
        return spec.model.provider or self.config.relay_default_provider

    def _relay_key(self) -> bytes:
        path = self.config.relay_signing_key_file
        if not path:
            raise OSError("CODINGJOB_RELAY_SIGNING_KEY_FILE is unset")
        with open(path, "rb") as key:
            return key.read().strip()

    def _semantic_error(self, job: builders.JobRef, spec: CodingJobSpec) -> tuple[str, str] | None:
        """A problem in the spec that waiting cannot fix, found before the pod is made."""
        if self._uses_relay(spec):
            if not self._relay_provider(spec):
                return (
                    c.MODEL_NOT_CONFIGURED,
                    "spec.model.provider is unset and the relay has no default provider",
                )
            if not (spec.model.name or self.config.default_model_name):
                return (
                    c.MODEL_NOT_CONFIGURED,
                    "spec.model.name is unset and the operator has no default",
                )
            return None
        if not (spec.model.base_url or self.config.default_model_base_url):
            return (
                c.MODEL_NOT_CONFIGURED,
                "spec.model.baseURL is unset and the operator has no default",
            )
        if not (spec.model.name or self.config.default_model_name):
            return (
                c.MODEL_NOT_CONFIGURED,
                "spec.model.name is unset and the operator has no default",
            )
        ref = spec.model.api_key_secret_ref
        if ref is not None:
            # Consent, not reachability: only Secrets their owner labelled for model use are
            # seen at all (a label-selected list), so a job author cannot send a Secret they
            # may not read to an endpoint of their choosing.
            consented = self.kube.model_credential_secrets(job.namespace, MODEL_CREDENTIALS_LABEL)
            keys = consented.get(ref.name)
            if keys is None:
                return c.SECRET_NOT_ALLOWED, (
                    f"Secret {ref.name!r} (spec.model.apiKeySecretRef) does not exist in "
                    f"namespace {job.namespace!r} or lacks the label "
                    f'{MODEL_CREDENTIALS_LABEL}: "true"'
                )
            if ref.key not in keys:
                return c.SECRET_KEY_NOT_FOUND, (
                    f"Secret {ref.name!r} has no key {ref.key!r} (spec.model.apiKeySecretRef)"
                )
        return None

    def _stats(self, job: builders.JobRef) -> StatsMessage | None:
        try:
            body = self.kube.pod_proxy_get(
                job.namespace, job.names.pod, builders.STATS_PORT, "/stats"
            )
            if len(body) > STATS_MAX_BYTES:
                # The sidecar's answer is small; a large one is not the sidecar's.
                raise ValueError(f"/stats answered {len(body)} bytes")
            return StatsMessage.model_validate_json(body)
        except (KubeError, ValidationError, ValueError) as error:
            # Progress is best effort: a sidecar that is still starting must not fail the job.
            log.debug(
                "no stats from %s/%s: %s",
                job.namespace,
                job.names.pod,
                error,
                extra={JOB: job_ref(job.namespace, job.name, job.uid)},
            )
            return None

    def _storage(self, job: builders.JobRef, decision: Decision, obs: Observation) -> StorageResult:
        if self.store is None:
            return StorageResult(
                StorageState.NOT_CONFIGURED,
                "object storage is not configured (CODINGJOB_STORAGE_*); the workspace PVC is kept",
            )
        try:
            if Action.CHECK_STORAGE in decision.actions:
                self.store.ensure_bucket()
                return StorageResult(StorageState.OK)
            return self._confirm(job, obs)
        except TransientStorageError as error:
            return StorageResult(StorageState.TRANSIENT, f"object storage unavailable: {error}")
        except PermanentStorageError as error:
            return StorageResult(StorageState.PERMANENT, f"object storage error: {error}")

    def _confirm(self, job: builders.JobRef, obs: Observation) -> StorageResult:
        assert self.store is not None
        report = parse_archive_message(obs.archive.termination_message if obs.archive else None)
        if not isinstance(report, ArchiveReport):
            return StorageResult(StorageState.MISMATCH, "the archiver left no report")
        key = names.archive_key(job.namespace, job.name, job.uid)
        if report.key != key or report.bucket != self.store.bucket:
            return StorageResult(
                StorageState.MISMATCH, f"archiver reported {report.bucket}/{report.key}"
            )
        info = self.store.stat(key)
        if info is None:
            return StorageResult(StorageState.MISMATCH, f"s3://{report.bucket}/{key} is missing")
        if info.size != report.size or (info.sha256 and info.sha256 != report.sha256):
            return StorageResult(
                StorageState.MISMATCH,
                f"s3://{report.bucket}/{key}: stored size {info.size} sha256 {info.sha256}, "
                f"archiver reported size {report.size} sha256 {report.sha256}",
            )
        expiry = datetime.timedelta(seconds=obs.spec.artifacts.url_expiry_seconds)
        url, expires_at = self.store.presign_get(key, expiry)
        artifact: dict[str, Any] = {
            "bucket": report.bucket,
            "key": key,
            "size": report.size,
            "sha256": report.sha256,
            # Counts from walking a workspace the agent shaped: clamped like other sandbox numbers.
            "files": bounded_int(report.files),
            "skipped": bounded_int(report.skipped),
            "url": url,
            "urlExpiresAt": c.format_time(expires_at),
        }
        if report.transcript_key:
            artifact["transcriptKey"] = report.transcript_key
        return StorageResult(StorageState.OK, artifact=artifact)

    # Act.

    def _patch(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        if not patch:
            return
        try:
            self.kube.patch_codingjob_status(namespace, name, dict(patch))
        except InvalidObject as error:
            # The API server refused the status (a value its schema rejects, e.g. one that came
            # from the sandbox): retrying the same patch would loop forever, so the job ends
            # Failed with the reason instead. This patch holds only operator-made values.
            log.error("status of %s/%s refused: %s", namespace, name, error)
            self.kube.patch_codingjob_status(
                namespace,
                name,
                {
                    "phase": "Failed",
                    "reason": c.STATUS_REJECTED,
                    "message": clean_text(f"the API server refused a status update: {error}"),
                    "completionTime": c.format_time(self.clock()),
                },
            )
            raise StatusRejected(str(error)) from error

    def _apply(
        self,
        owner: kopf.Body,
        job: builders.JobRef,
        spec: CodingJobSpec,
        obs: Observation,
        decision: Decision,
        resolved: ResolvedClass | None = None,
    ) -> None:
        self._patch(job.namespace, job.name, decision.patch)
        for event in decision.events:
            kopf.event(owner, type=event.type, reason=event.reason, message=event.message)
        ns, uid = job.namespace, job.uid
        for action in decision.actions:
            if action == Action.ENSURE_CHILDREN:
                self._ensure_children(owner, job, spec, obs, resolved)
            elif action == Action.DELETE_POD:
                self.kube.delete("Pod", ns, job.names.pod, owner_uid=uid)
            elif action == Action.START_ARCHIVE:
                self._start_archive(owner, job)
            elif action == Action.DELETE_ARCHIVE_JOB:
                self.kube.delete("Job", ns, job.names.archive_job, owner_uid=uid)
            elif action == Action.CLEANUP:
                self._cleanup(job)

    def _cleanup(self, job: builders.JobRef) -> None:
        """Free what the confirmed archive replaces: the agent pod, the archiver, its Secret and
        the workspace PVC, then record ``cleanedUp``.

        Only now, with the archive confirmed in storage and recorded in the status (the patch
        before the actions), may the workspace go. A delete the API server refuses (an admission
        policy, a lost connection) keeps the object and raises RetryLater: the next pass, of
        this replica or of a successor, finds the recorded artifact without ``cleanedUp`` and
        cleans up again; the archive is never made twice."""
        ns, uid = job.namespace, job.uid
        children = [
            ("Pod", job.names.pod),
            ("Job", job.names.archive_job),
            ("Secret", job.names.archive_secret),
            ("PersistentVolumeClaim", job.names.workspace),
        ]
        for kind, child in children:
            try:
                self.kube.delete(kind, ns, child, owner_uid=uid)
            except KubeError as error:
                raise RetryLater(
                    f"the archive is confirmed and recorded, but deleting {kind} {ns}/{child} "
                    f"failed (kept, retried): {api_message(error)}"
                ) from error
        self._patch(ns, job.name, {"cleanedUp": True})

    def _adopt(self, owner: kopf.Body, manifest: dict[str, Any]) -> dict[str, Any]:
        # Owner references make the garbage collector remove every child with the CodingJob;
        # only the reference: kopf.adopt would also copy the job's labels onto the child.
        kopf.append_owner_reference(manifest, owner=owner)
        return manifest

    def _ensure(self, owner: kopf.Body, manifest: dict[str, Any], *, update: bool = False) -> bool:
        return self.kube.ensure(
            self._adopt(owner, manifest), owner_uid=owner.metadata.uid or "", update=update
        )

    def _ensure_children(
        self,
        owner: kopf.Body,
        job: builders.JobRef,
        spec: CodingJobSpec,
        obs: Observation,
        resolved: ResolvedClass | None = None,
    ) -> None:
        deadline = spec.limits.active_deadline_seconds
        retry_seconds = deadline or self.config.model_retry_seconds
        if resolved is not None and resolved.model_retry_seconds:
            # The class caps how long an outage may hold the sandbox: past it the step fails
            # ModelUnavailable and the job ends (archived) instead of idling to its deadline.
            retry_seconds = min(retry_seconds, resolved.model_retry_seconds)
        if self._uses_relay(spec):
            model = builders.ModelEndpoint(
                base_url=self.config.relay_url or "",
                name=spec.model.name or self.config.default_model_name or "",
                relay_credential_secret=job.names.model_credential,
                retry_seconds=retry_seconds,
            )
            claims = JobClaims(
                namespace=job.namespace,
                name=job.name,
                uid=job.uid,
                provider=self._relay_provider(spec) or "",
                max_total_tokens=spec.limits.max_total_tokens or 0,
                max_cost=spec.limits.max_cost_usd or 0.0,
                expires_at=int(obs.now.timestamp()) + self.config.relay_credential_lifetime_seconds,
            )
            # Signed once and stored: a 409 on later passes keeps the first credential. The
            # provider key stays in the relay; the sandbox namespace gets only this credential.
            credential = builders.model_credential_secret(
                job, issue_credential(self._relay_key(), claims)
            )
            self._ensure(owner, credential)
        else:
            model = builders.ModelEndpoint(
                base_url=spec.model.base_url or self.config.default_model_base_url or "",
                name=spec.model.name or self.config.default_model_name or "",
                retry_seconds=retry_seconds,
            )
        peers: list[builders.EgressPeer] = []
        try:
            # Also with Open egress: a model inside the cluster (the relay, an in-cluster
            # endpoint) sits behind the floor, which holds the pod and service CIDRs.
            peers = resolve_model_peers(model.base_url, self.kube_read_service)
        except RetryLater as error:
            # Open egress already reaches any host outside the floor: no need to wait for it.
            if spec.network.egress == EgressMode.RESTRICTED:
                # No pod without its egress rule; say why the job waits, then retry later.
                ready = c.ConditionUpdate(c.READY, False, c.MODEL_ENDPOINT_UNRESOLVED, str(error))
                conditions = c.set_condition(
                    obs.status.get("conditions") or [],
                    ready,
                    now=obs.now,
                    generation=obs.generation,
                )
                if conditions != list(obs.status.get("conditions") or []):
                    self._patch(job.namespace, job.name, {"conditions": conditions})
                raise
        # Generated here, stored once: a 409 on later passes keeps the first values.
        session = builders.session_secret(
            job, vnc_password=secrets.token_urlsafe(6)[:8], jupyter_token=secrets.token_hex(24)
        )
        self._ensure(owner, session)
        self._ensure(owner, builders.workspace_pvc(job, spec))
        service = builders.desktop_service(job, spec)
        if service is not None:
            self._ensure(owner, service, update=True)
        policy = builders.network_policy(
            job,
            spec,
            model_peers=peers,
            floor=self.operator_defaults.floor,
            dns=self.dns,
            stats_sources=self.config.stats_source_cidrs,
        )
        self._ensure(owner, policy, update=True)
        if resolved is not None:
            self.kube.ensure_service_account(job.namespace, resolved.service_account_name)
        pod = builders.agent_pod(
            job,
            spec,
            images=self.images,
            model=model,
            log_format=self.config.log_format,
            sandbox=resolved,
        )
        try:
            created = self._ensure(owner, pod)
        except InvalidObject as error:
            # The API server refused the pod (e.g. an image reference it cannot parse): a spec
            # problem that retrying cannot fix.
            patch = derive_status(replace(obs, semantic_error=(c.INVALID_SPEC, str(error)[:1024])))
            self._patch(job.namespace, job.name, patch.patch)
            for event in patch.events:
                kopf.event(owner, type=event.type, reason=event.reason, message=event.message)
            return
        if created:
            ports = [{"name": n, "port": p} for n, p in builders.desktop_ports(spec)]
            service_status = {"name": job.names.service, "ports": ports} if ports else None
            self._patch(
                job.namespace, job.name, {"podName": job.names.pod, "service": service_status}
            )

    def kube_read_service(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.kube.read_service(namespace, name)

    def _start_archive(self, owner: kopf.Body, job: builders.JobRef) -> None:
        assert self.store is not None
        # Why: the Secret lives in the tenant's namespace; what it holds may reach only this
        # job's objects, and only until the archiver's deadline.
        session = self.store.archiver_session(
            names.archive_prefix(job.namespace, job.name, job.uid),
            self.config.archive_deadline_seconds,
        )
        secret = builders.archive_secret(job, storage_env(self.store.settings, session))
        self._ensure(owner, secret, update=True)
        target = builders.ArchiveTarget(
            key=names.archive_key(job.namespace, job.name, job.uid),
            transcript_key=names.transcript_key(job.namespace, job.name, job.uid),
            extra_env=builders.log_env(job, self.config.log_format),
        )
        limits = builders.ArchiveLimits(
            deadline_seconds=self.config.archive_deadline_seconds,
            max_bytes=self.config.archive_max_bytes,
        )
        manifest = builders.archive_job(job, images=self.images, target=target, limits=limits)
        self._ensure(owner, manifest)

    # Timers: URL refresh, TTL, and when to come back.

    def _next_delay(
        self, job: builders.JobRef, spec: CodingJobSpec, status: Mapping[str, Any]
    ) -> float:
        phase = status.get("phase")
        if phase in ("Pending", "Running", "Archiving", None):
            if phase == "Archiving":
                return self._archiving_delay(status)
            return self.config.stats_interval_seconds
        if phase == "Suspended":
            return MAX_DELAY
        return self._finished_timers(job, spec, status)

    def _archiving_delay(self, status: Mapping[str, Any]) -> float:
        """Backoff while archiving: doubles per failed archiver attempt, and while storage is
        unavailable grows with the outage (half its age so far)."""
        base = self.config.stats_interval_seconds
        attempts = int(status.get("archiveAttempts") or 0)
        delay = base * 2.0 ** max(0, attempts - 1)
        archived = c.find_condition(status.get("conditions") or [], c.ARCHIVED) or {}
        since = archived.get("lastTransitionTime")
        if archived.get("reason") == c.STORAGE_UNAVAILABLE and isinstance(since, str):
            outage = (self.clock() - _parse(since)).total_seconds()
            delay = max(delay, outage / 2)
        return float(min(MAX_DELAY, max(base, delay)))

    def _finished_timers(
        self, job: builders.JobRef, spec: CodingJobSpec, status: Mapping[str, Any]
    ) -> float:
        now = self.clock()
        delay = MAX_DELAY
        completion = status.get("completionTime")
        if spec.ttl_seconds_after_finished is not None and completion:
            due = _parse(completion) + datetime.timedelta(seconds=spec.ttl_seconds_after_finished)
            if now >= due:
                log.info(
                    "deleting %s/%s: ttlSecondsAfterFinished passed",
                    job.namespace,
                    job.name,
                    extra={JOB: job_ref(job.namespace, job.name, job.uid)},
                )
                self.kube.delete_codingjob(job.namespace, job.name)
                return MAX_DELAY
            delay = min(delay, (due - now).total_seconds())
        artifact = status.get("artifact") or {}
        if artifact.get("urlExpiresAt") and self.store is not None:
            lifetime = spec.artifacts.url_expiry_seconds
            refresh_at = _parse(artifact["urlExpiresAt"]) - datetime.timedelta(
                seconds=lifetime * URL_REFRESH_FRACTION
            )
            if now >= refresh_at:
                self.refresh_url(job, spec, artifact)
                refresh_at = now + datetime.timedelta(seconds=lifetime * (1 - URL_REFRESH_FRACTION))
            delay = min(delay, max(1.0, (refresh_at - now).total_seconds()))
        return delay

    def refresh_url(
        self, job: builders.JobRef, spec: CodingJobSpec, artifact: Mapping[str, Any]
    ) -> None:
        """Presign the artifact again and store the new URL in the status."""
        assert self.store is not None
        expiry = datetime.timedelta(seconds=spec.artifacts.url_expiry_seconds)
        try:
            url, expires_at = self.store.presign_get(artifact["key"], expiry)
        except (TransientStorageError, PermanentStorageError) as error:
            raise RetryLater(f"cannot refresh the download URL: {error}") from error
        new = {**artifact, "url": url, "urlExpiresAt": c.format_time(expires_at)}
        self._patch(job.namespace, job.name, {"artifact": new, "downloadURL": url})


def _parse(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
