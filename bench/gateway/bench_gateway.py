"""`make bench-gateway`: one gateway replica against the API server itself, in the same run.

Runs `codingjob-gateway` as a local process (one replica, the cluster's kubeconfig as its own
identity) and a ServiceAccount token as the caller, with a Role for CodingJobs in a fresh
namespace no operator watches. Then, with N concurrent clients (default 200):

1. status reads: each client reads one CodingJob R times, through the gateway
   (`GET /status/{id}`) and directly from the API server (`GET .../codingjobs/NAME`) with the
   same token; p50/p99 latency and requests per second of each;
2. fan-out: each client holds an event stream, the gateway's `/watch` (one shared API watch
   behind all of them) or its own API watch; the job is changed K times and the time from each
   change to its arrival at every client gives p50/p99 for both.

It prints the ratios (gateway / direct) and the gateway's peak resident memory. `--quick` runs
the same code paths with few clients. It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.fixtures.process import high_water_rss  # noqa: E402

GROUP, VERSION, PLURAL = "codingjob.dev", "v1alpha1", "codingjobs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


@dataclass
class Target:
    """Where the clients send their requests, and how."""

    name: str
    read_url: str
    watch_url: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | bool
    #: Pulls the job's task out of one event line (SSE for the gateway, JSON for the API).
    task_of: Callable[[str], str | None]


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0


def sse_task(line: str) -> str | None:
    if line.startswith("data: "):
        return str(json.loads(line[6:]).get("task"))
    return None


def api_task(line: str) -> str | None:
    if not line.strip():
        return None
    event = json.loads(line)
    return str(((event.get("object") or {}).get("spec") or {}).get("task"))


async def reads(target: Target, clients: int, per_client: int) -> Result:
    result = Result()
    connector = aiohttp.TCPConnector(ssl=target.ssl, limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_client() -> None:
            for _ in range(per_client):
                start = time.perf_counter()
                try:
                    async with session.get(target.read_url, headers=target.headers) as response:
                        await response.read()
                        if response.status != 200:
                            result.errors += 1
                            continue
                except aiohttp.ClientError:
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        result.seconds = time.perf_counter() - start
    return result


async def fan_out(
    target: Target, clients: int, changes: int, change: Callable[[str], Awaitable[None]]
) -> Result:
    """Every client follows the job; each change's delay to each client is a sample."""
    result = Result()
    sent: dict[str, float] = {}
    connected = asyncio.Semaphore(0)
    connector = aiohttp.TCPConnector(ssl=target.ssl, limit=clients + 10)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    # Task names of this run only: a watch starts with the job as it is, whose task is the last
    # change of the previous run; with shared names the followers would stop right there.
    prefix = f"bench-{target.name}-change-"
    last = f"{prefix}{changes - 1}"
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def follower() -> None:
            try:
                async with session.get(target.watch_url, headers=target.headers) as response:
                    if response.status != 200:
                        result.errors += 1
                        connected.release()
                        return
                    connected.release()
                    async for raw in response.content:
                        task = target.task_of(raw.decode())
                        if task in sent:
                            result.latencies.append(time.perf_counter() - sent[task])
                        if task == last:
                            return
            except (aiohttp.ClientError, TimeoutError):
                result.errors += 1

        tasks = [asyncio.create_task(follower()) for _ in range(clients)]
        for _ in range(clients):
            await connected.acquire()
        await asyncio.sleep(1.0)  # let the initial snapshots drain
        start = time.perf_counter()
        for i in range(changes):
            task = f"{prefix}{i}"
            sent[task] = time.perf_counter()
            await change(task)
            await asyncio.sleep(0.2)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        result.seconds = time.perf_counter() - start
    return result


def report(label: str, gateway: Result, direct: Result, unit_count: str) -> None:
    def ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1000

    g50, g99, d50, d99 = (
        ms(gateway.latencies, 0.5),
        ms(gateway.latencies, 0.99),
        ms(direct.latencies, 0.5),
        ms(direct.latencies, 0.99),
    )
    print(f"\n{label} ({unit_count})")
    print(f"  {'':10} {'p50 ms':>9} {'p99 ms':>9} {'samples':>8} {'errors':>7} {'per s':>8}")
    for name, r, p50, p99 in (("gateway", gateway, g50, g99), ("direct", direct, d50, d99)):
        rate = len(r.latencies) / r.seconds if r.seconds else 0
        print(f"  {name:10} {p50:9.1f} {p99:9.1f} {len(r.latencies):8} {r.errors:7} {rate:8.0f}")
    print(
        f"  ratio gateway/direct: p50 {g50 / d50:.2f}x, p99 {g99 / d99:.2f}x" if d50 and d99 else ""
    )


def ensure_crd() -> None:
    """Install the CodingJob CRD when the cluster has none (a fresh cluster: no chart yet)."""
    import yaml

    extensions = client.ApiextensionsV1Api()
    try:
        extensions.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        return
    except client.ApiException as error:
        if error.status != 404:
            raise
    extensions.create_custom_resource_definition(
        yaml.safe_load((REPO / "crds" / "codingjob.yaml").read_text())
    )
    for _ in range(100):
        crd = extensions.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
        conditions = (crd.status.conditions if crd.status else None) or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--reads", type=int, default=20, help="status reads per client")
    parser.add_argument("--changes", type=int, default=10, help="job changes for the fan-out")
    parser.add_argument("--quick", action="store_true", help="20 clients, 5 reads, 3 changes")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.reads, args.changes = 20, 5, 3

    config.load_kube_config()
    ensure_crd()
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    api = client.ApiClient()
    core, rbac, custom = (
        client.CoreV1Api(api),
        client.RbacAuthorizationV1Api(api),
        client.CustomObjectsApi(api),
    )
    namespace = f"bench-gw-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    port = free_port()
    gateway = None
    try:
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="bench"))
        )
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="codingjobs"),
                rules=[
                    client.V1PolicyRule(
                        api_groups=[GROUP], resources=[PLURAL], verbs=["get", "list", "watch"]
                    )
                ],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="bench"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="codingjobs"
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name="bench", namespace=namespace)
                ],
            ),
        )
        token = core.create_namespaced_service_account_token(
            "bench",
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        ).status.token
        job = custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "CodingJob",
                "metadata": {"name": "bench"},
                # Suspended, in a namespace no operator watches: an object to read, no pod.
                "spec": {"task": "bench", "suspend": True},
            },
        )
        name = job["metadata"]["name"]

        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "codingjob_gateway",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--kubeconfig={kubeconfig}",
                "--log-format=json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, CODINGJOB_GATEWAY_SSE_QUEUE_SIZE="1024"),
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1):
                    break
            except OSError:
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise RuntimeError("the gateway did not start") from None
                time.sleep(0.2)

        cfg = client.Configuration.get_default_copy()
        api_ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else False
        )
        auth = {"Authorization": f"Bearer {token}"}
        job_path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        through = Target(
            "gateway",
            f"{base}/status/{namespace}.{name}",
            f"{base}/watch?namespace={namespace}",
            auth,
            False,
            sse_task,
        )
        direct = Target(
            "direct",
            f"{cfg.host}{job_path}/{name}",
            f"{cfg.host}{job_path}?watch=true&fieldSelector=metadata.name%3D{name}",
            auth,
            api_ssl,
            api_task,
        )

        async def change(task: str) -> None:
            await asyncio.to_thread(
                custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"spec": {"task": task}},
            )

        async def run() -> None:
            await reads(through, 5, 2)  # warm up: token review, connection pools
            gateway_reads = await reads(through, args.clients, args.reads)
            direct_reads = await reads(direct, args.clients, args.reads)
            report(
                "status reads",
                gateway_reads,
                direct_reads,
                f"{args.clients} clients x {args.reads}",
            )
            gateway_fan = await fan_out(through, args.clients, args.changes, change)
            direct_fan = await fan_out(direct, args.clients, args.changes, change)
            report(
                "fan-out: change to every client",
                gateway_fan,
                direct_fan,
                f"{args.clients} streams x {args.changes} changes",
            )

        asyncio.run(run())
        rss = high_water_rss(gateway.pid)
        print(f"\ngateway peak RSS: {rss / 2**20:.0f} MiB (one replica, {args.clients} clients)")
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(10)
        core.delete_namespace(namespace, propagation_policy="Background")
    return 0


if __name__ == "__main__":
    sys.exit(main())
