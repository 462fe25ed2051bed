"""Helpers of the chart tests: the helm binary and a renderer of the chart's manifests.

helm comes from ``hack/cluster/build.sh helm`` (built once from its Go module, then cached);
``CODINGJOB_HELM_BIN`` points at another build. Rendering is local: ``helm template`` and
``helm lint`` never contact a cluster.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.cluster import tool

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "codingjob-operator"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
#: The Kubernetes version the local cluster runs; renders and schemas are pinned to it.
KUBE_VERSION = "1.34.0"
RELEASE = "codingjob"
NAMESPACE = "codingjob-system"

Manifest = dict[str, Any]


def helm_path() -> str:
    """Path of the helm binary (built and cached on first use)."""
    override = os.environ.get("CODINGJOB_HELM_BIN")
    return override if override else tool("helm")


@dataclass(frozen=True)
class Helm:
    """Runs one helm binary against the chart."""

    binary: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``helm ARGS`` and return the finished process (never raises on failure)."""
        # No kubeconfig: rendering must not depend on, or reach, any cluster.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "KUBECONFIG": os.devnull,
        }
        return subprocess.run(
            [self.binary, *args], capture_output=True, text=True, timeout=120, env=env
        )

    def template_args(
        self, values: Sequence[Path] = (), sets: Sequence[str] = (), release: str = RELEASE
    ) -> list[str]:
        args = ["template", release, str(CHART), "--namespace", NAMESPACE]
        args += ["--kube-version", KUBE_VERSION, "--include-crds"]
        for path in values:
            args += ["--values", str(path)]
        for item in sets:
            args += ["--set", item]
        return args

    def render(
        self,
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        release: str = RELEASE,
        cached: bool = True,
    ) -> list[Manifest]:
        """The chart's manifests (CRDs included) for these values; fails the test on an error.

        Identical renders are reused within the session (``cached=False`` renders afresh).
        """
        args = tuple(self.template_args(values, sets, release))
        if not cached:
            _template.cache_clear()
        returncode, stdout, stderr = _template(self, args)
        assert returncode == 0, stderr
        # libyaml's loader: the pure-Python one takes most of a render's time (the CRDs).
        return [doc for doc in yaml.load_all(stdout, Loader=yaml.CSafeLoader) if doc]

    def render_error(self, values: Sequence[Path] = (), sets: Sequence[str] = ()) -> str:
        """The error helm prints for values the chart must refuse; fails if it renders."""
        proc = self.run(*self.template_args(values, sets))
        assert proc.returncode != 0, f"rendered although it should not:\n{proc.stdout[:2000]}"
        return proc.stderr


@functools.cache
def _template(helm: Helm, args: tuple[str, ...]) -> tuple[int, str, str]:
    proc = helm.run(*args)
    return proc.returncode, proc.stdout, proc.stderr


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one manifest of KIND (and NAME, when given)."""
    matches = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(manifests: list[Manifest]) -> set[str]:
    return {m["kind"] for m in manifests}


def load_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


@dataclass(frozen=True)
class DocumentedValue:
    """One value documented in values.yaml with a ``# --`` comment (helm-docs style)."""

    key: str
    default: str
    description: str


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?P<rest>.*)$")


def documented_values(text: str) -> tuple[list[DocumentedValue], list[str]]:
    """The ``# --`` documented values of a values.yaml, and the keys left undocumented.

    A key is documented by a ``# -- description`` comment block right above it; everything
    below a documented key is part of its default. A key without one must be a section whose
    keys are all documented.
    """
    lines = text.splitlines()
    data = yaml.safe_load(text)
    documented: list[DocumentedValue] = []
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment: list[str] = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = _KEY.match(line)
        block, comment = comment, []
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if any(doc for _, _, doc in stack):
            continue  # part of a documented value's default
        path = [key for _, key, _ in stack] + [match["key"]]
        dotted = ".".join(path)
        start = next((i for i, c in enumerate(block) if c.startswith("-- ")), None)
        is_doc = start is not None
        stack.append((indent, match["key"], is_doc))
        if is_doc:
            assert start is not None
            description = " ".join([block[start][3:], *block[start + 1 :]]).strip()
            value: Any = data
            for key in path:
                value = value[key]
            default = json.dumps(value, separators=(",", ":"))
            documented.append(DocumentedValue(dotted, default, description))
            continue
        nxt = next(
            (x for x in lines[number + 1 :] if x.strip() and not x.strip().startswith("#")), ""
        )
        is_section = not match["rest"].strip() and len(nxt) - len(nxt.lstrip()) > indent
        if not is_section or nxt.strip().startswith("- "):
            undocumented.append(dotted)
    return documented, undocumented


#: Renders NOTES.txt as a ConfigMap: `helm template` skips NOTES, and `helm install --dry-run`
#: would need a kube version from a cluster.
_NOTES_TEMPLATE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: rendered-notes
data:
  notes: |
{{ tpl (.Files.Get "notes.src") . | indent 4 }}
"""


def render_notes(helm: Helm, scratch: Path, sets: Sequence[str] = ()) -> str:
    """NOTES.txt as `helm install` would print it, rendered offline from a copy of the chart."""
    chart = scratch / "chart"
    shutil.copytree(CHART, chart)
    (chart / "notes.src").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-rendered-notes.yaml").write_text(_NOTES_TEMPLATE)
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION, "--show-only", "templates/zz-rendered-notes.yaml"]
    for item in sets:
        args += ["--set", item]
    proc = helm.run(*args)
    assert proc.returncode == 0, proc.stderr
    notes: str = yaml.safe_load(proc.stdout)["data"]["notes"]
    return notes
