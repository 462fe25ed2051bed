"""Scenario files of the scripted test model, and how a model name picks one.

A scenario is ``{"description", "turns": [{"expect"?, "message"}], "afterLastTurn"}``; each
message is an assistant message whose tool calls carry their arguments as a JSON object.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The model name the demo uses by default, and the scenario it plays.
DEMO_MODEL = "scripted-demo-model"
DEMO_SCENARIO = "todo-app"
#: ``scripted/<name>`` plays ``<name>.json`` from the scenario directory.
MODEL_PREFIX = "scripted/"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: The scenarios shipped with the package.
PACKAGED_SCENARIOS = Path(__file__).parent / "scenarios"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ScriptedFunction(_Strict):
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptedToolCall(_Strict):
    type: Literal["function"] = "function"
    function: ScriptedFunction


class ScriptedMessage(_Strict):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)


class Expect(_Strict):
    """What the request for a turn must carry."""

    #: Substrings that must appear in the tool results answering the previous turn.
    tool_results_contain: list[str] = Field(default_factory=list, alias="toolResultsContain")


class Turn(_Strict):
    expect: Expect | None = None
    message: ScriptedMessage


class Scenario(_Strict):
    description: str
    turns: list[Turn] = Field(min_length=1)
    #: After the last turn: fail the request, or play the last turn again (for endless runs).
    after_last_turn: Literal["error", "repeat-last"] = Field("error", alias="afterLastTurn")


class UnknownModel(LookupError):
    """The model name names no scenario."""


def scenario_name(model: str) -> str:
    """The scenario a model name plays; raises UnknownModel."""
    if model == DEMO_MODEL:
        return DEMO_SCENARIO
    if model.startswith(MODEL_PREFIX) and _NAME.match(model[len(MODEL_PREFIX) :]):
        return model[len(MODEL_PREFIX) :]
    raise UnknownModel(
        f"unknown model {model!r}: the scripted test model serves {DEMO_MODEL!r} and "
        f"'{MODEL_PREFIX}<scenario>'"
    )


def scenario_path(directory: Path, model: str) -> Path:
    """The file of the scenario ``model`` plays; raises UnknownModel when it does not exist."""
    path = directory / f"{scenario_name(model)}.json"
    if not path.is_file():
        raise UnknownModel(f"model {model!r}: no scenario file {path.name} in {directory}")
    return path


def load_scenario(path: Path) -> Scenario:
    """The scenario in ``path``; raises pydantic's ValidationError on a malformed file."""
    return Scenario.model_validate_json(path.read_bytes())


def model_names(directory: Path) -> list[str]:
    """Model names for every scenario in ``directory``."""
    names = [f"{MODEL_PREFIX}{p.stem}" for p in sorted(directory.glob("*.json"))]
    if (directory / f"{DEMO_SCENARIO}.json").is_file():
        names.insert(0, DEMO_MODEL)
    return names
