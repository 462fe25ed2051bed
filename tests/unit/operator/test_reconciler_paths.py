"""The Reconciler's paths, pass by pass, against in-memory Kubernetes and object storage and a
fake clock (tests/fixtures/fakes.py): what it patches, creates, deletes and when it comes back.

One test per row of its decision table: new job, semantic errors (ModelNotConfigured, Secret
missing, InvalidSpec from the schema or from the API server), running with stats, suspend and
resume, pod lost and the backoff limit, deadline, agent failure without upload, the archive
(storage check, outage backoff, attempt backoff, permanent errors, size/sha256 mismatch, missing
object, confirmation), the download URL refresh, the TTL, and retention Delete on deletion.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import json
import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
import pytest
from codingjob_operator import conditions as c
from codingjob_operator import handlers, names
from codingjob_operator import reconciler as reconciler_module
from codingjob_operator.config import OperatorConfig
from codingjob_operator.kube import KubeError, NamespaceTerminating
from codingjob_operator.metrics import Metrics
from codingjob_operator.reconciler import (
    MAX_DELAY,
    URL_REFRESH_FRACTION,
    PassResult,
    Reconciler,
    RetryLater,
)
from codingjob_operator.storage import (
    ObjectInfo,
    PermanentStorageError,
    StorageSettings,
    TransientStorageError,
)
from pydantic import SecretStr

from tests.fixtures.fakes import (
    FakeClock,
    FakeKube,
    FakeStore,
    agent_result,
    container_running,
    container_terminated,
    set_pod_status,
)

NS, NAME = "team-a", "demo"
CHILD = names.child_names(NAME)
MODEL = {"baseURL": "http://model.models.svc:8000/v1", "name": "scripted"}
STATS_INTERVAL = 5.0
DAY = 86400
#: The default class of these tests: wide enough for every path below (the class rules have
#: their own tests); the table in test_operator_classes.py covers the refusals.
PERMISSIVE_CLASS = {
    "apiVersion": "codingjob.dev/v1alpha1",
    "kind": "CodingJobClass",
    "metadata": {
        "name": "permissive",
        "generation": 1,
        "annotations": {"codingjob.dev/is-default-class": "true"},
    },
    "spec": {
        "sandbox": {"imagePatterns": [".*"]},
        "limits": {"activeDeadlineSeconds": {"max": DAY}, "allowNoDeadline": True},
        "network": {"allowedEgressModes": ["Restricted", "Open"], "allowedCIDRs": ["0.0.0.0/0"]},
        "model": {"baseURLPrefixes": [MODEL["baseURL"], "http://m/v1"]},
    },
}
HOUR = 3600  # the download URL's default lifetime


@dataclass
class World:
    clock: FakeClock
    kube: FakeKube
    store: FakeStore | None
    reconciler: Reconciler
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def obj(self) -> dict[str, Any]:
        obj = self.kube.get("CodingJob", NS, NAME)
        assert obj is not None
        return obj

    @property
    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.obj.get("status") or {}
        return status

    @property
    def uid(self) -> str:
        uid: str = self.obj["metadata"]["uid"]
        return uid

    def condition(self, type_: str) -> tuple[str, str]:
        found = c.find_condition(self.status.get("conditions") or [], type_)
        assert found is not None, f"no {type_} condition in {self.status}"
        return str(found["status"]), str(found["reason"])

    def spec(self, **changes: Any) -> None:
        self.obj["spec"] = {**self.obj["spec"], **changes}
        self.obj["metadata"]["generation"] += 1

    def run(self) -> float:
        return self.reconciler.reconcile(NS, NAME).delay

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


Make = Callable[..., World]


@pytest.fixture
def make(monkeypatch: pytest.MonkeyPatch) -> Make:
    def build(
        spec: dict[str, Any] | None = None,
        *,
        storage: bool = True,
        config: dict[str, Any] | None = None,
    ) -> World:
        clock = FakeClock()
        kube = FakeKube(clock)
        store = FakeStore(clock) if storage else None
        settings = OperatorConfig(
            **{"stats_interval_seconds": STATS_INTERVAL, "storage": None, **(config or {})}
        )
        kube.classes = [PERMISSIVE_CLASS]
        world = World(clock, kube, store, Reconciler(kube, settings, store, clock=clock))  # type: ignore[arg-type]

        def event(_owner: Any, *, type: str, reason: str, message: str) -> None:
            world.events.append((type, reason, message))

        # kopf posts events through its running operator; here they are recorded instead.
        monkeypatch.setattr(kopf, "event", event)
        body = spec if spec is not None else {"task": "build it", "model": MODEL}
        body.setdefault("network", {"egress": "Open"})
        kube.put(
            {
                "apiVersion": "codingjob.dev/v1alpha1",
                "kind": "CodingJob",
                "metadata": {"name": NAME, "namespace": NS, "generation": 1},
                "spec": body,
            }
        )
        return world

    return build


def start(w: World) -> None:
    """First pass and a running agent."""
    w.run()
    set_pod_status(w.kube, NS, CHILD.pod, phase="Running", agent=container_running("agent"))
    w.run()
    assert w.status["phase"] == "Running"


def end_agent(w: World, exit_code: int = 0, message: str | None = None) -> None:
    if message is None:
        message = agent_result() if exit_code == 0 else agent_result("Failed", "ModelError")
    set_pod_status(
        w.kube,
        NS,
        CHILD.pod,
        phase="Succeeded" if exit_code == 0 else "Failed",
        agent=container_terminated("agent", exit_code, message),
    )
    w.run()


def to_archiving(w: World) -> None:
    start(w)
    end_agent(w)
    assert w.status["phase"] == "Archiving"
    assert w.kube.get("Pod", NS, CHILD.pod) is None


def report(w: World, *, size: int = 4096, sha: str = "ab" * 32, key: str | None = None) -> str:
    assert w.store is not None
    key = key or names.archive_key(NS, NAME, w.uid)
    return json.dumps(
        {"bucket": w.store.bucket, "key": key, "size": size, "sha256": sha, "files": 3}
    )


def archiver_done(w: World, message: str, *, failed: bool = False) -> None:
    """The archiver Job finished with that termination message."""
    job = w.kube.get("Job", NS, CHILD.archive_job)
    assert job is not None, "no archiver Job"
    job["status"] = {"conditions": [{"type": "Failed" if failed else "Complete", "status": "True"}]}
    w.kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{CHILD.archive_job}-{len(w.kube.objects)}",
                "namespace": NS,
                "labels": names.labels(NAME, "archiver"),
            },
            "status": {
                "phase": "Failed" if failed else "Succeeded",
                "containerStatuses": [container_terminated("archiver", int(failed), message)],
            },
        }
    )


def stored(w: World, *, size: int = 4096, sha: str | None = "ab" * 32) -> None:
    assert w.store is not None
    key = names.archive_key(NS, NAME, w.uid)
    w.store.objects[key] = ObjectInfo(key=key, size=size, sha256=sha, files=3)


def to_succeeded(w: World) -> None:
    to_archiving(w)
    w.run()
    stored(w)
    archiver_done(w, report(w))
    w.run()
    assert w.status["phase"] == "Succeeded"


# New job and the semantic errors found before a pod exists.


def test_a_new_job_gets_its_children_and_pending(make: Make) -> None:
    w = make()
    assert w.run() == STATS_INTERVAL
    assert w.status["phase"] == "Pending"
    assert w.status["podName"] == CHILD.pod
    assert w.status["observedGeneration"] == 1
    assert w.condition(c.READY) == ("False", c.POD_PENDING)
    assert w.kube.kinds(NS) == {
        ("CodingJob", NAME),
        ("Secret", CHILD.session),
        ("PersistentVolumeClaim", CHILD.workspace),
        ("Service", CHILD.service),
        ("NetworkPolicy", CHILD.network_policy),
        ("Pod", CHILD.pod),
        # The class's sandbox identity, shared by the namespace's jobs and owned by none.
        ("ServiceAccount", "codingjob-sandbox"),
    }
    # Every child is owned by the CodingJob, so deleting it removes them, and carries the
    # README's labels.
    components = {
        "Secret": "session",
        "PersistentVolumeClaim": "workspace",
        "Service": "desktop",
        "NetworkPolicy": "sandbox",
        "Pod": "agent",
    }
    for kind, name in w.kube.kinds(NS) - {
        ("CodingJob", NAME),
        ("ServiceAccount", "codingjob-sandbox"),
    }:
        meta = w.kube.objects[(kind, NS, name)]["metadata"]
        refs = meta["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [("CodingJob", NAME, w.uid)]
        assert meta["labels"] == {
            "app.kubernetes.io/name": "codingjob-agent",
            "app.kubernetes.io/instance": NAME,
            "app.kubernetes.io/managed-by": "codingjob-operator",
            "app.kubernetes.io/component": components[kind],
            "codingjob.dev/job": NAME,
        }
    assert w.events == [("Normal", c.CREATED, "creating the agent pod")]


def test_a_second_pass_creates_nothing_new(make: Make) -> None:
    w = make()
    w.run()
    session = dict(w.kube.objects[("Secret", NS, CHILD.session)])
    creates = len(w.kube.calls_of("create"))
    w.run()
    assert len(w.kube.calls_of("create")) == creates
    # The session Secret keeps the values generated first.
    assert w.kube.objects[("Secret", NS, CHILD.session)] == session


def test_operator_defaults_fill_a_missing_model(make: Make) -> None:
    w = make(
        {"task": "t"},
        config={"default_model_base_url": "http://m.example/v1", "default_model_name": "dflt"},
    )
    w.run()
    pod = w.kube.objects[("Pod", NS, CHILD.pod)]
    env = {e["name"]: e.get("value") for e in pod["spec"]["initContainers"][0]["env"]}
    assert env["CODINGJOB_MODEL_BASE_URL"] == "http://m.example/v1"
    assert env["CODINGJOB_MODEL_NAME"] == "dflt"


@pytest.mark.parametrize(
    ("model", "config", "missing"),
    [
        ({}, {}, "baseURL"),
        ({"name": "m"}, {"default_model_name": "m"}, "baseURL"),
        ({"baseURL": "http://m/v1"}, {}, "name"),
    ],
)
def test_model_not_configured_fails_without_a_pod(
    make: Make, model: dict[str, str], config: dict[str, str], missing: str
) -> None:
    w = make({"task": "t", "model": model}, config=config)
    assert w.run() == MAX_DELAY
    assert w.status["phase"] == "Failed"
    assert w.status["reason"] == c.MODEL_NOT_CONFIGURED
    assert w.status["message"] == f"spec.model.{missing} is unset and the operator has no default"
    assert w.condition(c.ARCHIVED) == ("False", c.NOT_REQUESTED)
    assert w.kube.calls_of("create") == []
    assert w.events[-1][:2] == ("Warning", c.MODEL_NOT_CONFIGURED)


CONSENT = {"codingjob.dev/model-credentials": "true"}


@pytest.mark.parametrize(
    ("secret", "reason"),
    [(None, c.SECRET_NOT_ALLOWED), ({"other": "eA=="}, c.SECRET_KEY_NOT_FOUND)],
)
def test_a_missing_api_key_secret_fails_without_a_pod(
    make: Make, secret: dict[str, str] | None, reason: str
) -> None:
    w = make({"task": "t", "model": {**MODEL, "apiKeySecretRef": {"name": "llm", "key": "k"}}})
    if secret is not None:
        w.kube.put(
            {
                "kind": "Secret",
                "metadata": {"name": "llm", "namespace": NS, "labels": CONSENT},
                "data": secret,
            }
        )
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", reason)
    assert "'llm'" in w.status["message"]
    assert w.kube.get("Pod", NS, CHILD.pod) is None


def test_an_api_key_secret_that_exists_is_referenced_not_copied(make: Make) -> None:
    w = make({"task": "t", "model": {**MODEL, "apiKeySecretRef": {"name": "llm", "key": "k"}}})
    w.kube.put(
        {
            "kind": "Secret",
            "metadata": {"name": "llm", "namespace": NS, "labels": CONSENT},
            "data": {"k": "c2s="},
        }
    )
    w.run()
    assert w.status["phase"] == "Pending"
    pod = w.kube.objects[("Pod", NS, CHILD.pod)]
    sidecar_env = pod["spec"]["initContainers"][0]["env"]
    assert {
        "name": "CODINGJOB_MODEL_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "llm", "key": "k"}},
    } in sidecar_env
    assert "c2s=" not in repr(pod)


def test_a_spec_the_schema_should_have_refused_fails_as_invalid_spec(make: Make) -> None:
    w = make({"task": "", "model": MODEL})
    assert w.run() == MAX_DELAY
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.INVALID_SPEC)
    assert "task" in w.status["message"]
    assert w.kube.calls_of("create") == []
    # A finished job is not failed again by a later pass.
    patches = len(w.kube.calls_of("patch_status"))
    w.run()
    assert len(w.kube.calls_of("patch_status")) == patches


def test_a_pod_the_api_server_refuses_fails_as_invalid_spec(make: Make) -> None:
    w = make()
    w.kube.reject_pods = 'Pod "demo-agent" is invalid: spec.containers[0].image: Invalid value'
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.INVALID_SPEC)
    assert w.status["message"] == w.kube.reject_pods
    assert w.events[-1][:2] == ("Warning", c.INVALID_SPEC)
    assert "podName" not in w.status


def test_an_unresolvable_model_host_waits_with_a_reason(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unresolved(*_: Any, **__: Any) -> Any:
        raise RetryLater("cannot resolve the model host 'm.example'")

    monkeypatch.setattr(reconciler_module, "resolve_model_peers", unresolved)
    w = make({"task": "t", "model": MODEL, "network": {"egress": "Restricted"}})
    with pytest.raises(RetryLater):
        w.run()
    assert w.condition(c.READY) == ("False", c.MODEL_ENDPOINT_UNRESOLVED)
    # No pod without its egress rule.
    assert w.kube.get("Pod", NS, CHILD.pod) is None


def test_restricted_egress_allows_the_model_service_pods(make: Make) -> None:
    w = make({"task": "t", "model": MODEL, "network": {"egress": "Restricted"}})
    w.kube.put(
        {
            "kind": "Service",
            "metadata": {"name": "model", "namespace": "models"},
            "spec": {"clusterIP": "10.96.0.9", "selector": {"app": "m"}, "ports": [{"port": 8000}]},
        }
    )
    w.run()
    policy = w.kube.objects[("NetworkPolicy", NS, CHILD.network_policy)]
    peers = [p for rule in policy["spec"]["egress"] for p in rule.get("to", [])]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "models"}},
        "podSelector": {"matchLabels": {"app": "m"}},
    } in peers


# Running.


def test_running_copies_the_sidecar_stats(make: Make) -> None:
    w = make()
    start(w)
    assert w.status["startTime"] == "2026-01-01T12:00:00Z"
    assert w.condition(c.READY) == ("True", c.POD_RUNNING)
    w.kube.stats = {"steps": 4, "tokens": {"used": 900, "limit": 5000, "pruned": 12}}
    assert w.run() == STATS_INTERVAL
    assert w.status["steps"] == 4
    assert w.status["tokens"] == {"used": 900, "limit": 5000, "pruned": 12}
    assert ("proxy", NS, CHILD.pod, "8081", "/stats") in w.kube.calls
    w.kube.stats = {"steps": 5, "budgetExceeded": True, "lastError": "budget spent"}
    w.run()
    assert w.condition(c.BUDGET_EXCEEDED) == ("True", c.TOKEN_BUDGET_SPENT)


def test_stats_that_cannot_be_read_leave_the_job_running(make: Make) -> None:
    w = make()
    start(w)
    w.kube.stats = None
    w.run()
    assert w.status["phase"] == "Running"
    assert "steps" not in w.status


# Suspend and resume.


def test_suspend_deletes_the_pod_and_keeps_the_workspace_then_resume_recreates_it(
    make: Make,
) -> None:
    w = make()
    start(w)
    pvc_uid = w.kube.objects[("PersistentVolumeClaim", NS, CHILD.workspace)]["metadata"]["uid"]
    w.spec(suspend=True)
    assert w.run() == MAX_DELAY
    assert w.status["phase"] == "Suspended"
    assert w.condition(c.SUSPENDED) == ("True", c.SUSPENDED_BY_USER)
    assert {x["type"]: x["reason"] for x in w.status["conditions"]}["Suspended"] == (
        "SuspendedByUser"
    )
    assert w.kube.get("Pod", NS, CHILD.pod) is None
    assert ("delete", "PersistentVolumeClaim", NS, CHILD.workspace) not in w.kube.calls
    assert w.run() == MAX_DELAY and w.kube.get("Pod", NS, CHILD.pod) is None

    w.spec(suspend=False)
    assert w.run() == STATS_INTERVAL
    assert w.status["phase"] == "Pending"
    assert w.condition(c.SUSPENDED) == ("False", c.RESUMED)
    assert w.kube.get("Pod", NS, CHILD.pod) is not None
    # The same workspace: the agent resumes from its journal.
    assert (
        w.kube.objects[("PersistentVolumeClaim", NS, CHILD.workspace)]["metadata"]["uid"] == pvc_uid
    )
    assert w.reasons()[-2:] == [c.SUSPENDED_BY_USER, c.RESUMED]


# Pods lost to infrastructure, deadline, failure without upload.


def test_a_lost_pod_is_recreated_until_the_backoff_limit(make: Make) -> None:
    w = make({"task": "t", "model": MODEL, "backoffLimit": 1})
    start(w)
    set_pod_status(
        w.kube, NS, CHILD.pod, phase="Failed", reason="Evicted", agent=container_running("agent")
    )
    w.run()
    assert (w.status["phase"], w.status["podFailures"]) == ("Pending", 1)
    assert w.kube.get("Pod", NS, CHILD.pod) is None
    w.run()
    assert w.kube.get("Pod", NS, CHILD.pod) is not None
    set_pod_status(
        w.kube, NS, CHILD.pod, phase="Failed", reason="Evicted", agent=container_running("agent")
    )
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Archiving", c.BACKOFF_LIMIT_EXCEEDED)
    assert w.status["message"].startswith("agent pod lost 2 times (backoffLimit 1)")


def test_an_eviction_past_the_backoff_limit_still_archives_the_workspace(make: Make) -> None:
    # The kubelet evicts a pod that filled its ephemeral storage; with backoffLimit 0 that ends
    # the job, and what the agent left in its workspace is archived like any failed agent's.
    w = make({"task": "t", "model": MODEL, "backoffLimit": 0})
    start(w)
    set_pod_status(
        w.kube,
        NS,
        CHILD.pod,
        phase="Failed",
        reason="Evicted",
        message="Pod ephemeral local storage usage exceeds the total limit of containers 320Mi.",
        agent=container_terminated("agent", 137),
    )
    w.run()
    assert w.status["phase"] == "Archiving"
    assert (w.status["outcome"], w.status["reason"]) == ("Failed", c.BACKOFF_LIMIT_EXCEEDED)
    assert "Evicted: Pod ephemeral local storage" in w.status["message"]
    assert w.condition(c.READY) == ("False", c.POD_EVICTED)
    assert w.condition(c.ARCHIVED) == ("False", c.ARCHIVING)
    assert w.kube.get("Pod", NS, CHILD.pod) is None  # never recreated
    w.run()
    assert w.kube.get("Job", NS, CHILD.archive_job) is not None
    stored(w)
    archiver_done(w, report(w))
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.BACKOFF_LIMIT_EXCEEDED)
    assert w.condition(c.ARCHIVED) == ("True", c.ARCHIVE_CONFIRMED)
    assert w.status["downloadURL"]
    assert len([x for x in w.kube.calls_of("create") if x[1] == "Pod"]) == 1


def test_pods_lost_past_the_backoff_limit_without_upload_on_failure_keep_the_workspace(
    make: Make,
) -> None:
    w = make(
        {"task": "t", "model": MODEL, "backoffLimit": 0, "artifacts": {"uploadOnFailure": False}}
    )
    start(w)
    set_pod_status(
        w.kube, NS, CHILD.pod, phase="Failed", reason="Evicted", agent=container_running("agent")
    )
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.BACKOFF_LIMIT_EXCEEDED)
    assert w.condition(c.ARCHIVED) == ("False", c.NOT_REQUESTED)
    w.run()
    assert w.kube.get("PersistentVolumeClaim", NS, CHILD.workspace) is not None
    assert w.kube.get("Job", NS, CHILD.archive_job) is None


def test_a_kubelet_eviction_that_killed_the_agent_is_retried_not_failed(make: Make) -> None:
    w = make({"task": "t", "model": MODEL, "backoffLimit": 1})
    start(w)
    # Node pressure: the kubelet killed the agent (137, its logs as the message) and failed the pod.
    set_pod_status(
        w.kube,
        NS,
        CHILD.pod,
        phase="Failed",
        reason="Evicted",
        message="The node was low on resource: memory.",
        agent=container_terminated("agent", 137, "step 3: writing app.py"),
    )
    w.run()
    assert (w.status["phase"], w.status["podFailures"]) == ("Pending", 1)
    assert "outcome" not in w.status
    assert w.condition(c.READY) == ("False", c.POD_EVICTED)
    w.run()
    assert w.kube.get("Pod", NS, CHILD.pod) is not None  # recreated on the same workspace


def test_an_api_eviction_is_counted_once_and_the_pod_recreated_when_gone(make: Make) -> None:
    w = make()
    start(w)
    pod = w.kube.objects[("Pod", NS, CHILD.pod)]
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    pod["status"]["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    ]
    for _ in range(3):  # the pod takes its grace period to go: counted once
        w.run()
    assert (w.status["phase"], w.status["podFailures"]) == ("Pending", 1)
    assert len([x for x in w.kube.calls_of("create") if x[1] == "Pod"]) == 1
    w.kube.objects.pop(("Pod", NS, CHILD.pod))
    w.run()
    assert w.kube.get("Pod", NS, CHILD.pod) is not None
    assert w.status["podFailures"] == 1


def test_a_workspace_pvc_gone_while_archiving_ends_archive_failed(make: Make) -> None:
    w = make()
    to_archiving(w)
    w.run()
    assert w.kube.get("Job", NS, CHILD.archive_job) is not None
    # Deleted while the archiver waits to mount it: it would stay Pending for good.
    w.kube.objects.pop(("PersistentVolumeClaim", NS, CHILD.workspace))
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.ARCHIVE_FAILED)
    assert CHILD.workspace in w.status["message"] and "gone" in w.status["message"]
    assert w.kube.get("Job", NS, CHILD.archive_job) is None


def test_a_workspace_pvc_being_deleted_gets_no_archiver(make: Make) -> None:
    w = make()
    start(w)
    pvc = w.kube.objects[("PersistentVolumeClaim", NS, CHILD.workspace)]
    pvc["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    end_agent(w)
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.ARCHIVE_FAILED)
    assert "being deleted" in w.status["message"]
    assert w.kube.get("Job", NS, CHILD.archive_job) is None


def test_the_pod_deadline_fails_the_agent_and_still_archives(make: Make) -> None:
    w = make({"task": "t", "model": MODEL, "limits": {"activeDeadlineSeconds": 60}})
    start(w)
    set_pod_status(
        w.kube,
        NS,
        CHILD.pod,
        phase="Failed",
        reason="DeadlineExceeded",
        message="Pod was active on the node longer than the specified deadline",
        agent=container_terminated("agent", 137),
    )
    w.run()
    assert w.status["phase"] == "Archiving"
    assert (w.status["outcome"], w.status["reason"]) == ("Failed", c.DEADLINE_EXCEEDED)
    assert w.status["message"] == "Pod was active on the node longer than the specified deadline"


def test_a_failed_agent_without_upload_on_failure_keeps_its_workspace(make: Make) -> None:
    w = make({"task": "t", "model": MODEL, "artifacts": {"uploadOnFailure": False}})
    start(w)
    end_agent(w, exit_code=1)
    assert (w.status["phase"], w.status["reason"]) == ("Failed", "ModelError")
    assert w.condition(c.ARCHIVED) == ("False", c.NOT_REQUESTED)
    w.run()
    assert w.kube.get("PersistentVolumeClaim", NS, CHILD.workspace) is not None
    assert w.kube.get("Job", NS, CHILD.archive_job) is None
    assert w.store is not None and w.store.calls == []


# Archiving.


def test_archiving_checks_storage_then_starts_one_archiver(make: Make) -> None:
    w = make()
    to_archiving(w)
    assert w.run() == STATS_INTERVAL
    assert w.store is not None
    assert w.store.calls == [("ensure_bucket",), ("archiver_session", "team-a/demo/uid-1/")]
    assert w.status["archiveAttempts"] == 1
    assert w.condition(c.ARCHIVED) == ("False", c.ARCHIVING)
    secret = w.kube.objects[("Secret", NS, CHILD.archive_secret)]
    # The archiver gets a session limited to its prefix, never the operator's keys.
    assert secret["stringData"]["CODINGJOB_STORAGE_ACCESS_KEY"] == "session-for-team-a/demo/uid-1/"
    assert secret["stringData"]["CODINGJOB_STORAGE_SESSION_TOKEN"] == "session-token"
    assert "operator-sk" not in secret["stringData"].values()
    job = w.kube.objects[("Job", NS, CHILD.archive_job)]
    assert job["metadata"]["ownerReferences"][0]["uid"] == w.uid
    w.run()
    assert len([x for x in w.kube.calls_of("create") if x[1] == "Job"]) == 1


def test_confirmed_archive_succeeds_with_a_url_and_frees_the_workspace(make: Make) -> None:
    w = make()
    to_succeeded(w)
    key = names.archive_key(NS, NAME, w.uid)
    artifact = w.status["artifact"]
    assert (artifact["key"], artifact["size"], artifact["files"]) == (key, 4096, 3)
    assert w.status["downloadURL"] == artifact["url"]
    assert artifact["urlExpiresAt"] == c.format_time(w.clock.now + datetime.timedelta(seconds=HOUR))
    assert w.condition(c.ARCHIVED) == ("True", c.ARCHIVE_CONFIRMED)
    # The condition types users wait for (`kubectl wait --for=condition=...`), by their names.
    types = {x["type"]: x["status"] for x in w.status["conditions"]}
    assert (types["Ready"], types["Archived"]) == ("False", "True")
    assert (w.status["outcome"], w.status["reason"]) == ("Succeeded", c.COMPLETED)
    assert w.status["completionTime"] == c.format_time(w.clock.now)
    for kind, name in [
        ("PersistentVolumeClaim", CHILD.workspace),
        ("Secret", CHILD.archive_secret),
        ("Job", CHILD.archive_job),
    ]:
        assert w.kube.get(kind, NS, name) is None, kind


def test_a_refused_workspace_delete_keeps_the_recorded_archive_and_is_retried(
    make: Make,
) -> None:
    """The window between "archive confirmed" and "PVC deleted": the confirmation is recorded
    first, a refused PVC delete is a retryable error that names the PVC and the refusal, and the
    next pass (a successor's as well) only cleans up: no second archiver, no second upload."""
    w = make()
    w.reconciler.metrics = Metrics()
    to_archiving(w)
    w.run()
    stored(w)
    archiver_done(w, report(w))
    denial = (
        f'persistentvolumeclaims "{CHILD.workspace}" is forbidden: ValidatingAdmissionPolicy '
        "'hold' with binding 'hold' denied request: held"
    )
    w.kube.refuse_deletes["PersistentVolumeClaim"] = denial
    with pytest.raises(RetryLater) as raised:
        w.run()
    message = str(raised.value)
    assert f"PersistentVolumeClaim {NS}/{CHILD.workspace}" in message
    assert message.endswith(denial), message
    # Confirmed and recorded before the delete: the job is final, its PVC kept, not cleaned up.
    assert (w.status["phase"], w.status["reason"]) == ("Succeeded", c.COMPLETED)
    assert w.status["artifact"]["key"] == names.archive_key(NS, NAME, w.uid)
    assert not w.status.get("cleanedUp")
    assert w.kube.get("PersistentVolumeClaim", NS, CHILD.workspace) is not None
    assert w.kube.get("Job", NS, CHILD.archive_job) is None
    # The pass that finished the job is counted, though its cleanup is retried.
    assert _finished(w.reconciler.metrics) == 1
    # Still refused: retried again, nothing else done (and not counted twice).
    with pytest.raises(RetryLater):
        w.run()
    assert _finished(w.reconciler.metrics) == 1
    # The refusal lifted: a fresh reconciler (a successor replica) only finishes the cleanup.
    del w.kube.refuse_deletes["PersistentVolumeClaim"]
    successor = Reconciler(w.kube, w.reconciler.config, w.store, clock=w.clock)  # type: ignore[arg-type]
    assert w.store is not None
    sessions = [call for call in w.store.calls if call[0] == "archiver_session"]
    successor.reconcile(NS, NAME)
    assert w.status["cleanedUp"] is True
    assert w.kube.get("PersistentVolumeClaim", NS, CHILD.workspace) is None
    # One archiver in all: the successor started none and asked for no archiver credentials.
    assert [call for call in w.store.calls if call[0] == "archiver_session"] == sessions
    assert len([x for x in w.kube.calls if x[:2] == ("create", "Job")]) == 1


def test_a_refused_cleanup_is_logged_as_a_retry_naming_the_object(
    make: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What the daemon logs for that refusal: a warning that it retries, with the PVC's name
    and the API server's message (not its whole Status document); a transient error, no crash."""
    w = make()
    to_archiving(w)
    w.run()
    stored(w)
    archiver_done(w, report(w))
    w.kube.refuse_deletes["PersistentVolumeClaim"] = "denied by policy hold"
    with pytest.raises(RetryLater) as raised:
        w.run()
    assert str(raised.value) == (
        "the archive is confirmed and recorded, but deleting PersistentVolumeClaim "
        f"{NS}/{CHILD.workspace} failed (kept, retried): denied by policy hold"
    )
    with caplog.at_level(logging.WARNING, logger="supervise-test"):
        run = _supervise([raised.value, None], monkeypatch)
    assert run.sleeps == [handlers.ERROR_BACKOFF[0], 7.0]
    assert _errors(run.metrics, "transient") == 1 and _errors(run.metrics, "crash") == 0
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert f"deleting PersistentVolumeClaim {NS}/{CHILD.workspace} failed" in record.getMessage()


@pytest.mark.parametrize(
    ("stored_size", "stored_sha", "reported", "detail"),
    [
        (4000, "ab" * 32, {}, "stored size 4000"),
        (4096, "cd" * 32, {}, "sha256 " + "cd" * 32),
        (None, None, {}, "is missing"),
        (4096, "ab" * 32, {"key": "team-a/other/uid/workspace.zip"}, "archiver reported"),
    ],
    ids=["size", "sha256", "missing", "wrong-key"],
)
def test_an_archive_that_does_not_match_its_report_is_not_confirmed(
    make: Make,
    stored_size: int | None,
    stored_sha: str | None,
    reported: dict[str, str],
    detail: str,
) -> None:
    w = make()
    to_archiving(w)
    w.run()
    if stored_size is not None:
        stored(w, size=stored_size, sha=stored_sha)
    archiver_done(w, report(w, **reported))
    w.run()
    assert w.status["phase"] == "Archiving"
    assert w.condition(c.ARCHIVED) == ("False", c.ARCHIVE_MISMATCH)
    archived = c.find_condition(w.status["conditions"], c.ARCHIVED)
    assert archived is not None and detail in str(archived["message"])
    assert w.events[-1][:2] == ("Warning", c.ARCHIVE_MISMATCH)
    assert "artifact" not in w.status and "downloadURL" not in w.status
    # The attempt is discarded and the workspace kept for the next one.
    assert w.kube.get("Job", NS, CHILD.archive_job) is None
    assert w.kube.get("PersistentVolumeClaim", NS, CHILD.workspace) is not None


def test_a_storage_outage_backs_off_with_its_age_and_recovers(make: Make) -> None:
    w = make()
    to_archiving(w)
    assert w.store is not None
    w.store.fail = TransientStorageError("connection refused")
    assert w.run() == STATS_INTERVAL
    assert w.condition(c.ARCHIVED) == ("False", c.STORAGE_UNAVAILABLE)
    assert w.reasons().count(c.STORAGE_UNAVAILABLE) == 1
    w.clock.advance(100)
    assert w.run() == 50.0  # half the outage so far
    w.clock.advance(900)
    assert w.run() == MAX_DELAY  # capped
    # One event for the outage, not one per pass; the job waits, it does not fail.
    assert w.reasons().count(c.STORAGE_UNAVAILABLE) == 1
    assert w.status["phase"] == "Archiving"
    assert w.kube.get("Job", NS, CHILD.archive_job) is None
    w.store.fail = None
    assert w.run() == STATS_INTERVAL
    assert w.condition(c.ARCHIVED) == ("False", c.ARCHIVING)
    assert w.kube.get("Job", NS, CHILD.archive_job) is not None


def test_a_failed_archiver_attempt_is_replaced_with_a_doubling_backoff(make: Make) -> None:
    w = make()
    to_archiving(w)
    w.run()
    for attempt in (1, 2):
        assert w.status["archiveAttempts"] == attempt
        archiver_done(w, '{"error": "connection reset", "permanent": false}', failed=True)
        w.run()
        assert w.condition(c.ARCHIVED) == ("False", c.ARCHIVE_FAILED)
        assert w.kube.get("Job", NS, CHILD.archive_job) is None
        for pod in [k for k in w.kube.objects if k[0] == "Pod"]:
            del w.kube.objects[pod]  # the Job's pods go with it
        assert w.run() == STATS_INTERVAL * 2**attempt
    assert w.status["phase"] == "Archiving"
    # The third attempt is the last (archiveMaxAttempts): the job fails, the workspace stays.
    assert w.status["archiveAttempts"] == 3
    archiver_done(w, '{"error": "connection reset", "permanent": false}', failed=True)
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.ARCHIVE_FAILED)
    assert w.status["message"] == "archiving failed 3 times; last: connection reset"
    assert w.kube.get("PersistentVolumeClaim", NS, CHILD.workspace) is not None


def test_archiver_credentials_the_store_refuses_fail_the_job_and_keep_the_workspace(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make()
    to_archiving(w)
    assert w.store is not None

    def refuse(_prefix: str, _seconds: int) -> None:
        raise PermanentStorageError("STS AssumeRole: failed with HTTP status code 403")

    monkeypatch.setattr(w.store, "archiver_session", refuse)
    assert w.run() == MAX_DELAY
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.ARCHIVE_FAILED)
    assert "no archiver credentials" in w.status["message"]
    assert w.condition(c.ARCHIVED) == ("False", c.ARCHIVE_FAILED)
    assert w.kube.get("Job", NS, CHILD.archive_job) is None
    assert w.kube.get("PersistentVolumeClaim", NS, CHILD.workspace) is not None


def test_a_permanent_archiver_error_fails_the_job(make: Make) -> None:
    w = make()
    to_archiving(w)
    w.run()
    archiver_done(w, '{"error": "AccessDenied: bucket policy", "permanent": true}', failed=True)
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.ARCHIVE_FAILED)
    assert w.status["message"] == "AccessDenied: bucket policy"


def test_a_permanent_storage_error_fails_the_job(make: Make) -> None:
    w = make()
    to_archiving(w)
    assert w.store is not None
    w.store.fail = PermanentStorageError("NoSuchBucket")
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.ARCHIVE_FAILED)
    assert w.status["message"] == "object storage error: NoSuchBucket"


def test_without_storage_the_job_finishes_and_keeps_its_workspace(make: Make) -> None:
    w = make(storage=False)
    to_archiving(w)
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Succeeded", c.COMPLETED)
    assert w.condition(c.ARCHIVED) == ("False", c.STORAGE_NOT_CONFIGURED)
    assert w.kube.get("PersistentVolumeClaim", NS, CHILD.workspace) is not None
    assert w.kube.get("Job", NS, CHILD.archive_job) is None


# Finished: the download URL refresh and the TTL.


def test_the_download_url_is_refreshed_when_a_tenth_of_its_life_is_left(make: Make) -> None:
    w = make()
    to_succeeded(w)
    assert w.store is not None
    first = w.status["downloadURL"]
    signed = w.store.signed
    lead = HOUR * (1 - URL_REFRESH_FRACTION)
    # Passes at most MAX_DELAY apart, each checking the URL's age.
    assert w.run() == MAX_DELAY
    w.clock.advance(lead - MAX_DELAY)
    assert w.run() == MAX_DELAY
    w.clock.advance(MAX_DELAY - 1)
    assert w.run() == 1.0
    assert (w.status["downloadURL"], w.store.signed) == (first, signed), "refreshed too early"
    w.clock.advance(1)
    assert w.run() == MAX_DELAY
    assert w.store.signed == signed + 1
    assert w.status["downloadURL"] != first
    assert w.status["artifact"]["url"] == w.status["downloadURL"]
    assert w.status["artifact"]["urlExpiresAt"] == c.format_time(
        w.clock.now + datetime.timedelta(seconds=HOUR)
    )
    # The rest of the artifact is kept.
    assert w.status["artifact"]["size"] == 4096


def test_a_url_refresh_that_storage_refuses_is_retried(make: Make) -> None:
    w = make()
    to_succeeded(w)
    assert w.store is not None
    w.store.fail = TransientStorageError("timeout")
    w.clock.advance(HOUR)
    first = w.status["downloadURL"]
    with pytest.raises(RetryLater, match="cannot refresh the download URL"):
        w.run()
    assert w.status["downloadURL"] == first


def test_ttl_deletes_the_job_when_due_and_not_before(make: Make) -> None:
    w = make({"task": "t", "model": MODEL, "ttlSecondsAfterFinished": 120})
    to_succeeded(w)
    assert w.run() == 120
    w.clock.advance(119)
    assert w.run() == 1
    assert w.kube.calls_of("delete_codingjob") == []
    w.clock.advance(1)
    assert w.run() == MAX_DELAY
    assert w.kube.calls_of("delete_codingjob") == [("delete_codingjob", NS, NAME)]
    assert w.kube.get("CodingJob", NS, NAME) is None


def test_a_job_being_deleted_is_left_alone(make: Make) -> None:
    w = make()
    w.obj["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    assert w.run() == MAX_DELAY
    assert w.kube.calls_of("create") == [] and "status" not in w.obj


# Retention: the archive objects go with the CodingJob only with retention Delete.


def _memo(store: FakeStore, retention: str) -> Any:
    settings = StorageSettings(
        access_key=SecretStr("a"), secret_key=SecretStr("s"), retention=retention
    )
    config = OperatorConfig(storage=settings)
    return types.SimpleNamespace(reconciler=types.SimpleNamespace(config=config, store=store))


def test_retention_delete_removes_exactly_the_jobs_objects() -> None:
    store = FakeStore(FakeClock())
    prefix = names.archive_prefix(NS, NAME, "u1")
    for key in (f"{prefix}workspace.zip", f"{prefix}context.txt", f"{NS}/{NAME}/u2/workspace.zip"):
        store.objects[key] = ObjectInfo(key=key, size=1, sha256=None, files=None)
    memo = _memo(store, "Delete")
    assert handlers._deletes_objects(memo=memo) is True
    handlers.delete_archive(
        namespace=NS, name=NAME, uid="u1", memo=memo, logger=logging.getLogger("t")
    )
    assert list(store.objects) == [f"{NS}/{NAME}/u2/workspace.zip"]


def test_retention_retain_keeps_the_objects() -> None:
    assert handlers._deletes_objects(memo=_memo(FakeStore(FakeClock()), "Retain")) is False


def test_retention_delete_during_an_outage_retries_the_deletion() -> None:
    store = FakeStore(FakeClock(), fail=TransientStorageError("down"))
    with pytest.raises(kopf.TemporaryError):
        handlers.delete_archive(
            namespace=NS,
            name=NAME,
            uid="u1",
            memo=_memo(store, "Delete"),
            logger=logging.getLogger("t"),
        )


def test_retention_delete_with_a_permanent_error_does_not_block_the_deletion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore(FakeClock(), fail=PermanentStorageError("AccessDenied"))
    logger = logging.getLogger("retention-test")
    with caplog.at_level(logging.ERROR, logger="retention-test"):
        handlers.delete_archive(
            namespace=NS, name=NAME, uid="u1", memo=_memo(store, "Delete"), logger=logger
        )
    assert "AccessDenied" in caplog.text


# Archive on delete: a deleted, unfinished job is archived before it goes.


def test_a_running_job_deleted_is_stopped_archived_then_released(make: Make) -> None:
    w = make()
    start(w)
    w.obj["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    # The normal passes leave it alone; the deletion handler drives it.
    assert w.run() == MAX_DELAY
    assert w.reconciler.archive_before_delete(NS, NAME) is False
    assert (w.status["phase"], w.status["reason"]) == ("Archiving", c.DELETED)
    assert w.kube.get("Pod", NS, CHILD.pod) is None  # the agent is stopped first
    assert w.reconciler.archive_before_delete(NS, NAME) is False
    assert w.kube.get("Job", NS, CHILD.archive_job) is not None
    stored(w)
    archiver_done(w, report(w))
    assert w.reconciler.archive_before_delete(NS, NAME) is True
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.DELETED)
    assert w.status["artifact"]["key"] == names.archive_key(NS, NAME, w.uid)


@pytest.mark.parametrize("phase", [None, "Succeeded", "Failed"])
def test_a_job_deleted_before_it_started_or_after_it_ended_goes_at_once(
    make: Make, phase: str | None
) -> None:
    w = make()
    if phase is not None:
        w.obj["status"] = {"phase": phase}
    w.obj["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    assert w.reconciler.archive_before_delete(NS, NAME) is True
    assert w.kube.calls_of("create") == []


def _deletion_memo(outcomes: list[Any], deadline: int = 3600) -> Any:
    """A memo whose reconciler answers archive_before_delete with ``outcomes`` in turn."""
    calls = iter(outcomes)

    def step(_namespace: str, _name: str) -> bool:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return bool(outcome)

    config = OperatorConfig(archive_deadline_seconds=deadline)
    reconciler = types.SimpleNamespace(config=config, archive_before_delete=step)
    return types.SimpleNamespace(
        reconciler=reconciler, executor=concurrent.futures.ThreadPoolExecutor(1)
    )


def _archive_on_delete(memo: Any, runtime: float = 0.0) -> None:
    asyncio.run(
        handlers.archive_on_delete(
            namespace=NS,
            name=NAME,
            memo=memo,
            logger=logging.getLogger("archive-on-delete-test"),
            runtime=datetime.timedelta(seconds=runtime),
        )
    )


def test_the_deletion_handler_waits_for_the_archive_without_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers, "ARCHIVE_ON_DELETE_POLL_SECONDS", 0.0)
    _archive_on_delete(_deletion_memo([False, False, True]))  # returns, nothing logged as error


def test_a_terminating_namespace_releases_the_job_unarchived() -> None:
    _archive_on_delete(_deletion_memo([False, NamespaceTerminating(403, "being terminated")]))


def test_an_api_error_while_archiving_on_delete_is_retried_by_kopf() -> None:
    with pytest.raises(kopf.TemporaryError):
        _archive_on_delete(_deletion_memo([KubeError(500, "etcd timeout")]))


def test_archiving_on_delete_gives_up_after_the_deadline_and_a_margin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = 3600 + handlers.ARCHIVE_ON_DELETE_MARGIN_SECONDS
    with caplog.at_level(logging.ERROR, logger="archive-on-delete-test"):
        _archive_on_delete(_deletion_memo([False]), runtime=limit + 1)
    assert "gave up archiving before deletion" in caplog.text


class _StopAfter:
    """The daemon's ``stopped`` flag, raised after ``passes`` sleeps."""

    def __init__(self, passes: int) -> None:
        self.left = passes

    def __bool__(self) -> bool:
        return self.left <= 0

    async def wait(self) -> None:
        await asyncio.Event().wait()


def _supervise(outcomes: list[Exception | None], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the per-job daemon for one pass per outcome; its sleeps and metrics are returned."""
    calls = iter(outcomes)
    sleeps: list[float] = []
    stopped = _StopAfter(len(outcomes))

    def reconcile(_namespace: str, _name: str) -> PassResult:
        outcome = next(calls)
        if outcome is not None:
            raise outcome
        return PassResult(7.0)

    async def sleep(_wakeup: Any, _stopped: Any, delay: float) -> None:
        sleeps.append(delay)
        stopped.left -= 1

    monkeypatch.setattr(handlers, "_sleep", sleep)
    memo = types.SimpleNamespace(
        reconciler=types.SimpleNamespace(reconcile=reconcile),
        executor=concurrent.futures.ThreadPoolExecutor(1),
        wakeups=handlers.Wakeups(),
        metrics=Metrics(),
    )
    asyncio.run(
        handlers.supervise(
            namespace=NS,
            name=NAME,
            memo=memo,
            stopped=stopped,
            logger=logging.getLogger("supervise-test"),
        )
    )
    return types.SimpleNamespace(sleeps=sleeps, metrics=memo.metrics)


def _finished(metrics: Any) -> float:
    """Jobs counted as finished, over every label set."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "codingjob_jobs_finished_total"
    )


def _errors(metrics: Any, kind: str) -> float:
    value = metrics.registry.get_sample_value("codingjob_reconcile_errors_total", {"kind": kind})
    return float(value or 0.0)


def test_a_namespace_being_deleted_is_waited_on_not_retried_as_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    terminating = NamespaceTerminating(403, "unable to create new content: being terminated")
    with caplog.at_level(logging.INFO, logger="supervise-test"):
        run = _supervise([terminating, terminating], monkeypatch)
    assert run.sleeps == [handlers.NAMESPACE_TERMINATING_DELAY] * 2
    assert _errors(run.metrics, "transient") == 0
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]


def test_a_transient_api_error_backs_off_and_counts_then_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = _supervise([KubeError(500, "etcd timeout"), KubeError(0, "no answer"), None], monkeypatch)
    assert run.sleeps == [*handlers.ERROR_BACKOFF[:2], 7.0]
    assert _errors(run.metrics, "transient") == 2
