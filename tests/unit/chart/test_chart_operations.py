"""What the chart renders for operating the operator: the metrics port and Service, the
ServiceMonitor and Grafana dashboard toggles, the log format, and peering for HA."""

from __future__ import annotations

import json
import re

import pytest
from codingjob_operator.metrics import METRIC_NAMES

from tests.unit.chart.chartlib import CHART, CI_VALUES, Helm, Manifest, find, kinds

CI = {path.stem: path for path in CI_VALUES}
#: Series the model relay and the gateway export on their own /metrics; the dashboard has panels
#: for them (their modules define the names).
OTHER_COMPONENTS = (
    "codingjob_relay_tokens_total",
    "codingjob_relay_cost_usd_total",
    "codingjob_relay_upstream_errors_total",
    "codingjob_relay_retries_total",
    "codingjob_relay_refusals_total",
    "codingjob_gateway_requests_total",
    "codingjob_gateway_request_duration_seconds",
    "codingjob_gateway_desktop_sessions",
    "codingjob_gateway_sse_clients",
)


def operator_container(manifests: list[Manifest]) -> dict[str, object]:
    operator = find(manifests, "Deployment", "codingjob")
    container: dict[str, object] = operator["spec"]["template"]["spec"]["containers"][0]
    return container


def config(manifests: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = find(manifests, "ConfigMap", "codingjob")["data"]
    return data


def test_metrics_port_and_service_by_default(helm: Helm) -> None:
    manifests = helm.render()
    ports = operator_container(manifests)["ports"]
    assert {"name": "metrics", "containerPort": 8082, "protocol": "TCP"} in ports  # type: ignore[operator]
    assert config(manifests)["CODINGJOB_METRICS_PORT"] == "8082"
    service = find(manifests, "Service", "codingjob-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8082, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = find(manifests, "Deployment", "codingjob")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert "ServiceMonitor" not in kinds(manifests)
    assert not [m for m in manifests if m["metadata"]["name"] == "codingjob-dashboard"]


def test_metrics_off(helm: Helm) -> None:
    manifests = helm.render(sets=["metrics.port=0", "metrics.serviceMonitor.enabled=true"])
    assert "metrics" not in {p["name"] for p in operator_container(manifests)["ports"]}  # type: ignore[attr-defined]
    assert config(manifests)["CODINGJOB_METRICS_PORT"] == "0"
    assert "ServiceMonitor" not in kinds(manifests)
    assert not [m for m in manifests if m["metadata"]["name"] == "codingjob-metrics"]


def test_service_monitor_scrapes_the_metrics_port(helm: Helm) -> None:
    manifests = helm.render([CI["monitoring-values"]])
    monitor = find(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    service = find(manifests, "Service", "codingjob-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_dashboard_configmap_is_loaded_by_the_grafana_sidecar(helm: Helm) -> None:
    manifests = helm.render([CI["monitoring-values"]])
    dashboard = find(manifests, "ConfigMap", "codingjob-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    body = json.loads(dashboard["data"]["codingjob.json"])
    assert body["uid"] == "codingjob-operator" and body["panels"]
    # Every panel queries only series the operator exports (no typo can leave one empty).
    known = {re.sub(r"_total$", "", n) for n in (*METRIC_NAMES, *OTHER_COMPONENTS)}
    used: set[str] = set()
    for panel in body["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bcodingjob_[a-z_]+", target["expr"]))
    stems = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert stems <= known, stems - known
    assert {re.sub(r"_total$", "", n) for n in METRIC_NAMES} <= stems, "a series has no panel"


def test_dashboard_file_is_the_one_shipped() -> None:
    json.loads((CHART / "files" / "dashboard.json").read_text())


@pytest.mark.parametrize(("values", "expected"), [((), "plain"), (("monitoring-values",), "json")])
def test_log_format_reaches_the_operator(
    helm: Helm, values: tuple[str, ...], expected: str
) -> None:
    manifests = helm.render([CI[v] for v in values])
    assert config(manifests)["CODINGJOB_LOG_FORMAT"] == expected


def test_peering_name_defaults_to_the_release(helm: Helm) -> None:
    # Two releases on one cluster must not meet on one peering object and pause each other.
    manifests = helm.render(sets=["replicas=2", "peering.enabled=true"])
    assert find(manifests, "ClusterKopfPeering")["metadata"]["name"] == "codingjob"
    assert "--peering=codingjob" in operator_container(manifests)["args"]  # type: ignore[operator]
    other = helm.render(sets=["peering.enabled=true"], release="other")
    assert find(other, "ClusterKopfPeering")["metadata"]["name"] == "other-codingjob-operator"
    assert config(manifests)["CODINGJOB_PEERING_LIFETIME_SECONDS"] == "15"


def test_peering_works_with_watched_namespaces(helm: Helm) -> None:
    manifests = helm.render(sets=["replicas=2", "peering.enabled=true", "watchNamespaces={a}"])
    assert find(manifests, "ClusterKopfPeering")
    assert config(manifests)["CODINGJOB_WATCH_NAMESPACE"] == "a"
