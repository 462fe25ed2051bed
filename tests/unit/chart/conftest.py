"""Fixtures of the chart tests."""

from __future__ import annotations

import subprocess

import pytest

from tests.fixtures.cluster import in_ci
from tests.unit.chart.chartlib import Helm, helm_path


@pytest.fixture(scope="session")
def helm() -> Helm:
    """The helm binary; a build that fails is a test failure in CI and a skip elsewhere."""
    try:
        return Helm(helm_path())
    except (subprocess.SubprocessError, OSError, IndexError) as exc:
        if in_ci():
            pytest.fail(f"helm could not be built: {exc}", pytrace=False)
        pytest.skip(f"helm could not be built: {exc}")
