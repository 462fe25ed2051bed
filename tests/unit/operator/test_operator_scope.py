"""Namespaces named by globs: kopf would stop watching a namespace being deleted and leave its
CodingJobs' finalizers in place for good, so the operator watches the cluster and filters."""

from __future__ import annotations

import ast
import inspect
from types import SimpleNamespace

import pytest
from codingjob_operator import handlers
from codingjob_operator.scope import NamespaceScope
from hypothesis import given
from hypothesis import strategies as st

NAMESPACE = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)


def test_plain_names_keep_kopfs_own_namespace_watches() -> None:
    assert NamespaceScope.of_globs([]) is None
    assert NamespaceScope.of_globs(["team-a", "team-b"]) is None


@pytest.mark.parametrize(
    ("patterns", "served", "not_served"),
    [
        (["t-*"], ["t-x", "t-faults-0-abc"], ["team-a", "x-t-1", "t"]),
        (["team-a", "ci-*"], ["team-a", "ci-12"], ["team-b", "ci"]),
        # kopf's documented example: the first glob decides, then the rightmost match wins.
        (
            ["myapp-*,!*-pr-*,*-pr-123"],
            ["myapp-live", "myapp-pr-123"],
            ["myapp-pr-456", "otherapp-live", "otherapp-pr-123"],
        ),
        # A first negation starts from every namespace.
        (["!kube-*"], ["default", "team-a"], ["kube-system", "kube-public"]),
        (["team-?"], ["team-a"], ["team-ab"]),
    ],
)
def test_globs_serve_what_kopf_would(
    patterns: list[str], served: list[str], not_served: list[str]
) -> None:
    scope = NamespaceScope.of_globs(patterns)
    assert scope is not None
    assert [ns for ns in served if not scope.serves(ns)] == []
    assert [ns for ns in not_served if scope.serves(ns)] == []
    assert not scope.serves(None)  # cluster-scoped objects are nobody's


@given(NAMESPACE)
def test_a_star_serves_every_namespace_and_its_negation_none(namespace: str) -> None:
    everything, nothing = NamespaceScope(("*",)), NamespaceScope(("!*",))
    assert everything.serves(namespace) and not nothing.serves(namespace)


def test_the_handlers_filter_by_the_scope_in_memo() -> None:
    scoped = SimpleNamespace(scope=NamespaceScope(("t-*",)))
    assert handlers.in_scope(namespace="t-1", memo=scoped)
    assert not handlers.in_scope(namespace="team-a", memo=scoped)
    # Without a scope (plain names, or the whole cluster) kopf has already chosen.
    assert handlers.in_scope(namespace="team-a", memo=SimpleNamespace(scope=None))
    assert handlers.in_scope(namespace="team-a", memo=SimpleNamespace())


def test_every_resource_handler_is_filtered_by_the_scope() -> None:
    """A handler without the filter would act on (or put a finalizer on) other namespaces."""
    tree = ast.parse(inspect.getsource(handlers))
    unfiltered = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if not isinstance(decorator, ast.Call):
                continue
            target = ast.unparse(decorator.func)
            if target in ("kopf.on.startup", "kopf.on.cleanup", "kopf.on.login"):
                continue
            if target.startswith(("kopf.on.", "kopf.daemon", "kopf.timer", "kopf.index")):
                when = next((k.value for k in decorator.keywords if k.arg == "when"), None)
                if when is None or not filters_by_scope(ast.unparse(when)):
                    unfiltered.append(node.name)
    assert unfiltered == []


def filters_by_scope(when: str) -> bool:
    """The filter is in_scope, or a filter of handlers.py whose body checks in_scope first."""
    if when == "in_scope":
        return True
    source = inspect.getsource(getattr(handlers, when))
    return "if not in_scope(namespace=namespace, memo=memo):\n        return False" in source
