"""Archiver pieces that need no server: part sizes, backoff, report shape, error classes."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import json
import threading
import time
import urllib.parse
from typing import Any

import pytest
import urllib3
from codingjob_operator.archiver import (
    MAX_PARTS,
    Backoff,
    DeadlineExceededError,
    _failure,
    _fixed_mmap_threshold,
    _parts,
    part_size,
)
from codingjob_operator.report import TOO_LARGE, ArchiveError, ArchiveReport
from codingjob_operator.status import parse_archive_message
from codingjob_operator.storage import (
    ArtifactStore,
    PermanentStorageError,
    StorageSettings,
    TransientStorageError,
    UploadLostError,
    archiver_policy,
    classify,
    signer_policy,
)
from codingjob_operator.ziparchive import ArchiveTooLargeError
from minio.credentials.providers import AssumeRoleProvider
from minio.error import InvalidResponseError, S3Error, ServerError
from pydantic import SecretStr

MiB = 1024 * 1024
HOUR = datetime.timedelta(hours=1)


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
        "skipped": 0,
        "transcriptKey": None,
    }


def test_the_operator_reads_what_the_archiver_writes() -> None:
    """One contract: the archiver's messages parse back into the same models in the operator."""
    report = ArchiveReport(bucket="b", key="k", size=1, sha256="ab", files=2, skipped=4)
    assert parse_archive_message(report.model_dump_json(by_alias=True)) == report
    error = ArchiveError(error="too big", permanent=True, reason=TOO_LARGE)
    assert (
        parse_archive_message(_failure(ArchiveTooLargeError("too big"), True, TOO_LARGE)) == error
    )


def s3_error(code: str, status: int, request_id: str | None = "req") -> S3Error:
    """An error as the SDK makes it of a HEAD answer: no body; the store's carries its
    request id."""
    headers = {"x-amz-request-id": request_id} if request_id else {}
    response = urllib3.HTTPResponse(body=b"", status=status, headers=headers)
    return S3Error(response, code, "message", "/bucket/key", request_id, "host")


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
        # The SDK's reading of a 404 to a HEAD that the store did not give (no request id): a
        # network path that led elsewhere (fault campaign, MinIO restart), not a missing bucket.
        (s3_error("NoSuchBucket", 404, request_id=None), TransientStorageError),
        (s3_error("AccessDenied", 403, request_id=None), TransientStorageError),
        (ServerError("bad gateway", 502), TransientStorageError),
        # A body-less 404 came from a stopping MinIO (fault campaign), a page from a proxy.
        (InvalidResponseError(404, None, None), TransientStorageError),
        (InvalidResponseError(403, "text/html", "<html>denied</html>"), PermanentStorageError),
        (InvalidResponseError(502, "text/html", "<html>bad gateway</html>"), TransientStorageError),
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


def test_archiver_policy_is_limited_to_the_prefix() -> None:
    policy = archiver_policy("arts", "team-a/job/uid-1/")
    (statement,) = policy["Statement"]
    assert statement["Resource"] == ["arn:aws:s3:::arts/team-a/job/uid-1/*"]
    assert "s3:DeleteObject" not in statement["Action"]
    assert "s3:ListBucket" not in statement["Action"]


@pytest.mark.parametrize("prefix", ["", "team-a/job", "team-a/*/", "a?/"])
def test_archiver_policy_refuses_prefixes_that_widen_it(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        archiver_policy("arts", prefix)


def test_signer_can_only_read() -> None:
    (statement,) = signer_policy("arts")["Statement"]
    assert statement["Action"] == ["s3:GetObject"]


def test_urls_for_an_https_public_endpoint_are_https_and_signed_by_the_signer() -> None:
    settings = StorageSettings(
        endpoint="minio.storage.svc:9000",
        public_endpoint="https://downloads.example.com",
        access_key=SecretStr("operator"),
        secret_key=SecretStr("operator-secret"),
        signer_access_key=SecretStr("signer"),
        signer_secret_key=SecretStr("signer-secret"),
        bucket="arts",
    )
    url, expires = ArtifactStore(settings).presign_get("ns/job/uid/workspace.zip", HOUR)
    assert url.startswith("https://downloads.example.com/arts/ns/job/uid/workspace.zip?")
    assert "X-Amz-Credential=signer%2F" in url
    assert "X-Amz-Expires=3600" in url
    assert expires - datetime.datetime.now(datetime.UTC) <= HOUR


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        # MinIO's answer while its IAM starts ("Server not initialized"): retried.
        (400, TransientStorageError),
        (503, TransientStorageError),
        # The operator's identity may not assume the role: no retry fixes that.
        (403, PermanentStorageError),
        (401, PermanentStorageError),
    ],
)
def test_sts_refusals_are_classified_by_their_status(
    monkeypatch: pytest.MonkeyPatch, status: int, kind: type[Exception]
) -> None:
    def refuse(_self: AssumeRoleProvider) -> None:
        raise ValueError(f"http://minio:9000 failed with HTTP status code {status}")

    monkeypatch.setattr(AssumeRoleProvider, "retrieve", refuse)
    settings = StorageSettings(access_key=SecretStr("a"), secret_key=SecretStr("s"), bucket="arts")
    with pytest.raises(kind, match="STS AssumeRole"):
        ArtifactStore(settings).archiver_session("ns/job/uid/", 900)


_STS_ANSWER = """<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/codingjob-archiver/session</Arn>
      <AssumedRoleId>AROAEXAMPLE:session</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>session-secret</SecretAccessKey>
      <SessionToken>session-token</SessionToken>
      <Expiration>2030-01-01T00:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>request-1</RequestId></ResponseMetadata>
</AssumeRoleResponse>"""


def test_on_aws_the_session_assumes_the_role_with_the_prefix_policy() -> None:
    """The AWS path (``storage.archiverRoleArn``), which needs an AWS account to run for real:
    the request must be the AssumeRole call AWS STS documents (form-encoded POST, RoleArn, the
    inline session Policy, DurationSeconds, SigV4 scoped to the region's ``sts`` service), and
    the answer's credentials are the session's."""
    seen: dict[str, Any] = {}

    class Sts(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            seen["path"], seen["headers"], seen["form"] = self.path, self.headers, body
            answer = _STS_ANSWER.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    role = "arn:aws:iam::123456789012:role/codingjob-archiver"
    try:
        settings = StorageSettings(
            endpoint="s3.eu-west-1.amazonaws.com",
            secure=True,
            region="eu-west-1",
            access_key=SecretStr("AKIAOPERATOR"),
            secret_key=SecretStr("operator-secret"),
            bucket="arts",
            sts_endpoint=f"http://127.0.0.1:{server.server_address[1]}",
            archiver_role_arn=role,
        )
        session = ArtifactStore(settings).archiver_session("ns/job/uid/", 7200)
    finally:
        server.shutdown()
        server.server_close()

    form = urllib.parse.parse_qs(seen["form"], strict_parsing=True)
    assert {k: v[0] for k, v in form.items() if k != "Policy"} == {
        "Action": "AssumeRole",
        "Version": "2011-06-15",
        "RoleArn": role,
        "RoleSessionName": "codingjob-" + hashlib.sha256(b"ns/job/uid/").hexdigest()[:16],
        "DurationSeconds": "7200",
    }
    assert json.loads(form["Policy"][0]) == archiver_policy("arts", "ns/job/uid/")
    assert seen["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    authorization = seen["headers"]["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIAOPERATOR/")
    assert "/eu-west-1/sts/aws4_request," in authorization
    assert (session.access_key, session.secret_key, session.session_token) == (
        "ASIAEXAMPLE",
        "session-secret",
        "session-token",
    )
    assert session.expires_at == datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def test_the_archiver_fixes_glibcs_mmap_threshold() -> None:
    """The images are Debian (glibc): the call that keeps the archiver's peak memory down
    must take effect there, not fail quietly."""
    assert _fixed_mmap_threshold() is True
