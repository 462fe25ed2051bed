"""Agent overhead per step, excluding the model: ``make bench-agent``.

The agent loop runs against an in-process stand-in for the sidecar that answers instantly, so
what is timed is the agent's own work per step (parsing the message, dispatching the tool,
capping its output, saving state, logging) plus the tool itself. The baseline, measured in the
same run, is the bare cost of what a step cannot avoid: spawning ``bash -c true``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codingjob_agent.agent.config import AgentConfig
from codingjob_agent.agent.loop import Agent
from codingjob_agent.agent.tools import Toolbox
from codingjob_agent.protocol import ConversationState, Stats, StepRequest, StepResponse

STEPS = 200


def _message(name: str, args: dict[str, Any]) -> dict[str, Any]:
    call = {
        "id": "c",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    }
    return {"role": "assistant", "content": "Next step.", "tool_calls": [call]}


@dataclass
class InstantGateway:
    """Answers every step at once: ``steps`` times ``message``, then finish."""

    message: dict[str, Any]
    steps: int
    served: int = 0
    stats: Stats = field(default_factory=Stats)

    def conversation(self) -> ConversationState:
        return ConversationState(messages=0, stats=self.stats)

    def step(self, request: StepRequest, timeout: float | None = None) -> StepResponse:
        self.served += 1
        if self.served > self.steps:
            return StepResponse(message=_message("finish", {"summary": "done"}), stats=self.stats)
        return StepResponse(message=self.message, stats=self.stats)


def per_step_agent(name: str, args: dict[str, Any]) -> float:
    """Seconds per step of the agent loop running tool ``name``."""
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        (workspace / "file.txt").write_text("".join(f"line {i}\n" for i in range(200)))
        config = AgentConfig(workspace=workspace, task="bench", gateway_url="http://unused")
        gateway = InstantGateway(_message(name, args), STEPS)
        agent = Agent(config, gateway, Toolbox(workspace=workspace), log=lambda line: None)  # type: ignore[arg-type]
        started = time.perf_counter()
        result = agent.run()
        elapsed = time.perf_counter() - started
        assert result.steps == STEPS + 1, result
        return elapsed / (STEPS + 1)


def per_bash_baseline() -> float:
    """Seconds per bare ``bash -c true`` (the unavoidable part of a bash step)."""
    started = time.perf_counter()
    for _ in range(STEPS):
        subprocess.run(["bash", "-c", "true"], check=True)
    return (time.perf_counter() - started) / STEPS


def main() -> None:
    runs = 3
    baseline = statistics.median(per_bash_baseline() for _ in range(runs))
    bash = statistics.median(per_step_agent("bash", {"command": "true"}) for _ in range(runs))
    view = statistics.median(per_step_agent("view", {"path": "file.txt"}) for _ in range(runs))
    print(f"agent overhead per step, model excluded ({STEPS} steps, median of {runs} runs)")
    print(f"  baseline: bare `bash -c true`          {baseline * 1e3:8.2f} ms")
    print(
        f"  agent step running `bash true`         {bash * 1e3:8.2f} ms  "
        f"({bash / baseline:.2f}x the baseline)"
    )
    print(f"  agent overhead on a bash step          {(bash - baseline) * 1e3:8.2f} ms")
    print(
        f"  agent step running `view` (no process) {view * 1e3:8.2f} ms  "
        f"({view / baseline:.2f}x the baseline)"
    )


if __name__ == "__main__":
    main()
