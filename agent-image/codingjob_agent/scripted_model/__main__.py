"""``codingjob-scripted-model``: serve the scripted test model (a fixture, not a real model)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from codingjob_agent.scripted_model.scenario import PACKAGED_SCENARIOS
from codingjob_agent.scripted_model.server import create_app

log = logging.getLogger("codingjob.scripted_model")


async def serve(
    host: str, port: int, scenario_dir: Path, turn_delay: float = 0.0, api_key: str | None = None
) -> None:
    """Serve until SIGTERM or SIGINT; logs the bound address (``--port 0`` picks a free one)."""
    app = create_app(scenario_dir, turn_delay=turn_delay, api_key=api_key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    log.info(
        "scripted test model listening on http://%s:%d (scenarios in %s)",
        host,
        bound,
        scenario_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="codingjob-scripted-model",
        description="OpenAI-compatible scripted test model: replays scenario files "
        "(for tests and the demo; not a real model).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--scenario-dir", type=Path, default=PACKAGED_SCENARIOS)
    parser.add_argument(
        "--turn-delay-seconds",
        type=float,
        default=float(os.environ.get("CODINGJOB_SCRIPTED_MODEL_TURN_DELAY_SECONDS", "0")),
        help="wait this long before each answer, like a real model, so a run can be watched "
        "(env CODINGJOB_SCRIPTED_MODEL_TURN_DELAY_SECONDS)",
    )
    parser.add_argument(
        "--require-api-key-file",
        type=Path,
        default=None,
        help="answer 401 unless requests carry this file's content as Bearer key, like a real "
        "provider (env CODINGJOB_SCRIPTED_MODEL_API_KEY sets the key directly)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.scenario_dir.is_dir():
        parser.error(f"--scenario-dir {args.scenario_dir} is not a directory")
    api_key = os.environ.get("CODINGJOB_SCRIPTED_MODEL_API_KEY") or None
    if args.require_api_key_file is not None:
        api_key = args.require_api_key_file.read_text().strip() or None
        if api_key is None:
            parser.error(f"--require-api-key-file {args.require_api_key_file} is empty")
    if api_key is not None:
        log.info("requests must carry the API key")
    asyncio.run(
        serve(args.host, args.port, args.scenario_dir, args.turn_delay_seconds, api_key=api_key)
    )


if __name__ == "__main__":
    main()
