"""The archiver against a real MinIO: round trip, memory bound, presigned URLs, outages, errors."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from codingjob_operator.storage import ArtifactStore, StorageSettings
from codingjob_operator.ziparchive import MANIFEST_NAME

from tests.fixtures.minio import MinioServer, free_port
from tests.fixtures.process import high_water_rss

pytestmark = pytest.mark.minio

MiB = 1024 * 1024
#: The bound the issue sets for the archiver's peak resident memory.
MAX_RSS = 128 * MiB
KEY = "team-a/todo-app/0f1e2d3c/workspace.zip"
TRANSCRIPT_KEY = "team-a/todo-app/0f1e2d3c/context.txt"
NOBODY = 65534


@dataclass
class Run:
    returncode: int
    max_rss: int
    message: dict[str, object]
    stderr: str


def archiver_env(minio: MinioServer, bucket: str, workspace: Path, log: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **minio.storage_env(bucket),
        "CODINGJOB_ARCHIVE_KEY": KEY,
        "CODINGJOB_ARCHIVE_TRANSCRIPT_KEY": TRANSCRIPT_KEY,
        "CODINGJOB_WORKSPACE": str(workspace),
        "CODINGJOB_TERMINATION_LOG": str(log),
        "CODINGJOB_ARCHIVE_DEADLINE_SECONDS": "300",
    }


class Archiver:
    """The ``codingjob-archiver`` console script as a child process, non-root when we are root."""

    def __init__(self, env: dict[str, str], scratch: Path) -> None:
        self.log = Path(env["CODINGJOB_TERMINATION_LOG"])
        self.log.write_text("")
        self.log.chmod(0o666)
        self.stderr_path = scratch / "archiver.stderr"
        command = [sys.executable, "-m", "codingjob_operator.archiver"]
        if os.geteuid() == 0:
            # The archiver pod runs as a non-root uid: a root test run drops to nobody, so any
            # write to the root-owned workspace fails loudly. It keeps only the right to read
            # (DAC_READ_SEARCH), because the interpreter may live under a private home.
            command = [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                "--inh-caps=+dac_read_search",
                "--ambient-caps=+dac_read_search",
                "--",
                *command,
            ]
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd="/"
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = 600) -> Run:
        deadline = time.monotonic() + timeout
        peak = 0
        while self.proc.poll() is None:
            peak = max(peak, high_water_rss(self.proc.pid))
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"archiver did not finish:\n{self.stderr()[-3000:]}")
            time.sleep(0.05)
        text = self.log.read_text()
        return Run(
            returncode=self.proc.returncode,
            max_rss=peak,
            message=json.loads(text) if text else {},
            stderr=self.stderr(),
        )


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A world-readable scratch dir (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="codingjob-archive-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def store_for(minio: MinioServer, bucket: str, **overrides: object) -> ArtifactStore:
    return ArtifactStore(
        StorageSettings(
            endpoint=minio.endpoint,
            access_key=minio.access_key,
            secret_key=minio.secret_key,
            bucket=bucket,
            **overrides,  # type: ignore[arg-type]
        )
    )


def fetch(url: str, dest: Path | None = None) -> tuple[int, str]:
    """GET with a plain HTTP client; returns (status, sha256 of the body), streaming to dest."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            out = dest.open("wb") if dest else None
            try:
                while chunk := resp.read(MiB):
                    digest.update(chunk)
                    if out:
                        out.write(chunk)
            finally:
                if out:
                    out.close()
            return resp.status, digest.hexdigest()
    except urllib.error.HTTPError as error:
        return error.code, ""


def write_random(path: Path, size: int) -> None:
    """Incompressible content, fast: one random block repeated with a changing counter."""
    block = os.urandom(MiB)
    with path.open("wb") as out:
        for i in range(size // MiB):
            out.write(i.to_bytes(8, "big") + block[8:])
        out.write(block[: size % MiB])


def make_workspace(root: Path, big_file: int) -> None:
    (root / "src" / "app" / "components").mkdir(parents=True)
    for i in range(50):
        (root / "src" / "app" / "components" / f"c{i}.tsx").write_text(
            f"export const C{i} = () => <div>{i}</div>;\n" * (i + 1)
        )
    (root / "empty" / "nested-empty").mkdir(parents=True)
    (root / "zero-bytes").write_bytes(b"")
    (root / "docs").mkdir()
    (root / "docs" / "zero-too.md").write_bytes(b"")
    (root / "docs" / "ünïcødé — 文件 🚀.md").write_text("# unicode\n")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho ok\n")
    script.chmod(0o755)
    (root / "src" / "entry.ts").symlink_to("app/components/c1.tsx")
    (root / "link-to-dir").symlink_to("src/app")
    (root / "outside-file").symlink_to("/etc/hostname")
    (root / "outside-dir").symlink_to("/etc")
    (root / "context.txt").write_text("user: build me a todo app\nassistant: done\n")
    if big_file:
        (root / "data").mkdir()
        write_random(root / "data" / "model.bin", big_file)


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """Path -> (kind, permission bits, content sha256 or link target), never following links."""
    result: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                result[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                result[rel] = ("dir", stat.S_IMODE(info.st_mode), "")
            else:
                digest = hashlib.sha256()
                with path.open("rb") as handle:
                    while chunk := handle.read(MiB):
                        digest.update(chunk)
                result[rel] = ("file", stat.S_IMODE(info.st_mode), digest.hexdigest())
    return result


def make_read_only(root: Path) -> None:
    """Root-owned, not writable by others: what a read-only mount means to the archiver."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~0o022 | 0o444)
    root.chmod(0o755)


def test_round_trip_with_bounded_memory(
    minio: MinioServer, bucket_name: str, scratch: Path
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    make_workspace(workspace, big_file=210 * MiB)
    make_read_only(workspace)
    source = snapshot(workspace)

    env = archiver_env(minio, bucket_name, workspace, scratch / "termination-log")
    run = Archiver(env, scratch).wait()

    assert run.returncode == 0, run.stderr[-3000:]
    report = run.message
    assert report["bucket"] == bucket_name
    assert report["key"] == KEY
    assert report["transcriptKey"] == TRANSCRIPT_KEY
    # Links leading outside the workspace are left out (and listed in the manifest).
    outside = {"outside-file", "outside-dir"}
    kept = {path: entry for path, entry in source.items() if path not in outside}
    assert report["files"] == sum(1 for kind, _, _ in kept.values() if kind != "dir")
    assert report["skipped"] == len(outside)
    print(f"archiver peak RSS {run.max_rss / MiB:.1f} MiB")
    assert 0 < run.max_rss < MAX_RSS, f"archiver peak RSS {run.max_rss / MiB:.1f} MiB"
    assert snapshot(workspace) == source  # nothing written

    store = store_for(minio, bucket_name)
    info = store.stat(KEY)
    assert info is not None
    assert (info.size, info.sha256, info.files) == (
        report["size"],
        report["sha256"],
        report["files"],
    )

    url, expires_at = store.presign_get(KEY, datetime.timedelta(minutes=10))
    assert expires_at > datetime.datetime.now(datetime.UTC)
    downloaded = scratch / "download.zip"
    assert fetch(url, downloaded) == (200, report["sha256"])
    assert downloaded.stat().st_size == report["size"]

    extracted = scratch / "extracted"
    subprocess.run(["unzip", "-q", str(downloaded), "-d", str(extracted)], check=True)
    manifest = (extracted / MANIFEST_NAME).read_text().splitlines()
    (extracted / MANIFEST_NAME).unlink()
    assert snapshot(extracted) == kept
    # Links came back as links; those leading outside the workspace are listed, not stored.
    assert os.readlink(extracted / "link-to-dir") == "src/app"
    skipped = [json.loads(line) for line in manifest[1:]]
    assert sorted(r["name"] for r in skipped if r["kind"] == "skipped") == sorted(outside)
    listing = subprocess.run(
        ["unzip", "-Z1", str(downloaded)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert not [n for n in listing if n.startswith(("outside-dir/", "link-to-dir/", "/"))]

    transcript_url, _ = store.presign_get(TRANSCRIPT_KEY, datetime.timedelta(minutes=1))
    expected = hashlib.sha256((workspace / "context.txt").read_bytes()).hexdigest()
    assert fetch(transcript_url) == (200, expected)


def test_presigned_url_expires_and_refresh_works(
    minio: MinioServer, bucket_name: str, scratch: Path
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    make_workspace(workspace, big_file=0)
    run = Archiver(archiver_env(minio, bucket_name, workspace, scratch / "log"), scratch).wait()
    assert run.returncode == 0, run.stderr[-3000:]
    store = store_for(minio, bucket_name)

    short, expires_at = store.presign_get(KEY, datetime.timedelta(seconds=2))
    assert fetch(short) == (200, run.message["sha256"])
    time.sleep(max(0.0, (expires_at - datetime.datetime.now(datetime.UTC)).total_seconds()) + 1.5)
    assert fetch(short)[0] == 403

    refreshed, _ = store.presign_get(KEY, datetime.timedelta(minutes=5))
    assert fetch(refreshed) == (200, run.message["sha256"])


def test_url_is_signed_for_the_public_endpoint(
    minio: MinioServer, bucket_name: str, scratch: Path
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    make_workspace(workspace, big_file=0)
    run = Archiver(archiver_env(minio, bucket_name, workspace, scratch / "log"), scratch).wait()
    assert run.returncode == 0, run.stderr[-3000:]

    public = f"http://localhost:{minio.port}"
    store = store_for(minio, bucket_name, public_endpoint=public)
    url, _ = store.presign_get(KEY, datetime.timedelta(minutes=5))
    assert urlsplit(url).netloc == f"localhost:{minio.port}"
    assert fetch(url) == (200, run.message["sha256"])

    # The signature covers the host: the same URL sent to the internal address is refused.
    internal = url.replace(f"localhost:{minio.port}", minio.endpoint, 1)
    assert fetch(internal)[0] == 403


def test_upload_survives_a_minio_outage(
    minio: MinioServer, bucket_name: str, scratch: Path
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    make_workspace(workspace, big_file=120 * MiB)
    env = archiver_env(minio, bucket_name, workspace, scratch / "log")
    archiver = Archiver(env, scratch)

    deadline = time.monotonic() + 120
    while "upload started" not in archiver.stderr():
        assert archiver.proc.poll() is None, archiver.stderr()
        assert time.monotonic() < deadline, archiver.stderr()
        time.sleep(0.05)
    minio.stop()
    time.sleep(6)
    assert archiver.proc.poll() is None, "the archiver must keep retrying while MinIO is down"
    assert "retrying" in archiver.stderr()
    assert snapshot(workspace)  # the workspace is untouched and still there
    minio.start()

    run = archiver.wait()
    assert run.returncode == 0, run.stderr[-3000:]
    # MinIO keeps the multipart upload across the restart: the archiver resumed, not restarted.
    assert run.stderr.count("upload started") == 1, run.stderr[-3000:]
    store = store_for(minio, bucket_name)
    url, _ = store.presign_get(KEY, datetime.timedelta(minutes=5))
    downloaded = scratch / "download.zip"
    assert fetch(url, downloaded) == (200, run.message["sha256"])
    extracted = scratch / "extracted"
    subprocess.run(["unzip", "-q", str(downloaded), "-d", str(extracted)], check=True)
    (extracted / MANIFEST_NAME).unlink()
    outside = {"outside-file", "outside-dir"}  # links out of the workspace are listed, not kept
    assert snapshot(extracted) == {
        path: entry for path, entry in snapshot(workspace).items() if path not in outside
    }


def test_a_transcript_symlink_is_not_followed(
    minio: MinioServer, bucket_name: str, scratch: Path
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    (workspace / "context.txt").symlink_to("/etc/hostname")
    run = Archiver(archiver_env(minio, bucket_name, workspace, scratch / "log"), scratch).wait()
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.message["transcriptKey"] is None
    assert store_for(minio, bucket_name).stat(TRANSCRIPT_KEY) is None
    # The link leads out of the workspace: not in the ZIP either, only listed as skipped.
    assert (run.message["files"], run.message["skipped"]) == (0, 1)


def test_the_transcript_is_the_sidecars_not_a_decoy_of_the_agents(
    minio: MinioServer, bucket_name: str, scratch: Path
) -> None:
    workspace = scratch / "workspace"
    (workspace / ".context-manager").mkdir(parents=True)
    (workspace / ".context-manager" / "context.txt").write_text("[user]\nthe real task\n")
    (workspace / "context.txt").write_text("[user]\na forged transcript\n")
    run = Archiver(archiver_env(minio, bucket_name, workspace, scratch / "log"), scratch).wait()
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.message["transcriptKey"] == TRANSCRIPT_KEY
    url, _ = store_for(minio, bucket_name).presign_get(
        TRANSCRIPT_KEY, datetime.timedelta(minutes=1)
    )
    expected = hashlib.sha256(b"[user]\nthe real task\n").hexdigest()
    assert fetch(url) == (200, expected)


def test_bad_credentials_are_a_permanent_error(
    minio: MinioServer, bucket_name: str, scratch: Path
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    env = archiver_env(minio, bucket_name, workspace, scratch / "log")
    env["CODINGJOB_STORAGE_SECRET_KEY"] = "wrong-secret"
    run = Archiver(env, scratch).wait()
    assert run.returncode == 1
    assert run.message["permanent"] is True
    # A HEAD answer has no body, so MinIO's SignatureDoesNotMatch arrives as a bare 403.
    assert str(run.message["error"]).startswith(("AccessDenied", "SignatureDoesNotMatch"))


def test_missing_bucket_without_creation_is_a_permanent_error(
    minio: MinioServer, bucket_name: str, scratch: Path
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    env = archiver_env(minio, bucket_name, workspace, scratch / "log")
    env["CODINGJOB_STORAGE_CREATE_BUCKET"] = "false"
    run = Archiver(env, scratch).wait()
    assert run.returncode == 1
    assert run.message == {
        "error": f"NoSuchBucket: bucket {bucket_name!r} does not exist and creation is off",
        "permanent": True,
    }


def test_unreachable_storage_past_the_deadline_is_transient(
    minio: MinioServer, bucket_name: str, scratch: Path
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    env = archiver_env(minio, bucket_name, workspace, scratch / "log")
    env["CODINGJOB_STORAGE_ENDPOINT"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    env["CODINGJOB_ARCHIVE_DEADLINE_SECONDS"] = "4"
    run = Archiver(env, scratch).wait(timeout=120)
    assert run.returncode == 75
    assert run.message["permanent"] is False
    assert "retrying" in run.stderr


def test_store_delete_prefix_and_stat_missing(minio: MinioServer, bucket_name: str) -> None:
    store = store_for(minio, bucket_name)
    store.ensure_bucket()
    for name in ("a/1", "a/2", "b/1"):
        upload_id = store.start_upload(name, "text/plain", {})
        part = store.upload_part(name, upload_id, 1, b"x")
        store.complete_upload(name, upload_id, [part])
    assert store.delete_prefix("a/") == 2
    assert store.stat("a/1") is None
    info = store.stat("b/1")
    assert info is not None
    assert (info.size, info.sha256, info.files) == (1, None, None)
