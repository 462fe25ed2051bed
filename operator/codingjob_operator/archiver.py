"""``codingjob-archiver``: stream a finished job's workspace as a ZIP into object storage.

Runs in its own pod with the workspace volume mounted read-only. The ZIP goes to the store as a
multipart upload while it is being produced (no temporary file, memory bounded by a few parts);
size and sha256 are computed on the way and recorded as object tags afterwards, because S3
user metadata is fixed when an upload starts. Transient storage errors are retried with capped
exponential backoff until a deadline; the outcome goes to the termination log as JSON.

Exit codes: 0 archived (:class:`ArchiveReport`), 1 permanent error, 75 transient error that
outlived the deadline (``{"error": ..., "permanent": ...}``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import queue
import random
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import logformat
from .logformat import LogFormat, job_ref
from .report import TOO_LARGE, ArchiveError, ArchiveReport
from .storage import (
    META_FILES,
    META_SHA256,
    ArtifactStore,
    PermanentStorageError,
    StorageSettings,
    TransientStorageError,
    UploadedPart,
    UploadLostError,
)
from .ziparchive import ArchiveStats, ArchiveTooLargeError, stream_workspace

log = logging.getLogger("codingjob.archiver")

EXIT_OK = 0
EXIT_PERMANENT = 1
#: ``EX_TEMPFAIL`` from sysexits.h: try again later.
EXIT_TRANSIENT = 75

ZIP_CONTENT_TYPE = "application/zip"
TRANSCRIPT_CONTENT_TYPE = "text/plain; charset=utf-8"
#: The sidecar's private directory in the workspace and the transcript in it (see the pod
#: contract; ``STATE_DIR`` and ``TRANSCRIPT_PATH`` of the agent image's protocol module).
STATE_DIR = ".context-manager"
TRANSCRIPT_NAME = f"{STATE_DIR}/context.txt"
#: Where the transcript was before the sidecar had a directory of its own.
LEGACY_TRANSCRIPT_NAME = "context.txt"
#: Kubernetes keeps at most 4096 bytes of a termination message.
_MAX_MESSAGE = 3500

_MiB = 1024 * 1024
#: S3 allows 10,000 parts of at least 5 MiB (except the last).
MAX_PARTS = 10_000
#: Parts sent at once: a single stream leaves the store's and the network's parallelism unused.
UPLOAD_THREADS = 3
T = TypeVar("T")


class ArchiverSettings(BaseSettings):
    """What to archive and where, from ``CODINGJOB_*`` (storage settings are read separately)."""

    model_config = SettingsConfigDict(env_prefix="CODINGJOB_")

    archive_key: str = Field(min_length=1)
    archive_transcript_key: str | None = None
    workspace: Path = Path("/workspace")
    archive_deadline_seconds: float = Field(3600.0, gt=0)
    #: The archive may not grow beyond this many bytes (``None``: no limit but S3's).
    archive_max_bytes: int | None = Field(None, gt=0)
    termination_log: Path = Path("/dev/termination-log")


class DeadlineExceededError(TransientStorageError):
    """Transient errors went on past the archiver's deadline."""


def part_size(number: int) -> int:
    """Size of upload part ``number``: 8 MiB, then 16 MiB from part 2,001 (archives > 15 GiB).

    Small parts keep memory low; the larger ones stretch S3's 10,000-part limit to about
    140 GiB while memory stays below the archiver's bound.
    """
    return 8 * _MiB if number <= 2000 else 16 * _MiB


@dataclass
class Backoff:
    """Retries transient storage errors with capped exponential backoff until a deadline."""

    deadline: float  # time.monotonic() value
    initial: float = 0.5
    cap: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    attempts: int = field(default=0, init=False)

    def call(self, what: str, func: Callable[[], T]) -> T:
        """``func()``, retried while it raises a transient error other than a lost upload."""
        delay = self.initial
        while True:
            try:
                return func()
            except UploadLostError:
                raise
            except TransientStorageError as error:
                self.attempts += 1
                wait = delay * random.uniform(0.5, 1.0)  # jitter: archivers do not retry in step
                if time.monotonic() + wait > self.deadline:
                    raise DeadlineExceededError(f"{what}: {error}") from error
                log.warning("%s failed (%s); retrying in %.1fs", what, error, wait)
                self.sleep(wait)
                delay = min(self.cap, delay * 2)


class _PartUploader:
    """Uploads parts on :data:`UPLOAD_THREADS` threads while the producer zips the next ones.

    The producer hashes each part in order when it hands it over, and reserves room before it
    zips the next one: at most ``threads`` parts exist at once, the one being zipped included
    (with ISA-L the zipping outruns the uploads, so memory reaches this bound).
    """

    def __init__(
        self,
        store: ArtifactStore,
        key: str,
        upload_id: str,
        backoff: Backoff,
        threads: int = UPLOAD_THREADS,
    ) -> None:
        self.store, self.key, self.upload_id, self.backoff = store, key, upload_id, backoff
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.error: BaseException | None = None
        self._done: dict[int, UploadedPart] = {}
        self._next = 1
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self._slots = threading.Semaphore(threads)
        self._threads = [
            threading.Thread(target=self._run, name=f"part-uploader-{i}", daemon=True)
            for i in range(threads)
        ]

    @property
    def parts(self) -> list[UploadedPart]:
        """The uploaded parts in order."""
        return [self._done[n] for n in sorted(self._done)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                number, data = item
                part = self.backoff.call(
                    f"upload part {number}",
                    lambda n=number, d=data: self.store.upload_part(  # type: ignore[misc]
                        self.key, self.upload_id, n, d
                    ),
                )
                del item, data
                with self._lock:
                    self._done[number] = part
                self._slots.release()
                if number % 16 == 0:
                    log.info("uploaded %d parts", number)
        except BaseException as error:
            with self._lock:
                self.error = self.error or error

    def reserve(self) -> None:
        """Wait for room for one more part, before producing it; raises an uploader's error."""
        while not self._slots.acquire(timeout=0.2):
            if self.error is not None:
                raise self.error
        if self.error is not None:
            raise self.error

    def put(self, data: bytes) -> None:
        """Hand over the next part (reserved before)."""
        self.sha256.update(data)
        self.size += len(data)
        self._queue.put((self._next, data))
        self._next += 1

    def stop(self) -> None:
        """Make the threads end after their current part (the producer failed)."""
        with self._lock:
            self.error = self.error or RuntimeError("archive stream stopped")
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._queue.put(None)

    def finish(self) -> None:
        """Wait until every part is uploaded."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            while thread.is_alive():
                thread.join(timeout=0.2)
        if self.error is not None:
            raise self.error


@dataclass(frozen=True)
class _Uploaded:
    size: int
    sha256: str
    stats: ArchiveStats


def _parts(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Regroup the archive's chunks into upload parts of :func:`part_size`."""
    buffer: list[bytes] = []
    filled = 0
    number = 1
    for chunk in chunks:
        if number > MAX_PARTS:
            raise PermanentStorageError(
                f"workspace archive exceeds {MAX_PARTS} upload parts (about 140 GiB)"
            )
        buffer.append(chunk)
        filled += len(chunk)
        if filled >= part_size(number):
            part = b"".join(buffer)
            buffer.clear()  # before yielding: the consumer may hold the part for a while
            filled = 0
            number += 1
            yield part
            del part
    if buffer or number == 1:
        yield b"".join(buffer)


def upload_archive(
    store: ArtifactStore,
    key: str,
    workspace: Path,
    backoff: Backoff,
    max_bytes: int | None = None,
) -> _Uploaded:
    """Stream the workspace ZIP to ``key`` as one multipart upload of at most ``max_bytes``."""
    upload_id = backoff.call(
        "start upload",
        lambda: store.start_upload(
            key, ZIP_CONTENT_TYPE, {"Content-Disposition": 'attachment; filename="workspace.zip"'}
        ),
    )
    log.info("upload started: %s (upload id %s)", key, upload_id)
    stats = ArchiveStats()
    uploader = _PartUploader(store, key, upload_id, backoff)
    uploader.start()
    parts = _parts(stream_workspace(workspace, stats, max_size=max_bytes))
    try:
        while True:
            uploader.reserve()  # waiting here, before zipping on, is what bounds memory
            part = next(parts, None)
            if part is None:
                break
            uploader.put(part)
            del part
        uploader.finish()
    except BaseException:
        uploader.stop()
        _abort_quietly(store, key, upload_id)
        raise
    size, digest = uploader.size, uploader.sha256.hexdigest()

    def complete() -> None:
        try:
            store.complete_upload(key, upload_id, uploader.parts)
        except UploadLostError:
            # A retried CompleteMultipartUpload whose first attempt did succeed finds no upload.
            info = store.stat(key)
            if info is None or info.size != size:
                raise

    backoff.call("complete upload", complete)
    return _Uploaded(size=size, sha256=digest, stats=stats)


def _abort_quietly(store: ArtifactStore, key: str, upload_id: str) -> None:
    try:
        store.abort_upload(key, upload_id)
    except Exception as error:  # the server drops stale uploads itself eventually
        log.info("could not abort upload %s: %s", upload_id, error)


def _upload_transcript(
    store: ArtifactStore, key: str, workspace: Path, backoff: Backoff
) -> str | None:
    """Upload the sidecar's ``context.txt`` as its own object; ``None`` when there is none."""
    # The old place only for a workspace the sidecar never had its directory in: otherwise a
    # context.txt there is the agent's, not the sidecar's transcript.
    name = TRANSCRIPT_NAME
    if not (workspace / STATE_DIR).is_dir():
        name = LEGACY_TRANSCRIPT_NAME
    try:
        # O_NOFOLLOW: the workspace is untrusted; a symlink named context.txt must not make this
        # process upload one of its own files (credentials, tokens) to the bucket.
        fd = os.open(workspace / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("transcript not uploaded: %s", error)
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            log.warning("transcript not uploaded: %s is not a regular file", name)
            return None
        backoff.call(
            "upload transcript",
            lambda: store.put_stream(key, handle, info.st_size, TRANSCRIPT_CONTENT_TYPE),
        )
    return key


def archive(
    settings: ArchiverSettings, store: ArtifactStore, *, sleep: Callable[[float], None] = time.sleep
) -> ArchiveReport:
    """Archive the workspace (and transcript) into the store; raises storage errors."""
    backoff = Backoff(deadline=time.monotonic() + settings.archive_deadline_seconds, sleep=sleep)
    if store.settings.session_token is None:
        # A scoped session sees no bucket, only its prefix: the operator ensured the bucket.
        backoff.call("ensure bucket", store.ensure_bucket)
    while True:
        try:
            uploaded = upload_archive(
                store,
                settings.archive_key,
                settings.workspace,
                backoff,
                settings.archive_max_bytes,
            )
            break
        except UploadLostError as error:
            if time.monotonic() >= backoff.deadline:
                raise DeadlineExceededError(str(error)) from error
            log.warning("upload lost on the server (%s); starting over", error)
    started = time.monotonic()
    backoff.call(
        "record sha256",
        lambda: store.record(
            settings.archive_key,
            {META_SHA256: uploaded.sha256, META_FILES: str(uploaded.stats.entries)},
        ),
    )
    log.info("recorded sha256 and file count in %.3fs", time.monotonic() - started)
    info = backoff.call("confirm", lambda: store.stat(settings.archive_key))
    if info is None or info.size != uploaded.size or info.sha256 != uploaded.sha256:
        raise PermanentStorageError(f"stored object does not match what was sent: {info}")
    transcript_key = None
    if settings.archive_transcript_key:
        transcript_key = _upload_transcript(
            store, settings.archive_transcript_key, settings.workspace, backoff
        )
    if uploaded.stats.skipped:
        log.warning("%d entries not archived (listed in the manifest)", uploaded.stats.skipped)
    return ArchiveReport(
        bucket=store.bucket,
        key=settings.archive_key,
        size=uploaded.size,
        sha256=uploaded.sha256,
        files=uploaded.stats.entries,
        skipped=uploaded.stats.skipped,
        transcriptKey=transcript_key,
    )


def _write_termination(path: Path, message: str) -> None:
    try:
        path.write_text(message, encoding="utf-8")
    except OSError as error:
        log.error("cannot write the termination log %s: %s", path, error)


def _failure(error: BaseException, permanent: bool, reason: str | None = None) -> str:
    return ArchiveError(
        error=str(error)[:_MAX_MESSAGE], permanent=permanent, reason=reason
    ).model_dump_json(exclude_none=True)


#: glibc's mallopt parameter for the size from which allocations get pages of their own.
_M_MMAP_THRESHOLD = -3


def _fixed_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Give every allocation from ``size`` on pages of its own, returned when it is freed.

    glibc raises this threshold (up to 32 MiB) each time such a block is freed, after which the
    1 MiB pieces and 8 MiB parts come from the threads' heaps and their freed memory stays with
    the process: 20-25 MiB more peak RSS on the 1 GiB benchmark (about 116 vs 92 MiB), against a
    128 MiB goal. Setting it fixes it. Elsewhere (not glibc) this does nothing.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, size))


def main() -> None:
    """Console entry point: archive, report, exit 0/1/75."""
    _fixed_mmap_threshold()
    env = os.environ
    job = None
    if env.get("CODINGJOB_NAMESPACE") and env.get("CODINGJOB_NAME"):
        job = job_ref(env["CODINGJOB_NAMESPACE"], env["CODINGJOB_NAME"], env.get("CODINGJOB_UID"))
    json_logs = env.get("CODINGJOB_LOG_FORMAT") == LogFormat.JSON
    logformat.configure(LogFormat.JSON if json_logs else LogFormat.PLAIN, job=job)
    termination_log = Path(os.environ.get("CODINGJOB_TERMINATION_LOG", "/dev/termination-log"))
    try:
        settings = ArchiverSettings()
        storage = StorageSettings()  # credentials come from the environment
    except ValidationError as error:
        log.error("invalid settings: %s", error)
        _write_termination(termination_log, _failure(error, True))
        sys.exit(EXIT_PERMANENT)
    started = time.monotonic()
    try:
        report = archive(settings, ArtifactStore(storage))
    except PermanentStorageError as error:
        log.error("archive failed permanently: %s", error)
        _write_termination(settings.termination_log, _failure(error, True))
        sys.exit(EXIT_PERMANENT)
    except TransientStorageError as error:
        log.error("archive failed, storage unavailable until the deadline: %s", error)
        _write_termination(settings.termination_log, _failure(error, False))
        sys.exit(EXIT_TRANSIENT)
    except ArchiveTooLargeError as error:
        # Retrying would produce the same archive: the user must shrink the workspace.
        log.error("%s", error)
        _write_termination(settings.termination_log, _failure(error, True, TOO_LARGE))
        sys.exit(EXIT_PERMANENT)
    except OSError as error:
        # The workspace itself could not be read mid-stream (I/O error): retrying will not help.
        log.error("reading the workspace failed: %s", error)
        _write_termination(settings.termination_log, _failure(error, True))
        sys.exit(EXIT_PERMANENT)
    except Exception as error:
        # Anything else (a ZIP limit, a bug) would repeat on a retry as well.
        log.exception("archive failed")
        _write_termination(settings.termination_log, _failure(error, True))
        sys.exit(EXIT_PERMANENT)
    log.info(
        "archived %s/%s: %d bytes, %d files, sha256 %s in %.1fs",
        report.bucket,
        report.key,
        report.size,
        report.files,
        report.sha256,
        time.monotonic() - started,
    )
    _write_termination(settings.termination_log, report.model_dump_json(by_alias=True))
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
