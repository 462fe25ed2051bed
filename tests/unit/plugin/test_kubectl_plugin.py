"""`kubectl codingjob`: argument handling and output, against an in-memory API (no cluster).

The same commands run against the real API server in tests/integration/test_kubectl_plugin.py.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from codingjob_operator import builders
from codingjob_operator.models import CodingJob
from codingjob_operator.names import child_names
from kubectl_codingjob import cli, render
from kubectl_codingjob.api import ApiError
from kubectl_codingjob.download import DownloadError, fetch

NOW = datetime.datetime(2026, 2, 1, 12, 0, 0, tzinfo=datetime.UTC)


def job(name: str, namespace: str = "dev", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "codingjob.dev/v1alpha1",
        "kind": "CodingJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": "2026-02-01T11:57:00Z",
        },
        "spec": {"task": "t"},
        "status": status,
    }


@dataclass
class FakeApi:
    """The cluster as a dict; ``updates`` are what a watch sees after the current state."""

    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    secrets: dict[tuple[str, str, str], str] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    namespace: str = "dev"
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", namespace, body))
        self.jobs[namespace, body["metadata"]["name"]] = body
        return body

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.jobs:
            raise ApiError(404, f'codingjobs.codingjob.dev "{name}" not found')
        return self.jobs[namespace, name]

    def list_jobs(self, namespace: str | None) -> list[dict[str, Any]]:
        return [j for (ns, _), j in self.jobs.items() if namespace in (None, ns)]

    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", namespace, name, spec))
        self.get(namespace, name)["spec"].update(spec)
        return self.jobs[namespace, name]

    def watch(self, namespace: str, name: str, timeout: int) -> Iterator[dict[str, Any]]:
        yield self.get(namespace, name)
        yield from self.updates

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        return self.secrets[namespace, name, key]

    def pod_logs(self, namespace: str, pod: str, container: str, *, follow: bool) -> Iterator[str]:
        self.calls.append(("logs", namespace, pod, container, follow))
        yield from self.logs


def run(api: FakeApi, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), make_api=lambda *_: api, out=out, err=err, now=lambda: NOW)
    return code, out.getvalue(), err.getvalue()


# --- run ------------------------------------------------------------------------------------------


def test_run_creates_a_valid_codingjob_in_the_contexts_namespace() -> None:
    api = FakeApi()
    code, out, _ = run(api, "run", "Build me a todo app in React", "--name", "todo")
    assert code == 0
    (_, namespace, body), *_ = api.calls
    assert namespace == "dev"
    assert body["spec"] == {"task": "Build me a todo app in React"}
    CodingJob.model_validate(body)  # what the CRD schema is generated from
    assert "codingjob/todo created in namespace dev" in out
    assert "kubectl codingjob watch todo -n dev" in out


def test_run_options_fill_the_spec() -> None:
    api = FakeApi()
    code, _, _ = run(
        api,
        "run",
        "Fix the flaky test",
        "-n",
        "team-a",
        "--class",
        "gpu",
        "--model-url",
        "https://llm.example/v1",
        "--model",
        "big",
        "--api-key-secret",
        "llm:token",
    )
    assert code == 0
    (_, namespace, body), *_ = api.calls
    assert namespace == "team-a"
    assert body["metadata"]["name"].startswith("fix-the-flaky-test-")
    assert body["spec"] == {
        "task": "Fix the flaky test",
        "className": "gpu",
        "model": {
            "baseURL": "https://llm.example/v1",
            "name": "big",
            "apiKeySecretRef": {"name": "llm", "key": "token"},
        },
    }


def test_run_dry_run_prints_yaml_and_needs_no_cluster() -> None:
    def no_cluster(*_: Any) -> FakeApi:
        raise AssertionError("--dry-run must not connect")

    out = io.StringIO()
    code = cli.main(["run", "hello world", "--dry-run"], make_api=no_cluster, out=out)
    assert code == 0
    body = yaml.safe_load(out.getvalue())
    assert body["kind"] == "CodingJob" and body["spec"]["task"] == "hello world"
    assert body["metadata"]["name"].startswith("hello-world-")


def test_run_without_a_task_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run"], make_api=lambda *_: FakeApi())
    assert exit_.value.code == 2
    assert "task" in capsys.readouterr().err


def test_run_watch_follows_to_the_end() -> None:
    api = FakeApi()
    api.updates = [job("todo", phase="Succeeded", steps=3, downloadURL="http://x/y.zip")]
    code, out, _ = run(api, "run", "task", "--name", "todo", "--watch")
    assert code == 0
    assert "Succeeded" in out and "kubectl codingjob download todo -n dev" in out


@pytest.mark.parametrize(
    ("task", "name"),
    [
        ("Build me a todo app in React", "build-me-a-todo-abcde"),
        ("  !!!  ", "job-abcde"),
        ("Ünïcode ÄÖÜ 42 things", "n-code-42-things-abcde"),
        ("x" * 100, "x" * render.NAME_PREFIX_MAX + "-abcde"),
    ],
)
def test_generated_names(task: str, name: str) -> None:
    assert render.job_name(task, "abcde") == name
    CodingJob.model_validate(render.job_manifest(render.job_name(task, "abcde"), task))


# --- ls -------------------------------------------------------------------------------------------


def test_ls_prints_an_aligned_table() -> None:
    api = FakeApi()
    api.jobs["dev", "b"] = job("b", phase="Running", steps=14, tokens={"used": 48213})
    api.jobs["dev", "a"] = job("a", phase="Failed", reason="DeadlineExceeded")
    api.jobs["other", "c"] = job("c", "other")
    code, out, _ = run(api, "ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "STEPS", "TOKENS", "AGE", "REASON"]
    assert lines[1].split()[:5] == [
        "a",
        "Failed",
        "0",
        "0",
        render.age("2026-02-01T11:57:00Z", NOW),
    ]
    assert lines[1].split()[-1] == "DeadlineExceeded"
    assert lines[2].split()[:4] == ["b", "Running", "14", "48213"]
    assert len(lines) == 3  # not the other namespace's job
    # Columns line up: every row starts its PHASE where the header does.
    assert {line.index(line.split()[1]) for line in lines} == {lines[0].index("PHASE")}


def test_ls_all_namespaces_and_empty() -> None:
    api = FakeApi()
    api.jobs["x", "j"] = job("j", "x")
    _, out, _ = run(api, "ls", "-A")
    assert out.splitlines()[0].split()[0] == "NAMESPACE"
    assert out.splitlines()[1].split()[:2] == ["x", "j"]
    _, out, _ = run(api, "ls", "-n", "empty")
    assert out.strip() == "No CodingJobs in namespace empty."


@pytest.mark.parametrize(
    ("created", "age"),
    [
        ("2026-02-01T11:59:15Z", "45s"),
        ("2026-02-01T11:57:00Z", "3m"),
        ("2026-02-01T07:00:00Z", "5h"),
        ("2026-01-30T12:00:00Z", "2d"),
        ("2026-02-01T12:00:05Z", "0s"),  # a clock behind the server's
        (None, "<unknown>"),
    ],
)
def test_age(created: str | None, age: str) -> None:
    assert render.age(created, NOW) == age


# --- watch ----------------------------------------------------------------------------------------


def test_watch_prints_changes_only_and_exits_with_the_outcome() -> None:
    api = FakeApi()
    api.jobs["dev", "j"] = job("j", phase="Pending")
    api.updates = [
        job("j", phase="Running", steps=1, tokens={"used": 100}),
        job("j", phase="Running", steps=1, tokens={"used": 100}),  # e.g. a condition changed
        job("j", phase="Running", steps=2, tokens={"used": 250}),
        job("j", phase="Failed", steps=2, reason="AgentFailed", message="exit code 1"),
    ]
    code, out, _ = run(api, "watch", "j")
    assert code == cli.EXIT_ERROR
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ["Pending", "Running", "Running", "Failed"]
    assert "steps=2" in lines[2] and "tokens=250" in lines[2]
    assert lines[-1].endswith("AgentFailed: exit code 1")


def test_watch_of_a_finished_job_returns_at_once() -> None:
    api = FakeApi()
    api.jobs["dev", "j"] = job("j", phase="Succeeded", steps=9)
    api.updates = [job("j", phase="Running")]  # never reached
    code, out, _ = run(api, "watch", "j")
    assert code == 0
    assert len(out.splitlines()) == 1


def test_watch_of_a_missing_job_is_an_error() -> None:
    code, out, err = run(FakeApi(), "watch", "nope")
    assert code == cli.EXIT_ERROR
    assert err.strip() == 'error: codingjobs.codingjob.dev "nope" not found'
    assert out == ""


def test_watch_times_out() -> None:
    api = FakeApi()
    api.jobs["dev", "j"] = job("j", phase="Running")
    code, out, _ = run(api, "watch", "j", "--timeout", "0.01")
    assert code == cli.EXIT_TIMEOUT
    assert "timed out" in out


# --- suspend, resume, logs ------------------------------------------------------------------------


@pytest.mark.parametrize(("verb", "value"), [("suspend", True), ("resume", False)])
def test_suspend_and_resume_patch_the_spec(verb: str, value: bool) -> None:
    api = FakeApi()
    api.jobs["dev", "j"] = job("j")
    code, out, _ = run(api, verb, "j")
    assert code == 0
    assert api.calls == [("patch", "dev", "j", {"suspend": value})]
    assert out.strip() == f"codingjob/j {verb}{'ed' if verb == 'suspend' else 'd'}"


def test_logs_reads_the_agent_container() -> None:
    api = FakeApi(logs=["step 1: bash", "step 2: finish"])
    api.jobs["dev", "j"] = job("j", podName="j-agent")
    code, out, _ = run(api, "logs", "j", "-f")
    assert code == 0
    assert out.splitlines() == ["step 1: bash", "step 2: finish"]
    assert api.calls == [("logs", "dev", "j-agent", builders.AGENT_CONTAINER, True)]


def test_logs_before_the_status_names_the_pod() -> None:
    api = FakeApi()
    api.jobs["dev", "j"] = job("j")
    run(api, "logs", "j")
    assert api.calls == [("logs", "dev", child_names("j").pod, "agent", False)]


# --- download -------------------------------------------------------------------------------------


def test_download_without_url_says_why() -> None:
    api = FakeApi()
    api.jobs["dev", "j"] = job("j", phase="Running")
    code, _, err = run(api, "download", "j")
    assert code == 1
    assert err.strip() == "error: codingjob/j has no download URL yet (phase Running)"


def test_download_refuses_non_http_urls(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("local file")
    with pytest.raises(DownloadError, match="not an http"):
        fetch(f"file://{secret}", tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()


def test_download_unreachable_storage_explains_the_public_endpoint(tmp_path: Path) -> None:
    api = FakeApi()
    # Port 9 on localhost (discard) has no listener here: the connection is refused at once.
    api.jobs["dev", "j"] = job("j", phase="Succeeded", downloadURL="http://127.0.0.1:9/b/k.zip")
    code, _, err = run(api, "download", "j", "-o", str(tmp_path / "w.zip"))
    assert code == 1
    assert "cannot reach 127.0.0.1:9" in err and "public endpoint" in err
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


# --- desktop --------------------------------------------------------------------------------------


def test_desktop_needs_a_running_job() -> None:
    api = FakeApi()
    api.jobs["dev", "j"] = job("j", phase="Pending")
    code, _, err = run(api, "desktop", "j", "--no-browser")
    assert code == 1
    assert "is Pending" in err


def test_desktop_of_a_job_without_gui() -> None:
    api = FakeApi()
    api.jobs["dev", "j"] = job("j", phase="Running", service={"name": "j-desktop"})
    api.jobs["dev", "j"]["spec"]["gui"] = {"enabled": False}
    code, _, err = run(api, "desktop", "j")
    assert code == 1
    assert "without a desktop" in err


def test_desktop_url_and_forward_command() -> None:
    url = render.desktop_url(43210)
    assert url.startswith("http://127.0.0.1:43210/vnc.html?")
    assert "password" not in url  # the password is printed, never put in a URL
    from kubectl_codingjob import desktop

    assert desktop.forward_command(
        "kubectl", "dev", "j-desktop", 43210, 6080, ["--context", "c"]
    ) == [
        "kubectl",
        "--context",
        "c",
        "--namespace",
        "dev",
        "port-forward",
        "--address",
        "127.0.0.1",
        "svc/j-desktop",
        "43210:6080",
    ]


FAKE_KUBECTL = """#!{python}
import socket, sys, time
# A stand-in for `kubectl port-forward`: listen on the local port, then end like a dropped forward.
local = int(sys.argv[-1].split(":")[0])
with open(sys.argv[0] + ".args", "w") as f:
    f.write(" ".join(sys.argv[1:]))
server = socket.create_server(("127.0.0.1", local))
time.sleep(1)
"""


def test_desktop_forwards_and_prints_url_and_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable))
    kubectl.chmod(0o755)
    monkeypatch.setenv("KUBECTL", str(kubectl))
    api = FakeApi()
    ports = [{"name": "novnc", "port": 6080}]
    api.jobs["dev", "j"] = job("j", phase="Running", service={"name": "j-desktop", "ports": ports})
    api.secrets["dev", child_names("j").session, "vnc-password"] = "s3cret"
    code, out, err = run(api, "desktop", "j", "--no-browser", "--port", "0")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("desktop of codingjob/j: http://127.0.0.1:")
    assert lines[1] == "VNC password: s3cret"
    forwarded = (tmp_path / "kubectl.args").read_text().split()
    assert forwarded[:4] == ["--namespace", "dev", "port-forward", "--address"]
    assert forwarded[-2] == "svc/j-desktop" and forwarded[-1].endswith(":6080")
    assert lines[0].split(":")[-1].split("/")[0] == forwarded[-1].split(":")[0]


def test_novnc_port_comes_from_the_status() -> None:
    ports = [{"name": "vnc", "port": 5900}, {"name": "novnc", "port": 16080}]
    assert render.novnc_port(job("j", service={"name": "s", "ports": ports})) == 16080
    assert render.novnc_port(job("j")) == render.NOVNC_PORT


def test_the_session_secret_key_is_the_operators() -> None:
    secret = builders.session_secret(
        builders.JobRef(name="j", namespace="dev", uid="u"),
        vnc_password="p",
        jupyter_token="t",
    )
    assert secret["metadata"]["name"] == child_names("j").session
    assert secret["stringData"][cli.VNC_PASSWORD_KEY] == "p"
