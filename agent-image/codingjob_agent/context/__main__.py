"""``codingjob-context-manager``: run the sidecar until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from codingjob_agent.context.model import ModelClient
from codingjob_agent.context.server import gateway_app, stats_app
from codingjob_agent.context.service import ContextService
from codingjob_agent.context.settings import Settings, SettingsError
from codingjob_agent.context.state import StateError
from codingjob_agent.context.tokens import EncodingError, counter_for
from codingjob_agent.logformat import LogFormat, configure, job_ref

log = logging.getLogger("codingjob.context")

#: The gateway listens on loopback only: the agent shares the pod's network namespace, and no
#: other pod must be able to spend this job's model key.
GATEWAY_HOST = "127.0.0.1"


def _bound_port(runner: web.AppRunner) -> int:
    """The port a runner's site listens on (the one picked by the OS for port 0)."""
    for address in runner.addresses:
        return int(address[1])
    return 0


async def serve(settings: Settings) -> None:
    """Load the journal, then serve both listeners until SIGTERM or SIGINT."""
    counter = counter_for(settings.encoding)
    model = ModelClient(settings)
    service = ContextService(settings, counter, model)
    try:
        service.load()
    except StateError as exc:
        log.error("refusing to start: %s", exc)
        await model.close()
        sys.exit(3)
    gateway = web.AppRunner(gateway_app(service), access_log=None)
    stats = web.AppRunner(stats_app(service), access_log=None)
    await gateway.setup()
    await stats.setup()
    gateway_site = web.TCPSite(gateway, GATEWAY_HOST, settings.gateway_port)
    stats_site = web.TCPSite(stats, settings.stats_host, settings.stats_port)
    await gateway_site.start()
    await stats_site.start()
    log.info(
        "gateway listening on http://%s:%d, stats on http://%s:%d; model %s at %s, "
        "window %d tokens (%s), strategy %s",
        GATEWAY_HOST,
        _bound_port(gateway),
        settings.stats_host,
        _bound_port(stats),
        settings.model_name,
        settings.model_base_url,
        settings.max_tokens,
        settings.encoding,
        settings.strategy.value,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await gateway.cleanup()
        await stats.cleanup()
        await model.close()
        service.close()


def main() -> None:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="codingjob-context-manager", description="Run the context-manager sidecar."
    )
    parser.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        default=env.get("CODINGJOB_LOG_FORMAT", LogFormat.PLAIN.value),
        help="plain text, or one JSON object per line with the job's namespace, name and uid "
        "(default: CODINGJOB_LOG_FORMAT, else %(default)s)",
    )
    args = parser.parse_args()
    job = None
    if env.get("CODINGJOB_NAMESPACE") and env.get("CODINGJOB_NAME"):
        job = job_ref(env["CODINGJOB_NAMESPACE"], env["CODINGJOB_NAME"], env.get("CODINGJOB_UID"))
    configure(LogFormat(args.log_format), level=env.get("CODINGJOB_LOG_LEVEL", "INFO"), job=job)
    try:
        settings = Settings.from_env(os.environ)
        counter_for(settings.encoding)
    except (SettingsError, EncodingError) as exc:
        log.error("invalid configuration: %s", exc)
        sys.exit(2)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
