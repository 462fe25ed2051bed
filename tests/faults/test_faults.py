"""The fault campaign: kill, evict, starve and cut parts of the system while CodingJobs run on the
real cluster (the chart as tests/e2e installs it), and check what every job ends with.

Each case runs one job of the scripted scenario ``gated`` (it waits at ``gate/`` until the test
creates ``gate/go``) in a namespace of its own, so the fault is injected in a phase the test
chose. Every case asserts: no two agent pods or archiver Jobs at once, the files the test wrote
into the workspace before the fault are in the final ZIP with their content, a final phase and
reason that say what happened, and no operator restart loop.

The cases run concurrently. Those that disturb everybody are made compatible: operator kills are
serialised (the next waits until the replacement replica has joined), and MinIO is stopped only
once every other case is final. The table (fault, phase, outcome, data intact, time to recover) is
printed and saved under artifacts/faults/.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from codingjob_operator import names
from codingjob_operator.builders import STATS_PORT
from kubernetes import client

from tests.fixtures.cluster import fresh_namespace, kubectl, tool
from tests.fixtures.release import (
    FAULT_ARTIFACTS,
    FINAL_PHASES,
    SYSTEM_NAMESPACE,
    Jobs,
    active_replica,
    free_port,
    journal_messages,
    make_jobs,
    minio_as_root,
    operator_pods,
    peers,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.disruptive]

SCENARIO = "gated"
#: Model calls of the gated scenario: a repeated or lost step shows as another count.
STEPS = 4
JOB = "job"
WORKSPACE_PVC = names.child_names(JOB).workspace
WORKSPACE = "/workspace"
#: How long MinIO stays down.
MINIO_OUTAGE_S = 30
#: Bytes of random data the Archiving-phase operator kill has to upload (so the upload takes a
#: moment), in MiB.
BIG_FILE_MIB = 64
JOB_LABEL = "codingjob.dev/job"
COMPONENT_LABEL = "app.kubernetes.io/component"
SIDECAR_COMMAND = b"codingjob-context-manager"
OPERATOR_COMMAND = b"codingjob-operator"
#: The workspace-full case's volume: a filesystem of this size, so the agent can fill it.
SMALL_VOLUME_MIB = 64
ARCHIVE_BUCKET = "codingjob-artifacts"
REPO = Path(__file__).resolve().parents[2]
RESTART_SCRIPT = REPO / "hack" / "cluster" / "restart.sh"
#: Model calls of the scripted scenario ``resume`` (one per turn).
RESUME_STEPS = len(
    json.loads(
        (
            REPO
            / "agent-image"
            / "codingjob_agent"
            / "scripted_model"
            / "scenarios"
            / "resume.json"
        ).read_text()
    )["turns"]
)
#: Run in the agent container: the agent's own process becomes the kernel's first choice (its
#: oom_score_adj raised to 1000, as an unprivileged process may; the kubelet gives a burstable
#: pod's processes ~990), then many small allocations, each smaller than the agent, exhaust the
#: container's memory. (One big allocation would be the kernel's choice instead of the agent.)
OOM_HOG = """
for p in /proc/[0-9]*; do
  case "$(tr '\\0' ' ' < "$p/cmdline" 2>/dev/null)" in
    *python3\\ */codingjob-agent\\ ) echo 1000 > "$p/oom_score_adj";;
  esac
done
for i in $(seq 48); do
  python3 -c 'import time; hog = b"a" * (16 << 20); time.sleep(600)' &
done
wait
"""


class Campaign:
    """What the cases share: API clients, the MinIO download path, and the disruption locks."""

    def __init__(self, release: str, kube_api: client.ApiClient) -> None:
        self.release = release
        self.kube_api = kube_api
        self.core = client.CoreV1Api(kube_api)
        self.batch = client.BatchV1Api(kube_api)
        self.custom = client.CustomObjectsApi(kube_api)
        #: One operator kill at a time: the next waits until the replacement replica joined.
        self.operator_kill = threading.Lock()
        #: Set once every case but the MinIO one is final.
        self.quiet = threading.Event()
        self.minio = MinioPath(self.core)
        self.runs: list[Run] = []
        #: Container restarts the campaign caused, by operator pod (not a restart loop).
        self.operator_kills: dict[str, int] = {}

    def pods_and_jobs(self) -> tuple[list[client.V1Pod], list[client.V1Job]]:
        pods = self.core.list_pod_for_all_namespaces(label_selector=JOB_LABEL).items
        batch = self.batch.list_job_for_all_namespaces(label_selector=JOB_LABEL).items
        return pods, batch


class MinioPath:
    """Downloads of presigned URLs through a port-forward of its own (restartable, since MinIO
    is stopped by one case); the URLs' host goes in the Host header they are signed for."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def _service(self) -> str:
        svc = self.core.list_namespaced_service(
            SYSTEM_NAMESPACE, label_selector=f"{COMPONENT_LABEL}=minio"
        ).items[0]
        return f"svc/{svc.metadata.name}"

    def restart(self) -> None:
        with self.lock:
            self.close()
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    tool("kubectl"),
                    "-n",
                    SYSTEM_NAMESPACE,
                    "port-forward",
                    self._service(),
                    f"{self.port}:9000",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def download(self, url: str) -> bytes:
        parts = urllib.parse.urlsplit(url)
        last: Exception | None = None
        for _ in range(20):
            local = parts._replace(netloc=f"127.0.0.1:{self.port}").geturl()
            request = urllib.request.Request(local, headers={"Host": parts.netloc})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    body: bytes = response.read()
                    return body
            except OSError as error:  # the forward is still starting, or lost its pod
                last = error
                time.sleep(1)
                if self.proc is None or self.proc.poll() is not None:
                    self.restart()
        raise AssertionError(f"cannot download {parts.path}: {last}")


@dataclass
class Run:
    """One case's job, and what the campaign saw of it."""

    fault: str
    phase: str
    jobs: Jobs
    written: dict[str, str] = field(default_factory=dict)
    agent_uids: set[str] = field(default_factory=set)
    archiver_uids: set[str] = field(default_factory=set)
    most_agents: int = 0
    most_archivers: int = 0
    fault_at: float | None = None
    recovered_after: float | None = None
    final: dict[str, Any] = field(default_factory=dict)
    data: str = "-"
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def namespace(self) -> str:
        return self.jobs.namespace

    # Driving the job.

    def start(self, *, relay: bool = False, scenario: str = SCENARIO, **spec: Any) -> None:
        """Apply the job; ``relay``: no endpoint of its own, so its model calls go through the
        chart's model relay (whose provider ``scripted`` picks the scenario by model name)."""
        spec.setdefault("gui", {"enabled": False})
        spec.setdefault("jupyter", {"enabled": False})
        manifest = self.jobs.manifest(JOB, scenario, **spec)
        if relay:
            manifest["spec"]["model"] = {"name": f"scripted/{SCENARIO}"}
        self.jobs.apply(manifest)

    def stats(self) -> dict[str, Any]:
        """The sidecar's ``/stats`` (steps, tokens with the relay's totals), read through the
        API server's pod proxy as the operator reads it."""
        # Raw: the client would turn a JSON body typed ``str`` into a Python repr.
        response = self.jobs.core.connect_get_namespaced_pod_proxy_with_path(
            f"{self.pod()}:{STATS_PORT}", self.namespace, "stats", _preload_content=False
        )
        stats: dict[str, Any] = json.loads(response.data)
        return stats

    def pod(self) -> str:
        pod = self.jobs.agent_pod(JOB)
        assert pod is not None, "no agent pod"
        return str(pod.metadata.name)

    def exec(self, command: str, check: bool = True) -> str:
        """Run ``sh -c command`` in the agent container."""
        return self.exec_argv("sh", "-c", command, check=check)

    def exec_argv(self, *argv: str, check: bool = True) -> str:
        proc = kubectl(
            "exec",
            "-n",
            self.namespace,
            self.pod(),
            "-c",
            "agent",
            "--",
            *argv,
            check=check,
            timeout=120,
        )
        return proc.stdout

    def at_gate(self, timeout: float = 300) -> None:
        """Wait until the agent runs and waits at the gate."""

        def waiting() -> bool:
            if self.jobs.status(JOB).get("phase") != "Running":
                return False
            pod = self.jobs.agent_pod(JOB)
            if pod is None or pod.metadata.deletion_timestamp:
                return False
            probe = f"test -d {WORKSPACE}/gate && echo at-gate"
            return "at-gate" in self.exec(probe, check=False)

        wait_for(f"{self.fault}: agent at the gate", waiting, timeout, interval=1.0)

    def write(self, path: str, content: str | None = None) -> None:
        """A file the final ZIP must hold, with this content."""
        content = content or secrets.token_hex(16)
        directory = os.path.dirname(path)
        mkdir = f"mkdir -p {WORKSPACE}/{directory} && " if directory else ""
        self.exec(f"{mkdir}printf %s {content} > {WORKSPACE}/{path} && sync")
        self.written[path] = content

    def release(self) -> None:
        self.exec(f"touch {WORKSPACE}/gate/go")

    def fault_now(self) -> None:
        self.fault_at = time.monotonic()

    def recovered(self) -> None:
        if self.fault_at is not None and self.recovered_after is None:
            self.recovered_after = time.monotonic() - self.fault_at

    def finish(self, timeout: float = 420) -> dict[str, Any]:
        self.final = self.jobs.wait_phase(JOB, FINAL_PHASES, timeout)
        return self.final

    def events(self) -> list[str]:
        items = self.jobs.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={JOB}"
        ).items
        return [str(e.reason) for e in items]

    # Checks every case makes.

    def check_archive(self, minio: MinioPath) -> zipfile.ZipFile:
        """The ZIP of the status: size and sha256 as recorded, every written file in it."""
        artifact = self.final.get("artifact")
        assert artifact, f"no artifact in the status: {self.final}"
        body = minio.download(self.final["downloadURL"])
        assert len(body) == artifact["size"]
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
        archive = zipfile.ZipFile(io.BytesIO(body))
        names = set(archive.namelist())
        for path, content in self.written.items():
            assert path in names, f"{path} is not in the ZIP ({len(names)} entries)"
            assert archive.read(path).decode() == content, f"{path} changed"
        self.data = f"yes ({len(self.written)} files)"
        return archive

    def check_children(self) -> None:
        assert self.most_agents <= 1, f"{self.most_agents} agent pods at once"
        assert self.most_archivers <= 1, f"{self.most_archivers} archiver Jobs at once"
        attempts = int(self.final.get("archiveAttempts") or 0)
        assert len(self.archiver_uids) <= max(1, attempts), (
            f"{len(self.archiver_uids)} archiver Jobs for {attempts} attempts"
        )

    def outcome(self) -> str:
        if self.error:
            return f"ERROR: {self.error.splitlines()[0][:80]}"
        return f"{self.final.get('phase')}/{self.final.get('reason')}"


def observe(campaign: Campaign, stop: threading.Event) -> None:
    """Once a second: the agent pods and archiver Jobs of every case, for the no-duplicate check."""
    by_namespace = {run.namespace: run for run in campaign.runs}
    while not stop.wait(1.0):
        with contextlib.suppress(Exception):
            pods, batch = campaign.pods_and_jobs()
            agents: dict[str, int] = {}
            archivers: dict[str, int] = {}
            for pod in pods:
                run = by_namespace.get(pod.metadata.namespace)
                if run is not None and pod.metadata.labels.get(COMPONENT_LABEL) == "agent":
                    run.agent_uids.add(pod.metadata.uid)
                    agents[run.namespace] = agents.get(run.namespace, 0) + 1
            for job in batch:
                run = by_namespace.get(job.metadata.namespace)
                if run is not None and job.metadata.labels.get(COMPONENT_LABEL) == "archiver":
                    run.archiver_uids.add(job.metadata.uid)
                    archivers[run.namespace] = archivers.get(run.namespace, 0) + 1
            for run in campaign.runs:
                run.most_agents = max(run.most_agents, agents.get(run.namespace, 0))
                run.most_archivers = max(run.most_archivers, archivers.get(run.namespace, 0))


# Faults.


def kill_active_operator(campaign: Campaign, *, hard: bool) -> str:
    """Stop the active replica; returns its name. Hold ``operator_kill``. ``hard``: SIGKILL its
    process from the node (no clean hand-over: the peering entry stays until it expires, the
    container restarts); else delete its pod with grace 0 (SIGTERM, then the pod is gone)."""
    wait_for("two live operator peers", lambda: len(peers(campaign.custom)) == 2, 120)
    active = active_replica(campaign.custom)
    if hard:
        pod = campaign.core.read_namespaced_pod(active, SYSTEM_NAMESPACE)
        kill_on_node(str(pod.metadata.uid), OPERATOR_COMMAND)
        campaign.operator_kills[active] = campaign.operator_kills.get(active, 0) + 1
        return active
    kubectl(
        "delete",
        "pod",
        active,
        "-n",
        SYSTEM_NAMESPACE,
        "--grace-period=0",
        "--force",
        "--wait=false",
    )
    return active


def wait_replacement(campaign: Campaign, killed: str) -> float:
    """Seconds until a surviving replica took over (and then until the replacement joined)."""
    started = time.monotonic()

    def taken_over() -> bool:
        live = peers(campaign.custom)
        return bool(live) and killed not in live and active_replica(campaign.custom) != killed

    wait_for("a replica taking over", taken_over, 120, interval=0.5)
    takeover = time.monotonic() - started
    wait_for("the replacement replica", lambda: len(operator_pods(campaign.core)) == 2, 180)
    wait_for("two live peers again", lambda: len(peers(campaign.custom)) == 2, 120)
    return takeover


def kill_on_node(pod_uid: str, command: bytes) -> list[int]:
    """SIGKILL the processes of pod ``pod_uid`` whose command line holds ``command``, from the
    node: a crash, not a clean stop (a container's PID 1 cannot be killed from inside it, and a
    pod deletion sends SIGTERM first). Returns the PIDs."""
    marks = (pod_uid.encode(), pod_uid.replace("-", "_").encode())
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(m in cgroup for m in marks) and command in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    assert killed, (
        f"no {command.decode()} process of pod {pod_uid} on this machine: the campaign runs on "
        "the cluster's node (the local cluster of hack/cluster)"
    )
    return killed


def kill_sidecar_process(run: Run) -> list[int]:
    pod = run.jobs.agent_pod(JOB)
    assert pod is not None
    return kill_on_node(str(pod.metadata.uid), SIDECAR_COMMAND)


def sidecar_restarts(run: Run) -> int:
    pod = run.jobs.agent_pod(JOB)
    statuses = (pod.status.init_container_statuses if pod and pod.status else None) or []
    return sum(s.restart_count for s in statuses if s.name == "context-manager")


def minio_deployment(campaign: Campaign) -> str:
    deployments = client.AppsV1Api(campaign.kube_api).list_namespaced_deployment(
        SYSTEM_NAMESPACE, label_selector=f"{COMPONENT_LABEL}=minio"
    )
    return str(deployments.items[0].metadata.name)


# The cases: each drives its job, injects its fault and asserts the outcome.


def case_evicted(run: Run, campaign: Campaign) -> None:
    run.start()
    run.at_gate()
    run.write("before-eviction/notes.txt")
    old = run.pod()
    first = run.agent_uids | {run.jobs.agent_pod(JOB).metadata.uid}  # type: ignore[union-attr]
    run.fault_now()
    campaign.core.create_namespaced_pod_eviction(
        old,
        run.namespace,
        client.V1Eviction(metadata=client.V1ObjectMeta(name=old, namespace=run.namespace)),
    )
    wait_for(
        "a new agent pod",
        lambda: (
            (p := run.jobs.agent_pod(JOB)) is not None
            and p.metadata.uid not in first
            and p.metadata.deletion_timestamp is None
        ),
        180,
    )
    run.at_gate()
    run.recovered()
    run.write("after-eviction/notes.txt")
    run.release()
    final = run.finish()
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    assert final.get("podFailures") == 1, final
    # PodEvicted when the operator saw the evicted pod; PodLost when it saw only its absence
    # (another case of the campaign kills the active operator meanwhile). Both are the
    # infrastructure's, retried without counting against the agent.
    assert {"PodEvicted", "PodLost"} & set(run.events()), run.events()
    run.check_archive(campaign.minio)


def case_oom(run: Run, campaign: Campaign) -> None:
    run.start(resources={"requests": {"memory": "256Mi"}, "limits": {"memory": "768Mi"}})
    run.at_gate()
    run.write("before-oom/notes.txt")
    run.fault_now()
    run.exec(OOM_HOG, check=False)
    final = run.finish()
    run.recovered()
    assert (final["phase"], final["reason"]) == ("Failed", "OOMKilled"), final
    assert not final.get("podFailures"), final
    run.check_archive(campaign.minio)


def case_operator_killed_running(run: Run, campaign: Campaign) -> None:
    run.start()
    run.at_gate()
    run.write("before-operator-kill/notes.txt")
    with campaign.operator_kill:
        kill_active_operator(campaign, hard=True)
        run.fault_now()
        run.release()
        # Recovered when an operator acted on the job again (the agent ends within seconds).
        run.jobs.wait_phase(JOB, {"Archiving", *FINAL_PHASES}, 180)
        run.recovered()
        wait_for("two live peers again", lambda: len(peers(campaign.custom)) == 2, 180)
    final = run.finish()
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    assert len(run.agent_uids) == 1 and not final.get("podFailures"), final
    assert final.get("steps") == STEPS, final
    run.check_archive(campaign.minio)


def case_operator_killed_pending(run: Run, campaign: Campaign) -> None:
    with campaign.operator_kill:
        wait_for("two live operator peers", lambda: len(peers(campaign.custom)) == 2, 120)
        run.start()
        # Right after the apply: the operator made the children (phase Pending), the agent
        # pod is not running yet.
        pending = wait_for(
            "the job Pending",
            lambda: (st := run.jobs.status(JOB)).get("phase") in {"Pending", "Running"} and st,
            60,
            interval=0.1,
        )
        pod = run.jobs.agent_pod(JOB)
        pod_phase = pod.status.phase if pod is not None and pod.status else None
        run.notes.append(f"killed in {pending['phase']}, agent pod {pod_phase or 'absent'}")
        kill_active_operator(campaign, hard=True)
        run.fault_now()
        # Recovered when an operator acted on the job again: it records Running.
        run.jobs.wait_phase(JOB, {"Running", *FINAL_PHASES}, 240)
        run.recovered()
        wait_for("two live peers again", lambda: len(peers(campaign.custom)) == 2, 180)
    assert pending["phase"] == "Pending", f"not killed in Pending: {pending}"
    run.at_gate()
    run.write("after-operator-kill/notes.txt")
    run.release()
    final = run.finish()
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    assert len(run.agent_uids) == 1 and not final.get("podFailures"), (run.agent_uids, final)
    assert final.get("steps") == STEPS, final
    run.check_archive(campaign.minio)


def case_operator_killed_archiving(run: Run, campaign: Campaign) -> None:
    run.start(workspace={"size": "1Gi"})
    run.at_gate()
    run.write("before-operator-kill/notes.txt")
    # Random bytes do not compress: the archiver has a real upload to do when the kill comes.
    run.exec(f"head -c {BIG_FILE_MIB}M /dev/urandom > {WORKSPACE}/big.bin && sync")
    big = run.exec(f"sha256sum {WORKSPACE}/big.bin").split()[0]
    with campaign.operator_kill:
        run.release()
        wait_for(
            "the archiver Job",
            lambda: run.archiver_uids or run.jobs.status(JOB).get("phase") in FINAL_PHASES,
            240,
            interval=0.2,
        )
        phase = run.jobs.status(JOB).get("phase")
        run.notes.append(f"killed in {phase}")
        killed = kill_active_operator(campaign, hard=False)
        run.fault_now()
        run.recovered_after = wait_replacement(campaign, killed)
    final = run.finish()
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    assert final.get("archiveAttempts") == 1 and len(run.archiver_uids) == 1, final
    archive = run.check_archive(campaign.minio)
    assert hashlib.sha256(archive.read("big.bin")).hexdigest() == big


def case_sidecar_killed(run: Run, campaign: Campaign) -> None:
    run.start()
    run.at_gate()
    run.write("before-sidecar-kill/notes.txt")
    run.release()
    # The agent sees the gate within half a second and asks for its next step, which the
    # scripted model answers after 3 s: the sidecar dies with the step in flight.
    time.sleep(1.0)
    run.fault_now()
    kill_sidecar_process(run)
    wait_for("the sidecar restarted", lambda: sidecar_restarts(run) >= 1, 120, interval=0.5)
    run.recovered()
    final = run.finish()
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    assert final.get("steps") == STEPS, f"steps {final.get('steps')}, not {STEPS}: {final}"
    assert len(run.agent_uids) == 1 and not final.get("podFailures"), final
    run.check_archive(campaign.minio)


def relay_pods(campaign: Campaign) -> list[client.V1Pod]:
    """The model relay's pods that are not on their way out."""
    pods = campaign.core.list_namespaced_pod(
        SYSTEM_NAMESPACE, label_selector=f"{COMPONENT_LABEL}=model-relay"
    ).items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def relay_prompt_tokens(run: Run) -> int:
    """The relay's count of the job's prompt tokens, as its last answer told the sidecar."""
    return int(run.stats()["tokens"].get("prompt") or 0)


def case_relay_restarted(run: Run, campaign: Campaign) -> None:
    run.start(relay=True)
    run.at_gate()
    run.write("before-relay-restart/notes.txt")
    # Two model calls answered through the relay so far (the gate's wait is a tool call).
    before = relay_prompt_tokens(run)
    assert before > 0, f"no relay usage in /stats: {run.stats()}"
    recorded = wait_for(
        "the relay's counts in the status",
        lambda: (run.jobs.status(JOB).get("tokens") or {}).get("prompt"),
        60,
    )
    (old,) = relay_pods(campaign)
    run.fault_now()
    kubectl("delete", "pod", old.metadata.name, "-n", SYSTEM_NAMESPACE, "--wait=false")
    wait_for(
        "a new relay pod, ready",
        lambda: any(p.metadata.uid != old.metadata.uid and ready(p) for p in relay_pods(campaign)),
        180,
        interval=0.5,
    )
    run.recovered()
    run.release()
    # Every answer after the restart carries the relay's totals: each must include what was
    # counted before it (a relay that lost its journal would count from zero again). The
    # scripted model takes 3 s a turn, so each answer's totals are sampled.
    seen: list[int] = []
    while run.jobs.status(JOB).get("phase") == "Running":
        with contextlib.suppress(Exception):  # the sidecar ends with the run
            seen.append(relay_prompt_tokens(run))
        time.sleep(0.25)
    final = run.finish()
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    assert final.get("steps") == STEPS, final
    assert len(run.agent_uids) == 1 and not final.get("podFailures"), final
    fell = [n for n in seen if n < before]
    assert not fell, f"relay totals fell below {before} after the restart: {seen}"
    after = int(final["tokens"]["prompt"])
    assert after > before and after >= int(recorded), (before, recorded, final["tokens"])
    run.notes.append(f"prompt tokens {before} before the restart, {after} at the end")
    run.check_archive(campaign.minio)


def case_suspend_resume(run: Run, campaign: Campaign) -> None:
    run.start()
    run.at_gate()
    run.write("cycle-0.txt")
    for cycle in range(1, 4):
        run.jobs.patch_spec(JOB, {"suspend": True})
        run.jobs.wait_phase(JOB, {"Suspended"}, 120)
        wait_for("the agent pod gone", lambda: run.jobs.agent_pod(JOB) is None, 120)
        run.jobs.patch_spec(JOB, {"suspend": False})
        run.fault_at = time.monotonic()
        run.at_gate()
        run.recovered_after = time.monotonic() - run.fault_at
        run.write(f"cycle-{cycle}.txt")
    run.release()
    final = run.finish()
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    assert not final.get("podFailures"), final
    assert len(run.agent_uids) == 4, f"{len(run.agent_uids)} agent pods for 3 resumes"
    run.check_archive(campaign.minio)


def case_pvc_gone(run: Run, campaign: Campaign) -> None:
    run.start()
    run.at_gate()
    run.write("lost.txt")
    # Deleted while mounted: it goes (with its data) when the agent pod goes, before archiving.
    run.jobs.kubectl("delete", "pvc", WORKSPACE_PVC, "-n", run.namespace, "--wait=false")
    run.release()
    run.jobs.wait_phase(JOB, {"Archiving", *FINAL_PHASES}, 240)
    run.fault_now()
    final = run.finish(timeout=180)
    run.recovered()
    assert (final["phase"], final["reason"]) == ("Failed", "ArchiveFailed"), final
    assert "PersistentVolumeClaim" in final["message"], final
    assert run.recovered_after is not None and run.recovered_after < 120
    run.data = "n/a (the volume itself was deleted)"


def case_minio_stopped(run: Run, campaign: Campaign) -> None:
    run.start()
    run.at_gate()
    run.write("before-minio-stop/notes.txt")
    # Every other case is final first: their archives must not wait on this outage.
    assert campaign.quiet.wait(900), "the other cases did not finish"
    earlier = next((r for r in campaign.runs if r.final.get("artifact")), None)
    deployment = minio_deployment(campaign)
    run.release()
    run.jobs.wait_phase(JOB, {"Archiving", *FINAL_PHASES}, 240)
    run.notes.append(f"archiver started: {bool(run.archiver_uids)}")
    run.fault_now()
    kubectl("scale", "deployment", deployment, "-n", SYSTEM_NAMESPACE, "--replicas=0")
    kubectl(
        "wait",
        "--for=delete",
        "pod",
        "-l",
        f"{COMPONENT_LABEL}=minio",
        "-n",
        SYSTEM_NAMESPACE,
        "--timeout=120s",
        check=False,
    )
    # What the operator says meanwhile (the Archived condition's message names the error).
    said: set[str] = set()
    deadline = time.monotonic() + MINIO_OUTAGE_S
    while time.monotonic() < deadline:
        for condition in run.jobs.status(JOB).get("conditions") or []:
            if condition.get("type") == "Archived" and condition.get("status") == "False":
                said.add(f"{condition.get('reason')}: {str(condition.get('message'))[:160]}")
        time.sleep(2)
    run.notes.extend(sorted(said))
    kubectl("scale", "deployment", deployment, "-n", SYSTEM_NAMESPACE, "--replicas=1")
    kubectl(
        "rollout",
        "status",
        "deployment",
        deployment,
        "-n",
        SYSTEM_NAMESPACE,
        "--timeout=180s",
        timeout=200,
    )
    back = time.monotonic()
    campaign.minio.restart()
    final = run.finish()
    run.recovered_after = time.monotonic() - back
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    run.check_archive(campaign.minio)
    if earlier is not None:
        # MinIO came back with its data: an archive made before the outage is still there.
        earlier.check_archive(campaign.minio)
        run.notes.append(f"{earlier.fault}'s archive intact after the restart")


# The operator between "archive confirmed" and "workspace PVC deleted".


def stored_archives(campaign: Campaign, run: Run) -> dict[str, str]:
    """The objects under the job's prefix in the bundled MinIO (asked with its root user, as an
    admin would), each with its ETag: a second upload would show as another object or ETag."""
    uid = run.jobs.get(JOB)["metadata"]["uid"]
    prefix = names.archive_prefix(run.namespace, JOB, uid)
    for _ in range(10):
        try:
            # A new client each time: the last one's connections went with the lost pod.
            store = minio_as_root(campaign.core, SYSTEM_NAMESPACE, campaign.minio.port)
            found = store.list_objects(ARCHIVE_BUCKET, prefix=prefix, recursive=True)
            return {str(o.object_name): str(o.etag) for o in found}
        except OSError:  # the port-forward lost its pod
            campaign.minio.restart()
            time.sleep(1)
    raise AssertionError(f"cannot list {ARCHIVE_BUCKET}/{prefix}")


@contextlib.contextmanager
def pvc_delete_refused(run: Run) -> Iterator[str]:
    """An admission policy that refuses every DELETE of this job's workspace PVC, in force once
    a server-side dry run of that delete is refused; removed on the way out. Yields its name."""
    name = f"faults-hold-{run.namespace}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": run.namespace}
                },
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["DELETE"],
                        "resources": ["persistentvolumeclaims"],
                        "resourceNames": [WORKSPACE_PVC],
                    }
                ],
            },
            "validations": [
                {
                    "expression": "false",
                    "message": "the fault campaign holds this workspace PVC",
                    "reason": "Forbidden",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    try:
        kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": [policy, binding]}),
        )

        def refused() -> bool:
            dry = kubectl(
                "delete",
                "pvc",
                WORKSPACE_PVC,
                "-n",
                run.namespace,
                "--dry-run=server",
                check=False,
            )
            return dry.returncode != 0 and name in dry.stderr

        wait_for("the policy in force", refused, 60, interval=0.5)
        yield name
    finally:
        kubectl("delete", "validatingadmissionpolicybinding", name, "--ignore-not-found")
        kubectl("delete", "validatingadmissionpolicy", name, "--ignore-not-found")


def case_operator_killed_before_pvc_delete(run: Run, campaign: Campaign) -> None:
    run.start()
    run.at_gate()
    run.write("before-operator-kill/notes.txt")
    with pvc_delete_refused(run) as policy:
        run.release()

        def held() -> dict[str, Any] | None:
            status = run.jobs.status(JOB)
            pvc = run.jobs.core.list_namespaced_persistent_volume_claim(
                run.namespace, field_selector=f"metadata.name={WORKSPACE_PVC}"
            ).items
            kept = bool(pvc) and pvc[0].metadata.deletion_timestamp is None
            recorded = status.get("artifact") and status.get("phase") == "Succeeded"
            return status if recorded and kept and not status.get("cleanedUp") else None

        # Confirmed and recorded in the status, the PVC kept: the operator is in the window.
        wait_for("the archive recorded, the PVC kept", held, 300, interval=0.5)
        with campaign.operator_kill:
            active = active_replica(campaign.custom)
            refusal = f"deleting PersistentVolumeClaim {run.namespace}/{WORKSPACE_PVC} failed"

            def logged() -> bool:
                text = campaign.core.read_namespaced_pod_log(
                    active, SYSTEM_NAMESPACE, since_seconds=600
                )
                return refusal in text and policy in text

            # The operator tried, was refused, and says so (and that it retries).
            wait_for("the refused delete in the operator's log", logged, 60)
            before = stored_archives(campaign, run)
            kill_active_operator(campaign, hard=True)
            run.fault_now()
    # The policy is gone: whichever replica acts next only finishes the cleanup.
    wait_for(
        "the workspace PVC deleted",
        lambda: run.jobs.status(JOB).get("cleanedUp") and not run.jobs.children(JOB)["pvcs"],
        300,
    )
    run.recovered()
    wait_for("two live peers again", lambda: len(peers(campaign.custom)) == 2, 180)
    final = run.finish()
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    assert final.get("archiveAttempts") == 1 and len(run.archiver_uids) == 1, final
    after = stored_archives(campaign, run)
    zips = [key for key in after if key.endswith("/workspace.zip")]
    assert len(zips) == 1 and after == before, (before, after)
    run.notes.append(f"{len(after)} stored objects, unchanged by the successor")
    run.check_archive(campaign.minio)


# The workspace volume full.


def node_name(campaign: Campaign) -> str:
    (node,) = campaign.core.list_node().items
    return str(node.metadata.name)


def root(*argv: str) -> str:
    """A command on the node (the campaign runs there as root)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr.strip()}"
    return proc.stdout.strip()


@contextlib.contextmanager
def small_volume(run: Run, campaign: Campaign) -> Iterator[str]:
    """A ``SMALL_VOLUME_MIB`` ext4 filesystem on a loop device, offered to this job alone: a
    static local PV on the node, a StorageClass without a provisioner, and a CodingJobClass
    (the default class with that StorageClass). Yields the class's name; everything goes on the
    way out, also after a failure. (local-path enforces no size: its volumes never fill.)"""
    name = f"faults-full-{run.namespace}"[:63]
    scratch = Path(tempfile.mkdtemp(prefix="codingjob-faults-"))
    image, mount = scratch / "workspace.img", scratch / "mnt"
    device = ""
    try:
        root("truncate", "-s", f"{SMALL_VOLUME_MIB}M", str(image))
        # No blocks reserved for root: the full volume is full for every process.
        root("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        device = root("losetup", "--find", "--show", str(image))
        mount.mkdir()
        root("mount", device, str(mount))
        (mount / "lost+found").rmdir()
        # Like local-path's volume directories: the non-root agent and sidecar write here.
        mount.chmod(0o777)
        storage_class = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Retain",
        }
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": f"{SMALL_VOLUME_MIB}Mi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": name,
                "local": {"path": str(mount)},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [node_name(campaign)],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        classes = campaign.custom.list_cluster_custom_object(
            "codingjob.dev", "v1alpha1", "codingjobclasses"
        )["items"]
        default = next(
            c
            for c in classes
            if (c["metadata"].get("annotations") or {}).get("codingjob.dev/is-default-class")
            == "true"
        )
        job_class = {
            "apiVersion": "codingjob.dev/v1alpha1",
            "kind": "CodingJobClass",
            "metadata": {"name": name},
            "spec": {
                **default["spec"],
                "workspace": {**default["spec"].get("workspace", {}), "storageClassName": name},
            },
        }
        items = [storage_class, volume, job_class]
        kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": items}),
        )
        yield name
    finally:
        # The job's pods and PVC first (the PV is protected while bound), then what was made.
        ns = run.namespace
        kubectl("delete", "codingjob", "--all", "-n", ns, "--wait=false", check=False)
        kubectl("delete", "pod", "--all", "-n", ns, "--grace-period=0", "--force", check=False)
        kubectl("delete", "pvc", "--all", "-n", ns, "--wait=false", check=False)
        kubectl(
            "wait",
            "--for=delete",
            "pvc",
            "--all",
            "-n",
            run.namespace,
            "--timeout=60s",
            check=False,
            timeout=90,
        )
        for kind in ("codingjobclass", "pv", "storageclass"):
            kubectl("delete", kind, name, "--ignore-not-found", "--wait=false", check=False)
        kubectl("wait", "--for=delete", f"pv/{name}", "--timeout=60s", check=False, timeout=90)
        # Lazily: a mount a pod still holds goes once it lets go.
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def case_workspace_full(run: Run, campaign: Campaign) -> None:
    with small_volume(run, campaign) as name:
        run.start(scenario="disk-full", className=name, workspace={"size": f"{SMALL_VOLUME_MIB}Mi"})
        run.at_gate()
        run.write("before-full/notes.txt")
        run.write("before-full/more/data.txt", secrets.token_hex(2048))
        run.release()
        run.fault_now()
        final = run.finish()
        run.recovered()
        # The agent saw ENOSPC; the sidecar could not store that step and said why; the
        # operator shows it and archives what is there.
        assert (final["phase"], final["reason"]) == ("Failed", "WorkspaceFull"), final
        assert "No space left on device" in final.get("message", ""), final
        assert not final.get("podFailures"), final
        assert len(run.agent_uids) == 1 and len(run.archiver_uids) == 1, final
        archive = run.check_archive(campaign.minio)
        filled = archive.getinfo("fill.bin").file_size
        assert filled > SMALL_VOLUME_MIB * 2**20 // 2, filled
        run.notes.append(f"fill.bin {filled >> 20} MiB in the ZIP; {final['message'][:120]}")
        wait_for("the workspace PVC deleted", lambda: not run.jobs.children(JOB)["pvcs"], 120)


# The node's kubelet and container runtime restarted.


def node_ready_since(campaign: Campaign, since: datetime.datetime) -> bool:
    """The node is Ready and its kubelet renewed its lease after ``since``."""
    (node,) = campaign.core.list_node().items
    ready = any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
    lease = client.CoordinationV1Api(campaign.kube_api).read_namespaced_lease(
        node.metadata.name, "kube-node-lease"
    )
    renewed = lease.spec.renew_time
    return ready and renewed is not None and renewed > since


def steps_now(run: Run) -> int:
    """The sidecar's step count, -1 while it cannot be asked."""
    try:
        return int(run.stats().get("steps") or 0)
    except Exception:  # the pod is starting, restarting or gone
        return -1


def case_node_restarted(run: Run, campaign: Campaign) -> None:
    run.start(scenario="resume")
    run.jobs.wait_phase(JOB, {"Running"}, 300)
    wait_for("the agent at work", lambda: steps_now(run) >= 2, 120, interval=0.5)
    run.write("before-node-restart/notes.txt")
    pod = run.jobs.agent_pod(JOB)
    assert pod is not None
    steps_before = steps_now(run)
    since = datetime.datetime.now(datetime.UTC)
    run.fault_now()
    # The cluster's own script: the same command lines as up.sh, and it waits for the node.
    restart = subprocess.run(
        [str(RESTART_SCRIPT), "kubelet", "containerd"], capture_output=True, text=True, timeout=600
    )
    assert restart.returncode == 0, restart.stderr[-2000:]
    wait_for("the node Ready again", lambda: node_ready_since(campaign, since), 180)
    wait_for(
        "the agent's next step",
        lambda: steps_now(run) > steps_before or run.jobs.status(JOB).get("phase") != "Running",
        180,
    )
    run.recovered()
    final = run.finish()
    same = run.agent_uids == {pod.metadata.uid}
    run.notes.append(
        f"steps {steps_before} at the restart, {final.get('steps')} at the end; "
        + ("the same agent pod" if same else f"{len(run.agent_uids)} agent pods")
    )
    assert (final["phase"], final["reason"]) == ("Succeeded", "Completed"), final
    # The conversation went on: every turn of the scenario answered once, none twice.
    assert final.get("steps") == RESUME_STEPS, final
    archive = run.check_archive(campaign.minio)
    for i in range(1, 7):
        assert f"progress/step-{i}" in archive.namelist(), i
    stored = journal_messages(archive)
    answers = [m for m in stored if m.get("role") == "assistant"]
    calls = [c["id"] for m in answers for c in m.get("tool_calls") or []]
    assert len(answers) == RESUME_STEPS and len(calls) == len(set(calls)), answers
    assert sum(1 for m in stored if m.get("role") == "system") == 1


@dataclass(frozen=True)
class Case:
    fault: str
    phase: str
    drive: Callable[[Run, Campaign], None]
    #: Runs its fault only once every other case is final.
    last: bool = False
    #: Disturbs the whole node: runs alone, after every other case (``last`` ones included).
    alone: bool = False


CASES = [
    Case("agent evicted (Eviction API)", "Running", case_evicted),
    Case("agent OOM-killed", "Running", case_oom),
    Case("active operator SIGKILLed", "Pending", case_operator_killed_pending),
    Case("active operator SIGKILLed", "Running", case_operator_killed_running),
    Case("active operator pod deleted (grace 0)", "Archiving", case_operator_killed_archiving),
    Case("context-manager SIGKILLed", "Running (mid-step)", case_sidecar_killed),
    Case("suspend/resume x3, writes between", "Running", case_suspend_resume),
    Case("workspace PVC deleted", "Running -> Archiving", case_pvc_gone),
    Case("model relay pod deleted", "Running (at the gate)", case_relay_restarted),
    Case(f"MinIO stopped {MINIO_OUTAGE_S}s", "Archiving", case_minio_stopped, last=True),
    Case(
        "active operator SIGKILLed, workspace PVC delete refused",
        "Succeeded, archive recorded, PVC not yet deleted",
        case_operator_killed_before_pvc_delete,
    ),
    Case(f"workspace volume full ({SMALL_VOLUME_MIB} MiB ext4)", "Running", case_workspace_full),
    Case("kubelet and containerd restarted", "Running (mid-step)", case_node_restarted, alone=True),
]


def selected(cases: list[Case], only: str) -> list[Case]:
    """The cases whose fault names one of the comma-separated words of ``only`` (every case
    when it is empty), to run a few again while fixing what they found."""
    words = [w.strip().lower() for w in only.split(",") if w.strip()]
    chosen = [c for c in cases if not words or any(w in c.fault.lower() for w in words)]
    assert chosen, f"CODINGJOB_FAULTS={only!r} selects no case"
    return chosen


def table(runs: list[Run]) -> str:
    rows = [("fault", "phase", "outcome", "data intact", "recover (s)", "notes")]
    for run in runs:
        recover = f"{run.recovered_after:.1f}" if run.recovered_after is not None else "-"
        rows.append((run.fault, run.phase, run.outcome(), run.data, recover, "; ".join(run.notes)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


@contextlib.contextmanager
def namespaces(core: client.CoreV1Api, count: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(fresh_namespace(core, f"faults-{i}")) for i in range(count)]


def operator_restarts(core: client.CoreV1Api) -> dict[str, int]:
    return {
        p.metadata.name: sum(cs.restart_count for cs in (p.status.container_statuses or []))
        for p in operator_pods(core)
    }


@pytest.mark.timeout(1800)
def test_fault_campaign(
    operator_release: str, kube_api: client.ApiClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every fault of the campaign, concurrently, each against its own job; one table."""
    cases = selected(CASES, os.environ.get("CODINGJOB_FAULTS", ""))
    campaign = Campaign(operator_release, kube_api)
    restarts_before = operator_restarts(campaign.core)
    started = time.monotonic()
    with namespaces(campaign.core, len(cases)) as names:
        for case, namespace in zip(cases, names, strict=True):
            jobs = make_jobs(operator_release, namespace, kube_api)
            campaign.runs.append(Run(case.fault, case.phase, jobs))
        campaign.minio.restart()
        stop = threading.Event()
        watcher = threading.Thread(target=observe, args=(campaign, stop), daemon=True)
        watcher.start()

        def drive(case: Case, run: Run) -> None:
            try:
                case.drive(run, campaign)
                run.check_children()
            except Exception:  # every case reports, whichever failed
                run.error = traceback.format_exc(limit=3)
                with contextlib.suppress(Exception):
                    run.final = run.final or run.jobs.status(JOB)

        try:
            with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
                pairs = list(zip(cases, campaign.runs, strict=True))
                first = [pool.submit(drive, c, r) for c, r in pairs if not (c.last or c.alone)]
                rest = [pool.submit(drive, c, r) for c, r in pairs if c.last]
                concurrent.futures.wait(first)
                campaign.quiet.set()
                concurrent.futures.wait(rest)
            # Nothing else runs meanwhile: each of these disturbs every job on the node.
            for case, run in pairs:
                if case.alone:
                    drive(case, run)
        finally:
            stop.set()
            watcher.join(5)
            campaign.minio.close()
    elapsed = time.monotonic() - started

    restarts_after = operator_restarts(campaign.core)
    looping = {
        p: n
        for p, n in restarts_after.items()
        if n > restarts_before.get(p, 0) + campaign.operator_kills.get(p, 0)
    }
    report = table(campaign.runs)
    summary = f"fault campaign: {len(cases)} cases in {elapsed:.0f}s"
    FAULT_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (FAULT_ARTIFACTS / "faults.md").write_text(f"{summary}\n\n{report}\n")
    (FAULT_ARTIFACTS / "faults.json").write_text(
        json.dumps(
            [
                {
                    "fault": r.fault,
                    "phase": r.phase,
                    "outcome": r.outcome(),
                    "dataIntact": r.data,
                    "recoverSeconds": r.recovered_after,
                    "notes": r.notes,
                    "error": r.error,
                    "final": {k: r.final.get(k) for k in ("phase", "reason", "message")},
                }
                for r in campaign.runs
            ],
            indent=2,
        )
    )
    with capsys.disabled():
        print(f"\n{summary}\n{report}\n")
    errors = [f"{r.fault} ({r.phase}):\n{r.error}" for r in campaign.runs if r.error]
    assert not errors, "\n\n".join(errors)
    assert not looping, f"operator containers restarted: {looping}"
