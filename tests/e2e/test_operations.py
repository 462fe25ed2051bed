"""Operating CodingJobs as a platform team does: `kubectl wait` on Job-like conditions, the
operator's /metrics, and a failover between its two replicas."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import defaultdict
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    ARTIFACTS,
    SYSTEM_NAMESPACE,
    Jobs,
    port_forward,
    wait_for,
)
from tests.fixtures.release import active_replica, operator_pods, peers

pytestmark = pytest.mark.e2e

#: The chart's default metrics port.
METRICS_PORT = 8082

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(core: client.CoreV1Api) -> Series:
    """Every operator replica's /metrics, summed per series (a standby exports no job series)."""
    total: Series = defaultdict(float)
    for pod in operator_pods(core):
        with port_forward(SYSTEM_NAMESPACE, f"pod/{pod.metadata.name}", METRICS_PORT) as port:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                total[(sample.name, frozenset(sample.labels.items()))] += sample.value
    return total


def value(series: Series, name: str, **labels: str) -> float:
    """The sum of NAME's samples whose labels include LABELS."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and wanted <= ls)


def test_kubectl_wait_and_metrics(
    jobs: Jobs, minio_forward: int, kube_api: client.ApiClient
) -> None:
    """`kubectl wait --for=condition=Succeeded|Failed` tells success from failure, Complete is
    never set on a failure (as with a Kubernetes Job), and the operator's series move."""
    core = client.CoreV1Api(kube_api)
    before = scrape(core)
    jobs.apply(jobs.manifest("waits-ok", "todo-app"))
    jobs.apply(jobs.manifest("waits-bad", "fail"))
    ns = ("-n", jobs.namespace)

    ok = jobs.kubectl(
        "wait",
        "--for=condition=Succeeded",
        "cjob/waits-ok",
        "--timeout=300s",
        *ns,
        check=False,
        timeout=330,
    )
    assert ok.returncode == 0, ok.stderr
    bad = jobs.kubectl(
        "wait",
        "--for=condition=Failed",
        "cjob/waits-bad",
        "--timeout=300s",
        *ns,
        check=False,
        timeout=330,
    )
    assert bad.returncode == 0, bad.stderr

    assert jobs.status("waits-ok")["phase"] == "Succeeded"
    failed = jobs.status("waits-bad")
    assert failed["phase"] == "Failed"
    types = {c["type"]: c["status"] for c in failed["conditions"]}
    assert types.get("Failed") == "True" and "Complete" not in types and "Succeeded" not in types
    # Waiting for the other end condition on a finished job does not return early.
    wrong = jobs.kubectl(
        "wait", "--for=condition=Complete", "cjob/waits-bad", "--timeout=3s", *ns, check=False
    )
    assert wrong.returncode != 0

    after = scrape(core)
    mine = {"namespace": jobs.namespace}
    finished = "codingjob_jobs_finished_total"
    assert value(after, finished, **mine, phase="Succeeded", reason="Completed") == 1
    assert value(after, finished, **mine, phase="Failed") == 1
    assert value(after, "codingjob_jobs", **mine, phase="Succeeded") == 1
    assert value(after, "codingjob_jobs", **mine, phase="Running") == 0
    assert value(after, "codingjob_time_to_running_seconds_count", **mine) == 2
    assert value(after, "codingjob_time_to_desktop_ready_seconds_count", **mine) >= 1
    assert value(after, "codingjob_archive_size_bytes_count", **mine) == 2
    assert value(after, "codingjob_archive_size_bytes_sum", **mine) > 0
    assert value(after, "codingjob_archive_duration_seconds_count", **mine) == 2
    assert value(after, "codingjob_tokens_total", **mine) > 0
    duration = "codingjob_reconcile_duration_seconds_count"
    assert value(after, duration) > value(before, duration)


# Kills the active replica: the other tests' counters (test_kubectl_wait_and_metrics) would reset.
@pytest.mark.disruptive
def test_failover_mid_run(jobs: Jobs, minio_forward: int, kube_api: client.ApiClient) -> None:
    """Killing the active replica while it creates a job's children: the standby takes over
    within 30 s, finishes the job, and no child is made twice."""
    core = client.CoreV1Api(kube_api)
    api = client.CustomObjectsApi(kube_api)
    wait_for("two operator replicas ready", lambda: len(operator_pods(core)) == 2, 120)
    wait_for("two live peers", lambda: len(peers(api)) == 2, 60)
    active = active_replica(api)
    standby = next(p.metadata.name for p in operator_pods(core) if p.metadata.name != active)

    name = "failover"
    jobs.apply(jobs.manifest(name, "todo-app"))
    # Mid-reconcile: the first pass has written the status and is creating the children.
    wait_for("first pass", lambda: jobs.status(name).get("phase"), 60, interval=0.2)
    jobs.kubectl(
        "delete",
        "pod",
        active,
        "-n",
        SYSTEM_NAMESPACE,
        "--grace-period=0",
        "--force",
        "--wait=false",
    )
    killed = time.monotonic()
    # A job created after the kill is picked up only by a replica that took over.
    jobs.apply(jobs.manifest("after-kill", "fail"))
    wait_for(
        "the standby handling a new job",
        lambda: jobs.status("after-kill").get("phase"),
        60,
        interval=0.2,
    )
    takeover = time.monotonic() - killed
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "failover.json").write_text(json.dumps({"takeover_seconds": takeover}))
    print(f"failover: the standby took over {takeover:.1f}s after the active replica was killed")
    assert takeover <= 30, f"takeover took {takeover:.1f}s"
    assert active_replica(api) == standby

    # Until the end, exactly one agent pod ever exists (a second replica acting on the job, or a
    # pass repeated from scratch, would delete and recreate it or fail on it).
    uids: set[str] = set()

    def finished() -> dict[str, Any] | None:
        pod = jobs.agent_pod(name)
        if pod is not None:
            uids.add(pod.metadata.uid)
        status = jobs.status(name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    done = wait_for(f"{name} finished", finished, 300)
    assert done["phase"] == "Succeeded", done
    assert len(uids) == 1, f"agent pods seen: {uids}"
    assert not done.get("podFailures"), "the agent pod was recreated"
    events = core.list_namespaced_event(
        jobs.namespace, field_selector=f"involvedObject.name={name}"
    ).items
    created = sum(e.count or 1 for e in events if e.reason == "Created")
    assert created <= 1, "the job was started twice"
    # The replacement replica stands by: a restarted replica does not take the work back.
    wait_for("the replacement replica", lambda: len(peers(api)) == 2, 120)
    assert active_replica(api) == standby
