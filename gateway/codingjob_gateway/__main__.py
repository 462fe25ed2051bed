"""Console script ``codingjob-gateway``: serve the HTTP API and the console with uvicorn."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn

from codingjob_gateway import logs
from codingjob_gateway.app import create_app
from codingjob_gateway.console import add_console
from codingjob_gateway.kube import KubeClient, load_cluster_config
from codingjob_gateway.settings import GatewaySettings


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve until stopped."""
    settings = GatewaySettings()
    parser = argparse.ArgumentParser(
        prog="codingjob-gateway",
        description="HTTP API and web console for CodingJobs (a client of the Kubernetes API).",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (%(default)s)")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=settings.log_format,
        help="text for people, json for one event per line (default %(default)s)",
    )
    parser.add_argument(
        "--kubeconfig",
        default=settings.kubeconfig,
        help="kubeconfig to use outside a pod (default: in-cluster, else $KUBECONFIG)",
    )
    args = parser.parse_args(argv)
    log_config = logs.configure(args.log_format)
    kube = KubeClient(load_cluster_config(args.kubeconfig), settings.api_timeout_seconds)
    app = create_app(settings, kube)
    add_console(app, app.state.gateway)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=log_config,
        proxy_headers=True,
        # The console's live desktop streams through websockets; keep them alive through idle
        # proxies, but let uvicorn notice dead peers.
        ws_ping_interval=20,
        ws_ping_timeout=20,
    )


if __name__ == "__main__":
    main()
