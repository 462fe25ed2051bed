"""The chart lints, renders with the default values and every ``ci/`` file, and every rendered
manifest is valid Kubernetes 1.34 (custom resources: valid against their CRD's schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.unit.chart.chartlib import CHART, CI_VALUES, KUBE_VERSION, Helm, Manifest

CASES = [pytest.param((), id="default-values")] + [
    pytest.param((path,), id=path.stem) for path in CI_VALUES
]


def test_ci_values_cover_the_chart_options() -> None:
    # An empty ci/ would make the parametrized tests below silently test the defaults only.
    assert {p.stem for p in CI_VALUES} >= {
        "demo-values",
        "external-storage-values",
        "no-storage-values",
        "peering-values",
        "namespaced-values",
        "monitoring-values",
    }


@pytest.mark.parametrize("values", CASES)
def test_helm_lint_strict(helm: Helm, values: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART)]
    for path in values:
        args += ["--values", str(path)]
    proc = helm.run(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


#: Kinds whose CRDs the chart does not ship (prometheus-operator's): the fields the chart uses,
#: as the upstream CRD defines them.
THIRD_PARTY: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {
                        "type": "object",
                        "properties": {"matchLabels": {"type": "object"}},
                    },
                    "namespaceSelector": {
                        "type": "object",
                        "properties": {
                            "matchNames": {"type": "array", "items": {"type": "string"}}
                        },
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            },
                        },
                    },
                },
            }
        },
    }
}


def _crd_schemas(manifests: list[Manifest]) -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind) -> openAPIV3Schema`` of every CRD version in the render."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for crd in (m for m in manifests if m["kind"] == "CustomResourceDefinition"):
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize("values", CASES)
def test_every_manifest_validates_against_the_kubernetes_schemas(
    helm: Helm, values: tuple[Path, ...]
) -> None:
    manifests = helm.render(values)
    assert len(manifests) >= 8
    custom = _crd_schemas(manifests)
    for manifest in manifests:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in custom:
            jsonschema.Draft7Validator(custom[key]).validate(manifest)
        elif key in THIRD_PARTY:
            jsonschema.Draft7Validator(THIRD_PARTY[key]).validate(manifest)
        else:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def test_an_invalid_manifest_fails_validation() -> None:
    # The validation above must be able to fail: a misspelled field is refused in strict mode.
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replica": 1, "selector": {}, "template": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("values", CASES)
def test_resource_names_are_dns_labels_and_unique(helm: Helm, values: tuple[Path, ...]) -> None:
    manifests = helm.render(values, release="a-very-long-release-name-that-goes-on-and-on-x")
    seen: set[tuple[str, str, str]] = set()
    for m in manifests:
        name = m["metadata"]["name"]
        if m["kind"] != "CustomResourceDefinition":
            assert len(name) <= 63, name
        # Per namespace: the per-namespace Roles share one name.
        key = (m["kind"], m["metadata"].get("namespace", ""), name)
        assert key not in seen, f"duplicate {m['kind']} {name}"
        seen.add(key)
