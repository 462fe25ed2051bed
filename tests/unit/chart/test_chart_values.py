"""values.yaml is documented key by key (and the README's table matches it), values.schema.json
refuses bad values, and the chart's CRDs are the project's CRD and kopf's peering CRDs."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.unit.chart.chartlib import CHART, REPO, Helm, documented_values, load_values


def test_every_value_is_documented_above_its_key() -> None:
    documented, undocumented = documented_values((CHART / "values.yaml").read_text())
    assert undocumented == []
    assert len(documented) >= 60


def test_the_documentation_check_finds_an_undocumented_key() -> None:
    text = "# -- Documented.\na: 1\n# A section.\nsection:\n  # plain comment\n  b: 2\n"
    documented, undocumented = documented_values(text)
    assert [d.key for d in documented] == ["a"]
    assert undocumented == ["section.b"]


def test_readme_table_matches_values_yaml() -> None:
    documented, _ = documented_values((CHART / "values.yaml").read_text())
    expected = [f"| `{d.key}` | `{d.default}` | {d.description} |" for d in documented]
    readme = (CHART / "README.md").read_text().splitlines()
    rows = [line for line in readme if line.startswith("| `")]
    assert rows == expected, "README.md's values table is stale; expected:\n" + "\n".join(expected)


def test_schema_describes_every_top_level_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(load_values()) <= set(schema["properties"])


@pytest.mark.parametrize(
    ("sets", "where"),
    [
        (["replicas=0"], "/replicas"),
        (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["storage.retention=Forever"], "/storage/retention"),
        (["storage.publicEndpoint=localhost:9000"], "/storage/publicEndpoint"),
        (["storage.publicEndpoint=http://localhost:9000/bucket"], "/storage/publicEndpoint"),
        (["storage.endpoint=https://s3.example.com"], "/storage/endpoint"),
        (["storage.bucket=Bad_Bucket"], "/storage/bucket"),
        (["minio.enbled=false"], "/minio"),
        (["minio.persistence.size=lots"], "/minio/persistence/size"),
        (["healthPort=70000"], "/healthPort"),
        (["scriptedModel.turnDelaySeconds=-1"], "/scriptedModel/turnDelaySeconds"),
        (["scriptedModel.apiKeySecret.name=Model_Key"], "/scriptedModel/apiKeySecret/name"),
        (["scriptedModel.apiKeySecret.key=a/b"], "/scriptedModel/apiKeySecret/key"),
        (["defaultModel.baseURL=api.openai.com"], "/defaultModel/baseURL"),
        (["watchNamespaces={Team_A}"], "/watchNamespaces"),
        (["jobs.agentImage.tag="], "/jobs/agentImage/tag"),
        (["peering.enabled=yes"], "/peering/enabled"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, sets: list[str], where: str) -> None:
    error = helm.render_error(sets=sets)
    assert "values don't meet the specifications of the schema" in error
    assert where in error


@pytest.mark.parametrize("name", ["codingjob.yaml", "codingjobclass.yaml"])
def test_chart_crd_is_the_projects_crd(name: str) -> None:
    # One source: `make chart-sync` copies crds/codingjob*.yaml into the chart.
    chart_copy = CHART / "crds" / name
    assert chart_copy.read_bytes() == (REPO / "crds" / name).read_bytes(), (
        f"charts/codingjob-operator/crds/{name} is stale: run `make chart-sync`"
    )


def test_chart_crds_are_only_the_codingjob_class_and_peering_crds() -> None:
    names = set()
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] == "CustomResourceDefinition"
            names.add(doc["metadata"]["name"])
    assert names == {
        "codingjobs.codingjob.dev",
        "codingjobclasses.codingjob.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }


def test_peering_crds_are_the_resources_kopf_looks_for() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()))
    served = {
        (f"{d['spec']['group']}/{v['name']}", d["spec"]["names"]["plural"], d["spec"]["scope"])
        for d in docs
        for v in d["spec"]["versions"]
        if v["served"]
    }
    # The resources kopf's peering documentation names (docs "Peering": `kopf.dev/v1`); the
    # failover test on the cluster (test_operations.py::test_failover_mid_run) shows kopf uses them.
    assert ("kopf.dev/v1", "clusterkopfpeerings", "Cluster") in served
    assert ("kopf.dev/v1", "kopfpeerings", "Namespaced") in served
