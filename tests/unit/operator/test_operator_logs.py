"""`--log-format json`: the operator, the archiver and the sidecar write one JSON object per line,
with the job's namespace, name and uid on lines about a job; the lines are parsed here."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest
from codingjob_agent import logformat as agent_logformat
from codingjob_operator import builders
from codingjob_operator import logformat as operator_logformat
from codingjob_operator.__main__ import configure_logging, parse_options

JOB = {"namespace": "team-a", "name": "todo", "uid": "u-1"}


def record(**extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("codingjob.x", logging.WARNING, __file__, 1, "took %ds", (3,), None)
    rec.created = 1767268800.5  # 2026-01-01T12:00:00.5Z
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_formatter_writes_one_json_object_with_the_job() -> None:
    line = operator_logformat.JsonFormatter().format(record(job=JOB))
    assert "\n" not in line
    assert json.loads(line) == {
        "timestamp": "2026-01-01T12:00:00.500000+00:00",
        "severity": "warn",
        "logger": "codingjob.x",
        "message": "took 3s",
        "job": JOB,
    }


def test_formatter_falls_back_to_the_process_job_and_keeps_tracebacks_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record(exc_info=sys.exc_info())
        rec.exc_info = sys.exc_info()
    line = operator_logformat.JsonFormatter(JOB).format(rec)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["job"] == JOB
    assert "ValueError: boom" in parsed["exc_info"]


def test_sidecar_copy_writes_the_same_lines() -> None:
    # Two copies (the packages ship in different images); they must not drift apart.
    for extra, job in (({"job": JOB}, None), ({}, JOB), ({}, None)):
        ours = operator_logformat.JsonFormatter(job).format(record(**extra))
        theirs = agent_logformat.JsonFormatter(job).format(record(**extra))
        assert ours == theirs


def lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CODINGJOB_")}
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


IDENTITY = {
    "CODINGJOB_LOG_FORMAT": "json",
    "CODINGJOB_NAMESPACE": "team-a",
    "CODINGJOB_NAME": "todo",
    "CODINGJOB_UID": "u-1",
}


def test_archiver_logs_json_lines_about_its_job(tmp_path: Any) -> None:
    # No storage settings: the archiver logs why and exits permanently failed.
    env = {**IDENTITY, "CODINGJOB_TERMINATION_LOG": str(tmp_path / "termination")}
    result = run("codingjob_operator.archiver", env)
    assert result.returncode != 0
    parsed = lines(result.stderr)
    assert parsed, result.stderr
    assert all(p["job"] == JOB for p in parsed)
    assert any(p["severity"] == "error" and "invalid settings" in p["message"] for p in parsed)


def test_sidecar_logs_json_lines_about_its_job() -> None:
    # No model settings: the sidecar logs the configuration error and exits.
    result = run("codingjob_agent.context", IDENTITY)
    assert result.returncode == 2
    parsed = lines(result.stderr)
    assert parsed, result.stderr
    assert all(p["job"] == JOB for p in parsed)
    assert any("invalid configuration" in p["message"] for p in parsed)


def test_plain_stays_the_default() -> None:
    result = run("codingjob_agent.context", {"CODINGJOB_NAME": "todo"})
    assert result.returncode == 2
    assert "ERROR codingjob.context: invalid configuration" in result.stderr


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_operator_json_lines_carry_the_job(
    capsys: pytest.CaptureFixture[str], restore_logging: Any
) -> None:
    options = parse_options(["--log-format", "json"], {})
    configure_logging(options)
    ref = operator_logformat.job_ref("team-a", "todo", "u-1")
    logging.getLogger("codingjob_operator.reconciler").info("deleting", extra={"job": ref})
    logging.getLogger("codingjob_operator.handlers").info("no job here")
    parsed = lines(capsys.readouterr().err)
    assert parsed[0]["message"] == "deleting" and parsed[0]["job"] == JOB
    assert parsed[0]["severity"] == "info"
    assert parsed[1]["message"] == "no job here" and "job" not in parsed[1]


def test_log_format_from_the_environment() -> None:
    assert parse_options([], {"CODINGJOB_LOG_FORMAT": "json"}).log_format == "json"
    assert parse_options([], {}).log_format == "plain"


def test_sidecar_and_archiver_get_the_switch_only_for_json() -> None:
    job = builders.JobRef(name="todo", namespace="team-a", uid="u-1")
    assert builders.log_env(job, "plain") == {}
    assert builders.log_env(job, "json") == {
        "CODINGJOB_LOG_FORMAT": "json",
        "CODINGJOB_NAME": "todo",
        "CODINGJOB_NAMESPACE": "team-a",
        "CODINGJOB_UID": "u-1",
    }


def test_agent_pod_sidecar_gets_the_json_switch() -> None:
    from codingjob_operator.models import CodingJobSpec

    job = builders.JobRef(name="todo", namespace="team-a", uid="u-1")
    spec = CodingJobSpec.model_validate({"task": "t"})
    images = builders.Images(agent="a", operator="o")
    model = builders.ModelEndpoint(base_url="http://m/v1", name="m")

    def sidecar_env(log_format: str) -> dict[str, str]:
        pod = builders.agent_pod(job, spec, images=images, model=model, log_format=log_format)
        (sidecar,) = pod["spec"]["initContainers"]
        return {e["name"]: e.get("value", "") for e in sidecar["env"]}

    assert sidecar_env("json")["CODINGJOB_LOG_FORMAT"] == "json"
    assert "CODINGJOB_LOG_FORMAT" not in sidecar_env("plain")
