"""Multi-tenant safety of the reconciler, pass by pass against in-memory Kubernetes: the class is
resolved once and recorded, a spec outside it fails ClassViolation, a Secret without its owner's
consent is never used (SecretNotAllowed), a child's name held by someone else's object ends the job
NameConflict and leaves the object untouched, cleanup runs once, and the author's labels stay off
the children."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from codingjob_operator import conditions as c
from codingjob_operator import names

from tests.fixtures.fakes import container_running, set_pod_status
from tests.unit.operator.test_reconciler_paths import (
    CHILD,
    MODEL,
    NAME,
    NS,
    PERMISSIVE_CLASS,
    Make,
    World,
    make,
    to_succeeded,
)

__all__ = ["make"]  # the fixture, re-used from the paths module


def everything_said(w: World) -> str:
    """Every byte the operator wrote anywhere: API calls, objects it made, status, events."""
    made = list(w.kube.objects.values())
    return json.dumps([w.kube.calls, w.events, made], default=str)


def test_a_secret_without_the_consent_label_is_never_used(make: Make) -> None:
    w = make({"task": "t", "model": {**MODEL, "apiKeySecretRef": {"name": "db", "key": "pw"}}})
    # A Secret the author may not read, but whose name they know.
    w.kube.put(
        {
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": NS},
            "data": {"pw": "aHVudGVyMg=="},
        }
    )
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.SECRET_NOT_ALLOWED)
    assert "codingjob.dev/model-credentials" in w.status["message"]
    assert w.kube.get("Pod", NS, CHILD.pod) is None
    # Only the label-selected list was asked; the value is nowhere but in the Secret itself.
    assert ("list_secrets", NS, "codingjob.dev/model-credentials") in w.kube.calls
    secret = w.kube.objects.pop(("Secret", NS, "db"))
    said = everything_said(w)
    assert "aHVudGVyMg==" not in said and "hunter2" not in said
    w.kube.objects[("Secret", NS, "db")] = secret


FOREIGN = {
    "PersistentVolumeClaim": (CHILD.workspace, {"spec": {"resources": {}}}),
    "Secret": (CHILD.session, {"stringData": {"vnc-password": "tenant-chosen"}}),
    "Service": (CHILD.service, {"spec": {"selector": {"app": "x"}}}),
    "NetworkPolicy": (CHILD.network_policy, {"spec": {"podSelector": {}}}),
    "Pod": (CHILD.pod, {"spec": {"containers": []}}),
}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_a_foreign_object_with_a_childs_name_ends_the_job_name_conflict(
    make: Make, kind: str
) -> None:
    w = make()
    name, body = FOREIGN[kind]
    foreign = w.kube.put({"kind": kind, "metadata": {"name": name, "namespace": NS}, **body})
    before = copy.deepcopy(foreign)
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.NAME_CONFLICT)
    assert f"{kind} {NS}/{name}" in w.status["message"]
    assert w.events[-1][:2] == ("Warning", c.NAME_CONFLICT)
    # Untouched: not patched, not adopted, not deleted, not mounted into a pod.
    assert w.kube.get(kind, NS, name) == before
    assert "ownerReferences" not in w.kube.objects[(kind, NS, name)]["metadata"]
    if kind != "Pod":
        assert w.kube.get("Pod", NS, CHILD.pod) is None
    # A finished job stays finished and still leaves the object alone.
    w.run()
    assert w.kube.get(kind, NS, name) == before


def test_a_spec_outside_its_class_fails_class_violation_naming_the_field(make: Make) -> None:
    w = make({"task": "t", "model": MODEL, "limits": {"activeDeadlineSeconds": 999_999}})
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.CLASS_VIOLATION)
    assert "spec.limits.activeDeadlineSeconds" in w.status["message"]
    assert "999999" in w.status["message"] and "86400" in w.status["message"]
    assert w.kube.calls_of("create") == []


def test_a_named_class_that_does_not_exist_fails_class_not_found(make: Make) -> None:
    w = make({"task": "t", "model": MODEL, "className": "gold"})
    w.run()
    assert (w.status["phase"], w.status["reason"]) == ("Failed", c.CLASS_NOT_FOUND)
    assert "'gold'" in w.status["message"]


def test_the_class_is_recorded_once_and_later_edits_do_not_change_the_job(make: Make) -> None:
    w = make()
    w.run()
    recorded = w.status["class"]
    assert (recorded["name"], recorded["generation"]) == ("permissive", 1)
    pod = w.kube.objects[("Pod", NS, CHILD.pod)]
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi"}
    assert pod["spec"]["serviceAccountName"] == "codingjob-sandbox"
    # The admin tightens the class; the running job's next pod keeps the recorded values.
    edited = copy.deepcopy(PERMISSIVE_CLASS)
    edited["metadata"]["generation"] = 2
    edited["spec"]["resources"] = {"cpu": {"defaultLimit": "1", "max": "1"}}
    w.kube.classes = [edited]
    w.kube.objects.pop(("Pod", NS, CHILD.pod))
    w.spec(suspend=True)
    w.run()
    w.spec(suspend=False)
    w.run()
    w.run()
    pod = w.kube.objects[("Pod", NS, CHILD.pod)]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"
    assert w.status["class"] == recorded


def container_env(w: World, name: str) -> dict[str, str]:
    pod = w.kube.objects[("Pod", NS, CHILD.pod)]
    containers = [*pod["spec"]["containers"], *pod["spec"].get("initContainers", [])]
    container = next(c for c in containers if c["name"] == name)
    return {e["name"]: e.get("value", "") for e in container["env"]}


@pytest.mark.parametrize(
    ("class_cap", "deadline", "expected"),
    [
        (None, 7200, "7200"),  # no cap: a step retries until the job's deadline
        (600, 7200, "600"),  # the class's cap is shorter: it wins
        (600, 300, "300"),  # the deadline is shorter: it still bounds the step
    ],
)
def test_the_class_caps_how_long_a_step_retries_an_unavailable_model(
    make: Make, class_cap: int | None, deadline: int, expected: str
) -> None:
    cls = copy.deepcopy(PERMISSIVE_CLASS)
    if class_cap is not None:
        cls["spec"]["model"]["maxRetrySeconds"] = class_cap
    w = make({"task": "t", "model": MODEL, "limits": {"activeDeadlineSeconds": deadline}})
    w.kube.classes = [cls]
    w.run()
    assert w.status["class"].get("modelRetrySeconds") == class_cap
    assert container_env(w, "context-manager")["CODINGJOB_MODEL_RETRY_SECONDS"] == expected
    # The agent waits for the sidecar's retries to end before it gives up on the step.
    step_timeout = container_env(w, "agent")["CODINGJOB_STEP_TIMEOUT_SECONDS"]
    assert int(step_timeout) > int(expected)


def test_cleanup_runs_once(make: Make) -> None:
    w = make()
    to_succeeded(w)
    assert w.status["cleanedUp"] is True
    cleanups = [call for call in w.kube.calls_of("patch_status") if "cleanedUp" in call[-1]]
    assert len(cleanups) == 1
    # A child recreated under the same name by someone else later is not the job's to delete.
    w.kube.put(
        {"kind": "PersistentVolumeClaim", "metadata": {"name": CHILD.workspace, "namespace": NS}}
    )
    for _ in range(3):
        w.run()
    assert [call for call in w.kube.calls_of("patch_status") if "cleanedUp" in call[-1]] == cleanups
    assert w.kube.get("PersistentVolumeClaim", NS, CHILD.workspace) is not None


def test_the_authors_labels_are_not_copied_onto_children(make: Make) -> None:
    w = make()
    # Labels that would make the sandbox match another app's Service or policy selectors.
    w.obj["metadata"]["labels"] = {"app.kubernetes.io/name": "scripted-model", "role": "db"}
    w.run()
    for (kind, ns, name), obj in w.kube.objects.items():
        if kind in ("CodingJob", "ServiceAccount") or ns != NS:
            continue
        labels: dict[str, Any] = obj["metadata"].get("labels") or {}
        assert "role" not in labels, (kind, name)
        assert labels.get("app.kubernetes.io/name") == names.APP_NAME, (kind, name)


def test_someone_elses_pod_under_the_agents_name_is_not_read_as_the_agent(make: Make) -> None:
    w = make()
    foreign = w.kube.put(
        {"kind": "Pod", "metadata": {"name": CHILD.pod, "namespace": NS}, "spec": {}}
    )
    set_pod_status(w.kube, NS, CHILD.pod, phase="Running", agent=container_running("agent"))
    w.run()
    # Not "Running" on the strength of a pod the job does not own.
    assert w.status["phase"] == "Failed" and w.status["reason"] == c.NAME_CONFLICT
    assert "ownerReferences" not in foreign["metadata"]
    assert NAME in w.status["message"] or CHILD.pod in w.status["message"]
