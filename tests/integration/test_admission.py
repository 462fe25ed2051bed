"""The chart's ValidatingAdmissionPolicy on the real API server: every spec of the class table
(tests/fixtures/class_table.py) refused at `kubectl apply` naming its field, every in-bounds spec
admitted; the same table the pure resolution is tested with.

The policy and its binding are rendered from the chart under a release name of their own, and the
binding is narrowed to namespaces labelled for this test, so other tests on the shared cluster
never meet it. Server-side dry-run keeps it fast: admission runs, nothing is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.fixtures import class_table as table
from tests.fixtures.cluster import kubectl, tool

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
RELEASE = "i11-admission-test"
TEST_LABEL = "codingjob.dev/admission-test"
#: How long a new policy may take to be loaded by the API server's admission plugin.
POLICY_READY_TIMEOUT = 60


def _render_policy() -> list[dict[str, Any]]:
    import subprocess

    out = subprocess.run(
        [
            tool("helm"),
            "template",
            RELEASE,
            str(REPO / "charts" / "codingjob-operator"),
            "--kube-version",
            "1.34.0",
            "--show-only",
            "templates/admission-policy.yaml",
            "--set",
            "sandboxNetwork.deniedCIDRs={" + ",".join(table.DENIED_CIDRS) + "}",
            "--set",
            f"relay.defaultProvider={table.RELAY_DEFAULT_PROVIDER}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {TEST_LABEL: "true"}}}
    # Only this test's class, so classes other tests leave on the cluster play no part.
    binding["spec"]["paramRef"]["selector"] = {"matchLabels": {TEST_LABEL: "true"}}
    return docs


@pytest.fixture(scope="module")
def policy(kubeconfig: str, kube_api: client.ApiClient) -> Iterator[None]:
    for name in ("codingjob", "codingjobclass"):
        kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(REPO / f"crds/{name}.yaml")
        )
    kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/codingjobclasses.codingjob.dev"
    )
    docs = _render_policy()
    cls = table.class_manifest()
    cls["metadata"]["labels"] = {TEST_LABEL: "true"}
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [cls, *docs]}),
    )
    try:
        yield
    finally:
        for doc in docs:
            kubectl(
                "delete", doc["kind"], doc["metadata"]["name"], "--ignore-not-found", check=False
            )
        kubectl("delete", "codingjobclass", table.CLASS_NAME, "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def ns(policy: None, kube_api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    name = f"t-admission-{int(time.time())}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={TEST_LABEL: "true"}))
    )
    try:
        _wait_until_enforced(name)
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


def _dry_run(namespace: str, manifest: dict[str, Any]) -> tuple[int, str]:
    proc = kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(manifest),
        check=False,
    )
    return proc.returncode, proc.stderr + proc.stdout


def _wait_until_enforced(namespace: str) -> None:
    """The API server loads new policies asynchronously: wait until a known violation is refused."""
    probe = table.job_manifest("probe", table.REJECTED["open egress"])
    deadline = time.monotonic() + POLICY_READY_TIMEOUT
    while True:
        code, output = _dry_run(namespace, probe)
        if code != 0 and "ValidatingAdmissionPolicy" in output:
            return
        assert time.monotonic() < deadline, f"the policy is not enforced: {output}"
        time.sleep(1)


@pytest.mark.parametrize("case", table.REJECTED.values(), ids=list(table.REJECTED))
def test_out_of_bounds_spec_is_refused_at_apply_naming_the_field(ns: str, case: table.Case) -> None:
    code, output = _dry_run(ns, table.job_manifest("refused", case))
    assert code != 0, f"admitted: {output}"
    assert "denied request" in output and table.CLASS_NAME in output, output
    assert case.violates is not None and case.violates in output, output


@pytest.mark.parametrize("case", table.ADMITTED.values(), ids=list(table.ADMITTED))
def test_in_bounds_spec_is_admitted(ns: str, case: table.Case) -> None:
    code, output = _dry_run(ns, table.job_manifest("admitted", case))
    assert code == 0, output
    assert "(server dry run)" in output


def test_another_class_does_not_judge_the_job(ns: str) -> None:
    # The policy is evaluated once per class; only the job's own class may refuse it.
    code, output = _dry_run(
        ns, table.job_manifest("other", table.REJECTED["open egress"], class_name="no-such-class")
    )
    assert code == 0, output
