"""Settings from the pod's environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from codingjob_agent.context.settings import Settings, SettingsError, Strategy

BASE = {"CODINGJOB_MODEL_BASE_URL": "http://model/v1", "CODINGJOB_MODEL_NAME": "m"}


def test_defaults_follow_the_pod_contract() -> None:
    settings = Settings.from_env(BASE)
    assert settings.max_tokens == 1_000_000
    assert settings.encoding == "cl100k_base"
    assert settings.strategy is Strategy.MASK_OBSERVATIONS
    assert settings.budget == 1_000_000 - 4096
    assert settings.journal_path == Path("/workspace/.context-manager/context.jsonl")
    assert settings.transcript_path == Path("/workspace/.context-manager/context.txt")
    assert (settings.gateway_port, settings.stats_host, settings.stats_port) == (
        8080,
        "127.0.0.1",
        8081,
    )
    assert settings.model_api_key is None


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "CODINGJOB_MODEL_API_KEY": "sk-test",
            "CODINGJOB_MODEL_TEMPERATURE": "0.2",
            "CODINGJOB_MODEL_MAX_OUTPUT_TOKENS": "1000",
            "CODINGJOB_CONTEXT_MAX_TOKENS": "8000",
            "CODINGJOB_CONTEXT_STRATEGY": "summarize",
            "CODINGJOB_MAX_TOTAL_TOKENS": "50000",
            "CODINGJOB_STATS_HOST": "10.0.0.7",
            "CODINGJOB_WORKSPACE": "/data/ws",
        }
    )
    assert settings.model_api_key == "sk-test"
    assert settings.model_temperature == 0.2
    assert settings.budget == 7000
    assert settings.strategy is Strategy.SUMMARIZE
    assert settings.max_total_tokens == 50000
    assert settings.stats_host == "10.0.0.7"
    assert settings.journal_path == Path("/data/ws/.context-manager/context.jsonl")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CODINGJOB_MODEL_NAME": "m"}, "MODEL_BASE_URL"),
        ({**BASE, "CODINGJOB_CONTEXT_STRATEGY": "forget"}, "must be one of"),
        ({**BASE, "CODINGJOB_CONTEXT_MAX_TOKENS": "lots"}, "not a valid number"),
        ({**BASE, "CODINGJOB_MAX_TOTAL_TOKENS": "-1"}, "must not be negative"),
        (
            {
                **BASE,
                "CODINGJOB_CONTEXT_MAX_TOKENS": "4000",
                "CODINGJOB_MODEL_MAX_OUTPUT_TOKENS": "3900",
            },
            "at least 256",
        ),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
