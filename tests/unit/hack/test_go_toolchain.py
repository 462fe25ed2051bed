"""hack/cluster/go.sh: which Go builds the cluster tools (no network: the fetch is pre-seeded)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CLUSTER = REPO / "hack" / "cluster"
GO_SH = CLUSTER / "go.sh"


def required() -> str:
    versions = []
    for mod in (CLUSTER / "modules").glob("*/go.mod"):
        match = re.search(r"^go (\d+)\.(\d+)(?:\.(\d+))?$", mod.read_text(), re.MULTILINE)
        assert match, f"{mod} has no go line"
        versions.append(tuple(int(part or 0) for part in match.groups()))
    return ".".join(map(str, max(versions)))


def test_the_required_toolchain_is_pinned_for_both_architectures() -> None:
    sums = (CLUSTER / "go-toolchain.sha256").read_text()
    for arch in ("amd64", "arm64"):
        assert re.search(rf"^[0-9a-f]{{64}}  go{re.escape(required())}\.linux-{arch}$", sums, re.M)


def fake_go(bin_dir: Path, version: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    go = bin_dir / "go"
    go.write_text(
        f"#!/bin/sh\n[ \"$1 $2\" = 'env GOVERSION' ] && echo go{version} && exit 0\nexit 1\n"
    )
    go.chmod(0o755)
    return go


def system_path(tmp_path: Path) -> str:
    """The system's commands without any `go`, so that only the test's fakes are found."""
    farm = tmp_path / "system"
    farm.mkdir(exist_ok=True)
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for tool in Path(directory).iterdir() if Path(directory).is_dir() else []:
            link = farm / tool.name
            if tool.name != "go" and not link.exists():
                link.symlink_to(tool)
    return str(farm)


def go_sh(tmp_path: Path, path: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{path}:{system_path(tmp_path)}" if path else system_path(tmp_path),
        "HOME": str(tmp_path),
        "CODINGJOB_CACHE": str(tmp_path / "cache"),
        # A proxy that cannot answer: the tests must never download.
        "GOPROXY": "http://127.0.0.1:9",
    }
    return subprocess.run([str(GO_SH)], capture_output=True, text=True, env=env, timeout=60)


def test_a_new_enough_machine_go_is_used(tmp_path: Path) -> None:
    go = fake_go(tmp_path / "newgo", "99.0.0")
    done = go_sh(tmp_path, str(go.parent))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(go)


@pytest.mark.parametrize("machine", ["1.19.8", None])
def test_an_old_or_missing_go_uses_the_cached_toolchain(
    tmp_path: Path, machine: str | None
) -> None:
    path = str(fake_go(tmp_path / "oldgo", machine).parent) if machine else ""
    cached = fake_go(tmp_path / "cache" / "go" / f"go{required()}" / "bin", required())
    done = go_sh(tmp_path, path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(cached)


def test_a_fetch_that_fails_is_an_error(tmp_path: Path) -> None:
    done = go_sh(tmp_path, str(fake_go(tmp_path / "oldgo", "1.19").parent))
    assert done.returncode != 0
    assert f"Go 1.19.0 is older than the {required()}" in done.stderr
    assert not (tmp_path / "cache" / "go" / f"go{required()}").exists()
    assert os.listdir(tmp_path / "cache" / "go") == [".lock"]
