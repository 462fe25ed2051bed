"""Prometheus metrics of the operator: what one reconcile pass changed, as numbers.

The recording API is pure-ish: :meth:`Metrics.record_pass` takes what a pass saw (the status
before and after, the job's identity, the time) and moves the series; nothing here reads the
cluster. Counters that mirror a job's cumulative numbers (tokens) are fed from the status, so a
restarted or newly active replica does not count the same tokens twice; numbers only the
sidecar knows (model errors and retries) count from the first value this replica sees for a job
that has not made steps yet (older errors belong to the replica that saw them).

Every series is in :data:`METRIC_NAMES`; README.md documents them.
"""

from __future__ import annotations

import datetime
import threading
from collections import Counter as Tally
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Seconds: a reconcile pass is an API round trip or a few.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds: image pulls, scheduling and the desktop's start take seconds to minutes.
STARTUP_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0)
ARCHIVE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: Bytes: 1 KiB to 16 GiB in powers of 4.
SIZE_BUCKETS = tuple(float(1024 * 4**i) for i in range(13))

FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class PassFacts:
    """What one reconcile pass over one CodingJob saw and decided."""

    namespace: str
    name: str
    #: The CodingJobClass the job runs in ("" when none).
    job_class: str
    #: The model name the sidecar talks to ("" when unknown).
    model: str
    created: datetime.datetime | None
    now: datetime.datetime
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    #: The agent pod is Ready (its desktop answers) — None when the job has no desktop.
    desktop_ready: bool | None = None
    #: The sidecar's cumulative counts from /stats, when read this pass.
    model_errors: int | None = None
    model_retries: int | None = None


def _time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _tokens(status: Mapping[str, Any]) -> int:
    return int((status.get("tokens") or {}).get("used") or 0)


def _condition_since(status: Mapping[str, Any], type_: str) -> datetime.datetime | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == type_:
            return _time(condition.get("lastTransitionTime"))
    return None


class Metrics:
    """The operator's series in a registry of their own (tests make one per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        job_labels = ("namespace", "job_class")
        self.jobs = Gauge(
            "codingjob_jobs",
            "CodingJobs this replica handles, by phase",
            ("namespace", "job_class", "phase"),
            registry=r,
        )
        self.finished = Counter(
            "codingjob_jobs_finished",
            "CodingJobs that reached Succeeded or Failed, by final reason",
            ("namespace", "job_class", "phase", "reason"),
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "codingjob_reconcile_duration_seconds",
            "Duration of one reconcile pass",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            "codingjob_reconcile_errors",
            "Reconcile passes that failed: transient (retried with backoff) or crash (a bug)",
            ("kind",),
            registry=r,
        )
        self.time_to_running = Histogram(
            "codingjob_time_to_running_seconds",
            "From the CodingJob's creation (kubectl apply) to its agent container running",
            job_labels,
            buckets=STARTUP_BUCKETS,
            registry=r,
        )
        self.time_to_desktop = Histogram(
            "codingjob_time_to_desktop_ready_seconds",
            "From the CodingJob's creation to its desktop (noVNC) accepting connections",
            job_labels,
            buckets=STARTUP_BUCKETS,
            registry=r,
        )
        self.archive_duration = Histogram(
            "codingjob_archive_duration_seconds",
            "From the agent's end to the workspace ZIP confirmed in object storage",
            job_labels,
            buckets=ARCHIVE_BUCKETS,
            registry=r,
        )
        self.archive_size = Histogram(
            "codingjob_archive_size_bytes",
            "Size of the confirmed workspace ZIPs",
            job_labels,
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "codingjob_tokens",
            "Model tokens used (prompt and completion), as the sidecar counts them",
            ("namespace", "job_class", "model"),
            registry=r,
        )
        self.model_errors = Counter(
            "codingjob_model_errors",
            "Model calls that failed after the sidecar's retries, as the sidecar reports them",
            ("namespace", "job_class", "model"),
            registry=r,
        )
        self.model_retries = Counter(
            "codingjob_model_retries",
            "Model calls the sidecar retried, as it reports them",
            ("namespace", "job_class", "model"),
            registry=r,
        )
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._gauge_keys: set[tuple[str, str, str]] = set()
        self._desktop_waiting: set[tuple[str, str]] = set()
        self._sidecar: dict[tuple[str, str], tuple[int, int]] = {}

    # Jobs by phase.

    def set_phase(self, namespace: str, name: str, job_class: str, phase: str | None) -> None:
        """Remember the job's phase (None: forget the job) and update the gauge."""
        with self._lock:
            key = (namespace, name)
            if phase is None:
                self._phases.pop(key, None)
                self._desktop_waiting.discard(key)
                self._sidecar.pop(key, None)
            else:
                self._phases[key] = (namespace, job_class, phase)
            counts = Tally(self._phases.values())
            # Combinations that emptied go to 0 rather than vanish: rate() and alerts see it.
            for labels in self._gauge_keys | set(counts):
                self.jobs.labels(*labels).set(counts.get(labels, 0))
            self._gauge_keys |= set(counts)

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone (deleted) or no longer this replica's."""
        self.set_phase(namespace, name, "", None)

    # One pass.

    def record_pass(self, facts: PassFacts) -> None:
        """Move every series the pass's before/after says moved."""
        before, after = facts.before, facts.after
        ns, cls = facts.namespace, facts.job_class
        phase = after.get("phase")
        self.set_phase(ns, facts.name, cls, str(phase) if phase else None)
        if phase in FINISHED and before.get("phase") not in FINISHED:
            reason = str(after.get("reason") or "")
            self.finished.labels(ns, cls, str(phase), reason).inc()
        if after.get("startTime") and not before.get("startTime") and facts.created:
            self.time_to_running.labels(ns, cls).observe(
                max(0.0, (facts.now - facts.created).total_seconds())
            )
        self._desktop(facts)
        artifact = after.get("artifact") or {}
        if artifact and not before.get("artifact"):
            self.archive_size.labels(ns, cls).observe(float(artifact.get("size") or 0))
            since = _condition_since(before, "Archived")
            if since is not None:
                duration = max(0.0, (facts.now - since).total_seconds())
                self.archive_duration.labels(ns, cls).observe(duration)
        used = _tokens(after) - _tokens(before)
        if used > 0:
            self.tokens.labels(ns, cls, facts.model).inc(used)
        self._sidecar_counts(facts)

    def _desktop(self, facts: PassFacts) -> None:
        key = (facts.namespace, facts.name)
        if facts.desktop_ready is None:
            return
        with self._lock:
            if not facts.desktop_ready:
                # Only a wait this replica saw is timed: after a failover the new replica does
                # not know when a desktop that is already up became ready.
                self._desktop_waiting.add(key)
                return
            if key not in self._desktop_waiting:
                return
            self._desktop_waiting.discard(key)
        if facts.created is not None:
            self.time_to_desktop.labels(facts.namespace, facts.job_class).observe(
                max(0.0, (facts.now - facts.created).total_seconds())
            )

    def _sidecar_counts(self, facts: PassFacts) -> None:
        if facts.model_errors is None and facts.model_retries is None:
            return
        key = (facts.namespace, facts.name)
        errors, retries = facts.model_errors or 0, facts.model_retries or 0
        with self._lock:
            fresh = not facts.before.get("steps")
            last = self._sidecar.get(key, (0, 0) if fresh else (errors, retries))
            self._sidecar[key] = (errors, retries)
        labels = (facts.namespace, facts.job_class, facts.model)
        # A restarted sidecar starts from 0 again: count from there.
        new_errors = errors - last[0] if errors >= last[0] else errors
        new_retries = retries - last[1] if retries >= last[1] else retries
        if new_errors > 0:
            self.model_errors.labels(*labels).inc(new_errors)
        if new_retries > 0:
            self.model_retries.labels(*labels).inc(new_retries)


#: The exposed names (counters get a `_total` suffix, histograms `_bucket/_sum/_count`).
METRIC_NAMES = (
    "codingjob_jobs",
    "codingjob_jobs_finished_total",
    "codingjob_reconcile_duration_seconds",
    "codingjob_reconcile_errors_total",
    "codingjob_time_to_running_seconds",
    "codingjob_time_to_desktop_ready_seconds",
    "codingjob_archive_duration_seconds",
    "codingjob_archive_size_bytes",
    "codingjob_tokens_total",
    "codingjob_model_errors_total",
    "codingjob_model_retries_total",
)


def serve(metrics: Metrics, port: int, address: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port`` in a background thread (prometheus-client's server)."""
    start_http_server(port, addr=address, registry=metrics.registry)
