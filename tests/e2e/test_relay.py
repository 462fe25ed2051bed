"""The model relay on the cluster, in a release of its own (so the main e2e release is untouched):
a job without an endpoint of its own runs through the relay; the provider key is nowhere in the
sandbox (environment, files, /proc); the relay counts the job's tokens into its status; the job's
credential is refused once the job is gone; and the scripted model, which requires the key like a
real provider, answers a job only through the provider that holds it."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import secrets
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
#: The class the jobs name: it lists the relay's providers the way an admin allows them.
CLASS = "relay-e2e"

# One process runs the module: its release (a fixed name) is a module fixture.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("relay")]


@pytest.fixture(scope="module")
def provider_key(kube_api: client.ApiClient) -> Iterator[str]:
    """The chart with the relay, whose provider `scripted` (the scripted model, which requires
    the key) gets the key from a Secret; the provider `keyless` is the same model without it."""
    # The release has a fixed name: should the module's tests be spread over two test processes,
    # each would install it (and uninstall the other's) at once. A lock held from the install to
    # the uninstall makes them take turns.
    with (Path(tempfile.gettempdir()) / f"{RELEASE}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _provider_key(kube_api)


def _provider_key(kube_api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    key = "sk-e2e-provider-" + secrets.token_hex(16)
    helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", check=False)

    def usable() -> bool:
        # A previous run's namespace may still be terminating: nothing can be created in it.
        try:
            return core.read_namespace(SYSTEM).metadata.deletion_timestamp is None
        except client.ApiException as error:
            return error.status == 404

    wait_for(f"{SYSTEM} not terminating", usable, 180, interval=2)
    kubectl("create", "namespace", SYSTEM, check=False)
    # A fresh key, also when a previous run left the Secret behind.
    kubectl("-n", SYSTEM, "delete", "secret", "e2e-provider-key", "--ignore-not-found")
    kubectl(
        "-n", SYSTEM, "create", "secret", "generic", "e2e-provider-key",
        f"--from-literal=api-key={key}",
    )  # fmt: skip
    base = f"http://scripted-model.{SYSTEM}.svc:8000/v1"
    result = helm(
        "upgrade", "--install", RELEASE, str(REPO / "charts" / "codingjob-operator"),
        "--namespace", SYSTEM,
        "--set", "scriptedModel.enabled=true",
        # The scripted model answers 401 without this key, like a real provider.
        "--set", "scriptedModel.apiKeySecret.name=e2e-provider-key",
        "--set", "scriptedModel.apiKeySecret.key=api-key",
        "--set", f"watchNamespaces={{{PREFIX}*}}",
        "--set", "minio.enabled=false",
        "--set", "relay.enabled=true",
        "--set", "relay.providers[0].name=scripted",
        "--set", f"relay.providers[0].baseURL={base}",
        "--set", "relay.providers[0].apiKeySecret.name=e2e-provider-key",
        "--set", "relay.providers[0].apiKeySecret.key=api-key",
        "--set", "relay.providers[1].name=keyless",
        "--set", f"relay.providers[1].baseURL={base}",
        "--set", "relay.logFormat=json",
        # The default class is cluster-scoped and owned by the main e2e release: this release
        # claims none, and its jobs name a class of their own (so the module runs alone, too).
        "--set", "defaultClass.create=false",
        "--wait", "--timeout", "5m",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # How an admin lets a class's jobs pick the relay's providers (`spec.model.provider`).
    job_class = {
        "apiVersion": "codingjob.dev/v1alpha1",
        "kind": "CodingJobClass",
        "metadata": {"name": CLASS},
        "spec": {"model": {"providers": ["scripted", "keyless"]}},
    }
    with contextlib.suppress(client.ApiException):
        custom.delete_cluster_custom_object("codingjob.dev", "v1alpha1", "codingjobclasses", CLASS)
    wait_for(
        "the previous class gone",
        lambda: (
            not custom.list_cluster_custom_object(
                "codingjob.dev",
                "v1alpha1",
                "codingjobclasses",
                field_selector=f"metadata.name={CLASS}",
            )["items"]
        ),
        60,
    )
    custom.create_cluster_custom_object("codingjob.dev", "v1alpha1", "codingjobclasses", job_class)
    yield key
    custom.delete_cluster_custom_object("codingjob.dev", "v1alpha1", "codingjobclasses", CLASS)
    helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", check=False)
    core.delete_namespace(SYSTEM)


@pytest.fixture
def job_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace the relay release's operator watches."""
    core = client.CoreV1Api(kube_api)
    name = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        wait_for(
            "default service account",
            lambda: core.list_namespaced_service_account(name).items,
            60,
        )
        yield name
    finally:
        # The jobs go first, while the namespace is still watched: once it is being deleted the
        # operator no longer sees it (README "Troubleshooting") and a job's finalizer would stay.
        custom = client.CustomObjectsApi(kube_api)
        custom.delete_collection_namespaced_custom_object(
            "codingjob.dev", "v1alpha1", name, "codingjobs"
        )
        with contextlib.suppress(AssertionError):
            wait_for(
                "the jobs released",
                lambda: (
                    not custom.list_namespaced_custom_object(
                        "codingjob.dev", "v1alpha1", name, "codingjobs"
                    )["items"]
                ),
                120,
                interval=2,
            )
        core.delete_namespace(name, propagation_policy="Background")


def relayed_job(
    name: str, scenario: str, provider: str | None = None, **spec: Any
) -> dict[str, Any]:
    """A CodingJob of the relay's class that names no endpoint: it goes through the relay."""
    model: dict[str, Any] = {"name": f"scripted/{scenario}"}
    if provider is not None:
        model["provider"] = provider
    return {
        "apiVersion": "codingjob.dev/v1alpha1",
        "kind": "CodingJob",
        "metadata": {"name": name},
        "spec": {
            "className": CLASS,
            "task": f"Scripted scenario {scenario}",
            "model": model,
            "workspace": {"size": "1Gi"},
            "gui": {"enabled": False},
            "jupyter": {"enabled": False},
            **spec,
        },
    }


def test_job_through_the_relay_keeps_the_provider_key_out_of_the_sandbox(
    provider_key: str, kube_api: client.ApiClient, job_namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    api = client.CustomObjectsApi(kube_api)
    namespace = job_namespace
    # The provider is the relay's default (`scripted`), the one that holds the key: the scripted
    # model answers only with it, so the tokens counted below also show the key reached it.
    job = relayed_job("relayed", "never-finish")
    api.create_namespaced_custom_object("codingjob.dev", "v1alpha1", namespace, "codingjobs", job)

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


def test_the_model_answers_only_through_the_provider_with_the_key(
    provider_key: str, kube_api: client.ApiClient, job_namespace: str
) -> None:
    """Claims row 47: with the key (provider `scripted`) the job succeeds; without it (provider
    `keyless`, the same model) the model refuses it, and the job fails at once with the reason
    instead of retrying until its deadline."""
    api = client.CustomObjectsApi(kube_api)
    namespace = job_namespace
    # A deadline far beyond the wait below: a refused key retried as an outage would hold the
    # keyless job Running (ModelDegraded) until then.
    limits = {"activeDeadlineSeconds": 1800}
    for name, provider in (("with-key", "scripted"), ("without-key", "keyless")):
        job = relayed_job(name, "todo-app", provider, limits=limits)
        api.create_namespaced_custom_object(
            "codingjob.dev", "v1alpha1", namespace, "codingjobs", job
        )

    def finished(name: str) -> Callable[[], dict[str, Any] | None]:
        def probe() -> dict[str, Any] | None:
            obj = api.get_namespaced_custom_object(
                "codingjob.dev", "v1alpha1", namespace, "codingjobs", name
            )
            status: dict[str, Any] = obj.get("status") or {}
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        return probe

    refused = wait_for("the keyless job to end", finished("without-key"), 240, interval=2)
    assert (refused["phase"], refused["reason"]) == ("Failed", "ModelError"), refused
    assert "refused the relay's API key" in refused["message"], refused
    assert provider_key not in json.dumps(refused)
    degraded = [c for c in refused.get("conditions", []) if c["type"] == "ModelDegraded"]
    assert all(c["status"] != "True" for c in degraded), degraded

    done = wait_for("the keyed job to end", finished("with-key"), 300, interval=2)
    assert (done["phase"], done["reason"]) == ("Succeeded", "Completed"), done
    assert done["tokens"]["prompt"] > 0
