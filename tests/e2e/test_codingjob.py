"""A CodingJob from `kubectl apply` to the downloaded ZIP, on the real cluster, as a user would."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.stream import stream

from tests.e2e.conftest import ARTIFACTS, REPO, Jobs, operator_logs, port_forward, wait_for
from tests.fixtures.cluster import watch_until
from tests.fixtures.events import operator_errors
from tests.fixtures.release import RELEASE, journal_messages, minio_as_root
from tests.fixtures.security import archiver_violations, sandbox_violations

pytestmark = pytest.mark.e2e

#: Files the todo-app scenario writes into the workspace.
TODO_APP_FILES = {
    "todo-app/index.html",
    "todo-app/app.js",
    "todo-app/todo.js",
    "todo-app/todo.test.js",
}


SAMPLES = REPO / "crds" / "samples"
#: What the kubelet writes when a pod's activeDeadlineSeconds passes (the agent's own soft
#: deadline says "the deadline of N s passed" instead).
POD_DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


def no_operator_errors(jobs: Jobs, kube_api: client.ApiClient, since: float) -> None:
    """No Warning/Error Event from kopf's log poster in the test's namespace, and no traceback
    in the operator's log since ``since`` (a time.monotonic() value)."""
    errors = operator_errors(jobs.core.list_namespaced_event(jobs.namespace).items)
    logs = operator_logs(kube_api, since_seconds=int(time.monotonic() - since) + 5)
    errors += [line for line in logs.splitlines() if line.startswith("Traceback")]
    assert errors == [], "\n".join(errors)


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        body: bytes = response.read()
        return body


def check_archive(status: dict[str, Any]) -> zipfile.ZipFile:
    """The status's URL serves a ZIP whose size and sha256 are the ones status reports."""
    artifact = status["artifact"]
    assert status["downloadURL"] == artifact["url"]
    body = download(status["downloadURL"])
    assert len(body) == artifact["size"]
    assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    return archive


def desktop_is_not_blank(port: int, password: str, path: str) -> int:
    """Open noVNC in headless Chromium, log in, save a screenshot; return the colours it shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(
                f"http://127.0.0.1:{port}/vnc.html?autoconnect=1&resize=scale&password={password}"
            )
            page.wait_for_selector("#noVNC_container canvas", state="attached", timeout=20_000)
            # The canvas fills once the first framebuffer update arrives.
            colours = 0
            deadline = time.monotonic() + 20
            while colours < 3 and time.monotonic() < deadline:
                page.wait_for_timeout(500)
                colours = int(
                    page.evaluate(
                        """() => {
                        const c = document.querySelector('#noVNC_container canvas');
                        if (!c || !c.width) return 0;
                        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                        const seen = new Set();
                        for (let i = 0; i < d.length; i += 4 * 97)
                            seen.add((d[i] << 16) | (d[i+1] << 8) | d[i+2]);
                        return seen.size;
                    }"""
                    )
                )
            page.screenshot(path=path)
            return colours
        finally:
            browser.close()


def exec_in_agent(core: client.CoreV1Api, namespace: str, pod: str, command: str) -> str:
    out: str = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        container="agent",
        command=["/bin/sh", "-c", command],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    return out


def test_happy_path(jobs: Jobs, minio_forward: int, kube_api: client.ApiClient) -> None:
    """A sample as a user applies it (the model from the chart's defaults) → Running with
    progress, a sandbox that keeps its promises on the live objects → desktop and Jupyter
    reachable → Succeeded → the ZIP downloads; no operator error on the way."""
    name = "hello"  # crds/samples/minimal.yaml: only a task, the rest from the product
    started = time.monotonic()
    batch = client.BatchV1Api(kube_api)
    # Watched from here on: the archiver Job lives only while archiving.
    jobs_rv = batch.list_namespaced_job(jobs.namespace).metadata.resource_version
    jobs.kubectl("apply", "-n", jobs.namespace, "-f", str(SAMPLES / "minimal.yaml"))

    running = jobs.wait_phase(name, {"Running"}, timeout=180)
    pod = jobs.agent_pod(name)
    assert pod is not None
    assert [c.name for c in pod.spec.containers] == ["agent"]
    sidecar = next(c for c in pod.spec.init_containers if c.name == "context-manager")
    assert sidecar.restart_policy == "Always"
    # The security promises, on the live pod as the API server stored it.
    live = kube_api.sanitize_for_serialization(pod)
    assert sandbox_violations(live["spec"]) == {}
    env = {e["name"]: e for e in live["spec"]["initContainers"][0]["env"]}
    assert env["CODINGJOB_MODEL_NAME"]["value"] == "scripted-demo-model"
    # The product default: the model through the relay (on by default), with a credential
    # for this job only; the scripted model's address is the relay's business.
    relays = jobs.core.list_namespaced_service(
        jobs.system_namespace, label_selector="app.kubernetes.io/component=model-relay"
    ).items
    assert [r.metadata.labels["app.kubernetes.io/instance"] for r in relays] == [RELEASE]
    assert env["CODINGJOB_MODEL_BASE_URL"]["value"] == (
        f"http://{relays[0].metadata.name}.{jobs.system_namespace}.svc:8080/v1"
    )
    assert env["CODINGJOB_MODEL_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        f"{name}-model-credential"
    )

    # Progress shows up in status (and so in `kubectl get codingjobs`) while the agent works.
    first = wait_for(
        "steps in status",
        lambda: (s := jobs.status(name)).get("steps", 0) >= 1 and s,
        120,
    )
    assert first["tokens"]["used"] > 0

    def rising() -> dict[str, Any] | None:
        now = jobs.status(name)
        assert now["phase"] == "Running", f"the job left Running before its steps rose: {now}"
        return now if now.get("steps", 0) > first["steps"] else None

    later = wait_for("steps rising while Running", rising, 60, interval=0.5)
    assert later["steps"] > first["steps"]
    assert later["tokens"]["used"] >= first["tokens"]["used"]

    # Look over the agent's shoulder: noVNC through a port-forward to the desktop Service.
    service = running.get("service") or jobs.status(name)["service"]
    session = jobs.core.read_namespaced_secret(f"{name}-session", jobs.namespace)
    password = base64.b64decode(session.data["vnc-password"]).decode()
    token = base64.b64decode(session.data["jupyter-token"]).decode()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "novnc-desktop.png"
    with port_forward(jobs.namespace, f"svc/{service['name']}", 6080) as novnc:
        colours = desktop_is_not_blank(novnc, password, str(shot))
    assert shot.stat().st_size > 0
    assert colours >= 3, f"desktop screenshot looks blank ({colours} colours), see {shot}"

    # Jupyter answers only with the token.
    with port_forward(jobs.namespace, f"svc/{service['name']}", 8888) as jupyter:
        with pytest.raises(urllib.error.HTTPError) as refused:
            download(f"http://127.0.0.1:{jupyter}/api/status")
        assert refused.value.code == 403
        status = json.loads(download(f"http://127.0.0.1:{jupyter}/api/status?token={token}"))
        assert set(status) >= {"started", "last_activity", "kernels"}, status

    done = jobs.wait_phase(name, {"Succeeded", "Failed"}, timeout=300)
    assert done["phase"] == "Succeeded", done
    archive = check_archive(done)
    names = set(archive.namelist())
    assert names >= TODO_APP_FILES, sorted(names)
    assert ".context-manager/context.jsonl" in names and "context.jsonl" not in names
    assert (done["outcome"], done["reason"]) == ("Succeeded", "Completed")
    assert done["steps"] >= later["steps"]

    # The archiver Job as it was created, from the watch started before the job.
    archiver = watch_until(
        batch.list_namespaced_job,
        jobs.namespace,
        name=f"{name}-archive",
        until=lambda kind, _: kind == "ADDED",
        resource_version=jobs_rv,
        timeout=30,
    )
    assert archiver_violations(kube_api.sanitize_for_serialization(archiver)) == {}

    # The workspace is deleted only after the archive is confirmed.
    wait_for(
        "pod and PVC gone", lambda: not (c := jobs.children(name))["pods"] and not c["pvcs"], 60
    )

    wide = jobs.kubectl("get", "cjob", name, "-n", jobs.namespace, "-o", "wide").stdout
    assert "URL-EXPIRES" in wide.splitlines()[0]
    assert done["artifact"]["urlExpiresAt"] in wide.splitlines()[1]
    assert str(done["artifact"]["size"]) in wide
    assert done["downloadURL"] not in wide  # the URL stays in status
    no_operator_errors(jobs, kube_api, started)


def test_agent_failure_is_archived(jobs: Jobs, minio_forward: int) -> None:
    """An agent that gives up ends Failed with its reason, and its workspace is still archived."""
    name = "gives-up"
    jobs.apply(jobs.manifest(name, "fail"))
    done = jobs.wait_phase(name, {"Succeeded", "Failed"}, timeout=300)
    assert (done["phase"], done["outcome"], done["reason"]) == ("Failed", "Failed", "AgentError")
    assert done["message"] == (
        "the agent gave up: The task needs a service that is not reachable from the sandbox, "
        "so it cannot be done here."
    )
    assert "looked" in check_archive(done).read(".context-manager/context.txt").decode()


def test_deadline(jobs: Jobs, minio_forward: int) -> None:
    """activeDeadlineSeconds ends a job whose agent ignores its soft deadline (the scenario stops
    the agent process): Failed with the pod's DeadlineExceeded, the workspace still archived."""
    name = "forever"
    jobs.apply(
        jobs.manifest(
            name,
            "ignore-deadline",
            # The soft deadline (30 s after the agent starts) would end a live agent first; the
            # scenario freezes it within seconds, so it cannot react.
            limits={"activeDeadlineSeconds": 60},
            gui={"enabled": False},
            jupyter={"enabled": False},
        )
    )
    done = jobs.wait_phase(name, {"Succeeded", "Failed"}, timeout=300)
    assert (done["phase"], done["reason"]) == ("Failed", "DeadlineExceeded"), done
    # The kubelet's message, not the agent's: only the pod-level deadline ended this job.
    assert done["message"] == POD_DEADLINE_MESSAGE, done
    archive = check_archive(done)
    assert archive.read("frozen.txt") == b"frozen\n"
    assert ".codingjob/result.json" not in archive.namelist(), "the agent ended itself"


def test_suspend_and_resume(jobs: Jobs, minio_forward: int) -> None:
    """suspend keeps the workspace and conversation; resume continues them in a new pod."""
    name = "pausable"
    jobs.apply(jobs.manifest(name, "resume"))
    jobs.wait_phase(name, {"Running"}, timeout=180)
    wait_for("two steps", lambda: (jobs.status(name).get("steps") or 0) >= 2, 120)
    first_pod = jobs.agent_pod(name)
    assert first_pod is not None

    jobs.patch_spec(name, {"suspend": True})
    jobs.wait_phase(name, {"Suspended"}, timeout=120)
    wait_for("agent pod gone", lambda: jobs.agent_pod(name) is None, 60)
    assert jobs.children(name)["pvcs"], "the workspace PVC must survive a suspend"

    jobs.patch_spec(name, {"suspend": False})
    wait_for(
        "a new agent pod",
        lambda: (
            (p := jobs.agent_pod(name)) is not None and p.metadata.uid != first_pod.metadata.uid
        ),
        120,
    )
    done = jobs.wait_phase(name, {"Succeeded", "Failed"}, timeout=300)
    assert done["phase"] == "Succeeded", done
    archive = check_archive(done)
    stored = journal_messages(archive)
    systems = [m for m in stored if m.get("role") == "system"]
    assert len(systems) == 1, "the resumed pod must continue the conversation, not start over"


def stored_object(operator_release: str, core: client.CoreV1Api, port: int, key: str) -> int | None:
    """Size of ``key`` in the bundled MinIO (asked with its root user, as an admin would), or
    None when there is no such object."""
    from minio.error import S3Error

    store = minio_as_root(core, operator_release, port)
    try:
        return int(store.stat_object("codingjob-artifacts", key).size or 0)
    except S3Error as error:
        if error.code in ("NoSuchKey", "NoSuchObject"):
            return None
        raise


def test_delete_while_running_archives_first(
    jobs: Jobs, minio_forward: int, operator_release: str, kube_api: client.ApiClient
) -> None:
    """Deleting a running job stops the agent, archives the workspace, then removes the job and
    every child; the ZIP stays in the store (retention Retain), and the operator logs no error."""
    name = "doomed"
    jobs.apply(jobs.manifest(name, "never-finish"))
    jobs.wait_phase(name, {"Running"}, timeout=180)
    uid = jobs.get(name)["metadata"]["uid"]
    started = time.monotonic()
    jobs.kubectl("delete", "cjob", name, "-n", jobs.namespace, "--wait=false")
    archiving = jobs.wait_phase(name, {"Archiving"}, timeout=30)
    assert archiving["reason"] == "Deleted", archiving
    wait_for(
        "the CodingJob and all its children gone",
        lambda: (
            not jobs.kubectl("get", "cjob", "-n", jobs.namespace, "-o", "name").stdout.strip()
            and not any(jobs.children(name).values())
        ),
        240,
        interval=1,
    )
    key = f"{jobs.namespace}/{name}/{uid}/workspace.zip"
    size = stored_object(operator_release, jobs.core, minio_forward, key)
    assert size is not None and size > 0, f"no archive at {key}"
    no_operator_errors(jobs, kube_api, started)


def test_delete_with_on_delete_discard_removes_everything_at_once(
    jobs: Jobs, kube_api: client.ApiClient
) -> None:
    """`artifacts.onDelete: Discard`: deleting a running job removes every child at once: no
    archive is waited for, only the agent pod's 30-s grace period (plus 30 s for a busy node)."""
    name = "discarded"
    jobs.apply(jobs.manifest(name, "never-finish", artifacts={"onDelete": "Discard"}))
    jobs.wait_phase(name, {"Running"}, timeout=180)
    started = time.monotonic()
    jobs.kubectl("delete", "cjob", name, "-n", jobs.namespace, "--wait=false")
    wait_for("all children gone", lambda: not any(jobs.children(name).values()), 60, interval=0.5)
    assert time.monotonic() - started <= 60
    no_operator_errors(jobs, kube_api, started)


# Each is rejected by the API server's schema validation with a message naming the field.
INVALID_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("missing-task", {"task": None}, "task"),
    ("empty-task", {"task": ""}, "task"),
    ("oversize-task", {"task": "x" * 40_000}, "task"),
    ("negative-deadline", {"limits": {"activeDeadlineSeconds": -5}}, "activeDeadlineSeconds"),
    ("unknown-strategy", {"context": {"strategy": "forget-everything"}}, "strategy"),
    ("task-wrong-type", {"task": 42}, "task"),
    ("steps-wrong-type", {"limits": {"maxSteps": "many"}}, "maxSteps"),
    ("expiry-too-long", {"artifacts": {"urlExpirySeconds": 10_000_000}}, "urlExpirySeconds"),
    ("bad-egress", {"network": {"egress": "Everywhere"}}, "egress"),
    (
        "bad-cidr",
        {"network": {"egress": "Restricted", "allowedCIDRs": ["not-a-cidr"]}},
        "allowedCIDRs",
    ),
    ("tiny-context", {"context": {"maxTokens": 10}}, "maxTokens"),
    (
        "secret-ref-without-key",
        {"model": {"baseURL": "http://m:8000/v1", "name": "m", "apiKeySecretRef": {"name": "s"}}},
        "key",
    ),
]


@pytest.mark.parametrize(
    ("name", "override", "field"), INVALID_SPECS, ids=[c[0] for c in INVALID_SPECS]
)
def test_bad_spec_is_rejected(jobs: Jobs, name: str, override: dict[str, Any], field: str) -> None:
    manifest = jobs.manifest(name, "todo-app")
    for key, value in override.items():
        if value is None:
            manifest["spec"].pop(key, None)
        else:
            manifest["spec"][key] = value
    result = jobs.apply(manifest, check=False)
    assert result.returncode != 0, f"{name} was accepted"
    assert field in result.stderr, result.stderr


def test_missing_secret_fails_with_reason(jobs: Jobs, operator_restarts: Callable[[], int]) -> None:
    """What a schema cannot check ends Failed with a reason that names the problem."""
    before = operator_restarts()
    manifest = jobs.manifest("no-secret", "todo-app")
    manifest["spec"]["model"]["apiKeySecretRef"] = {"name": "does-not-exist", "key": "api-key"}
    jobs.apply(manifest)
    done = jobs.wait_phase("no-secret", {"Failed"}, timeout=120)
    assert done["reason"] == "SecretNotAllowed", done
    assert done["message"] == (
        f"Secret 'does-not-exist' (spec.model.apiKeySecretRef) does not exist in namespace "
        f'{jobs.namespace!r} or lacks the label codingjob.dev/model-credentials: "true"'
    )
    assert not any(jobs.children("no-secret").values()), "no child without its Secret"
    assert operator_restarts() == before, "bad input must never crash the operator"


def test_sandbox_boundaries(jobs: Jobs, operator_release: str, kube_api: client.ApiClient) -> None:
    """Inside the agent container: no token, no LLM key, no MinIO credentials, no privileges."""
    name = "boxed"
    jobs.apply(jobs.manifest(name, "never-finish"))
    jobs.wait_phase(name, {"Running"}, timeout=180)
    pod = wait_for(
        "agent running",
        lambda: (p := jobs.agent_pod(name)) and p.status.phase == "Running" and p,
        60,
    )
    api_key = base64.b64decode(
        jobs.core.read_namespaced_secret("llm-credentials", jobs.namespace).data["api-key"]
    ).decode()
    # The chart's storage credentials (bundled MinIO): the Secret with the S3 key pair.
    # Every identity's: MinIO's root user, the operator's and the URL signer's.
    storage = [
        s
        for s in jobs.core.list_namespaced_secret(operator_release).items
        if {"access-key", "secret-key"} <= set(s.data or {})
    ]
    assert len(storage) >= 3, "the storage credentials Secrets were not found"
    minio_values = [base64.b64decode(v).decode() for s in storage for v in s.data.values()]

    run = lambda cmd: exec_in_agent(jobs.core, jobs.namespace, pod.metadata.name, cmd)  # noqa: E731
    assert (
        run(
            "test -e /var/run/secrets/kubernetes.io/serviceaccount/token && echo yes || echo no"
        ).strip()
        == "no"
    )
    assert run("id -u").strip() == "1000"
    capabilities = dict(
        line.split(":\t")
        for line in run("grep ^Cap /proc/self/status").splitlines()
        if ":\t" in line
    )
    assert int(capabilities["CapEff"], 16) == 0 and int(capabilities["CapPrm"], 16) == 0
    assert run("grep NoNewPrivs /proc/self/status").split()[-1] == "1"
    environment = run("cat /proc/1/environ | tr '\\0' '\\n'; env")
    # Everything the agent can read: its environment, the workspace, its home, /tmp, /etc, /opt.
    for secret in [api_key, *minio_values]:
        assert secret not in environment
        hits = run(
            f"grep -rIlF -- '{secret}' /workspace /tmp /etc /opt /var/run 2>/dev/null"
            " | head -5 || true"
        )
        assert not hits.strip(), f"a secret value is readable in the sandbox: {hits}"
    # The sidecar's journal and counters: hidden, and neither writable nor movable; the
    # image's own files read-only.
    wait_for("a step", lambda: (jobs.status(name).get("steps") or 0) >= 1, 120)
    state = "/workspace/.context-manager"
    assert run(f"ls -A {state}").strip() == ""
    for attempt in (f"touch {state}/context.jsonl", f"mv {state} /workspace/moved", "touch /opt/x"):
        assert run(f"{attempt} 2>/dev/null && echo yes || echo no").strip() == "no", attempt
    jobs.kubectl("delete", "cjob", name, "-n", jobs.namespace, "--wait=false")


def test_printer_columns(jobs: Jobs) -> None:
    """`kubectl get codingjobs` shows phase, steps, tokens and age; -o wide adds the URL."""
    jobs.apply(jobs.manifest("columns", "never-finish"))
    jobs.wait_phase("columns", {"Running"}, timeout=180)
    header = jobs.kubectl("get", "cjob", "-n", jobs.namespace).stdout.splitlines()[0].split()
    assert header[:5] == ["NAME", "PHASE", "STEPS", "TOKENS", "AGE"]
    wide = (
        jobs.kubectl("get", "cjob", "-n", jobs.namespace, "-o", "wide")
        .stdout.splitlines()[0]
        .split()
    )
    assert "SIZE" in wide and "URL-EXPIRES" in wide
    jobs.kubectl("delete", "cjob", "columns", "-n", jobs.namespace, "--wait=false")


def test_samples_as_a_user_applies_them(jobs: Jobs) -> None:
    """Every sample in crds/samples passes the API server's validation as written (server-side
    dry run: most need a real provider, a gVisor node or a Secret), and suspended.yaml really
    runs: Suspended with nothing created."""
    samples = sorted(SAMPLES.glob("*.yaml"))
    assert len(samples) >= 5
    # The classes the samples name, as a platform admin installs them (cluster-scoped).
    jobs.kubectl("apply", "-f", str(SAMPLES / "classes"))
    for path in samples:
        result = jobs.kubectl(
            "apply", "--dry-run=server", "-n", jobs.namespace, "-f", str(path), check=False
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        assert "(server dry run)" in result.stdout, result.stdout
    jobs.kubectl("apply", "-n", jobs.namespace, "-f", str(SAMPLES / "suspended.yaml"))
    status = jobs.wait_phase("later", {"Suspended"}, timeout=60)
    suspended = [c for c in status["conditions"] if c["type"] == "Suspended"]
    assert [(c["status"], c["reason"]) for c in suspended] == [("True", "SuspendedByUser")]
    assert not any(jobs.children("later").values()), "a job created suspended creates nothing"
