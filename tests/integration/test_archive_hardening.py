"""A hostile workspace and scoped identities against a real MinIO.

Round trips of what an agent can leave behind (sparse files, a thousand hard links, links out of
the workspace, hostile names, a FIFO, an archive over its size cap), and the
storage identities: the archiver's session reaches only its job's prefix, the URL signer only
reads.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import subprocess
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from codingjob_operator.storage import (
    ArtifactStore,
    Identity,
    PermanentStorageError,
    StorageSettings,
    provision,
)
from codingjob_operator.ziparchive import MANIFEST_NAME
from minio import Minio
from minio.error import S3Error
from pydantic import SecretStr

from tests.fixtures.minio import MinioServer
from tests.integration.test_archive import (
    KEY,
    Archiver,
    archiver_env,
    fetch,
    make_read_only,
    scratch,  # noqa: F401  # the fixture
)

pytestmark = pytest.mark.minio

MiB = 1024 * 1024
PREFIX = "team-a/todo-app/0f1e2d3c/"
OTHER = "team-b/other-job/99999999/"


def download(minio: MinioServer, bucket: str, key: str = KEY) -> zipfile.ZipFile:
    client = Minio(
        minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False
    )
    response = client.get_object(bucket, key)
    try:
        return zipfile.ZipFile(io.BytesIO(response.read()))
    finally:
        response.close()
        response.release_conn()


def manifest_of(archive: zipfile.ZipFile) -> list[dict[str, str]]:
    return [json.loads(line) for line in archive.read(MANIFEST_NAME).splitlines()[1:]]


def test_hostile_workspace_round_trip(
    minio: MinioServer,
    bucket_name: str,
    scratch: Path,  # noqa: F811
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    big = os.urandom(4 * MiB)
    (workspace / "big.bin").write_bytes(big)
    for i in range(1000):
        os.link(workspace / "big.bin", workspace / f"hard{i:04}")
    with (workspace / "sparse.img").open("wb") as out:
        try:
            out.truncate(8 * 1024**6 - 1)  # truncate -s 8E
        except OSError:  # EFBIG: this file system's limit is lower
            out.truncate(2**40)
    (workspace / "inside").symlink_to("big.bin")
    (workspace / "escape").symlink_to("../../etc/passwd")
    (workspace / "absolute").symlink_to("/etc/passwd")
    os.mkfifo(workspace / "fifo")
    for name in ["a\\b", "c:d", "CON", "new\nline", "Same", "same"]:
        (workspace / name).write_text(name)
    make_read_only(workspace)

    env = archiver_env(minio, bucket_name, workspace, scratch / "log")
    run = Archiver(env, scratch).wait()
    assert run.returncode == 0, run.stderr[-3000:]
    # The inode's 4 MiB once, not a thousand times; the sparse file not at all.
    assert int(str(run.message["size"])) < 5 * MiB
    assert run.message["skipped"] == 4

    archive = download(minio, bucket_name)
    assert archive.read("big.bin") == big
    assert archive.read("hard0000") == b"big.bin"  # a link to the first name
    records = manifest_of(archive)
    skipped = {r["name"] for r in records if r["kind"] == "skipped"}
    assert skipped == {"sparse.img", "escape", "absolute", "fifo"}
    renamed = {r["original"]: r["name"] for r in records if r["kind"] == "renamed"}
    assert renamed == {
        "a\\b": "a_b",
        "c:d": "c_d",
        "CON": "_CON",
        "new\nline": "new_line",
        "same": "same~1",
    }
    assert sum(r["kind"] == "hardlink" for r in records) == 1000

    # Info-ZIP's unzip recreates the links; every path stays inside the folder.
    (scratch / "w.zip").write_bytes(archive.fp.getvalue())  # type: ignore[union-attr]
    extracted = scratch / "extracted"
    subprocess.run(["unzip", "-q", str(scratch / "w.zip"), "-d", str(extracted)], check=True)
    assert os.readlink(extracted / "hard0999") == "big.bin"
    assert (extracted / "hard0999").read_bytes() == big
    assert all(p.resolve().is_relative_to(extracted.resolve()) for p in extracted.rglob("*"))


def test_over_the_size_cap_the_archiver_fails_with_a_reason(
    minio: MinioServer,
    bucket_name: str,
    scratch: Path,  # noqa: F811
) -> None:
    workspace = scratch / "workspace"
    workspace.mkdir()
    (workspace / "blob").write_bytes(os.urandom(12 * MiB))
    env = archiver_env(minio, bucket_name, workspace, scratch / "log")
    env["CODINGJOB_ARCHIVE_MAX_BYTES"] = str(10 * MiB)
    run = Archiver(env, scratch).wait()
    assert run.returncode == 1
    assert run.message["permanent"] is True
    assert run.message["reason"] == "ArchiveTooLarge"
    assert "10485760 bytes" in str(run.message["error"])
    client = Minio(
        minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False
    )
    assert list(client.list_objects(bucket_name, recursive=True)) == []  # upload aborted


# Identities.


@pytest.fixture
def identities(minio: MinioServer, bucket_name: str) -> tuple[StorageSettings, Identity]:
    """The chart's setup, done with the root user: operator and signer users on one bucket."""
    operator = Identity(f"op-{bucket_name}", os.urandom(16).hex())
    signer = Identity(f"sig-{bucket_name}", os.urandom(16).hex())
    root = Identity(minio.access_key, minio.secret_key)
    provision(minio.endpoint, root, bucket_name, operator, signer)
    settings = StorageSettings(
        endpoint=minio.endpoint,
        access_key=SecretStr(operator.access_key),
        secret_key=SecretStr(operator.secret_key),
        signer_access_key=SecretStr(signer.access_key),
        signer_secret_key=SecretStr(signer.secret_key),
        bucket=bucket_name,
    )
    return settings, signer


def denied(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except S3Error as error:
        return error.code == "AccessDenied"
    except PermanentStorageError as error:
        return "AccessDenied" in str(error)
    return False


def test_the_archivers_session_reaches_only_its_prefix(
    minio: MinioServer,
    bucket_name: str,
    scratch: Path,  # noqa: F811
    identities: tuple[StorageSettings, Identity],
) -> None:
    settings, _ = identities
    operator = ArtifactStore(settings)
    operator.ensure_bucket()
    # Another job's archive, already in the bucket.
    operator.put_stream(f"{OTHER}workspace.zip", io.BytesIO(b"theirs"), 6, "application/zip")

    # The session expires with the archiver's deadline (here two hours).
    session = operator.archiver_session(PREFIX, 7200)
    assert session.expires_at is not None
    lifetime = session.expires_at - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=110) < lifetime <= datetime.timedelta(minutes=121)

    # The real archiver, with nothing but the session, archives into its own prefix.
    workspace = scratch / "workspace"
    workspace.mkdir()
    (workspace / "main.py").write_text("print('hi')\n")
    (workspace / "context.txt").write_text("transcript\n")
    env = archiver_env(minio, bucket_name, workspace, scratch / "log")
    env.update(
        {
            "CODINGJOB_STORAGE_ACCESS_KEY": session.access_key,
            "CODINGJOB_STORAGE_SECRET_KEY": session.secret_key,
            "CODINGJOB_STORAGE_SESSION_TOKEN": session.session_token,
        }
    )
    run = Archiver(env, scratch).wait()
    assert run.returncode == 0, run.stderr[-3000:]
    assert operator.stat(KEY) is not None

    client = Minio(
        minio.endpoint,
        access_key=session.access_key,
        secret_key=session.secret_key,
        session_token=session.session_token,
        secure=False,
        # The region given, the client asks nothing of the bucket first: each call below is
        # refused for what it does, not for a GetBucketLocation the session may not make.
        region="us-east-1",
    )
    theirs = f"{OTHER}workspace.zip"
    assert denied(lambda: client.put_object(bucket_name, theirs, io.BytesIO(b"x"), 1))
    assert denied(lambda: client.get_object(bucket_name, theirs))
    assert denied(lambda: list(client.list_objects(bucket_name, prefix=OTHER)))
    assert denied(lambda: list(client.list_objects(bucket_name, prefix=PREFIX)))
    assert denied(lambda: client.remove_object(bucket_name, theirs))
    assert denied(lambda: client.remove_object(bucket_name, KEY))  # not even its own
    assert denied(lambda: client.put_object(bucket_name, "top-level", io.BytesIO(b"x"), 1))
    assert operator.stat(theirs) is not None  # untouched


def test_the_url_signer_only_reads(
    minio: MinioServer,
    bucket_name: str,
    identities: tuple[StorageSettings, Identity],
) -> None:
    settings, signer = identities
    store = ArtifactStore(settings)
    store.ensure_bucket()
    store.put_stream(KEY, io.BytesIO(b"zip bytes"), 9, "application/zip")
    url, _ = store.presign_get(KEY, datetime.timedelta(minutes=5))
    assert f"X-Amz-Credential={signer.access_key}" in url
    assert fetch(url)[0] == 200

    client = Minio(
        minio.endpoint,
        access_key=signer.access_key,
        secret_key=signer.secret_key,
        secure=False,
        region="us-east-1",
    )
    assert denied(lambda: client.put_object(bucket_name, KEY, io.BytesIO(b"evil"), 4))
    assert denied(lambda: client.remove_object(bucket_name, KEY))
    put_url = client.presigned_put_object(bucket_name, KEY, expires=datetime.timedelta(minutes=5))
    assert put(put_url, b"evil") == 403
    info = store.stat(KEY)
    assert info is not None and info.size == 9


def put(url: str, body: bytes) -> int:
    """PUT ``body`` to a presigned URL; the HTTP status."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="PUT")) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
