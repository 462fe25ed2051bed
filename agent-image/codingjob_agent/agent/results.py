"""Where the agent's outcome goes: result.json on the workspace and the termination message."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from codingjob_agent.protocol import RESULT_PATH, AgentResult

#: The agent's own bookkeeping next to the result, so that a restart keeps counting steps.
STATE_PATH = ".codingjob/agent-state.json"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_result(result: AgentResult, workspace: Path, termination_log: Path) -> None:
    """Write ``result`` to ``<workspace>/.codingjob/result.json`` and the termination log."""
    _atomic_write(workspace / RESULT_PATH, result.model_dump_json(indent=2) + "\n")
    try:
        termination_log.write_text(result.termination_message(), encoding="utf-8")
    except OSError as e:
        # Outside Kubernetes there is no /dev/termination-log; result.json is the record then.
        print(f"cannot write termination message to {termination_log}: {e}", file=sys.stderr)


@dataclass
class AgentState:
    """Progress that survives a container restart (the conversation itself is the sidecar's)."""

    steps: int = 0

    @classmethod
    def load(cls, workspace: Path) -> AgentState:
        """The saved state, or a fresh one when none (or an unreadable one) is there."""
        try:
            data = json.loads((workspace / STATE_PATH).read_text(encoding="utf-8"))
            return cls(steps=int(data.get("steps", 0)))
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()

    def save(self, workspace: Path) -> None:
        """Persist atomically, so that a kill mid-write keeps the previous state."""
        _atomic_write(workspace / STATE_PATH, json.dumps(asdict(self)) + "\n")
