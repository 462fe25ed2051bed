"""``codingjob-model-relay``: serve the relay until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

import uvicorn
from prometheus_client import start_http_server

from codingjob_relay import logs
from codingjob_relay.app import Relay, create_app
from codingjob_relay.config import ConfigError, RelayConfig, Settings
from codingjob_relay.jobs import JobChecker, KubernetesJobCheck, NoJobCheck
from codingjob_relay.usage import UsageStore

log = logging.getLogger("codingjob.relay")


def build(settings: Settings) -> Relay:
    """The relay for ``settings``; raises ConfigError."""
    config = RelayConfig.load(settings.config)
    key = settings.key()
    for provider in config.providers:
        provider.api_key()  # fail at start, not on the first job's call
    checker: JobChecker = (
        KubernetesJobCheck.in_cluster(settings.job_check_ttl_seconds)
        if settings.job_check == "kubernetes"
        else NoJobCheck()
    )
    return Relay(
        settings=settings,
        config=config,
        key=key,
        store=UsageStore(settings.state_dir),
        checker=checker,
    )


def listener(host: str, port: int) -> socket.socket:
    """The bound listening socket (port 0: a free one), handed to uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: accepted sockets inherit the listener's protocol number, and
    # asyncio turns Nagle off (TCP_NODELAY) only when it reads IPPROTO_TCP there. With 0, every
    # call on a kept-alive connection waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def serve(relay: Relay, host: str, port: int, metrics_port: int) -> None:
    """Serve until SIGTERM or SIGINT; logs the bound addresses once ready (port 0: a free one).

    ``/metrics`` has a listener of its own: the sandboxes' NetworkPolicy admits the API port only,
    and the metrics name every tenant's namespace and spending."""
    sock = listener(host, port)
    bound = sock.getsockname()[1]
    metrics_server, _ = start_http_server(metrics_port, addr=host, registry=relay.metrics.registry)

    def ready() -> None:
        log.info(
            "model relay listening on http://%s:%d (metrics on port %d) with providers %s",
            host,
            bound,
            metrics_server.server_port,
            ", ".join(p.name for p in relay.config.providers) or "(none)",
        )

    server = uvicorn.Server(
        uvicorn.Config(create_app(relay, ready), log_config=None, access_log=False, lifespan="on")
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        metrics_server.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="codingjob-model-relay",
        description="OpenAI-compatible relay in front of the model providers: per-job "
        "credentials, budgets, retries. Settings: CODINGJOB_RELAY_* variables.",
    )
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    try:
        settings = Settings()
        relay = build(settings)
    except (ConfigError, ValueError) as exc:
        log.error("invalid configuration: %s", exc)
        sys.exit(2)
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    metrics_port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    asyncio.run(serve(relay, host, port, metrics_port))


if __name__ == "__main__":
    main()
