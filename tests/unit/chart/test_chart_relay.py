"""The model relay in the chart: its configuration loads in the relay, keys stay with it."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
import yaml
from codingjob_relay.config import RelayConfig

from tests.fixtures.relay import ModelRelay
from tests.fixtures.scripted_model import ScriptedModel
from tests.unit.chart.chartlib import CHART, Helm, find
from tests.unit.chart.test_chart_manifests import env_of, operator_config, pod_specs

REPO = CHART.parent.parent
_spec = importlib.util.spec_from_file_location("demo_job", REPO / "hack" / "demo_job.py")
assert _spec is not None and _spec.loader is not None
demo_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_job)

RELAY = "codingjob-model-relay"
VALUES = CHART / "ci" / "relay-values.yaml"


def test_relay_is_on_by_default_and_serves_the_default_endpoint(helm: Helm) -> None:
    manifests = helm.render(sets=["defaultModel.baseURL=http://vllm.models.svc:8000/v1"])
    assert RELAY in pod_specs(manifests)
    config = operator_config(manifests)
    assert config["CODINGJOB_RELAY_URL"].startswith(f"http://{RELAY}.")
    # The operator's default endpoint becomes the relay's keyless provider `default`.
    assert config["CODINGJOB_RELAY_DEFAULT_PROVIDER"] == "default"
    relay_config = next(
        m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == RELAY
    )
    assert "http://vllm.models.svc:8000/v1" in json.dumps(relay_config["data"])
    assert "apiKeySecret" not in json.dumps(relay_config["data"])


def test_relay_off_sends_jobs_to_their_endpoint_directly(helm: Helm) -> None:
    manifests = helm.render(sets=["relay.enabled=false"])
    assert RELAY not in pod_specs(manifests)
    assert not any(k.startswith("CODINGJOB_RELAY_") for k in operator_config(manifests))


def test_relay_without_any_provider_names_no_default(helm: Helm) -> None:
    # Jobs then fail ModelNotConfigured with a reason, rather than calling an empty relay.
    config = operator_config(helm.render())
    assert "CODINGJOB_RELAY_DEFAULT_PROVIDER" not in config


def test_relay_configuration_loads_and_keys_are_mounted_files(helm: Helm, tmp_path: Path) -> None:
    manifests = helm.render([VALUES])
    text = find(manifests, "ConfigMap", RELAY)["data"]["relay.yaml"]
    (tmp_path / "relay.yaml").write_text(text)
    config = RelayConfig.load(tmp_path / "relay.yaml")
    openai = config.provider("openai")
    assert openai is not None and openai.api_key_file is not None
    assert "apiKeySecret" not in yaml.safe_load(text)["providers"][1]
    relay = pod_specs(manifests)[RELAY]
    mounts = {m["mountPath"]: m["name"] for m in relay["containers"][0]["volumeMounts"]}
    assert mounts[str(openai.api_key_file.parent)] == "key-openai"
    volumes = {v["name"]: v for v in relay["volumes"]}
    assert volumes["key-openai"]["secret"]["secretName"] == "openai-key"
    assert relay["containers"][0]["command"] == [
        "codingjob-model-relay",
        "--port=8080",
        "--metrics-port=9090",
        "--log-format=json",
    ]
    assert env_of(relay["containers"][0])["CODINGJOB_RELAY_JOB_CHECK"] == "kubernetes"


def test_provider_keys_reach_only_the_relay(helm: Helm) -> None:
    specs = pod_specs(helm.render([VALUES]))
    for name, spec in specs.items():
        secrets = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        assert ("openai-key" in secrets) is (name == RELAY), name


def test_operator_signs_with_the_relays_key(helm: Helm) -> None:
    manifests = helm.render([VALUES])
    config = operator_config(manifests)
    assert config["CODINGJOB_RELAY_URL"] == (f"http://{RELAY}.codingjob-system.svc:8080/v1")
    assert config["CODINGJOB_RELAY_DEFAULT_PROVIDER"] == "scripted"
    operator = pod_specs(manifests)["codingjob"]
    relay = pod_specs(manifests)[RELAY]

    def signing(spec: dict[str, object]) -> set[str]:
        volumes = spec["volumes"]
        assert isinstance(volumes, list)
        return {
            v["secret"]["secretName"]
            for v in volumes
            if v["name"] in ("signing-key", "relay-signing-key")
        }

    assert signing(operator) == signing(relay) == {f"{RELAY}-signing-key"}
    key = find(manifests, "Secret", f"{RELAY}-signing-key")
    assert len(key["data"]["signing-key"]) >= 64


def test_relay_may_only_read_codingjobs(helm: Helm) -> None:
    manifests = helm.render([VALUES])
    role = find(manifests, "ClusterRole", RELAY)
    assert role["rules"] == [
        {"apiGroups": ["codingjob.dev"], "resources": ["codingjobs"], "verbs": ["get"]}
    ]
    assert pod_specs(manifests)[RELAY]["serviceAccountName"] == RELAY


def test_scripted_model_is_the_default_provider_without_providers(helm: Helm) -> None:
    manifests = helm.render(sets=["relay.enabled=true", "scriptedModel.enabled=true"])
    providers = yaml.safe_load(find(manifests, "ConfigMap", RELAY)["data"]["relay.yaml"])
    assert providers["providers"] == [
        {"name": "scripted", "baseURL": "http://scripted-model.codingjob-system.svc:8000/v1"}
    ]
    assert operator_config(manifests)["CODINGJOB_RELAY_DEFAULT_PROVIDER"] == "scripted"


def test_scripted_model_requires_no_key_by_default(helm: Helm) -> None:
    manifests = helm.render(sets=["scriptedModel.enabled=true"])
    model = pod_specs(manifests)["scripted-model"]
    assert not [a for a in model["containers"][0]["command"] if "api-key" in a]
    assert not [v for v in model["volumes"] if "secret" in v]


def test_scripted_model_requires_the_key_of_its_secret(helm: Helm, tmp_path: Path) -> None:
    manifests = helm.render(
        sets=[
            "scriptedModel.enabled=true",
            "scriptedModel.apiKeySecret.name=model-key",
            "scriptedModel.apiKeySecret.key=token",
        ]
    )
    model = pod_specs(manifests)["scripted-model"]
    container = model["containers"][0]
    assert (
        container["command"][-1]
        == "--require-api-key-file=/var/run/secrets/codingjob/api-key/token"
    )
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-key")
    assert mount == {
        "name": "api-key",
        "mountPath": "/var/run/secrets/codingjob/api-key",
        "readOnly": True,
    }
    volume = next(v for v in model["volumes"] if v["name"] == "api-key")
    assert volume["secret"] == {
        "secretName": "model-key",
        "items": [{"key": "token", "path": "token"}],
    }
    # Without providers of its own, the relay's provider `scripted` holds the same key, and the
    # relay reads it where it mounts that Secret.
    text = find(manifests, "ConfigMap", RELAY)["data"]["relay.yaml"]
    (tmp_path / "relay.yaml").write_text(text)
    scripted = RelayConfig.load(tmp_path / "relay.yaml").provider("scripted")
    assert scripted is not None and scripted.api_key_file is not None
    relay = pod_specs(manifests)[RELAY]
    mounts = {m["mountPath"]: m["name"] for m in relay["containers"][0]["volumeMounts"]}
    assert scripted.api_key_file.name == "token"
    key_volume = mounts[str(scripted.api_key_file.parent)]
    assert next(v for v in relay["volumes"] if v["name"] == key_volume)["secret"] == {
        "secretName": "model-key",
        "items": [{"key": "token", "path": "token"}],
    }
    # The sandboxes never get it: only the relay and the scripted model mount the Secret.
    for name, spec in pod_specs(manifests).items():
        secrets = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        assert ("model-key" in secrets) is (name in (RELAY, "scripted-model")), name


@pytest.mark.parametrize("half", ["name=model-key", "key=token"])
def test_scripted_model_key_needs_a_name_and_a_key(helm: Helm, half: str) -> None:
    error = helm.render_error(
        sets=["scriptedModel.enabled=true", f"scriptedModel.apiKeySecret.{half}"]
    )
    assert "scriptedModel.apiKeySecret needs both name and key" in error


def _demo_relay_config(helm: Helm, tmp_path: Path, base_url: str) -> list[dict[str, object]]:
    """The relay providers `make demo` configures for LLM_BASE_URL (hack/demo_job.py values,
    rendered by the chart), with the key file where the provider Secret would be mounted."""
    values = tmp_path / "demo-values.yaml"
    values.write_text(
        yaml.safe_dump(demo_job.relay_values(base_url, "llm-provider"), sort_keys=False)
    )
    manifests = helm.render([values])
    providers: list[dict[str, object]] = yaml.safe_load(
        find(manifests, "ConfigMap", RELAY)["data"]["relay.yaml"]
    )["providers"]
    key_file = Path(str(providers[0]["apiKeyFile"]))
    assert key_file.name == "api-key" and key_file.parent.name == "llm"
    return providers


def test_demo_with_a_real_provider_uses_the_key_through_the_relay(
    helm: Helm,
    tmp_path: Path,
    scripted_model: Callable[..., ScriptedModel],
    model_relay: Callable[..., ModelRelay],
) -> None:
    """`LLM_* make demo` against an endpoint that requires its key: 401 without, done with."""
    provider = scripted_model("todo-app", api_key="sk-demo-provider-key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=provider.base_url, api_key="wrong", max_retries=0).models.list()
    sample = yaml.safe_load((REPO / "crds" / "samples" / "todo-app.yaml").read_text())
    job = demo_job.job(sample, "codingjob-demo", demo_job.PROVIDER, provider.model)
    assert "baseURL" not in job["spec"]["model"] and "apiKeySecretRef" not in job["spec"]["model"]
    results = {}
    for key in ("sk-wrong", "sk-demo-provider-key"):
        providers = _demo_relay_config(helm, tmp_path, provider.base_url)
        key_file = tmp_path / f"key-{len(results)}"
        key_file.write_text(key + "\n")  # what the mounted Secret holds
        providers[0]["apiKeyFile"] = str(key_file)
        relay = model_relay(providers)
        client = openai.OpenAI(
            base_url=relay.base_url,
            api_key=relay.credential(job["spec"]["model"]["provider"]),
            max_retries=0,
        )
        try:
            answer = client.chat.completions.create(
                model=job["spec"]["model"]["name"],
                messages=[
                    {"role": "system", "content": "You are a coding agent."},
                    {"role": "user", "content": job["spec"]["task"]},
                ],
                tools=[{"type": "function", "function": {"name": "bash", "parameters": {}}}],
            )
            results[key] = answer.choices[0].message.tool_calls[0].function.name  # type: ignore[index, union-attr]
        except openai.APIStatusError as error:
            results[key] = error.code
        assert key not in relay.server.log()
    assert results == {"sk-wrong": "provider_auth_failed", "sk-demo-provider-key": "bash"}
