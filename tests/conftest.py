"""Shared pytest configuration: fixture plugins for the real services the tests run against, and
the rule that nothing skips in CI."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

pytest_plugins: list[str] = [
    # Each module under tests/fixtures/ provides the fixtures for one real service.
    "tests.fixtures.cluster",
    "tests.fixtures.scripted_model",
    "tests.fixtures.minio",
    "tests.fixtures.relay",
    "tests.fixtures.release",
]

#: Tests allowed to skip under CI=true, by node id, each with the reviewed reason. Empty: a skip
#: in CI means a test that did not run while the run reports green, which is what CI must catch.
CI_SKIP_ALLOWED: dict[str, str] = {}


def ci_enabled(environ: dict[str, str] | None = None) -> bool:
    """True when running in CI (``CI=true``, as ``.ci/run`` sets it)."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").lower() in {"1", "true", "yes"}


def skip_to_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure naming the skip's reason, unless the node id is allowed."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if report.nodeid in CI_SKIP_ALLOWED:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true (not in CI_SKIP_ALLOWED): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if ci_enabled():
        skip_to_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if ci_enabled():
        skip_to_failure(report)
    return report
