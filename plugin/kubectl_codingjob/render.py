"""What the plugin shows and sends, as pure functions: manifests, names, tables and progress lines.

No API calls, no clock and no randomness here: callers pass the time and the random suffix in.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any

from codingjob_operator.conditions import Phase
from codingjob_operator.models import API_VERSION, KIND

#: Words of the task that go into a generated job name, and the longest such prefix.
NAME_WORDS = 4
NAME_PREFIX_MAX = 30
#: Port of noVNC in the desktop Service when the status names none (the builders' default).
NOVNC_PORT = 6080
NOVNC_PORT_NAME = "novnc"

Job = Mapping[str, Any]


def job_name(task: str, suffix: str) -> str:
    """A readable CodingJob name from the task's first words plus ``suffix`` (kept unique by it).

    >>> job_name("Build me a todo app in React", "x7k2q")
    'build-me-a-todo-x7k2q'
    """
    words = re.findall(r"[a-z0-9]+", task.lower())[:NAME_WORDS]
    prefix = "-".join(words)[:NAME_PREFIX_MAX].strip("-") or "job"
    return f"{prefix}-{suffix}"


def job_manifest(
    name: str,
    task: str,
    *,
    class_name: str | None = None,
    model_url: str | None = None,
    model_name: str | None = None,
    api_key_secret: str | None = None,
) -> dict[str, Any]:
    """The CodingJob that ``kubectl codingjob run`` creates; unset options take the chart defaults.

    ``api_key_secret`` is ``NAME`` (key ``api-key``) or ``NAME:KEY``.
    """
    spec: dict[str, Any] = {"task": task}
    if class_name:
        spec["className"] = class_name
    model: dict[str, Any] = {}
    if model_url:
        model["baseURL"] = model_url
    if model_name:
        model["name"] = model_name
    if api_key_secret:
        secret, _, key = api_key_secret.partition(":")
        model["apiKeySecretRef"] = {"name": secret, "key": key or "api-key"}
    if model:
        spec["model"] = model
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def status(job: Job) -> Mapping[str, Any]:
    return job.get("status") or {}


def phase(job: Job) -> str:
    """The job's phase, or ``Pending`` before the operator has written a status."""
    return str(status(job).get("phase") or Phase.PENDING.value)


def finished(job: Job) -> bool:
    return phase(job) in (Phase.SUCCEEDED.value, Phase.FAILED.value)


def tokens(job: Job) -> int:
    return int((status(job).get("tokens") or {}).get("used") or 0)


def age(created: str | None, now: datetime.datetime) -> str:
    """kubectl's short age (``45s``, ``3m``, ``5h``, ``2d``) of an RFC 3339 timestamp."""
    if not created:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(jobs: Iterable[Job], now: datetime.datetime, *, all_namespaces: bool = False) -> str:
    """The ``ls`` listing: one row per job, columns aligned like kubectl's."""
    header = ["NAME", "PHASE", "STEPS", "TOKENS", "AGE", "REASON"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    rows = [header]
    for job in jobs:
        meta = job.get("metadata") or {}
        row = [
            str(meta.get("name", "")),
            phase(job),
            str(status(job).get("steps") or 0),
            str(tokens(job)),
            age(meta.get("creationTimestamp"), now),
            str(status(job).get("reason") or ""),
        ]
        if all_namespaces:
            row.insert(0, str(meta.get("namespace", "")))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def progress(job: Job) -> tuple[str, int, int, str]:
    """What ``watch`` reports; a new line is printed only when this changes."""
    return (phase(job), int(status(job).get("steps") or 0), tokens(job), reason(job))


def reason(job: Job) -> str:
    return str(status(job).get("reason") or "")


def progress_line(job: Job, now: datetime.datetime) -> str:
    """One line of ``watch`` output: time, phase, steps, tokens and the reason when there is one."""
    current, steps, used, why = progress(job)
    line = f"{now:%H:%M:%S}  {current:<10} steps={steps:<4} tokens={used:<8}"
    if why:
        line += f" {why}"
    message = status(job).get("message")
    if message and finished(job):
        line += f": {message}"
    return line.rstrip()


def novnc_port(job: Job) -> int:
    """The desktop Service's noVNC port, as the operator published it in the status."""
    for port in (status(job).get("service") or {}).get("ports") or []:
        if port.get("name") == NOVNC_PORT_NAME:
            return int(port["port"])
    return NOVNC_PORT


def desktop_url(local_port: int) -> str:
    """The noVNC page behind a local port-forward.

    The VNC password is deliberately not in the URL: URLs end up in browser history and in the
    process list of whatever opens them.
    """
    return f"http://127.0.0.1:{local_port}/vnc.html?autoconnect=1&resize=scale"
