"""The pure class resolution: every out-of-bounds field refused with its name, value and the class
limit; admitted specs get the class defaults; the egress floor cannot be opened."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from codingjob_operator import classes
from codingjob_operator.classmodels import CodingJobClass, IntBound
from codingjob_operator.models import CodingJobSpec, ResolvedClass
from pydantic import ValidationError

from tests.fixtures import class_table as table

OPERATOR = classes.OperatorDefaults(
    agent_image=table.AGENT_IMAGE,
    denied_cidrs=table.DENIED_CIDRS,
    relay_default_provider=table.RELAY_DEFAULT_PROVIDER,
)
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
        # A prefix written with a trailing slash admits the same URLs as without.
        ("https://api.openai.com/v1", "https://api.openai.com/v1/", True),
        ("https://api.openai.com/v1/chat", "https://api.openai.com/v1/", True),
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


#: The class limit each refusal names, so the author reads what the class allows (the status
#: message and the event carry it).
PATTERNS = (
    "the class admits images matching ['registry\\\\.example\\\\.com/agents/[a-z-]+:v[0-9.]+']"
)
ENDPOINTS = (
    "the class allows endpoints under "
    "['https://api.openai.com/v1', 'http://scripted-model.codingjob-system.svc:8000/v1']"
)
CIDRS = "the class allows ranges within ['140.82.112.0/20', '2001:db8::/32']"
FLOOR = "overlaps the operator's egress floor"
LIMITS: dict[str, list[str]] = {
    "image not in patterns": [PATTERNS],
    "image pattern is anchored": [PATTERNS],
    "other runtime class": ["the class sets runtimeClassName 'gvisor'"],
    "foreign node selector": ["the class's nodeSelector is {'pool': 'sandbox'}"],
    "node selector other value": ["the class's nodeSelector is {'pool': 'sandbox'}"],
    "foreign toleration": ["the class's tolerations do not include it"],
    "cpu limit over max": ["the class maximum is 4"],
    "cpu limit over max as int": ["the class maximum is 4"],
    "memory limit over max": ["the class maximum is 8Gi"],
    "memory request over max": ["the class maximum is 8Gi", "exceeds the effective limit 8Gi"],
    "ephemeral storage over max": ["the class maximum is 20Gi"],
    "request above the default limit": ["exceeds the effective limit 2"],
    "unbounded resource": ["the class bounds only cpu, memory and ephemeral-storage"],
    "workspace over max": ["the class maximum is 20Gi"],
    "storage class not allowed": ["the class allows ['fast', 'standard']"],
    "deadline over max": ["the class maximum is 86400"],
    "steps over max": ["the class maximum is 1000"],
    "tokens over max": ["the class maximum is 5000000"],
    "open egress": ["the class allows ['Restricted']"],
    "cidr outside class": [CIDRS],
    "ipv6 cidr outside class": [CIDRS],
    "cidr is cloud metadata": [FLOOR],
    "cidr contains the floor": [FLOOR],
    "cidr is the service network": [FLOOR],
    "model endpoint not allowed": [ENDPOINTS],
    "model endpoint lookalike host": [ENDPOINTS],
    "model endpoint path escape": [ENDPOINTS],
    "model endpoint is metadata": [ENDPOINTS],
    "model endpoint other scheme": [ENDPOINTS],
    "relay provider not allowed": ["the class allows providers ['openai', 'house']"],
    "relay provider with a suffix": ["the class allows providers ['openai', 'house']"],
}


@pytest.mark.parametrize("name", list(table.REJECTED))
def test_every_refusal_names_the_class_limit(name: str) -> None:
    result = resolve(table.REJECTED[name].spec)
    assert isinstance(result, list)
    assert [v.limit for v in result] == LIMITS[name]
    # The value named is the one the author wrote.
    assert all(v.value is not None for v in result)


def test_violation_message_lists_every_violation() -> None:
    found = [
        classes.Violation("spec.limits.maxSteps", 1001, "the class maximum is 1000"),
        classes.Violation("spec.image", "x:1", "the class admits no author-chosen image"),
    ]
    assert classes.violation_message("small", found) == (
        "outside CodingJobClass 'small': spec.limits.maxSteps: 1001 is not allowed: the class "
        "maximum is 1000; spec.image: 'x:1' is not allowed: the class admits no author-chosen image"
    )


def test_every_violation_of_one_spec_is_reported() -> None:
    result = resolve({"limits": {"maxSteps": 1001}, "workspace": {"size": "100Gi"}})
    assert isinstance(result, list)
    assert [v.field for v in result] == ["spec.workspace.size", "spec.limits.maxSteps"]


def test_an_unbounded_run_limit_is_refused_unless_the_class_allows_it() -> None:
    # The model refuses such a class (test_class_without_deadline_must_say_so); the resolver
    # still checks, for a class built in code.
    out: list[classes.Violation] = []
    assert classes._int_bound("f", None, IntBound(), unlimited_ok=False, out=out) is None
    assert [str(v) for v in out] == ["f: None is not allowed: the class requires a value"]
    out.clear()
    assert classes._int_bound("f", None, IntBound(), unlimited_ok=True, out=out) is None
    assert classes._int_bound("f", 5, IntBound(max=5), unlimited_ok=False, out=out) == 5
    assert (
        classes._int_bound("f", None, IntBound(default=3, max=5), unlimited_ok=False, out=out) == 3
    )
    assert not out


def test_a_model_endpoint_without_prefixes_or_operator_default() -> None:
    cls = CodingJobClass.model_validate({"metadata": {"name": "x"}})
    result = resolve({"model": {"baseURL": "https://api.openai.com/v1"}}, cls)
    assert isinstance(result, list)
    assert [v.limit for v in result] == ["the class allows only the operator's default endpoint"]
    # The operator's default endpoint is always allowed.
    operator = classes.OperatorDefaults(
        agent_image=table.AGENT_IMAGE, default_model_base_url="https://models.internal/v1"
    )
    spec = CodingJobSpec.model_validate(
        {"task": "t", "model": {"baseURL": "https://models.internal/v1/chat"}}
    )
    assert isinstance(classes.resolve(spec, cls, operator), ResolvedClass)


def test_a_relay_provider_without_class_providers_or_relay_default() -> None:
    cls = CodingJobClass.model_validate({"metadata": {"name": "x"}})
    spec = CodingJobSpec.model_validate({"task": "t", "model": {"provider": "house"}})
    bare = classes.OperatorDefaults(agent_image=table.AGENT_IMAGE)
    result = classes.resolve(spec, cls, bare)
    assert isinstance(result, list)
    assert [(v.field, v.value, v.limit) for v in result] == [
        ("spec.model.provider", "house", "the class allows no provider by name")
    ]
    # The relay's default provider is always allowed, as the operator's default endpoint is;
    # a job naming no provider is never judged on it.
    assert isinstance(resolve({"model": {"provider": "house"}}, cls), ResolvedClass)
    assert isinstance(classes.resolve(CodingJobSpec(task="t"), cls, bare), ResolvedClass)


def test_a_malformed_cidr_is_refused_by_name() -> None:
    result = resolve({"network": {"egress": "Restricted", "allowedCIDRs": ["140.82.112.0/33"]}})
    assert isinstance(result, list)
    assert [(v.field, v.limit) for v in result] == [("spec.network.allowedCIDRs[0]", "not a CIDR")]


@pytest.mark.parametrize(
    ("cidr", "ranges", "inside"),
    [
        ("140.82.114.0/24", ["140.82.112.0/20"], True),
        ("140.82.112.0/20", ["140.82.112.0/20"], True),
        ("140.82.0.0/16", ["140.82.112.0/20"], False),
        ("2001:db8::/48", ["140.82.112.0/20", "2001:db8::/32"], True),
        # Another IP version is never inside.
        ("::/0", ["0.0.0.0/0"], False),
        ("10.0.0.1", ["10.0.0.0/8"], True),
    ],
)
def test_within(cidr: str, ranges: list[str], inside: bool) -> None:
    assert classes.within(cidr, ranges) is inside


def test_the_operator_floor_is_added_to_the_always_denied_ranges() -> None:
    assert OPERATOR.floor == (*classes.ALWAYS_DENIED_CIDRS, *table.DENIED_CIDRS)
    assert classes.OperatorDefaults(agent_image="a").floor == classes.ALWAYS_DENIED_CIDRS


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Ki", 2**10),
        ("1Mi", 2**20),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("3n", "3e-9"),
        ("3u", "3e-6"),
        ("3k", 3000),
        ("3M", 3 * 10**6),
        ("3T", 3 * 10**12),
        ("3P", 3 * 10**15),
        ("3E", 3 * 10**18),
        ("2E3", 2000),
        (" 250m ", "0.25"),
        ("+1", 1),
    ],
)
def test_every_quantity_suffix(text: str, value: int | str) -> None:
    from decimal import Decimal

    assert classes.parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["", "abc", "1Xi", "1.2.3", "1 Gi", "Gi"])
def test_not_a_quantity(text: str) -> None:
    with pytest.raises(ValueError, match="is not a quantity"):
        classes.parse_quantity(text)


def test_select_class_messages() -> None:
    a = CodingJobClass.model_validate(table.class_manifest("a", default=True))
    b = CodingJobClass.model_validate(table.class_manifest("b", default=True))
    plain = CodingJobClass.model_validate(table.class_manifest("plain"))
    assert classes.select_class([plain], "zzz") == (
        "spec.className: CodingJobClass 'zzz' does not exist"
    )
    assert classes.select_class([plain], None) == (
        "spec.className is unset and no CodingJobClass is annotated as the default"
    )
    assert classes.select_class([b, plain, a], None) == (
        "spec.className is unset and several classes are the default: a, b"
    )
    assert classes.select_class([plain, a], "") is a


def test_effective_spec_takes_every_resolved_field() -> None:
    spec = CodingJobSpec.model_validate({"task": "t", "workspace": {"size": "1Gi"}})
    resolved = resolve({"workspace": {"size": "20Gi", "storageClassName": "fast"}})
    assert isinstance(resolved, ResolvedClass)
    effective = classes.effective_spec(spec, resolved)
    assert effective.image == table.AGENT_IMAGE
    assert effective.workspace.size == "20Gi"
    assert effective.workspace.storage_class_name == "fast"
    assert effective.node_selector == {"pool": "sandbox"}
    assert effective.tolerations == resolved.tolerations
    assert (effective.limits.max_steps, effective.limits.max_total_tokens) == (200, 1000000)
    assert effective.task == "t"
    # A class without placement leaves the spec's fields unset rather than empty.
    bare = classes.resolve(
        CodingJobSpec.model_validate({"task": "t"}),
        CodingJobClass.model_validate({"metadata": {"name": "x"}}),
        OPERATOR,
    )
    assert isinstance(bare, ResolvedClass)
    plain = classes.effective_spec(spec, bare)
    assert plain.node_selector is None and plain.tolerations is None


def test_the_class_tolerations_and_providers_are_resolved() -> None:
    result = resolve({})
    assert isinstance(result, ResolvedClass)
    assert [t.model_dump(by_alias=True, exclude_none=True) for t in result.tolerations] == [
        {"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert [str(p) for p in result.providers] == ["openai"]
