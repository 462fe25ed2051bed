"""The scripted model's scenario files: valid, generated from their sources, and the todo app
they build passes its own tests."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from codingjob_agent.agent.tools import TOOL_NAMES
from codingjob_agent.scripted_model.scenario import PACKAGED_SCENARIOS, load_scenario

from tests.fixtures.cluster import unavailable

SOURCES = Path(__file__).resolve().parents[3] / "agent-image" / "scenario_sources"
OURS = [
    "todo-app",
    "fail",
    "never-finish",
    "ignore-deadline",
    "resume",
    "edit-errors",
    "adversary",
]
NEVER_FINISHING = {"never-finish", "ignore-deadline", "adversary"}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_scenarios", SOURCES / "make_scenarios.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", OURS)
def test_scenario_is_valid_and_uses_only_agent_tools(name: str) -> None:
    scenario = load_scenario(PACKAGED_SCENARIOS / f"{name}.json")
    called = {c.function.name for t in scenario.turns for c in t.message.tool_calls}
    assert called <= TOOL_NAMES
    last = scenario.turns[-1].message.tool_calls
    if name in NEVER_FINISHING:
        assert scenario.after_last_turn == "repeat-last" and "finish" not in called
    else:
        assert [c.function.name for c in last] == ["finish"]


@pytest.mark.parametrize("name", OURS)
def test_committed_scenarios_match_their_sources(name: str) -> None:
    gen = generator()
    expected = gen.render(gen.scenarios()[name])
    actual = (PACKAGED_SCENARIOS / f"{name}.json").read_text()
    assert actual == expected, "run agent-image/scenario_sources/make_scenarios.py"


def test_the_todo_app_passes_its_tests(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        # The image test runs the same check inside the agent image, where node is installed.
        # hack/install-deps.sh installs node: in CI its absence is a broken machine.
        unavailable("node is not installed on this machine")
    scenario = load_scenario(PACKAGED_SCENARIOS / "todo-app.json")
    for t in scenario.turns:
        for c in t.message.tool_calls:
            if c.function.name == "create":
                target = tmp_path / c.function.arguments["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(c.function.arguments["file_text"])
    app = tmp_path / "todo-app"
    assert sorted(p.name for p in app.iterdir()) == [
        "app.js",
        "index.html",
        "todo.js",
        "todo.test.js",
    ]
    proc = subprocess.run(
        [node, "--test"], cwd=app, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fail 0" in proc.stdout
