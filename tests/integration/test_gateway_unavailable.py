"""The gateway answers 503, quickly, when the Kubernetes API server is down or hangs.

The real `codingjob-gateway` process is started with a kubeconfig whose API server is either a
closed port (connection refused) or a socket that accepts and never answers (a hung server).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TIMEOUT_S = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def _kubeconfig(path: Path, port: int) -> Path:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: down
  cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}
users:
- name: gateway
  user: {{token: gateway-token}}
contexts:
- name: down
  context: {{cluster: down, user: gateway}}
current-context: down
"""
    )
    return path


@contextlib.contextmanager
def gateway(kubeconfig: Path) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, CODINGJOB_GATEWAY_API_TIMEOUT_SECONDS=str(TIMEOUT_S))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "codingjob_gateway",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--kubeconfig={kubeconfig}",
            "--log-format=json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
                raise AssertionError(f"the gateway did not start: {out}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        # Every log line is one JSON object (--log-format json).
        for line in out.splitlines():
            if line.startswith("{"):
                assert line.endswith("}"), line


@pytest.mark.parametrize("mode", ["refused", "hung"])
def test_api_server_unavailable_is_503_not_a_hang(tmp_path: Path, mode: str) -> None:
    with contextlib.ExitStack() as stack:
        port = _free_port() if mode == "refused" else stack.enter_context(silent_server())
        base = stack.enter_context(gateway(_kubeconfig(tmp_path / "kubeconfig", port)))
        headers = {"Authorization": "Bearer some-token"}
        for method, path, body in [
            ("GET", "/status/team-a.job-x", None),
            ("POST", "/submit", {"task": "x"}),
            ("GET", "/jobs", None),
        ]:
            start = time.monotonic()
            response = httpx.request(
                method, f"{base}{path}", headers=headers, json=body, timeout=30
            )
            elapsed = time.monotonic() - start
            assert response.status_code == 503, response.text
            assert (
                "unavailable" in response.json()["detail"]
                or "did not answer" in (response.json()["detail"])
            )
            assert elapsed < TIMEOUT_S + 3, f"{method} {path} took {elapsed:.1f}s"
        # Without a token the gateway needs no API server to say 401.
        assert httpx.get(f"{base}/status/a.b", timeout=10).status_code == 401
