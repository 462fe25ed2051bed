"""A third-party OpenAI-compatible gateway in the loop: the LiteLLM proxy (PyPI `litellm[proxy]`,
master key only, no database) between the model relay and the scripted model. The todo-app
scenario runs to the end with the real agent and sidecar as local processes:

    agent -> sidecar -> model relay -> LiteLLM proxy -> scripted model

The scripted model finds its turn from the tool call ids in the conversation, so the run only
completes if LiteLLM passes those ids through unchanged.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.fixtures.relay import ModelRelay
from tests.fixtures.scripted_model import ContextManager, ScriptedModel
from tests.integration.test_agent_image import TODO_APP_FILES, LocalRun

LITELLM = "litellm[proxy]==1.108.5"
#: LiteLLM imports for most of a minute on a busy machine.
START_TIMEOUT = 240.0
CACHE = Path(os.environ.get("CODINGJOB_CACHE", Path.home() / ".cache" / "codingjob"))


@pytest.fixture(scope="session")
def litellm() -> Path:
    """The `litellm` command, installed once into a virtualenv of its own in the cache (its
    dependencies would clash with the project's pins)."""
    venv = CACHE / "litellm-1.108.5"
    command = venv / "bin" / "litellm"
    if not command.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", LITELLM], check=True, timeout=1800
        )
    return command


@pytest.fixture
def litellm_proxy(litellm: Path, tmp_path: Path) -> Iterator[Callable[..., tuple[str, str]]]:
    """Factory: ``litellm_proxy(model)`` serves ``model.model`` through LiteLLM; returns its
    base URL and master key."""
    started: list[subprocess.Popen[bytes]] = []

    def start(model: ScriptedModel) -> tuple[str, str]:
        master = "sk-master-" + secrets.token_hex(12)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = tmp_path / "litellm.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "model_list": [
                        {
                            "model_name": model.model,
                            "litellm_params": {
                                "model": f"openai/{model.model}",
                                "api_base": model.base_url,
                                "api_key": "unused",
                            },
                        }
                    ],
                    "general_settings": {"master_key": master},
                }
            )
        )
        # LiteLLM logs nothing on start at LITELLM_LOG=ERROR: wait for its liveness endpoint.
        process = subprocess.Popen(
            [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "litellm.log").open("w"),
        )
        started.append(process)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health/liveliness", timeout=2
                ):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the LiteLLM proxy did not start:\n"
                        + (tmp_path / "litellm.log").read_text()
                    ) from None
                time.sleep(1)
        return f"http://127.0.0.1:{port}/v1", master

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_todo_app_completes_through_the_relay_and_litellm(
    tmp_path: Path,
    scripted_model: Callable[..., ScriptedModel],
    context_manager: Callable[..., ContextManager],
    model_relay: Callable[..., ModelRelay],
    litellm_proxy: Callable[..., tuple[str, str]],
) -> None:
    model = scripted_model("todo-app")
    base_url, master = litellm_proxy(model)
    key_file = tmp_path / "litellm-key"
    key_file.write_text(master)
    relay = model_relay([{"name": "litellm", "baseURL": base_url, "apiKeyFile": str(key_file)}])
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    sidecar = context_manager(
        model,
        workspace,
        MODEL_BASE_URL=relay.base_url,
        MODEL_API_KEY=relay.credential("litellm"),
    )
    run = LocalRun(workspace, model, sidecar)
    code, out = run.run(CODINGJOB_MAX_STEPS="20")
    assert code == 0, out + relay.server.log()
    result = run.result()
    assert (result["outcome"], result["reason"], result["steps"]) == ("Succeeded", "Completed", 9)
    assert sorted(p.name for p in (workspace / "todo-app").iterdir()) == TODO_APP_FILES
    seen = model.requests()
    assert len(seen) == 9 and all(r["status"] == 200 for r in seen)
    assert master not in sidecar.server.log() + out
