"""Prometheus metrics of the gateway (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The gateway's metrics in their own registry (tests create several apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "codingjob_gateway_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "codingjob_gateway_request_duration_seconds",
            "Time to the start of the response by route template (for event streams: until the "
            "stream opens).",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.api_errors = Counter(
            "codingjob_gateway_api_errors_total",
            "Kubernetes API calls that failed, by HTTP status (503: unreachable).",
            ["status"],
            registry=self.registry,
        )
        self.sse_clients = Gauge(
            "codingjob_gateway_sse_clients",
            "Open server-sent-event streams.",
            registry=self.registry,
        )
        self.desktop_sessions = Gauge(
            "codingjob_gateway_desktop_sessions",
            "Open live-desktop websockets.",
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "codingjob_gateway_jobs_submitted_total",
            "CodingJobs created through the gateway.",
            registry=self.registry,
        )
        self.watch_restarts = Counter(
            "codingjob_gateway_watch_restarts_total",
            "Restarts of the shared CodingJob watch (relists).",
            registry=self.registry,
        )
