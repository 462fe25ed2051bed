"""The model relay in the chart: its configuration loads in the relay, keys stay with it."""

from __future__ import annotations

from pathlib import Path

import yaml
from codingjob_relay.config import RelayConfig

from tests.unit.chart.chartlib import CHART, Helm, find
from tests.unit.chart.test_chart_manifests import env_of, operator_config, pod_specs

RELAY = "codingjob-model-relay"
VALUES = CHART / "ci" / "relay-values.yaml"


def test_relay_is_off_by_default(helm: Helm) -> None:
    manifests = helm.render()
    assert RELAY not in pod_specs(manifests)
    assert not any(k.startswith("CODINGJOB_RELAY_") for k in operator_config(manifests))


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
