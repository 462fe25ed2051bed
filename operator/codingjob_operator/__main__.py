"""Console script ``codingjob-operator``: run the kopf operator with a liveness endpoint."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import kopf

from codingjob_operator import handlers  # noqa: F401  (registers the handlers)


@dataclass(frozen=True)
class RunOptions:
    """How kopf runs: which namespaces, peering, liveness endpoint, log level."""

    namespaces: tuple[str, ...]
    peering: str | None
    liveness: str
    verbose: bool


def parse_options(argv: Sequence[str] | None, environ: Mapping[str, str]) -> RunOptions:
    """The command line (and CODINGJOB_WATCH_NAMESPACE / CODINGJOB_LIVENESS_ENDPOINT)."""
    parser = argparse.ArgumentParser(
        prog="codingjob-operator", description="Run the CodingJob operator (kopf)."
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: CODINGJOB_WATCH_NAMESPACE "
        "(comma-separated), else the whole cluster",
    )
    parser.add_argument(
        "--liveness",
        default=environ.get("CODINGJOB_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz"),
        help="URL kopf serves its liveness probe on (default %(default)s)",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate replicas through the ClusterKopfPeering NAME (one is active); "
        "default: standalone, for a single replica",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    namespaces = args.namespace or [
        ns.strip() for ns in environ.get("CODINGJOB_WATCH_NAMESPACE", "").split(",") if ns.strip()
    ]
    return RunOptions(
        namespaces=tuple(namespaces),
        peering=args.peering,
        liveness=args.liveness,
        verbose=args.verbose,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the operator until it is stopped."""
    options = parse_options(argv, os.environ)
    kopf.configure(log_format=kopf.LogFormat.PLAIN, verbose=options.verbose)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    kopf.run(
        # Without --peering: one replica, no peering CRDs needed.
        standalone=options.peering is None,
        peering_name=options.peering,
        clusterwide=not options.namespaces,
        namespaces=options.namespaces,
        liveness_endpoint=options.liveness,
    )


if __name__ == "__main__":
    main()
