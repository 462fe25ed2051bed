"""Operating CodingJobs as a platform team does: `kubectl wait` on Job-like conditions."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Jobs

pytestmark = pytest.mark.e2e


def test_kubectl_wait_for_succeeded_and_failed(jobs: Jobs, minio_forward: int) -> None:
    """`kubectl wait --for=condition=Succeeded|Failed` tells success from failure, and Complete
    is never set on a failure (as with a Kubernetes Job)."""
    jobs.apply(jobs.manifest("waits-ok", "todo-app"))
    jobs.apply(jobs.manifest("waits-bad", "fail"))
    ns = ("-n", jobs.namespace)

    ok = jobs.kubectl(
        "wait",
        "--for=condition=Succeeded",
        "cjob/waits-ok",
        "--timeout=300s",
        *ns,
        check=False,
        timeout=330,
    )
    assert ok.returncode == 0, ok.stderr
    bad = jobs.kubectl(
        "wait",
        "--for=condition=Failed",
        "cjob/waits-bad",
        "--timeout=300s",
        *ns,
        check=False,
        timeout=330,
    )
    assert bad.returncode == 0, bad.stderr

    assert jobs.status("waits-ok")["phase"] == "Succeeded"
    failed = jobs.status("waits-bad")
    assert failed["phase"] == "Failed"
    types = {c["type"]: c["status"] for c in failed["conditions"]}
    assert types.get("Failed") == "True" and "Complete" not in types and "Succeeded" not in types
    # Waiting for the other end condition on a finished job does not return early.
    wrong = jobs.kubectl(
        "wait", "--for=condition=Complete", "cjob/waits-bad", "--timeout=3s", *ns, check=False
    )
    assert wrong.returncode != 0
