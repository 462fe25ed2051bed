"""Console script ``codingjob-operator``: run the kopf operator with a liveness endpoint."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import kopf

from codingjob_operator import handlers  # noqa: F401  (registers the handlers)
from codingjob_operator.logformat import JOB, LogFormat

log = logging.getLogger("codingjob.operator")


@dataclass(frozen=True)
class RunOptions:
    """How kopf runs: which namespaces, peering, liveness endpoint, log level."""

    namespaces: tuple[str, ...]
    peering: str | None
    liveness: str
    verbose: bool
    log_format: LogFormat = LogFormat.PLAIN
    priority: int | None = None


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
    parser.add_argument(
        "--priority",
        type=int,
        default=int(environ["CODINGJOB_PEERING_PRIORITY"])
        if environ.get("CODINGJOB_PEERING_PRIORITY")
        else None,
        help="peering priority (the highest live one is active); default: by seniority, the "
        "replica started first is active and a newer one stands by",
    )
    parser.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        default=environ.get("CODINGJOB_LOG_FORMAT", LogFormat.PLAIN.value),
        help="plain text, or one JSON object per line with a `job` field (namespace, name, "
        "uid) on lines about a CodingJob (default: CODINGJOB_LOG_FORMAT, else %(default)s)",
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
        log_format=LogFormat(args.log_format),
        priority=args.priority,
    )


def configure_logging(options: RunOptions) -> None:
    """kopf's logging in the chosen format (kopf's JSON names the object under ``job``, as the
    sidecar's and the archiver's lines do)."""
    if options.log_format == LogFormat.JSON:
        kopf.configure(log_format=kopf.LogFormat.JSON, log_refkey=JOB, verbose=options.verbose)
    else:
        kopf.configure(log_format=kopf.LogFormat.PLAIN, verbose=options.verbose)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


#: Seniority priorities count down from here (2**31 seconds after the epoch is in 2038).
_SENIORITY_EPOCH = 2**31


def seniority_priority(started: float, identity: str) -> int:
    """A peering priority that is higher the earlier the replica started, ties broken by its
    identity (the pod name): replicas practically never share one (that would pause both), and a
    restarted replica does not take the work back from the one that took over."""
    return (_SENIORITY_EPOCH - int(started)) * 1000 + zlib.crc32(identity.encode()) % 1000


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the operator until it is stopped."""
    options = parse_options(argv, os.environ)
    configure_logging(options)
    priority = options.priority
    if options.peering is not None and priority is None:
        identity = os.environ.get("POD_ID") or socket.gethostname()
        priority = seniority_priority(time.time(), identity)
        log.info("peering %s with priority %d", options.peering, priority)
    kopf.run(
        # Without --peering: one replica, no peering CRDs needed.
        standalone=options.peering is None,
        peering_name=options.peering,
        priority=priority,
        clusterwide=not options.namespaces,
        namespaces=options.namespaces,
        liveness_endpoint=options.liveness,
    )


if __name__ == "__main__":
    main()
