"""The desktop port-forward: ``kubectl port-forward`` to the job's Service, on a local port.

A kubectl plugin runs beside kubectl, so the plugin lets kubectl do the forwarding (SPDY or
WebSockets, whatever the server speaks) instead of reimplementing it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence

#: Only this machine may use the forward: whoever reaches it sees the agent's desktop.
LISTEN_ADDRESS = "127.0.0.1"
READY_TIMEOUT_S = 30.0


class ForwardError(Exception):
    """The port-forward did not start."""


def kubectl_binary() -> str:
    """``$KUBECTL`` when set, else ``kubectl`` on the PATH."""
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        raise ForwardError("kubectl not found on the PATH (set KUBECTL to its path)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LISTEN_ADDRESS, 0))
        return int(sock.getsockname()[1])


def forward_command(
    kubectl: str,
    namespace: str,
    service: str,
    local_port: int,
    remote_port: int,
    kube_args: Sequence[str] = (),
) -> list[str]:
    """The kubectl command line of the forward (``kube_args``: --kubeconfig, --context)."""
    return [
        kubectl,
        *kube_args,
        "--namespace",
        namespace,
        "port-forward",
        "--address",
        LISTEN_ADDRESS,
        f"svc/{service}",
        f"{local_port}:{remote_port}",
    ]


def start(command: list[str], local_port: int) -> subprocess.Popen[bytes]:
    """Start the forward and return once ``local_port`` accepts connections."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((LISTEN_ADDRESS, local_port), 1),
        ):
            return proc
        if proc.poll() is not None:
            detail = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise ForwardError(f"kubectl port-forward ended: {detail}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise ForwardError(f"port {local_port} did not open within {READY_TIMEOUT_S:.0f}s")
        time.sleep(0.2)
