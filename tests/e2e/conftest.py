"""End-to-end suite: its fixtures (the chart installed with MinIO and the scripted model) are the
plugin tests/fixtures/release.py, shared with the fault campaign; the names the tests import are
re-exported here."""

from __future__ import annotations

import pytest

from tests.fixtures.release import (
    ARTIFACTS,
    FINAL_PHASES,
    GROUP,
    MINIO_LOCAL_PORT,
    PLURAL,
    RELEASE,
    REPO,
    SYSTEM_NAMESPACE,
    VERSION,
    Jobs,
    free_port,
    helm,
    operator_logs,
    port_forward,
    wait_for,
)

__all__ = [
    "ARTIFACTS",
    "FINAL_PHASES",
    "GROUP",
    "MINIO_LOCAL_PORT",
    "PLURAL",
    "RELEASE",
    "REPO",
    "SYSTEM_NAMESPACE",
    "VERSION",
    "Jobs",
    "free_port",
    "helm",
    "operator_logs",
    "port_forward",
    "wait_for",
]

pytestmark = pytest.mark.e2e
