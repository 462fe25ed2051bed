"""The committed CRD is generated from the models, is structural, and accepts exactly the samples
and specs the models accept."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from codingjob_operator import crd
from codingjob_operator.models import CodingJobSpec, CodingJobStatus
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "crds" / "codingjob.yaml"
SAMPLES = sorted((REPO / "crds" / "samples").glob("*.yaml"))


def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


def schema() -> dict[str, Any]:
    version = committed()["spec"]["versions"][0]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(
        schema(), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: absent properties get their default."""
    if not isinstance(value, dict) or "properties" not in node:
        return value
    out = dict(value)
    for name, prop in node["properties"].items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = apply_defaults(prop, out[name])
    return out


def test_committed_crd_is_generated_from_the_models() -> None:
    assert CRD_PATH.read_text() == crd.render(), (
        "crds/codingjob.yaml is stale: python -m codingjob_operator.crd > crds/codingjob.yaml"
    )


def test_crd_validates_against_kubernetes_schema() -> None:
    kubernetes_validate.validate(committed(), "1.34.0", strict=True)


def _walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    for path, node in _walk(schema()):
        assert "$ref" not in node and "allOf" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "anyOf" not in node, path
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in committed()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert [c for c in columns][:4] == ["Phase", "Steps", "Tokens", "Age"]
    # Size and expiry in -o wide, not a URL hundreds of characters long.
    assert "URL" not in columns
    assert columns["Size"]["jsonPath"] == ".status.artifact.size"
    assert columns["URL-Expires"]["jsonPath"] == ".status.artifact.urlExpiresAt"
    # A future time as "date" prints <invalid> (kubectl shows a date as an age).
    assert columns["URL-Expires"]["type"] == "string"
    assert columns["Size"]["priority"] == columns["URL-Expires"]["priority"] == 1
    assert columns["Tokens"]["jsonPath"] == ".status.tokens.used"
    assert committed()["spec"]["names"]["shortNames"] == ["cjob"]


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_sample_is_valid(sample: Path) -> None:
    obj = yaml.safe_load(sample.read_text())
    validator().validate(obj)
    assert obj["apiVersion"] == "codingjob.dev/v1alpha1" and obj["kind"] == "CodingJob"
    CodingJobSpec.model_validate(obj["spec"])


def test_samples_include_the_demo() -> None:
    demo = yaml.safe_load((REPO / "crds" / "samples" / "todo-app.yaml").read_text())
    assert demo["spec"]["task"] == "Build me a todo app in React"
    # The model comes from the chart, through the relay: the sample names no endpoint or key.
    assert "model" not in demo["spec"]


def test_schema_defaults_equal_model_defaults() -> None:
    minimal = {"task": "x"}
    defaulted = apply_defaults(schema()["properties"]["spec"], minimal)
    from_model = CodingJobSpec.model_validate(minimal).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    # Empty lists and objects without defaults inside are left absent by the API server.
    from_model["network"].pop("allowedCIDRs")
    from_model = {k: v for k, v in from_model.items() if v != {}}
    assert defaulted == from_model


def _spec(**fields: Any) -> dict[str, Any]:
    return {"task": "Build me a todo app in React", **fields}


INVALID = {
    "empty task": {"task": ""},
    "task too long": {"task": "x" * 32769},
    "no task": {"model": {"name": "m"}},
    "bad baseURL": _spec(model={"baseURL": "ftp://example.com"}),
    "bad secret name": _spec(model={"apiKeySecretRef": {"name": "Not_Valid", "key": "k"}}),
    "secret ref without key": _spec(model={"apiKeySecretRef": {"name": "openai"}}),
    "temperature too high": _spec(model={"temperature": 2.5}),
    "unknown strategy": _spec(context={"strategy": "forget-everything"}),
    "unknown encoding": _spec(context={"encoding": "utf-8"}),
    "window too small": _spec(context={"maxTokens": 100}),
    "zero deadline": _spec(limits={"activeDeadlineSeconds": 0}),
    "negative backoff": _spec(backoffLimit=-1),
    "backoff too high": _spec(backoffLimit=11),
    "bad egress": _spec(network={"egress": "Sometimes"}),
    "bad cidr": _spec(network={"allowedCIDRs": ["example.com"]}),
    "url expiry too long": _spec(artifacts={"urlExpirySeconds": 604801}),
    "url expiry too short": _spec(artifacts={"urlExpirySeconds": 10}),
    "bad image": _spec(image="Not An Image"),
    "bad quantity": _spec(workspace={"size": "five gigs"}),
    "bad toleration effect": _spec(tolerations=[{"key": "a", "effect": "Sometimes"}]),
    "suspend not bool": _spec(suspend="maybe"),
}


@pytest.mark.parametrize("spec", INVALID.values(), ids=list(INVALID))
def test_invalid_spec_is_rejected_by_schema_and_model(spec: dict[str, Any]) -> None:
    obj = {
        "apiVersion": "codingjob.dev/v1alpha1",
        "kind": "CodingJob",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(obj)
    with pytest.raises(ValidationError):
        CodingJobSpec.model_validate(spec)


VALID = {
    "int quantity": _spec(resources={"limits": {"cpu": 2}}),
    "milli cpu": _spec(resources={"requests": {"cpu": "500m", "memory": "1.5Gi"}}),
    "image with digest": _spec(image="ghcr.io/org/agent@sha256:" + "a" * 64),
    "image with port and tag": _spec(image="localhost:5000/agent:v1.2.3"),
    "ipv6 cidr": _spec(network={"allowedCIDRs": ["2001:db8::/32"]}),
    "keyless model": _spec(model={"baseURL": "http://vllm.models.svc:8000/v1", "name": "qwen"}),
}


@pytest.mark.parametrize("spec", VALID.values(), ids=list(VALID))
def test_valid_spec_is_accepted_by_schema_and_model(spec: dict[str, Any]) -> None:
    obj = {
        "apiVersion": "codingjob.dev/v1alpha1",
        "kind": "CodingJob",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    validator().validate(obj)
    CodingJobSpec.model_validate(spec)


def test_status_written_by_the_operator_fits_the_schema() -> None:
    status = {
        "phase": "Succeeded",
        "conditions": [
            {
                "type": "Archived",
                "status": "True",
                "reason": "ArchiveConfirmed",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
        "observedGeneration": 1,
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:10:00Z",
        "podName": "todo-app-agent",
        "service": {"name": "todo-app-desktop", "ports": [{"name": "novnc", "port": 6080}]},
        "steps": 12,
        "tokens": {"used": 1000, "limit": 1000000, "pruned": 0},
        "outcome": "Succeeded",
        "reason": "Completed",
        "message": "done",
        "summary": "built it",
        "podFailures": 0,
        "archiveAttempts": 1,
        "artifact": {
            "bucket": "b",
            "key": "k",
            "size": 1,
            "sha256": "0" * 64,
            "files": 3,
            "transcriptKey": "t",
            "url": "http://localhost:9000/b/k?X-Amz=1",
            "urlExpiresAt": "2026-01-02T00:10:00Z",
        },
        "downloadURL": "http://localhost:9000/b/k?X-Amz=1",
    }
    jsonschema.Draft7Validator(schema()["properties"]["status"]).validate(status)
    CodingJobStatus.model_validate(status)


def _field_paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, prop in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if prop.get("type") == "array":
            paths.append(f"{path}[]")  # list items are described in their list's row
        elif "properties" in prop:
            paths += _field_paths(prop, f"{path}.")
        else:
            paths.append(path)
    return paths


@pytest.mark.parametrize("part", ["spec", "status"])
def test_reference_documents_every_field(part: str) -> None:
    reference = (REPO / "README.md").read_text()
    missing = [p for p in _field_paths(schema()["properties"][part]) if f"`{p}`" not in reference]
    assert missing == [], f"the README's reference lacks {missing}"


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    # Declared on the pydantic model, carried into the CRD like metav1.Condition lists.
    conditions = schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    # A list-map key must be required in the items (or the API server refuses the CRD).
    assert "type" in conditions["items"]["required"]


def test_reference_documents_every_class_field() -> None:
    reference = (REPO / "README.md").read_text()
    section = reference[reference.index("## CodingJobClass reference") :]
    missing = [p for p in _field_paths(crd.class_spec_schema()) if f"`{p}`" not in section]
    assert missing == [], f"the README's CodingJobClass reference lacks {missing}"


def test_committed_class_crd_is_generated_from_the_models() -> None:
    path = REPO / "crds" / "codingjobclass.yaml"
    assert path.read_text() == crd.render("codingjobclass"), (
        "crds/codingjobclass.yaml is stale: make crd"
    )
    loaded = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(loaded, "1.34.0", strict=True)
    assert loaded["spec"]["scope"] == "Cluster"
    columns = [c["name"] for c in loaded["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:2] == ["Default", "Runtime"]


def test_class_schema_defaults_equal_model_defaults() -> None:
    from codingjob_operator.classmodels import CodingJobClassSpec

    loaded = yaml.safe_load((REPO / "crds" / "codingjobclass.yaml").read_text())
    spec_schema = loaded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaulted = apply_defaults(spec_schema, {})
    # What the API server stores is what the operator would assume: admission and reconcile
    # read the same numbers.
    assert CodingJobClassSpec.model_validate(defaulted) == CodingJobClassSpec()
    assert defaulted["resources"]["cpu"]["max"] == "4"
    assert defaulted["limits"]["activeDeadlineSeconds"] == {"default": 3600, "max": 86400}
