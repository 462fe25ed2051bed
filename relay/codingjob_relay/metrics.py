"""Prometheus metrics of the relay (``/metrics``), one registry per app so tests can run many."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

_JOB = ("provider", "model", "job_class", "namespace")


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.tokens = Counter(
            "codingjob_relay_tokens",
            "Tokens relayed, by kind (prompt, completion, cached; cached is part of prompt).",
            [*_JOB, "kind"],
            registry=r,
        )
        self.cost = Counter(
            "codingjob_relay_cost_usd", "Cost of relayed calls in USD.", list(_JOB), registry=r
        )
        self.requests = Counter(
            "codingjob_relay_requests",
            "Requests answered by the relay, by HTTP status and error code.",
            ["provider", "status", "code"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "codingjob_relay_upstream_errors",
            "Failed attempts toward a provider, by kind (status code, timeout, connection).",
            ["provider", "kind"],
            registry=r,
        )
        self.retries = Counter(
            "codingjob_relay_retries",
            "Attempts retried after a transient error.",
            ["provider"],
            registry=r,
        )
        self.refusals = Counter(
            "codingjob_relay_refusals",
            "Calls refused before reaching a provider, by reason.",
            ["namespace", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "codingjob_relay_in_flight", "Calls in progress.", ["provider"], registry=r
        )
