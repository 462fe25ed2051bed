"""Fixtures of the chart tests."""

from __future__ import annotations

import subprocess

import pytest

from tests.fixtures.cluster import unavailable
from tests.unit.chart.chartlib import Helm, helm_path


@pytest.fixture(scope="session")
def helm() -> Helm:
    """The helm binary; a build that fails is a test failure in CI and a skip elsewhere."""
    try:
        return Helm(helm_path())
    except (subprocess.SubprocessError, OSError, IndexError) as exc:
        unavailable(f"helm could not be built: {exc}")
