"""The gateway component of the chart: off by default, hardened, and RBAC exactly as commented."""

from __future__ import annotations

from tests.unit.chart.chartlib import CHART, CI_VALUES, Helm, Manifest, find, kinds

CI = {path.stem: path for path in CI_VALUES}

#: The gateway's own rights; changing one is a deliberate act (see gateway-rbac.yaml).
GATEWAY_RULES = {
    ("authentication.k8s.io", "tokenreviews"): {"create"},
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    ("", "users"): {"impersonate"},
    ("", "groups"): {"impersonate"},
    ("", "serviceaccounts"): {"impersonate"},
    ("codingjob.dev", "codingjobs"): {"list", "watch"},
}
#: What a gateway user needs in its namespace.
USER_RULES = {
    ("codingjob.dev", "codingjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "events"): {"get", "list"},
    ("", "pods"): {"get"},
    ("", "pods/log"): {"get"},
    ("", "pods/portforward"): {"get", "create"},
    ("", "secrets"): {"get"},
}


def rules(role: Manifest) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in out
                out[(group, resource)] = set(rule["verbs"])
    return out


def gateway_objects(manifests: list[Manifest]) -> list[Manifest]:
    return [
        m
        for m in manifests
        if (m["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "gateway"
    ]


def test_gateway_is_off_by_default(helm: Helm) -> None:
    assert gateway_objects(helm.render()) == []


def test_demo_values_turn_it_on(helm: Helm) -> None:
    objects = gateway_objects(helm.render([CI["demo-values"]]))
    assert sorted(m["kind"] for m in objects) == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]


def test_gateway_pod(helm: Helm) -> None:
    manifests = helm.render(sets=["gateway.enabled=true", "gateway.logFormat=json"])
    deployment = find(manifests, "Deployment", "codingjob-gateway")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "codingjob-gateway"
    assert spec["automountServiceAccountToken"] is True
    container = spec["containers"][0]
    assert container["image"] == "codingjob/gateway:dev"
    assert container["args"] == ["--port=8000", "--log-format=json"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    service = find(manifests, "Service", "codingjob-gateway")
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_gateway_rbac_is_exactly_what_it_uses(helm: Helm) -> None:
    manifests = helm.render(sets=["gateway.enabled=true"])
    assert rules(find(manifests, "ClusterRole", "codingjob-gateway")) == GATEWAY_RULES
    assert rules(find(manifests, "ClusterRole", "codingjob-gateway-user")) == USER_RULES
    binding = find(manifests, "ClusterRoleBinding", "codingjob-gateway")
    assert binding["roleRef"]["name"] == "codingjob-gateway"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "codingjob-gateway", "namespace": "codingjob-system"}
    ]
    without = helm.render(sets=["gateway.enabled=true", "rbac.create=false"])
    assert "ClusterRoleBinding" not in kinds(gateway_objects(without))


def test_every_gateway_rbac_rule_is_commented() -> None:
    lines = (CHART / "templates" / "gateway-rbac.yaml").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(starts) == len(GATEWAY_RULES) - 2 + len(USER_RULES) - 1
    for i in starts:
        assert lines[i - 1].strip().startswith("#"), lines[i]
