"""Integration tests run in two processes (``make test-integration``): every test on the cluster
in one of them, one after another, as they always ran (they share the one cluster, and some stop
its components or install the chart's cluster-wide objects); the tests of the images (Docker),
MinIO and local processes in the other, each module whole, so its module fixtures start once."""

from __future__ import annotations

import pytest


# First: xdist's worker reads the groups in its own hook of this name, registered after this
# file (an initial conftest), so it would run before a plain hook and see no group.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = "cluster" if item.get_closest_marker("cluster") else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
