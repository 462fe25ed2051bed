"""`make bench-operator`: the operator against the Job controller, on the same cluster, in one run.

Creates N CodingJobs and N plain batch/v1 Jobs at once, all with a nodeSelector no node matches (so
their pods stay Pending and the benchmark measures the controllers, not the node), and prints the
p50/p99 time from create to pod object created for each, their ratio (goal: CodingJobs <= 2.0x the
Job controller), the time until every CodingJob shows a status, and the operator's peak memory.

The operator runs as a local process watching only the benchmark's namespace, so its peak resident
memory (VmHWM) can be read exactly. The CRD is installed from crds/codingjob.yaml when the cluster
has none. ``--quick`` runs the same code with 5 of each (a smoke test for CI).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[2]
# The script runs by path (its own directory comes first on sys.path), and imports the repository's
# shared test helpers.
sys.path.insert(0, str(REPO))

from tests.fixtures.process import high_water_rss  # noqa: E402

GROUP, VERSION, PLURAL = "codingjob.dev", "v1alpha1", "codingjobs"
CRD_NAME = f"{PLURAL}.{GROUP}"
CLASS_CRD_NAME = f"codingjobclasses.{GROUP}"
QUICK_COUNT = 5
NO_NODE = {"codingjob.dev/bench": "no-such-node"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class PodWatch(threading.Thread):
    """Records when the first pod of each owner (by label) appears."""

    def __init__(self, core: client.CoreV1Api, namespace: str, label: str) -> None:
        super().__init__(daemon=True)
        self.core, self.namespace, self.label = core, namespace, label
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        w = watch.Watch()
        while not self.stop.is_set():
            for event in w.stream(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=self.label,
                timeout_seconds=5,
            ):
                labels = event["object"].metadata.labels or {}
                owner = labels.get(self.label)
                if owner and owner not in self.seen:
                    self.seen[owner] = time.monotonic()
                if self.stop.is_set():
                    break


def ensure_crd() -> None:
    """Install the CodingJob and CodingJobClass CRDs when the cluster lacks them, and wait
    until they are served."""
    extensions = client.ApiextensionsV1Api()
    for crd_name, path in ((CRD_NAME, "codingjob.yaml"), (CLASS_CRD_NAME, "codingjobclass.yaml")):
        try:
            extensions.read_custom_resource_definition(crd_name)
        except client.ApiException as error:
            if error.status != 404:
                raise
            body = yaml.safe_load((REPO / "crds" / path).read_text())
            extensions.create_custom_resource_definition(body)
        deadline = time.monotonic() + 60
        while True:
            crd = extensions.read_custom_resource_definition(crd_name)
            conditions = (crd.status.conditions if crd.status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {crd_name} not established after 60s")
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--count", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_COUNT} of each (CI smoke test)"
    )
    args = parser.parse_args()
    if args.quick:
        args.count = QUICK_COUNT

    config.load_kube_config()
    ensure_crd()
    core, batch, custom = client.CoreV1Api(), client.BatchV1Api(), client.CustomObjectsApi()
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            # The owner's consent for model use (CodingJobClass rules).
            metadata=client.V1ObjectMeta(
                name="llm", labels={"codingjob.dev/model-credentials": "true"}
            ),
            string_data={"api-key": "unused"},
        ),
    )
    # A class of the benchmark's own: pods pinned to no node (they stay Pending, as the Jobs'
    # do) and the benchmark's unreachable model endpoint allowed.
    class_name = namespace
    custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "codingjobclasses",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CodingJobClass",
            "metadata": {"name": class_name},
            "spec": {
                "sandbox": {"nodeSelector": NO_NODE},
                "model": {"baseURLPrefixes": ["http://127.0.0.1:9/"]},
            },
        },
    )
    env = dict(
        os.environ, CODINGJOB_STORAGE_ACCESS_KEY="bench", CODINGJOB_STORAGE_SECRET_KEY="bench"
    )
    operator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "codingjob_operator",
            "--namespace",
            namespace,
            "--liveness",
            f"http://127.0.0.1:{free_port()}/healthz",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobs_watch = PodWatch(core, namespace, "bench-job")
    cj_watch = PodWatch(core, namespace, "codingjob.dev/job")
    jobs_watch.start()
    cj_watch.start()
    try:
        time.sleep(5)  # the operator's initial listing of an empty namespace
        created_job: dict[str, float] = {}
        created_cj: dict[str, float] = {}

        def make_job(i: int) -> None:
            name = f"job-{i}"
            body = client.V1Job(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1JobSpec(
                    backoff_limit=0,
                    template=client.V1PodTemplateSpec(
                        metadata=client.V1ObjectMeta(labels={"bench-job": name}),
                        spec=client.V1PodSpec(
                            restart_policy="Never",
                            node_selector=NO_NODE,
                            containers=[client.V1Container(name="c", image="codingjob/agent:dev")],
                        ),
                    ),
                ),
            )
            created_job[name] = time.monotonic()
            batch.create_namespaced_job(namespace, body)

        def make_cj(i: int) -> None:
            name = f"cj-{i}"
            body: dict[str, Any] = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "CodingJob",
                "metadata": {"name": name},
                "spec": {
                    "task": "benchmark",
                    "model": {
                        "baseURL": "http://127.0.0.1:9/v1",
                        "name": "bench",
                        "apiKeySecretRef": {"name": "llm", "key": "api-key"},
                    },
                    "className": class_name,
                    "workspace": {"size": "10Mi"},
                },
            }
            created_cj[name] = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(make_cj, range(args.count)))
            list(pool.map(make_job, range(args.count)))

        deadline = started + args.timeout
        statuses = 0
        status_done = None
        while time.monotonic() < deadline:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            statuses = sum(1 for i in items if (i.get("status") or {}).get("phase"))
            if status_done is None and statuses >= args.count:
                status_done = time.monotonic() - started
            if (
                status_done is not None
                and len(cj_watch.seen) >= args.count
                and len(jobs_watch.seen) >= args.count
            ):
                break
            time.sleep(1)

        cj_lat = [cj_watch.seen[n] - t for n, t in created_cj.items() if n in cj_watch.seen]
        job_lat = [jobs_watch.seen[n] - t for n, t in created_job.items() if n in jobs_watch.seen]
        if not cj_lat or not job_lat:
            print(f"incomplete: {len(cj_lat)} CodingJob pods, {len(job_lat)} Job pods seen")
            return 1
        rows = [
            ("CodingJob operator", cj_lat),
            ("Job controller", job_lat),
        ]
        print(f"{args.count} of each, created at once; time from create to pod object (s):")
        for label, lat in rows:
            print(
                f"  {label:<20} n={len(lat):<4} p50={statistics.median(lat):7.3f} "
                f"p99={percentile(lat, 0.99):7.3f}"
            )
        p50 = statistics.median(cj_lat) / statistics.median(job_lat)
        p99 = percentile(cj_lat, 0.99) / percentile(job_lat, 0.99)
        print(f"ratio CodingJob/Job: p50 {p50:.2f}x, p99 {p99:.2f}x (goal <= 2.0x)")
        print(
            f"all {args.count} CodingJobs with a status after: {status_done or float('nan'):.1f} s"
        )
        print(f"operator peak memory (VmHWM): {high_water_rss(operator.pid) / 2**20:.1f} MiB")
        return 0
    finally:
        jobs_watch.stop.set()
        cj_watch.stop.set()
        operator.terminate()
        operator.wait(30)
        # With the operator gone nobody removes its finalizers, and the namespace would stay
        # Terminating for good: the benchmark's jobs own nothing worth archiving, so drop them.
        for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
            "items"
        ]:
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )
        core.delete_namespace(namespace)
        custom.delete_cluster_custom_object(GROUP, VERSION, "codingjobclasses", class_name)


if __name__ == "__main__":
    sys.exit(main())
