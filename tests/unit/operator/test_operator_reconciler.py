"""Pure parts of the reconciler: model endpoint → NetworkPolicy peers, archiver environment."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from codingjob_operator.__main__ import RunOptions, parse_options
from codingjob_operator.builders import EgressPeer
from codingjob_operator.config import OperatorConfig
from codingjob_operator.reconciler import RetryLater, resolve_model_peers, storage_env
from codingjob_operator.storage import SessionCredentials, StorageSettings
from pydantic import SecretStr

SERVICE = {
    "spec": {
        "clusterIP": "10.96.0.42",
        "selector": {"app": "scripted-model"},
        "ports": [{"port": 8000, "targetPort": "http"}, {"port": 9090, "targetPort": 9090}],
    }
}


def no_dns(*_: Any, **__: Any) -> list[Any]:
    raise AssertionError("must not resolve")


def fake_dns(*addresses: str) -> Any:
    def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return getaddrinfo


def test_cluster_service_is_allowed_by_its_pods() -> None:
    seen = []

    def read(ns: str, name: str) -> dict[str, Any]:
        seen.append((ns, name))
        return SERVICE

    peers = resolve_model_peers("http://scripted-model.codingjob-system.svc:8000/v1", read, no_dns)
    assert seen == [("codingjob-system", "scripted-model")]
    assert peers == [
        EgressPeer(
            cidrs=("10.96.0.42/32",),
            namespace="codingjob-system",
            pod_selector={"app": "scripted-model"},
            ports=("http", 8000),
        )
    ]


def test_external_host_is_allowed_by_address_on_its_port() -> None:
    peers = resolve_model_peers(
        "https://api.example.com/v1",
        lambda *_: None,
        fake_dns("203.0.113.7", "203.0.113.7", "2001:db8::1"),
    )
    assert peers == [EgressPeer(cidrs=("2001:db8::1/128", "203.0.113.7/32"), ports=(443,))]


def test_service_without_selector_falls_back_to_dns() -> None:
    peers = resolve_model_peers(
        "http://external.models.svc.cluster.local:8080",
        lambda *_: {"spec": {}},
        fake_dns("192.0.2.1"),
    )
    assert peers == [EgressPeer(cidrs=("192.0.2.1/32",), ports=(8080,))]


def test_unresolvable_host_is_retried() -> None:
    def fail(*_: Any, **__: Any) -> list[Any]:
        raise socket.gaierror("Name or service not known")

    with pytest.raises(RetryLater, match="model host"):
        resolve_model_peers("http://nowhere.invalid/v1", lambda *_: None, fail)


def test_storage_env_carries_the_session_not_the_operator_keys() -> None:
    settings = StorageSettings(
        access_key=SecretStr("operator-ak"),
        secret_key=SecretStr("operator-sk"),
        signer_access_key=SecretStr("signer-ak"),
        signer_secret_key=SecretStr("signer-sk"),
        bucket="arts",
        secure=True,
    )
    session = SessionCredentials("session-ak", "session-sk", "token", None)
    env = storage_env(settings, session)
    assert env["CODINGJOB_STORAGE_ACCESS_KEY"] == "session-ak"
    assert env["CODINGJOB_STORAGE_SECRET_KEY"] == "session-sk"
    assert env["CODINGJOB_STORAGE_SESSION_TOKEN"] == "token"
    assert env["CODINGJOB_STORAGE_BUCKET"] == "arts"
    assert env["CODINGJOB_STORAGE_SECURE"] == "true"
    assert not {"operator-ak", "operator-sk", "signer-ak", "signer-sk"} & set(env.values())
    # The archiver reads the same settings class back from this environment.
    parsed = StorageSettings.model_validate(
        {k.removeprefix("CODINGJOB_STORAGE_").lower(): v for k, v in env.items()}
    )
    assert parsed.bucket == "arts" and parsed.secure is True
    assert parsed.session_token is not None


def test_config_defaults_and_storage_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CODINGJOB_STORAGE_ACCESS_KEY", "CODINGJOB_AGENT_IMAGE"):
        monkeypatch.delenv(key, raising=False)
    config = OperatorConfig()
    assert config.agent_image == "codingjob/agent:dev"
    assert config.operator_image == "codingjob/operator:dev"
    assert config.image_pull_policy == "IfNotPresent"
    assert config.storage is None
    monkeypatch.setenv("CODINGJOB_STORAGE_ACCESS_KEY", "ak")
    monkeypatch.setenv("CODINGJOB_STORAGE_SECRET_KEY", "sk")
    monkeypatch.setenv("CODINGJOB_AGENT_IMAGE", "example.com/agent:1")
    config = OperatorConfig()
    assert config.agent_image == "example.com/agent:1"
    assert config.storage is not None and config.storage.access_key.get_secret_value() == "ak"


def test_command_line_defaults() -> None:
    options = parse_options([], {})
    assert options == RunOptions(
        namespaces=(), peering=None, liveness="http://0.0.0.0:8080/healthz", verbose=False
    )


def test_command_line_namespaces_and_peering() -> None:
    options = parse_options(
        ["-n", "a", "--namespace", "b", "--peering", "codingjob", "-v", "--liveness", "http://x/h"],
        {"CODINGJOB_WATCH_NAMESPACE": "ignored"},
    )
    assert options == RunOptions(
        namespaces=("a", "b"), peering="codingjob", liveness="http://x/h", verbose=True
    )


def test_watch_namespaces_from_environment() -> None:
    options = parse_options([], {"CODINGJOB_WATCH_NAMESPACE": "team-a, team-b,"})
    assert options.namespaces == ("team-a", "team-b")
