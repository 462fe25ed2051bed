"""``kubectl codingjob``: the command line, one function per subcommand.

Exit codes: 0 success; 1 an error, or (``watch``) the job failed; 2 bad usage; 3 ``watch`` timed
out. Errors go to stderr as one ``error: ...`` line.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import secrets
import string
import subprocess
import sys
import time
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import yaml
from codingjob_operator.builders import AGENT_CONTAINER
from codingjob_operator.conditions import Phase
from codingjob_operator.names import child_names

from kubectl_codingjob import desktop, render
from kubectl_codingjob.api import Api, ApiError
from kubectl_codingjob.download import DownloadError, fetch

#: Key of the VNC password in the job's ``<job>-session`` Secret (a unit test pins it to the
#: operator's builder).
VNC_PASSWORD_KEY = "vnc-password"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


class CodingJobApi(Protocol):
    """What the commands need from the cluster (:class:`kubectl_codingjob.api.Api`)."""

    namespace: str

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def get(self, namespace: str, name: str) -> dict[str, Any]: ...
    def list_jobs(self, namespace: str | None) -> list[dict[str, Any]]: ...
    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]: ...
    def watch(self, namespace: str, name: str, timeout: int) -> Iterator[dict[str, Any]]: ...
    def secret_value(self, namespace: str, name: str, key: str) -> str: ...
    def pod_logs(
        self, namespace: str, pod: str, container: str, *, follow: bool
    ) -> Iterator[str]: ...


class CommandError(Exception):
    """A command cannot do what was asked; the message says why."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _suffix() -> str:
    return "".join(secrets.choice(SUFFIX_ALPHABET) for _ in range(5))


ApiFactory = Callable[[str | None, str | None], CodingJobApi]


@dataclass
class Env:
    """The command's surroundings: the API, the streams, the clock; tests replace them."""

    make_api: Callable[[], CodingJobApi]
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    now: Callable[[], datetime.datetime] = _utcnow
    suffix: Callable[[], str] = _suffix
    open_browser: Callable[[str], object] = webbrowser.open

    @functools.cached_property
    def api(self) -> CodingJobApi:
        """The cluster's API, connected on first use (``run --dry-run`` needs none)."""
        return self.make_api()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _namespace(args: argparse.Namespace, env: Env) -> str:
    return str(args.namespace or env.api.namespace)


def cmd_run(args: argparse.Namespace, env: Env) -> int:
    name = args.name or render.job_name(args.task, env.suffix())
    body = render.job_manifest(
        name,
        args.task,
        class_name=args.class_name,
        model_url=args.model_url,
        model_name=args.model,
        api_key_secret=args.api_key_secret,
    )
    if args.dry_run:
        env.say(yaml.safe_dump(body, sort_keys=False).rstrip())
        return EXIT_OK
    namespace = _namespace(args, env)
    env.api.create(namespace, body)
    env.say(f"codingjob/{name} created in namespace {namespace}")
    if args.watch:
        return _follow(env, namespace, name, args.timeout)
    env.say(f"follow it with: kubectl codingjob watch {name} -n {namespace}")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace, env: Env) -> int:
    namespace = None if args.all_namespaces else _namespace(args, env)
    jobs = sorted(
        env.api.list_jobs(namespace),
        key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"]),
    )
    if not jobs:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        env.say(f"No CodingJobs in {where}.")
        return EXIT_OK
    env.say(render.table(jobs, env.now(), all_namespaces=namespace is None))
    return EXIT_OK


def _follow(env: Env, namespace: str, name: str, timeout: float) -> int:
    """Print a line whenever phase, steps, tokens or reason change, until the job finishes."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    last: tuple[str, int, int, str] | None = None
    while True:
        remaining = 300 if deadline is None else int(deadline - time.monotonic())
        if remaining <= 0:
            env.say(f"timed out after {timeout:.0f}s; the job goes on")
            return EXIT_TIMEOUT
        for job in env.api.watch(namespace, name, remaining):
            if render.progress(job) != last:
                last = render.progress(job)
                env.say(render.progress_line(job, env.now()))
            if render.finished(job):
                url = render.status(job).get("downloadURL")
                if url:
                    env.say(f"download: kubectl codingjob download {name} -n {namespace}")
                return EXIT_OK if render.phase(job) == Phase.SUCCEEDED.value else EXIT_ERROR
        # The server ends a watch after its timeout: watch again (the current state comes first).


def cmd_watch(args: argparse.Namespace, env: Env) -> int:
    namespace = _namespace(args, env)
    env.api.get(namespace, args.name)  # a clear "not found" before watching
    return _follow(env, namespace, args.name, args.timeout)


def cmd_suspend(args: argparse.Namespace, env: Env) -> int:
    namespace = _namespace(args, env)
    suspend = args.command == "suspend"
    env.api.patch_spec(namespace, args.name, {"suspend": suspend})
    env.say(f"codingjob/{args.name} {'suspended' if suspend else 'resumed'}")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, env: Env) -> int:
    namespace = _namespace(args, env)
    job = env.api.get(namespace, args.name)
    pod = render.status(job).get("podName") or child_names(args.name).pod
    for line in env.api.pod_logs(namespace, pod, AGENT_CONTAINER, follow=args.follow):
        env.say(line)
    return EXIT_OK


def cmd_download(args: argparse.Namespace, env: Env) -> int:
    namespace = _namespace(args, env)
    job = env.api.get(namespace, args.name)
    status = render.status(job)
    url = status.get("downloadURL")
    if not url:
        raise CommandError(
            f"codingjob/{args.name} has no download URL yet (phase {render.phase(job)}"
            + (f", {status['reason']}" if status.get("reason") else "")
            + ")"
        )
    target = Path(args.output or f"{args.name}.zip")
    expected = (status.get("artifact") or {}).get("sha256")
    try:
        got = fetch(url, target, expected_sha256=expected)
    except DownloadError as error:
        raise CommandError(str(error)) from error
    checked = ", sha256 verified" if expected else ""
    env.say(f"saved {got.size} bytes to {got.path}{checked}")
    return EXIT_OK


def cmd_desktop(args: argparse.Namespace, env: Env) -> int:
    namespace = _namespace(args, env)
    job = env.api.get(namespace, args.name)
    if not ((job.get("spec") or {}).get("gui") or {}).get("enabled", True):
        raise CommandError(f"codingjob/{args.name} runs without a desktop (spec.gui.enabled)")
    service = (render.status(job).get("service") or {}).get("name")
    if render.phase(job) != Phase.RUNNING.value or not service:
        raise CommandError(
            f"the desktop is there while the job runs; codingjob/{args.name} is {render.phase(job)}"
        )
    password = env.api.secret_value(namespace, child_names(args.name).session, VNC_PASSWORD_KEY)
    local = args.port or desktop.free_port()
    try:
        command = desktop.forward_command(
            desktop.kubectl_binary(),
            namespace,
            service,
            local,
            render.novnc_port(job),
            _kube_args(args),
        )
        proc = desktop.start(command, local)
    except desktop.ForwardError as error:
        raise CommandError(str(error)) from error
    url = render.desktop_url(local)
    env.say(f"desktop of codingjob/{args.name}: {url}")
    env.say(f"VNC password: {password}")
    if not args.no_browser:
        env.open_browser(url)
    env.say("forwarding; press Ctrl-C to stop")
    try:
        return EXIT_OK if proc.wait() == 0 else EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _kube_args(args: argparse.Namespace) -> list[str]:
    """The kubeconfig options to hand on to kubectl."""
    extra = []
    if args.kubeconfig:
        extra += ["--kubeconfig", args.kubeconfig]
    if args.context:
        extra += ["--context", args.context]
    return extra


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube)")
    common.add_argument("--context", help="kubeconfig context (default: the current one)")

    top = argparse.ArgumentParser(
        prog="kubectl codingjob",
        description="Run coding agents as CodingJobs and follow, watch and download them.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="create a CodingJob for a task")
    run.add_argument("task", help='what the agent should do, e.g. "Build me a todo app"')
    run.add_argument("--name", help="job name (default: from the task plus a random suffix)")
    run.add_argument("--class", dest="class_name", help="CodingJobClass (default: the default)")
    run.add_argument("--model-url", help="OpenAI-compatible base URL (default: the chart's)")
    run.add_argument("--model", help="model name (default: the chart's)")
    run.add_argument(
        "--api-key-secret", metavar="SECRET[:KEY]", help="Secret holding the model's API key"
    )
    run.add_argument("-w", "--watch", action="store_true", help="then follow it like `watch`")
    run.add_argument("--timeout", type=float, default=0, help="with --watch: seconds, 0 = none")
    run.add_argument("--dry-run", action="store_true", help="print the CodingJob, create nothing")
    run.set_defaults(func=cmd_run)

    ls = sub.add_parser("ls", parents=[common], help="list CodingJobs")
    ls.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace")
    ls.set_defaults(func=cmd_ls)

    watch = sub.add_parser("watch", parents=[common], help="follow a job until it finishes")
    watch.add_argument("name")
    watch.add_argument(
        "--timeout", type=float, default=0, help="seconds; 0 waits as long as it runs"
    )
    watch.set_defaults(func=cmd_watch)

    desk = sub.add_parser(
        "desktop", parents=[common], help="port-forward the desktop, print URL and password"
    )
    desk.add_argument("name")
    desk.add_argument("--port", type=int, default=0, help="local port (default: a free one)")
    desk.add_argument("--no-browser", action="store_true", help="print the URL only")
    desk.set_defaults(func=cmd_desktop)

    logs = sub.add_parser("logs", parents=[common], help="the agent's log (one line per step)")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="stream until the agent ends")
    logs.set_defaults(func=cmd_logs)

    dl = sub.add_parser("download", parents=[common], help="download the workspace ZIP")
    dl.add_argument("name")
    dl.add_argument("-o", "--output", help="file to write (default: NAME.zip)")
    dl.set_defaults(func=cmd_download)

    for verb, text in (("suspend", "pause a job (its pod goes)"), ("resume", "resume a job")):
        cmd = sub.add_parser(verb, parents=[common], help=text)
        cmd.add_argument("name")
        cmd.set_defaults(func=cmd_suspend)
    return top


def main(
    argv: Sequence[str] | None = None,
    *,
    make_api: ApiFactory = Api,
    out: TextIO | None = None,
    err: TextIO | None = None,
    now: Callable[[], datetime.datetime] = _utcnow,
) -> int:
    """Parse ``argv``, run the command, return its exit code (errors printed, not raised)."""
    args = parser().parse_args(argv)
    err = err or sys.stderr
    try:
        env = Env(
            functools.partial(make_api, args.kubeconfig, args.context),
            out=out or sys.stdout,
            err=err,
            now=now,
        )
        code: int = args.func(args, env)
        return code
    except (ApiError, CommandError) as error:
        print(f"error: {error}", file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
