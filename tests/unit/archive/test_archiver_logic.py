"""Archiver pieces that need no server: part sizes, backoff, report shape, error classes."""

from __future__ import annotations

import time

import pytest
import urllib3
from codingjob_operator.archiver import (
    MAX_PARTS,
    ArchiveReport,
    Backoff,
    DeadlineExceededError,
    _parts,
    part_size,
)
from codingjob_operator.storage import (
    PermanentStorageError,
    StorageSettings,
    TransientStorageError,
    UploadLostError,
    classify,
)
from minio.error import S3Error, ServerError

MiB = 1024 * 1024


def test_part_sizes_start_small_and_reach_far() -> None:
    assert part_size(1) == 8 * MiB
    assert part_size(2000) == 8 * MiB
    assert part_size(2001) == 16 * MiB
    assert max(part_size(n) for n in range(1, MAX_PARTS + 1)) == 16 * MiB
    capacity = sum(part_size(n) for n in range(1, MAX_PARTS + 1))
    assert capacity > 140 * 1024 * MiB


def test_parts_regroup_chunks_without_loss() -> None:
    chunks = [bytes([i % 256]) * (3 * MiB) for i in range(7)]
    parts = list(_parts(iter(chunks)))
    assert b"".join(parts) == b"".join(chunks)
    assert all(len(p) >= 5 * MiB for p in parts[:-1])  # S3's minimum for all but the last
    assert [len(p) for p in parts] == [9 * MiB, 9 * MiB, 3 * MiB]


def test_parts_of_an_empty_stream_is_one_empty_part() -> None:
    assert list(_parts(iter([]))) == [b""]


def test_parts_have_no_empty_tail_when_the_stream_ends_on_a_boundary() -> None:
    parts = list(_parts(iter([b"x" * (8 * MiB)])))
    assert [len(p) for p in parts] == [8 * MiB]


class Flaky:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_backoff_retries_transient_errors_with_growing_capped_delays() -> None:
    sleeps: list[float] = []
    backoff = Backoff(deadline=time.monotonic() + 3600, initial=1, cap=4, sleep=sleeps.append)
    func = Flaky([TransientStorageError("down")] * 5)
    assert backoff.call("op", func) == "ok"
    assert func.calls == 6
    # Jitter takes each delay down to at most half; the cap holds.
    for slept, nominal in zip(sleeps, [1, 2, 4, 4, 4], strict=True):
        assert nominal / 2 <= slept <= nominal


def test_backoff_gives_up_at_the_deadline() -> None:
    sleeps: list[float] = []
    backoff = Backoff(deadline=time.monotonic() + 0.2, initial=1, sleep=sleeps.append)
    func = Flaky([TransientStorageError("down")] * 100)
    with pytest.raises(DeadlineExceededError, match="op: down"):
        backoff.call("op", func)
    assert func.calls == 1  # the first wait (>= 0.5s) would already pass the deadline
    assert sleeps == []


@pytest.mark.parametrize(
    "error", [PermanentStorageError("denied"), UploadLostError("gone"), ValueError("bug")]
)
def test_backoff_does_not_retry_other_errors(error: Exception) -> None:
    func = Flaky([error])
    with pytest.raises(type(error)):
        Backoff(deadline=time.monotonic() + 60, sleep=lambda s: None).call("op", func)
    assert func.calls == 1


def test_report_serializes_by_alias() -> None:
    report = ArchiveReport(
        bucket="b", key="ns/n/u/workspace.zip", size=10, sha256="ab", files=3, transcriptKey=None
    )
    assert report.model_dump(by_alias=True) == {
        "bucket": "b",
        "key": "ns/n/u/workspace.zip",
        "size": 10,
        "sha256": "ab",
        "files": 3,
        "transcriptKey": None,
    }


def s3_error(code: str, status: int) -> S3Error:
    response = urllib3.HTTPResponse(body=b"", status=status)
    return S3Error(response, code, "message", "/bucket/key", "req", "host")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (s3_error("AccessDenied", 403), PermanentStorageError),
        (s3_error("InvalidAccessKeyId", 403), PermanentStorageError),
        (s3_error("SignatureDoesNotMatch", 403), PermanentStorageError),
        (s3_error("NoSuchBucket", 404), PermanentStorageError),
        (s3_error("NoSuchUpload", 404), UploadLostError),
        (s3_error("InternalError", 500), TransientStorageError),
        (s3_error("RequestTimeout", 400), TransientStorageError),
        (s3_error("TooManyRequests", 429), TransientStorageError),
        (s3_error("InvalidPart", 400), PermanentStorageError),
        (s3_error("SlowDown", 503), TransientStorageError),
        (s3_error("XMinioServerNotInitialized", 503), TransientStorageError),
        (ServerError("bad gateway", 502), TransientStorageError),
        (urllib3.exceptions.MaxRetryError(None, "/", None), TransientStorageError),  # type: ignore[arg-type]
        (ConnectionRefusedError(), TransientStorageError),
        (TimeoutError(), TransientStorageError),
        (ValueError("invalid object name"), PermanentStorageError),
    ],
)
def test_errors_are_classified(error: Exception, kind: type[Exception]) -> None:
    assert type(classify(error)) is kind


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("http://localhost:9000", "http://localhost:9000"),
        ("https://s3.example.com/", "https://s3.example.com"),
    ],
)
def test_public_endpoint_is_a_bare_url(value: str | None, expected: str | None) -> None:
    settings = StorageSettings(access_key="a", secret_key="b", public_endpoint=value)
    assert settings.public_endpoint == expected


@pytest.mark.parametrize("value", ["localhost:9000", "ftp://x", "https://s3.example.com/minio"])
def test_public_endpoint_rejects_what_cannot_be_signed(value: str) -> None:
    with pytest.raises(ValueError, match="publicEndpoint"):
        StorageSettings(access_key="a", secret_key="b", public_endpoint=value)
