"""Reading the pod contract's environment, writing results, and the command line."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
from codingjob_agent.agent.__main__ import main
from codingjob_agent.agent.config import AgentConfig, ConfigError
from codingjob_agent.agent.results import write_result
from codingjob_agent.protocol import AgentReason, AgentResult, Outcome

BASE = {"CODINGJOB_GATEWAY_URL": "http://127.0.0.1:8080/", "CODINGJOB_TASK": "t"}


def test_defaults_and_values() -> None:
    cfg = AgentConfig.from_env(
        {
            **BASE,
            "CODINGJOB_WORKSPACE": "/w",
            "CODINGJOB_MAX_STEPS": "40",
            "CODINGJOB_DEADLINE_SECONDS": "600",
            "CODINGJOB_STARTED_AT": "1000",
            "CODINGJOB_MODEL_SUPPORTS_IMAGES": "true",
            "CODINGJOB_TERMINATION_LOG": "/tmp/t",
        }
    )
    assert cfg.gateway_url == "http://127.0.0.1:8080"
    assert (cfg.workspace, cfg.max_steps, cfg.deadline) == (Path("/w"), 40, 1600.0)
    assert cfg.model_supports_images and cfg.termination_log == Path("/tmp/t")
    plain = AgentConfig.from_env(BASE)
    assert (plain.max_steps, plain.deadline, plain.model_supports_images) == (0, None, False)
    assert plain.termination_log == Path("/dev/termination-log")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CODINGJOB_MAX_STEPS", "ten", "must be an integer"),
        ("CODINGJOB_DEADLINE_SECONDS", "-5", "must not be negative"),
        ("CODINGJOB_MODEL_SUPPORTS_IMAGES", "maybe", "true or false"),
        ("CODINGJOB_GATEWAY_URL", "127.0.0.1:8080", "http(s) URL"),
        ("CODINGJOB_STARTED_AT", "yesterday", "epoch seconds"),
    ],
)
def test_invalid_values(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf".*{name}.*") as info:
        AgentConfig.from_env({**BASE, name: value})
    assert message in str(info.value)


def test_write_result_and_termination_message(tmp_path: Path) -> None:
    result = AgentResult(
        outcome=Outcome.SUCCEEDED, reason=AgentReason.COMPLETED, steps=3, summary="x" * 5000
    )
    log = tmp_path / "termination-log"
    write_result(result, tmp_path, log)
    stored = json.loads((tmp_path / ".codingjob/result.json").read_text())
    assert stored["outcome"] == "Succeeded" and len(stored["summary"]) == 5000
    short = json.loads(log.read_text())
    assert short["steps"] == 3 and len(short["summary"]) == 1024
    assert len(log.read_bytes()) <= 4096
    # An unwritable termination log (outside Kubernetes) does not lose result.json.
    write_result(result, tmp_path, tmp_path / "missing-dir" / "log")


def test_a_full_workspace_still_gets_the_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """result.json cannot be written on a full workspace: the termination message, which the
    operator reads, still says why the run ended, and no half-written file is left."""
    result = AgentResult(
        outcome=Outcome.FAILED, reason=AgentReason.WORKSPACE_FULL, message="the volume is full"
    )
    real_write_text = Path.write_text

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.parent.name == ".codingjob":
            real_write_text(self, "{", encoding="utf-8")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    log = tmp_path / "termination-log"
    write_result(result, tmp_path, log)
    assert json.loads(log.read_text())["reason"] == "WorkspaceFull"
    assert list((tmp_path / ".codingjob").iterdir()) == []


def test_report_command_writes_a_failed_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODINGJOB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("CODINGJOB_TERMINATION_LOG", str(tmp_path / "log"))
    assert main(["report", "--reason", "InvalidEnvironment", "--message", "no task"]) == 0
    stored = json.loads((tmp_path / ".codingjob/result.json").read_text())
    assert stored["reason"] == "InvalidEnvironment" and stored["outcome"] == "Failed"
    assert json.loads((tmp_path / "log").read_text())["message"] == "no task"


def test_invalid_environment_exits_non_zero_with_a_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODINGJOB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("CODINGJOB_TERMINATION_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("CODINGJOB_GATEWAY_URL", "not a url")
    assert main([]) == 2
    stored = json.loads((tmp_path / ".codingjob/result.json").read_text())
    assert stored["reason"] == "InvalidEnvironment"
