"""Agent overhead per step, excluding the model: ``make bench-agent``.

The agent loop runs against an in-process stand-in for the sidecar that answers instantly, so
what is timed is the agent's own work per step (parsing the message, dispatching the tool,
capping its output, saving state, logging) plus the tool itself. The baseline, measured in the
same run, is the bare cost of what a step cannot avoid: spawning ``bash -c true``.
``--quick`` runs the same code with 20 steps and one run (a smoke test for CI).
"""

from __future__ import annotations

import argparse
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
QUICK_STEPS = 20


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


def per_step_agent(name: str, args: dict[str, Any], steps: int) -> float:
    """Seconds per step of the agent loop running tool ``name`` for ``steps`` steps."""
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        (workspace / "file.txt").write_text("".join(f"line {i}\n" for i in range(200)))
        config = AgentConfig(workspace=workspace, task="bench", gateway_url="http://unused")
        gateway = InstantGateway(_message(name, args), steps)
        agent = Agent(config, gateway, Toolbox(workspace=workspace), log=lambda line: None)  # type: ignore[arg-type]
        started = time.perf_counter()
        result = agent.run()
        elapsed = time.perf_counter() - started
        assert result.steps == steps + 1, result
        return elapsed / (steps + 1)


def per_bash_baseline(steps: int) -> float:
    """Seconds per bare ``bash -c true`` (the unavoidable part of a bash step)."""
    started = time.perf_counter()
    for _ in range(steps):
        subprocess.run(["bash", "-c", "true"], check=True)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps, one run (CI smoke test)")
    args = parser.parse_args()
    steps, runs = (QUICK_STEPS, 1) if args.quick else (STEPS, 3)
    baseline = statistics.median(per_bash_baseline(steps) for _ in range(runs))
    bash = statistics.median(
        per_step_agent("bash", {"command": "true"}, steps) for _ in range(runs)
    )
    view = statistics.median(
        per_step_agent("view", {"path": "file.txt"}, steps) for _ in range(runs)
    )
    print(f"agent overhead per step, model excluded ({steps} steps, median of {runs} runs)")
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
