"""Generate the CodingJob CustomResourceDefinition from the pydantic models.

``python -m codingjob_operator.crd > crds/codingjob.yaml`` rewrites the committed CRD; a unit test
compares the two. The pydantic JSON schema is turned into a Kubernetes structural schema: refs
inlined, ``Optional`` unwrapped, titles dropped, spec sub-objects defaulted to ``{}`` so that the
API server applies their nested defaults.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml
from pydantic import BaseModel

from codingjob_operator import classmodels, models

# Kubernetes structural schemas forbid additionalProperties next to properties (unknown fields
# are pruned by the API server and rejected by kubectl's strict field validation instead).
_DROP_KEYS = {"title"}
_KEY_ORDER = ("type", "description")


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        node = {**target, **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
        return _resolve(node, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        if len(branches) < len(node["anyOf"]):
            node.pop("anyOf")
            if len(branches) == 1:
                node = {**branches[0], **node}
            else:
                node["anyOf"] = branches
            if node.get("default", "") is None:
                node.pop("default")
            return _resolve(node, defs)
    if isinstance(node.get("default"), dict):
        # Structural defaults must not carry nulls; an unset field is simply absent.
        node["default"] = _drop_nulls(node["default"])
    if "const" in node:
        # A one-value Literal; structural schemas have no `const`, an enum says the same.
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or (key == "additionalProperties" and value is False):
            continue
        if key == "properties":
            out[key] = {name: _resolve(prop, defs) for name, prop in value.items()}
        else:
            out[key] = _resolve(value, defs)
    # Kubernetes wants an int-or-string's alternatives without extra keys.
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    return _ordered(out)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """type and description first, the rest sorted: a stable, readable committed file."""
    head = [k for k in _KEY_ORDER if k in node]
    tail = sorted(k for k in node if k not in _KEY_ORDER)
    return {k: node[k] for k in head + tail}


def _default_objects(schema: dict[str, Any]) -> None:
    """Give optional sub-objects ``default: {}`` so their own defaults apply when omitted."""
    for prop in schema.get("properties", {}).values():
        if prop.get("type") == "object" and "properties" in prop:
            _default_objects(prop)
            if "default" not in prop and prop["properties"] and _has_defaults(prop):
                prop["default"] = {}


def _has_defaults(schema: dict[str, Any]) -> bool:
    return any(
        "default" in p or (p.get("type") == "object" and _has_defaults(p))
        for p in schema.get("properties", {}).values()
    )


def _strip_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_defaults(v) for v in node]
    return node


def _structural(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _resolve(raw, defs)
    return schema


def spec_schema() -> dict[str, Any]:
    """The structural schema of ``.spec``."""
    schema = _structural(models.CodingJobSpec)
    _default_objects(schema)
    return schema


def status_schema() -> dict[str, Any]:
    """The structural schema of ``.status``; no defaults (only the operator writes it)."""
    schema: dict[str, Any] = _strip_defaults(_structural(models.CodingJobStatus))
    return schema


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{models.PLURAL}.{models.GROUP}",
            "labels": {
                "app.kubernetes.io/name": "codingjob",
                "app.kubernetes.io/part-of": "codingjob",
            },
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Steps", "type": "integer", "jsonPath": ".status.steps"},
                        {"name": "Tokens", "type": "integer", "jsonPath": ".status.tokens.used"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {
                            "name": "Reason",
                            "type": "string",
                            "jsonPath": ".status.reason",
                            "priority": 1,
                        },
                        # Size and expiry, not the URL: a presigned URL is hundreds of characters
                        # (it stays in status.downloadURL and status.artifact.url).
                        {
                            "name": "Size",
                            "type": "integer",
                            "format": "int64",
                            "jsonPath": ".status.artifact.size",
                            "priority": 1,
                        },
                        {
                            "name": "URL-Expires",
                            # Not "date": kubectl prints a date as its age, and a time still to
                            # come as <invalid>; the timestamp itself says when to refresh.
                            "type": "string",
                            "jsonPath": ".status.artifact.urlExpiresAt",
                            "priority": 1,
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A coding agent run in a sandboxed pod; the finished "
                            "workspace is archived as a ZIP to object storage.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def class_spec_schema() -> dict[str, Any]:
    """The structural schema of a CodingJobClass's ``.spec``."""
    schema = _structural(classmodels.CodingJobClassSpec)
    _default_objects(schema)
    return schema


def build_class_crd() -> dict[str, Any]:
    """The CodingJobClass CustomResourceDefinition (cluster-scoped, admin-owned)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{classmodels.CLASS_PLURAL}.{models.GROUP}",
            "labels": {
                "app.kubernetes.io/name": "codingjob",
                "app.kubernetes.io/part-of": "codingjob",
            },
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Cluster",
            "names": {
                "kind": classmodels.CLASS_KIND,
                "listKind": f"{classmodels.CLASS_KIND}List",
                "plural": classmodels.CLASS_PLURAL,
                "singular": classmodels.CLASS_SINGULAR,
                "shortNames": list(classmodels.CLASS_SHORT_NAMES),
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": [
                        {
                            "name": "Default",
                            "type": "string",
                            "jsonPath": ".metadata.annotations.codingjob\\.dev/is-default-class",
                        },
                        {
                            "name": "Runtime",
                            "type": "string",
                            "jsonPath": ".spec.sandbox.runtimeClassName",
                        },
                        {
                            "name": "Max-CPU",
                            "type": "string",
                            "jsonPath": ".spec.resources.cpu.max",
                        },
                        {
                            "name": "Max-Memory",
                            "type": "string",
                            "jsonPath": ".spec.resources.memory.max",
                        },
                        {
                            "name": "Max-Deadline",
                            "type": "integer",
                            "jsonPath": ".spec.limits.activeDeadlineSeconds.max",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {
                            "name": "Egress",
                            "type": "string",
                            "jsonPath": ".spec.network.allowedEgressModes",
                            "priority": 1,
                        },
                        {
                            "name": "Image",
                            "type": "string",
                            "jsonPath": ".spec.sandbox.agentImage",
                            "priority": 1,
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "What a platform admin decides for the CodingJobs "
                            "of this class: sandbox images and placement, defaults and maxima of "
                            "resources and budgets, egress and model endpoints.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {**class_spec_schema(), "default": {}},
                            },
                        }
                    },
                }
            ],
        },
    }


def _header(source: str) -> str:
    return (
        f"# Generated from operator/codingjob_operator/{source} by "
        "`python -m codingjob_operator.crd`; do not edit.\n"
    )


HEADER = _header("models.py")
#: The generated files: crds/<name>.yaml -> (header, builder).
FILES = {
    "codingjob": ("models.py", build_crd),
    "codingjobclass": ("classmodels.py", build_class_crd),
}


def render(name: str = "codingjob") -> str:
    """A CRD as the YAML text committed in crds/<name>.yaml."""
    source, build = FILES[name]
    return _header(source) + yaml.safe_dump(build(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else "codingjob"))


if __name__ == "__main__":
    main()
