"""Where the agent's outcome goes: result.json on the workspace and the termination message."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from codingjob_agent.protocol import RESULT_PATH, AgentResult


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def write_result(result: AgentResult, workspace: Path, termination_log: Path) -> None:
    """Write ``result`` to ``<workspace>/.codingjob/result.json`` and the termination log."""
    try:
        _atomic_write(workspace / RESULT_PATH, result.model_dump_json(indent=2) + "\n")
    except OSError as e:
        # A full workspace: the termination message (the record the operator reads) must still
        # be written.
        print(f"cannot write {RESULT_PATH} in the workspace: {e}", file=sys.stderr)
    try:
        termination_log.write_text(result.termination_message(), encoding="utf-8")
    except OSError as e:
        # Outside Kubernetes there is no /dev/termination-log; result.json is the record then.
        print(f"cannot write termination message to {termination_log}: {e}", file=sys.stderr)


@dataclass
class AgentState:
    """The agent's progress in memory. Nothing of it is stored: the step count that survives a
    restart, and that ``limits.maxSteps`` is enforced on, is the sidecar's (its journal is out
    of the agent's reach), read back from ``GET /v1/conversation``."""

    steps: int = 0
