"""Object storage for workspace archives: the only module of the project that talks to MinIO/S3.

Every failure leaves this module as :class:`TransientStorageError` (retry with backoff) or
:class:`PermanentStorageError` (retrying cannot help), so callers never see SDK exceptions.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import Tags
from minio.credentials.providers import AssumeRoleProvider, StaticProvider
from minio.datatypes import Part
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.minioadmin import MinioAdmin
from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Object tags an archive carries: the sha256 of its bytes and how many files it holds.
META_SHA256 = "sha256"
META_FILES = "files"

#: S3 error codes that retrying cannot fix.
_PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "AccountProblem",
        "InvalidObjectState",
        "EntityTooLarge",
        "InvalidArgument",
        "InvalidRequest",
    }
)
#: S3 error codes that clear up by themselves, whatever their HTTP status.
_TRANSIENT_CODES = frozenset({"RequestTimeout", "SlowDown", "OperationTimedOut"})
_TRANSIENT_STATUS = frozenset({408, 429})
_MiB = 1024 * 1024
#: A prefix no archive key has (keys start with a namespace name, which has no dot first).
_NO_OBJECT_PREFIX = ".codingjob-bucket-check/"
T = TypeVar("T")


class StorageSettings(BaseSettings):
    """Where archives go and how they are reached, read from ``CODINGJOB_STORAGE_*``."""

    model_config = SettingsConfigDict(env_prefix="CODINGJOB_STORAGE_")

    #: ``host:port`` reachable from the operator and archiver pods.
    endpoint: str = "codingjob-minio.codingjob-system.svc:9000"
    #: URL users reach (``http://localhost:9000``, ``https://s3.example.com``); download URLs are
    #: signed for this host. ``None`` signs for ``endpoint``.
    public_endpoint: str | None = None
    access_key: SecretStr
    secret_key: SecretStr
    secure: bool = False
    #: Passing the region makes presigning a local computation (no GetBucketLocation call).
    region: str = "us-east-1"
    bucket: str = "codingjob-artifacts"
    create_bucket: bool = True
    retention: Literal["Retain", "Delete"] = "Retain"
    #: Set for an archiver: its short-lived STS session (with ``access_key``/``secret_key``).
    session_token: SecretStr | None = None
    #: STS endpoint for the archiver sessions; ``None`` is the S3 endpoint (MinIO serves STS).
    sts_endpoint: str | None = None
    #: AWS: the role archiver sessions assume (the operator's identity may assume it);
    #: MinIO: unset, the session derives from the operator's own user.
    archiver_role_arn: str | None = None
    #: The read-only identity that signs download URLs; unset, the operator's identity signs.
    signer_access_key: SecretStr | None = None
    signer_secret_key: SecretStr | None = None

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if "/" in value or not value:
            raise ValueError("endpoint is host:port without scheme or path")
        return value

    @field_validator("public_endpoint")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("publicEndpoint is a URL like http://localhost:9000")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("publicEndpoint must not have a path: S3 signs the path")
        return f"{parts.scheme}://{parts.netloc}"


class StorageError(Exception):
    """An object storage operation failed."""


class TransientStorageError(StorageError):
    """Unreachable, 5xx, timeouts: the same call may succeed later."""


class PermanentStorageError(StorageError):
    """Access denied, missing bucket with creation off, bad credentials: retrying cannot help."""


class UploadLostError(TransientStorageError):
    """The multipart upload no longer exists on the server; the whole upload must start over."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the store holds under a key; ``sha256``/``files`` are what :meth:`record` attached."""

    key: str
    size: int
    sha256: str | None
    files: int | None


@dataclass(frozen=True)
class SessionCredentials:
    """Short-lived credentials of one archiver, limited to one job's objects."""

    access_key: str
    secret_key: str
    session_token: str
    expires_at: datetime.datetime | None


#: What an archiver may do, and only under its job's prefix: upload (multipart), confirm what it
#: uploaded (read it back, tags), abort its own uploads. No listing, no delete, no bucket access.
ARCHIVER_ACTIONS = (
    "s3:PutObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
    "s3:GetObject",
    "s3:GetObjectTagging",
    "s3:PutObjectTagging",
)
#: The shortest session: STS allows 15 minutes, but the SDK's AssumeRole provider asks for at
#: least an hour whatever it is given.
MIN_SESSION_SECONDS = 3600


def archiver_policy(bucket: str, prefix: str) -> dict[str, Any]:
    """The inline session policy of an archiver: :data:`ARCHIVER_ACTIONS` on ``prefix*`` only."""
    if not prefix.endswith("/") or "*" in prefix or "?" in prefix:
        raise ValueError(f"prefix must end with / and hold no wildcards: {prefix!r}")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": list(ARCHIVER_ACTIONS),
                "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*"],
            }
        ],
    }


def operator_policy(bucket: str) -> dict[str, Any]:
    """The policy of the operator's identity: its bucket and nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:CreateBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
            {
                "Effect": "Allow",
                "Action": [*ARCHIVER_ACTIONS, "s3:DeleteObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            },
        ],
    }


def signer_policy(bucket: str) -> dict[str, Any]:
    """The policy of the URL signer: read objects of the bucket, nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }


@dataclass(frozen=True)
class UploadedPart:
    """One acknowledged part of a multipart upload."""

    number: int
    etag: str


#: Every answer of S3 and of MinIO carries this header, error and HEAD answers included.
S3_REQUEST_ID = "x-amz-request-id"


class _StorePool(urllib3.PoolManager):
    """The connections to the store; an error answer that is not the store's drops them all.

    A kept-alive connection stays on the path it was opened on: in Kubernetes its conntrack
    entry pins it to what the Service address led to at connect time. Opened while a Service
    had no endpoint (the store restarting), a connection can lead somewhere else for good (on
    a node whose forwarding lets such packets out, to whatever answers there: the fault
    campaign's MinIO restart got a body-less 404 on every retry for minutes after MinIO was
    back). Only new connections are routed afresh.
    """

    # The signature is PoolManager's own, which overrides its base the same way.
    def urlopen(  # type: ignore[override]
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> urllib3.BaseHTTPResponse:
        response = super().urlopen(method, url, redirect=redirect, **kw)
        if response.status >= 400 and not response.headers.get(S3_REQUEST_ID):
            self.clear()
        return response


def _http_client() -> urllib3.PoolManager:
    # Short timeouts so a vanished server surfaces as a retryable error within a minute instead
    # of the SDK's five-minute default; our own backoff does the long-term retrying.
    return _StorePool(
        timeout=urllib3.Timeout(connect=10.0, read=120.0),
        maxsize=4,
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


def answered_by_s3(error: S3Error) -> bool:
    """Whether ``error`` is the store's answer. A HEAD answer has no body: the SDK makes
    ``NoSuchBucket``/``NoSuchKey`` out of any 404 to a HEAD, a proxy's too; the store's own
    answers carry its request id."""
    response = error.response
    if response is None or response.data:
        return True  # an S3 error document
    return bool(response.headers.get(S3_REQUEST_ID))


def classify(error: BaseException) -> StorageError:
    """Map an SDK/network exception to a transient or permanent storage error."""
    if isinstance(error, StorageError):
        return error
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, S3Error):
        message = f"{error.code}: {error.message} ({error.resource})"
        if not answered_by_s3(error):
            status = error.response.status if error.response is not None else 0
            return TransientStorageError(
                f"HTTP {status} without a body or an S3 request id: not the store's answer "
                f"(a proxy, or a network path that does not lead to the store) [{message}]"
            )
        if error.code == "NoSuchUpload":
            return UploadLostError(message)
        status = error.response.status if error.response is not None else 0
        if error.code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
            return TransientStorageError(message)
        if error.code in _PERMANENT_CODES or 400 <= status < 500:
            return PermanentStorageError(message)
        return TransientStorageError(message)
    if isinstance(error, ServerError):
        if error.status_code >= 500:
            return TransientStorageError(message)
        return PermanentStorageError(message)
    if isinstance(error, InvalidResponseError):
        # A non-S3 answer (a proxy's HTML page, an empty 5xx) is usually a gateway hiccup. A 4xx
        # without any body is no refusal either: MinIO answers so while it stops or starts (the
        # fault campaign's MinIO restart failed jobs ArchiveFailed on it).
        code, _type, body = error.__reduce__()[1][:3]  # type: ignore[no-untyped-call]
        if isinstance(code, int) and 400 <= code < 500 and code not in _TRANSIENT_STATUS and body:
            return PermanentStorageError(message)
        return TransientStorageError(message)
    if isinstance(error, urllib3.exceptions.HTTPError | OSError | TimeoutError):
        return TransientStorageError(message)
    if isinstance(error, ValueError | MinioException):
        return PermanentStorageError(message)
    return PermanentStorageError(message)


def _call(func: Callable[[], T]) -> T:
    try:
        return func()
    except Exception as error:
        raise classify(error) from error


def _public_client(settings: StorageSettings) -> Minio:
    # Why: a URL carries its signer's authority; a read-only signer cannot be turned into writes.
    keys: tuple[SecretStr | None, SecretStr | None] = (
        (settings.signer_access_key, settings.signer_secret_key)
        if settings.signer_access_key is not None and settings.signer_secret_key is not None
        else (settings.access_key, settings.secret_key)
    )
    if settings.public_endpoint is None:
        return _client(settings.endpoint, settings.secure, settings, keys)
    parts = urlsplit(settings.public_endpoint)
    return _client(parts.netloc, parts.scheme == "https", settings, keys)


def _client(
    endpoint: str,
    secure: bool,
    settings: StorageSettings,
    keys: tuple[SecretStr | None, SecretStr | None] | None = None,
) -> Minio:
    access_key, secret_key = keys or (settings.access_key, settings.secret_key)
    token = settings.session_token if keys is None else None
    return Minio(
        endpoint,
        access_key=access_key.get_secret_value() if access_key else None,
        secret_key=secret_key.get_secret_value() if secret_key else None,
        session_token=token.get_secret_value() if token else None,
        secure=secure,
        region=settings.region,
        http_client=_http_client(),
    )


class ArtifactStore:
    """Archive objects in one bucket: upload, confirm, presign, delete."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._client = _client(settings.endpoint, settings.secure, settings)
        # Signing is local (region given), so a public host the operator cannot reach works.
        self._signer = _public_client(settings)

    def archiver_session(self, prefix: str, seconds: int) -> SessionCredentials:
        """STS credentials for one archiver: :func:`archiver_policy` on ``prefix``, expiring
        after ``seconds`` (at least :data:`MIN_SESSION_SECONDS`)."""
        settings = self.settings
        scheme = "https" if settings.secure else "http"
        provider = AssumeRoleProvider(
            sts_endpoint=settings.sts_endpoint or f"{scheme}://{settings.endpoint}",
            access_key=settings.access_key.get_secret_value(),
            secret_key=settings.secret_key.get_secret_value(),
            duration_seconds=max(MIN_SESSION_SECONDS, seconds),
            policy=json.dumps(archiver_policy(self.bucket, prefix), separators=(",", ":")),
            region=settings.region,
            role_arn=settings.archiver_role_arn,
            role_session_name="codingjob-" + hashlib.sha256(prefix.encode()).hexdigest()[:16],
            http_client=_http_client(),
        )
        try:
            credentials = provider.retrieve()
        except ValueError as error:
            # The SDK reports an STS refusal by its HTTP status alone. MinIO answers 400 ("Server
            # not initialized") while its IAM starts, so 400 and 5xx are retried; 401/403 mean
            # the operator's identity may not assume the role, which no retry fixes.
            text = f"STS AssumeRole: {error}"
            if re.search(r"status code (400|5\d\d)\b", str(error)):
                raise TransientStorageError(text) from error
            raise PermanentStorageError(text) from error
        except Exception as error:
            raise classify(error) from error
        if credentials.session_token is None:
            raise PermanentStorageError("STS AssumeRole returned no session token")
        return SessionCredentials(
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            session_token=credentials.session_token,
            # The SDK parses STS's UTC expiry without a zone.
            expires_at=(
                credentials.expiration.replace(tzinfo=datetime.UTC)
                if credentials.expiration is not None and credentials.expiration.tzinfo is None
                else credentials.expiration
            ),
        )

    def ensure_bucket(self) -> None:
        """Make sure the bucket exists, creating it when the settings allow."""
        if _call(lambda: self._client.bucket_exists(self.bucket)):
            return
        # The HEAD said 404, which the SDK reads as "no such bucket" whoever answered: a GET
        # has the store's error document, or is no S3 answer (transient).
        if self._bucket_found():
            return
        if not self.settings.create_bucket:
            raise PermanentStorageError(
                f"NoSuchBucket: bucket {self.bucket!r} does not exist and creation is off"
            )
        try:
            self._client.make_bucket(self.bucket, location=self.settings.region)
        except S3Error as error:
            if error.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # created concurrently by another archiver
            raise classify(error) from error
        except Exception as error:
            raise classify(error) from error

    def _bucket_found(self) -> bool:
        """Whether the bucket exists, by a listing that matches nothing (a GET, which the
        operator's identity may do: ``s3:ListBucket``)."""
        try:
            for _ in self._client.list_objects(self.bucket, prefix=_NO_OBJECT_PREFIX):
                break
        except S3Error as error:
            if error.code == "NoSuchBucket" and answered_by_s3(error):
                return False
            raise classify(error) from error
        except Exception as error:
            raise classify(error) from error
        return True

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and recorded sha256/file count of ``key``; ``None`` when there is no such object."""
        try:
            obj = self._client.stat_object(self.bucket, key)
        except S3Error as error:
            missing = error.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound")
            if missing and answered_by_s3(error):
                return None
            raise classify(error) from error
        except Exception as error:
            raise classify(error) from error
        tags = dict(_call(lambda: self._client.get_object_tags(self.bucket, key)) or {})
        files = tags.get(META_FILES)
        return ObjectInfo(
            key=key,
            size=int(obj.size or 0),
            sha256=tags.get(META_SHA256),
            files=int(files) if files is not None and files.isdigit() else None,
        )

    def presign_get(self, key: str, expires: datetime.timedelta) -> tuple[str, datetime.datetime]:
        """A GET URL for ``key`` signed for the public endpoint, and when it expires (UTC)."""
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        url = _call(
            lambda: self._signer.presigned_get_object(
                self.bucket, key, expires=expires, request_date=now
            )
        )
        return url, now + datetime.timedelta(seconds=int(expires.total_seconds()))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        if not prefix:
            raise PermanentStorageError("refusing to delete the whole bucket (empty prefix)")

        def run() -> int:
            names = [
                o.object_name
                for o in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if o.object_name is not None
            ]
            errors = list(
                self._client.remove_objects(self.bucket, (DeleteObject(n) for n in names))
            )
            if errors:
                raise PermanentStorageError(f"could not delete: {errors[0]}")
            return len(names)

        return _call(run)

    # Multipart upload of a stream whose length is unknown up front.

    def start_upload(self, key: str, content_type: str, headers: Mapping[str, str]) -> str:
        """Begin a multipart upload of ``key``; returns the upload id."""
        all_headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": content_type,
            **headers,
        }
        # The SDK's put_object aborts the whole upload on the first failed part; the low-level
        # calls let the archiver retry a single part and resume after an outage.
        return _call(lambda: self._client._create_multipart_upload(self.bucket, key, all_headers))

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        """Upload part ``number`` (1-based, >= 5 MiB except the last)."""
        etag = _call(
            lambda: self._client._upload_part(self.bucket, key, data, None, upload_id, number)
        )
        return UploadedPart(number=number, etag=etag)

    def complete_upload(self, key: str, upload_id: str, parts: Iterable[UploadedPart]) -> None:
        """Assemble the parts into the object ``key``."""
        sdk_parts = [Part(p.number, p.etag) for p in parts]
        _call(
            lambda: self._client._complete_multipart_upload(self.bucket, key, upload_id, sdk_parts)
        )

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Drop an unfinished upload and its parts."""
        _call(lambda: self._client._abort_multipart_upload(self.bucket, key, upload_id))

    def record(self, key: str, values: Mapping[str, str]) -> None:
        """Attach ``values`` (sha256, file count) to the existing object ``key``.

        S3 user metadata is fixed when an upload starts, and MinIO answers a copy onto itself
        with new metadata by rewriting a multipart object's data (seconds per GiB; see the
        archive benchmark). Object tags are metadata that can be set afterwards in one small
        request, whatever the object's size.
        """
        tags = Tags.new_object_tags()
        for name, value in values.items():
            tags[name] = value
        _call(lambda: self._client.set_object_tags(self.bucket, key, tags))

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Upload ``length`` bytes from ``stream`` as ``key`` (multipart above 16 MiB)."""
        start = stream.tell() if length >= 0 and stream.seekable() else None

        def run() -> None:
            if start is not None:
                stream.seek(start)  # a retried call sends the bytes again from the beginning
            self._client.put_object(
                self.bucket,
                key,
                stream,
                length,
                content_type=content_type,
                metadata=dict(metadata or {}),
                part_size=16 * _MiB,
            )

        _call(run)


@dataclass(frozen=True)
class Identity:
    """A user of the store: its keys."""

    access_key: str
    secret_key: str


def provision(
    endpoint: str,
    root: Identity,
    bucket: str,
    operator: Identity,
    signer: Identity,
    *,
    secure: bool = False,
    region: str = "us-east-1",
) -> None:
    """With MinIO's root user: create the bucket, the operator's bucket-scoped user and the
    read-only URL signer, each with its policy (idempotent: run again on every upgrade)."""

    def run() -> None:
        admin = MinioAdmin(
            endpoint=endpoint,
            credentials=StaticProvider(root.access_key, root.secret_key),
            region=region,
            secure=secure,
            http_client=_http_client(),
        )
        client = Minio(
            endpoint,
            access_key=root.access_key,
            secret_key=root.secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(),
        )
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket, location=region)
        for name, identity, policy in (
            (f"codingjob-operator-{bucket}", operator, operator_policy(bucket)),
            (f"codingjob-signer-{bucket}", signer, signer_policy(bucket)),
        ):
            admin.policy_add(name, policy=policy)
            admin.user_add(identity.access_key, identity.secret_key)
            admin.policy_set(name, user=identity.access_key)

    _call(run)
