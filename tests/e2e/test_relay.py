"""The model relay on the cluster, in a release of its own (so the main e2e release is untouched):
a job without an endpoint of its own runs through the relay; the provider key is nowhere in the
sandbox (environment, files, /proc); the relay counts the job's tokens into its status; and the
job's credential is refused once the job is gone."""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.e2e.conftest import REPO, helm, port_forward, wait_for
from tests.e2e.test_codingjob import exec_in_agent
from tests.fixtures.cluster import kubectl

SYSTEM = "codingjob-relay-e2e-system"
RELEASE = "codingjob-relay-e2e"
# The chart names the relay after its full name (release + chart).
RELAY = f"{RELEASE}-codingjob-operator-model-relay"
#: Not under the main e2e release's `t-*`: only this release's operator handles these jobs.
PREFIX = "relay-e2e-"

# One process runs the module: its release (a fixed name) is a module fixture.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("relay")]


@pytest.fixture(scope="module")
def provider_key(kube_api: client.ApiClient) -> Iterator[str]:
    """The chart with the relay, whose provider (the scripted model) gets a key from a Secret."""
    core = client.CoreV1Api(kube_api)
    key = "sk-e2e-provider-" + secrets.token_hex(16)
    helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", check=False)
    kubectl("create", "namespace", SYSTEM, check=False)
    kubectl(
        "-n", SYSTEM, "create", "secret", "generic", "e2e-provider-key",
        f"--from-literal=api-key={key}", check=False,
    )  # fmt: skip
    base = f"http://scripted-model.{SYSTEM}.svc:8000/v1"
    result = helm(
        "upgrade", "--install", RELEASE, str(REPO / "charts" / "codingjob-operator"),
        "--namespace", SYSTEM,
        "--set", "scriptedModel.enabled=true",
        "--set", f"watchNamespaces={{{PREFIX}*}}",
        "--set", "minio.enabled=false",
        "--set", "relay.enabled=true",
        "--set", "relay.providers[0].name=scripted",
        "--set", f"relay.providers[0].baseURL={base}",
        "--set", "relay.providers[0].apiKeySecret.name=e2e-provider-key",
        "--set", "relay.providers[0].apiKeySecret.key=api-key",
        "--set", "relay.logFormat=json",
        # The default class is cluster-scoped and owned by the main e2e release; a second
        # release on the same cluster reuses it instead of claiming it.
        "--set", "defaultClass.create=false",
        "--wait", "--timeout", "5m",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    yield key
    helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", check=False)
    core.delete_namespace(SYSTEM)


def test_job_through_the_relay_keeps_the_provider_key_out_of_the_sandbox(
    provider_key: str, kube_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_api)
    api = client.CustomObjectsApi(kube_api)
    namespace = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        wait_for(
            "default service account",
            lambda: core.list_namespaced_service_account(namespace).items,
            60,
        )
        job = {
            "apiVersion": "codingjob.dev/v1alpha1",
            "kind": "CodingJob",
            "metadata": {"name": "relayed", "namespace": namespace},
            "spec": {
                "task": "Scripted scenario never-finish",
                "model": {"name": "scripted/never-finish"},
                "workspace": {"size": "1Gi"},
                "gui": {"enabled": False},
                "jupyter": {"enabled": False},
            },
        }
        api.create_namespaced_custom_object(
            "codingjob.dev", "v1alpha1", namespace, "codingjobs", job
        )

        def relayed_tokens() -> dict[str, object] | None:
            obj = api.get_namespaced_custom_object(
                "codingjob.dev", "v1alpha1", namespace, "codingjobs", "relayed"
            )
            tokens = (obj.get("status") or {}).get("tokens") or {}
            return obj if tokens.get("prompt") else None

        obj = wait_for("tokens counted by the relay", relayed_tokens, 240, interval=2)
        assert obj["status"]["phase"] == "Running"
        pod = f"{obj['status']['podName']}"
        credential = base64.b64decode(
            core.read_namespaced_secret("relayed-model-credential", namespace).data["credential"]
        ).decode()
        run = lambda cmd: exec_in_agent(core, namespace, pod, cmd)  # noqa: E731
        environment = run("env; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done")
        for secret in (provider_key, credential):
            assert secret not in environment
            hits = run(
                f"grep -rIlF -- '{secret}' /workspace /tmp /etc /opt /var/run /proc/self "
                "2>/dev/null | head -5 || true"
            )
            assert not hits.strip(), f"a secret is readable in the sandbox: {hits}"
        # The provider key is in no object of the job's namespace either.
        for item in core.list_namespaced_secret(namespace).items:
            for value in (item.data or {}).values():
                assert provider_key not in base64.b64decode(value).decode(errors="replace")

        api.delete_namespaced_custom_object(
            "codingjob.dev", "v1alpha1", namespace, "codingjobs", "relayed"
        )
        with port_forward(SYSTEM, f"svc/{RELAY}", 8080) as port:

            def refused() -> str | None:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/usage",
                    headers={"Authorization": f"Bearer {credential}"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=10):
                        return None
                except urllib.error.HTTPError as error:
                    return str(json.load(error)["error"]["message"]) if error.code == 401 else None

            # The job check is cached for a few seconds: wait until it sees the job gone.
            message = wait_for("the credential refused", refused, 60, interval=2)
        assert "is not running" in message
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")
