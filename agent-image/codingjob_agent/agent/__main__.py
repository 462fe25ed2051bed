"""Command line of the agent container: ``codingjob-agent`` runs the job, ``codingjob-agent report``
records a failure the agent could not record itself (used by agent_start.sh)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from codingjob_agent.agent.config import AgentConfig, ConfigError
from codingjob_agent.agent.gateway import Gateway
from codingjob_agent.agent.loop import Agent
from codingjob_agent.agent.results import write_result
from codingjob_agent.agent.terminal import Terminal
from codingjob_agent.agent.tools import Toolbox
from codingjob_agent.protocol import AgentReason, AgentResult, Outcome

#: Exit code for a run ended by SIGTERM, as a shell reports a process killed by it.
EXIT_TERMINATED = 143


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} {line}", flush=True)


def _report(args: argparse.Namespace) -> int:
    import os

    workspace = Path(os.environ.get("CODINGJOB_WORKSPACE", "/workspace"))
    log_path = Path(os.environ.get("CODINGJOB_TERMINATION_LOG", "/dev/termination-log"))
    result = AgentResult(
        outcome=Outcome.FAILED,
        reason=AgentReason(args.reason),
        message=args.message[:2048],
    )
    write_result(result, workspace, log_path)
    return 0


def run(config: AgentConfig) -> int:
    """Run the job described by ``config``; return the process exit code."""
    terminal = Terminal(config.terminal_dir) if config.terminal_dir else None
    toolbox = Toolbox(workspace=config.workspace, display=config.display, terminal=terminal)
    agent = Agent(
        config=config,
        gateway=Gateway(config.gateway_url, config.step_timeout),
        toolbox=toolbox,
        log=_log,
    )
    toolbox.time_left = agent._time_left
    result = agent.run()
    write_result(result, config.workspace, config.termination_log)
    _log(
        f"{result.outcome.value}: {result.reason.value} after {result.steps} steps, "
        f"{result.tokens:,} tokens{' - ' + result.message if result.message else ''}"
    )
    if result.outcome is Outcome.SUCCEEDED:
        return 0
    return EXIT_TERMINATED if result.reason is AgentReason.TERMINATED else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``codingjob-agent`` console script."""
    parser = argparse.ArgumentParser(prog="codingjob-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    report = sub.add_parser("report", help="write a failed result.json and termination message")
    report.add_argument("--reason", required=True, choices=[r.value for r in AgentReason])
    report.add_argument("--message", default="")
    args = parser.parse_args(argv)
    if args.command == "report":
        return _report(args)
    try:
        config = AgentConfig.from_env()
    except ConfigError as e:
        _log(f"invalid environment: {e}")
        return (
            _report(
                argparse.Namespace(reason=AgentReason.INVALID_ENVIRONMENT.value, message=str(e))
            )
            or 2
        )
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
