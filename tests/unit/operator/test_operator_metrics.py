"""The operator's Prometheus series: what a reconcile pass moves, and the /metrics endpoint."""

from __future__ import annotations

import datetime
import socket
import urllib.request
from typing import Any

from codingjob_operator.metrics import METRIC_NAMES, Metrics, PassFacts, serve
from prometheus_client.parser import text_string_to_metric_families

T0 = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def facts(before: dict[str, Any], after: dict[str, Any], now: float, **kw: Any) -> PassFacts:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "name": "job",
        "job_class": "standard",
        "model": "gpt-x",
        "created": T0,
        "now": at(now),
        "before": before,
        "after": after,
    }
    fields.update(kw)
    return PassFacts(**fields)


def value(m: Metrics, name: str, **labels: str) -> float:
    sample = m.registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


JOB = {"namespace": "team-a", "job_class": "standard"}


def test_phase_gauge_counts_jobs_and_drops_to_zero() -> None:
    m = Metrics()
    m.set_phase("team-a", "one", "standard", "Running")
    m.set_phase("team-a", "two", "standard", "Running")
    m.set_phase("team-b", "three", "", "Pending")
    assert value(m, "codingjob_jobs", **JOB, phase="Running") == 2
    m.set_phase("team-a", "one", "standard", "Succeeded")
    assert value(m, "codingjob_jobs", **JOB, phase="Running") == 1
    assert value(m, "codingjob_jobs", **JOB, phase="Succeeded") == 1
    m.forget("team-a", "two")
    m.forget("team-a", "one")
    series = {"namespace": "team-a", "job_class": "standard", "phase": "Running"}
    # Still exported, at 0: a vanished series would look like missing data to alerts.
    assert m.registry.get_sample_value("codingjob_jobs", series) == 0
    assert value(m, "codingjob_jobs", namespace="team-b", job_class="", phase="Pending") == 1


def test_a_job_from_apply_to_archive_moves_every_series_once() -> None:
    m = Metrics()
    running = {
        "phase": "Running",
        "startTime": "2026-01-01T12:00:20Z",
        "tokens": {"used": 300},
        "steps": 1,
    }
    m.record_pass(facts({}, {"phase": "Pending"}, 1, desktop_ready=None))
    m.record_pass(facts({"phase": "Pending"}, running, 25, desktop_ready=False))
    later = {**running, "tokens": {"used": 1000}}
    m.record_pass(facts(running, later, 31, desktop_ready=True))
    # Seen ready again: not timed twice; the same token count is not counted twice.
    m.record_pass(facts(later, later, 40, desktop_ready=True))
    archiving = {
        "phase": "Archiving",
        "tokens": {"used": 1200},
        "steps": 9,
        "conditions": [
            {"type": "Archived", "status": "False", "lastTransitionTime": "2026-01-01T12:01:00Z"}
        ],
    }
    m.record_pass(facts(later, archiving, 60))
    done = {
        **archiving,
        "phase": "Succeeded",
        "reason": "Completed",
        "artifact": {"size": 5000},
    }
    m.record_pass(facts(archiving, done, 72))
    m.record_pass(facts(done, done, 80))

    assert value(m, "codingjob_time_to_running_seconds_count", **JOB) == 1
    assert value(m, "codingjob_time_to_running_seconds_sum", **JOB) == 25
    assert value(m, "codingjob_time_to_desktop_ready_seconds_count", **JOB) == 1
    assert value(m, "codingjob_time_to_desktop_ready_seconds_sum", **JOB) == 31
    assert value(m, "codingjob_archive_duration_seconds_sum", **JOB) == 12
    assert value(m, "codingjob_archive_size_bytes_sum", **JOB) == 5000
    assert value(m, "codingjob_tokens_total", **JOB, model="gpt-x") == 1200
    finished = {**JOB, "phase": "Succeeded", "reason": "Completed"}
    assert value(m, "codingjob_jobs_finished_total", **finished) == 1
    assert value(m, "codingjob_jobs", **JOB, phase="Succeeded") == 1
    assert value(m, "codingjob_jobs", **JOB, phase="Running") == 0


def test_a_desktop_already_up_when_first_seen_is_not_timed() -> None:
    # After a failover the new replica cannot know when the desktop became ready.
    m = Metrics()
    running = {"phase": "Running", "startTime": "x", "steps": 3}
    m.record_pass(facts(running, running, 500, desktop_ready=True))
    assert value(m, "codingjob_time_to_desktop_ready_seconds_count", **JOB) == 0
    assert value(m, "codingjob_time_to_running_seconds_count", **JOB) == 0


def test_sidecar_errors_and_retries_count_deltas_and_survive_a_sidecar_restart() -> None:
    m = Metrics()
    labels = {**JOB, "model": "gpt-x"}
    new = {"phase": "Running", "steps": 0}
    m.record_pass(facts(new, new, 1, model_errors=1, model_retries=2))
    m.record_pass(facts({**new, "steps": 2}, new, 2, model_errors=3, model_retries=2))
    m.record_pass(facts({**new, "steps": 3}, new, 3, model_errors=1, model_retries=0))  # restart
    assert value(m, "codingjob_model_errors_total", **labels) == 4
    assert value(m, "codingjob_model_retries_total", **labels) == 2


def test_a_replica_taking_over_a_running_job_does_not_recount_old_errors() -> None:
    m = Metrics()
    midway = {"phase": "Running", "steps": 5}
    m.record_pass(facts(midway, midway, 1, model_errors=7))
    m.record_pass(facts(midway, midway, 2, model_errors=8))
    assert value(m, "codingjob_model_errors_total", **JOB, model="gpt-x") == 1


def test_failed_job_counts_under_its_reason() -> None:
    m = Metrics()
    m.record_pass(facts({"phase": "Running"}, {"phase": "Failed", "reason": "AgentError"}, 9))
    failed = {**JOB, "phase": "Failed", "reason": "AgentError"}
    assert value(m, "codingjob_jobs_finished_total", **failed) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_endpoint_serves_every_documented_name() -> None:
    m = Metrics()
    m.record_pass(facts({}, {"phase": "Pending"}, 1))
    m.reconcile_duration.observe(0.2)
    m.reconcile_errors.labels("transient").inc()
    port = free_port()
    serve(m, port, address="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name for f in families.values() for s in f.samples}
    for name in METRIC_NAMES:
        base = name.removesuffix("_total")
        assert base in families, f"{name} not exported"
    assert "codingjob_reconcile_errors_total" in samples
    assert "codingjob_reconcile_duration_seconds_bucket" in samples
