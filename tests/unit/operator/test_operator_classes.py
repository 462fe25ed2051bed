"""The pure class resolution: every out-of-bounds field refused with its name, value and the class
limit; admitted specs get the class defaults; the egress floor cannot be opened."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from codingjob_operator import classes
from codingjob_operator.classmodels import CodingJobClass
from codingjob_operator.models import CodingJobSpec, ResolvedClass
from pydantic import ValidationError

from tests.fixtures import class_table as table

OPERATOR = classes.OperatorDefaults(agent_image=table.AGENT_IMAGE, denied_cidrs=table.DENIED_CIDRS)
CLASS = CodingJobClass.model_validate(table.class_manifest())


def resolve(spec: dict[str, Any], cls: CodingJobClass = CLASS) -> ResolvedClass | list[Any]:
    return classes.resolve(CodingJobSpec.model_validate({"task": "t", **spec}), cls, OPERATOR)


def test_table_is_large_enough() -> None:
    assert len(table.REJECTED) + len(table.ADMITTED) >= 25
    assert len(table.REJECTED) >= 25


@pytest.mark.parametrize("case", table.REJECTED.values(), ids=list(table.REJECTED))
def test_out_of_bounds_spec_is_refused_naming_the_field(case: table.Case) -> None:
    result = resolve(case.spec)
    assert isinstance(result, list), f"admitted: {result}"
    assert {v.field for v in result} == {case.violates}
    message = classes.violation_message(CLASS.name, result)
    assert case.violates in message and "table-class" in message
    # The value the author wrote is named too, so the message says what to change.
    for violation in result:
        assert repr(violation.value) in str(violation)


def _get(resolved: ResolvedClass, path: str) -> Any:
    value: Any = resolved
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("case", table.ADMITTED.values(), ids=list(table.ADMITTED))
def test_in_bounds_spec_gets_the_class_defaults(case: table.Case) -> None:
    result = resolve(case.spec)
    assert isinstance(result, ResolvedClass), [str(v) for v in result]
    assert result.name == table.CLASS_NAME
    for path, expected in case.expect.items():
        assert _get(result, path) == expected, path


def test_sidecar_image_is_always_the_operators() -> None:
    result = resolve({"image": "registry.example.com/agents/python:v1.2"})
    assert isinstance(result, ResolvedClass)
    assert result.sidecar_image == table.AGENT_IMAGE != result.agent_image


def test_no_author_image_without_patterns() -> None:
    cls = CodingJobClass.model_validate({"metadata": {"name": "strict"}})
    result = resolve({"image": "codingjob/agent:dev"}, cls)
    assert isinstance(result, list)
    assert "admits no author-chosen image" in str(result[0])


def test_builtin_defaults_bound_everything() -> None:
    cls = CodingJobClass.model_validate({"metadata": {"name": "builtin"}})
    result = resolve({}, cls)
    assert isinstance(result, ResolvedClass)
    assert result.resources.limits is not None
    assert set(result.resources.limits) == {"cpu", "memory", "ephemeral-storage"}
    assert result.active_deadline_seconds == 3600
    assert result.service_account_name == "codingjob-sandbox"


def test_class_without_deadline_must_say_so() -> None:
    with pytest.raises(ValidationError, match="allowNoDeadline"):
        CodingJobClass.model_validate(
            {"metadata": {"name": "x"}, "spec": {"limits": {"activeDeadlineSeconds": {}}}}
        )
    cls = CodingJobClass.model_validate(
        {
            "metadata": {"name": "x"},
            "spec": {"limits": {"activeDeadlineSeconds": {}, "allowNoDeadline": True}},
        }
    )
    result = resolve({}, cls)
    assert isinstance(result, ResolvedClass) and result.active_deadline_seconds is None


def test_max_without_default_is_the_effective_value() -> None:
    cls = CodingJobClass.model_validate(
        {"metadata": {"name": "x"}, "spec": {"limits": {"maxSteps": {"max": 50}}}}
    )
    result = resolve({}, cls)
    assert isinstance(result, ResolvedClass) and result.max_steps == 50


@pytest.mark.parametrize("seconds", [0, 59, 604801])
def test_a_retry_cap_out_of_range_is_refused(seconds: int) -> None:
    with pytest.raises(ValidationError, match="maxRetrySeconds"):
        CodingJobClass.model_validate(
            {"metadata": {"name": "x"}, "spec": {"model": {"maxRetrySeconds": seconds}}}
        )


def test_the_retry_cap_is_resolved_and_unset_means_none() -> None:
    capped = CodingJobClass.model_validate(
        {"metadata": {"name": "x"}, "spec": {"model": {"maxRetrySeconds": 900}}}
    )
    result = resolve({}, capped)
    assert isinstance(result, ResolvedClass) and result.model_retry_seconds == 900
    result = resolve({}, CodingJobClass.model_validate({"metadata": {"name": "x"}}))
    assert isinstance(result, ResolvedClass) and result.model_retry_seconds is None


def test_recorded_generation() -> None:
    cls = CodingJobClass.model_validate(
        {**table.class_manifest(), "metadata": {"name": table.CLASS_NAME, "generation": 7}}
    )
    result = resolve({}, cls)
    assert isinstance(result, ResolvedClass) and result.generation == 7


@pytest.mark.parametrize(
    ("names", "wanted", "expected"),
    [
        ([("a", False), ("b", True)], None, "b"),
        ([("a", False), ("b", True)], "a", "a"),
        ([("a", False)], "zzz", "does not exist"),
        ([("a", False)], None, "no CodingJobClass is annotated"),
        ([("a", True), ("b", True)], None, "several classes are the default: a, b"),
    ],
)
def test_select_class(names: list[tuple[str, bool]], wanted: str | None, expected: str) -> None:
    found = [CodingJobClass.model_validate(table.class_manifest(n, default=d)) for n, d in names]
    chosen = classes.select_class(found, wanted)
    if isinstance(chosen, str):
        assert expected in chosen
    else:
        assert chosen.name == expected


@pytest.mark.parametrize(
    ("url", "prefix", "ok"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1", True),
        ("https://api.openai.com/v1/chat", "https://api.openai.com/v1", True),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1/", True),
        ("https://api.openai.com/v1beta", "https://api.openai.com/v1", False),
        ("https://api.openai.com.evil.net/v1", "https://api.openai.com", False),
        ("https://user@api.openai.com/v1", "https://api.openai.com", False),
        ("https://api.openai.com:8443/v1", "https://api.openai.com/v1", False),
        ("http://api.openai.com/v1", "https://api.openai.com/v1", False),
    ],
)
def test_url_prefix_is_matched_at_boundaries(url: str, prefix: str, ok: bool) -> None:
    assert classes.url_has_prefix(url, prefix) is ok


@pytest.mark.parametrize(
    ("cidr", "expected"),
    [
        ("0.0.0.0/0", ["169.254.0.0/16", "168.63.129.16/32", "100.100.100.200/32"]),
        ("::/0", ["fd00:ec2::254/128", "fe80::/10"]),
        ("169.254.169.254/32", None),
        ("168.63.129.16/32", None),
        ("140.82.112.0/20", []),
        ("fd00:ec2::/64", ["fd00:ec2::254/128"]),
    ],
)
def test_floor_is_cut_out_of_every_allow_rule(cidr: str, expected: list[str] | None) -> None:
    assert classes.floor_except(cidr, classes.ALWAYS_DENIED_CIDRS) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        (2, "2"),
        ("1Gi", str(2**30)),
        ("1.5G", "1.5E+9"),
        ("1e3", "1E+3"),
    ],
)
def test_parse_quantity(text: str | int, value: str) -> None:
    from decimal import Decimal

    assert classes.parse_quantity(text) == Decimal(value)


def test_effective_spec_carries_the_resolved_values() -> None:
    spec = CodingJobSpec.model_validate({"task": "t"})
    resolved = resolve({})
    assert isinstance(resolved, ResolvedClass)
    effective = classes.effective_spec(spec, resolved)
    assert effective.limits.active_deadline_seconds == 3600
    assert effective.workspace.size == "5Gi"
    assert effective.runtime_class_name == "gvisor"
    assert effective.resources == resolved.resources


SAMPLES = Path(__file__).resolve().parents[3] / "crds" / "samples"


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sample_is_admitted_by_its_class(sample: Path) -> None:
    classes_by_name = {
        c.name: c
        for c in (
            CodingJobClass.model_validate(yaml.safe_load(p.read_text()))
            for p in sorted((SAMPLES / "classes").glob("*.yaml"))
        )
    }
    builtin = CodingJobClass.model_validate(
        {"metadata": {"name": "builtin", "annotations": {"codingjob.dev/is-default-class": "true"}}}
    )
    job = yaml.safe_load(sample.read_text())
    spec = CodingJobSpec.model_validate(job["spec"])
    chosen = classes.select_class([*classes_by_name.values(), builtin], spec.class_name)
    assert not isinstance(chosen, str), chosen
    operator = classes.OperatorDefaults(
        agent_image="codingjob/agent:dev",
        default_model_base_url="http://scripted-model.codingjob-system.svc:8000/v1",
    )
    result = classes.resolve(spec, chosen, operator)
    assert isinstance(result, ResolvedClass), [str(v) for v in result]


def test_threat_model_names_only_tests_that_exist() -> None:
    repo = Path(__file__).resolve().parents[3]
    text = (repo / "docs" / "security.md").read_text()
    cited = set(re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?", text))
    assert len(cited) >= 20
    for path, name in cited:
        source = (repo / path).read_text()
        if name:
            assert f"def {name}" in source, f"{path}::{name}"
    # Bare names after a cited file (``, `test_x`, …) must exist in some test module too.
    for name in set(re.findall(r"`(test_\w+)(?:\[[\w-]+\])?`", text)):
        assert any(f"def {name}" in p.read_text() for p in (repo / "tests").rglob("test_*.py")), (
            name
        )
