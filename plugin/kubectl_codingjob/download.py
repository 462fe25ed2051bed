"""Fetching a finished job's workspace ZIP from its presigned URL, checked against its digest."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1024 * 1024
TIMEOUT_S = 60


class DownloadError(Exception):
    """The ZIP could not be fetched, or what arrived is not what the operator recorded."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str


def fetch(url: str, target: Path, *, expected_sha256: str | None = None) -> Downloaded:
    """Stream ``url`` into ``target`` (atomically: a partial or wrong file never stays behind).

    With ``expected_sha256`` (the job's ``status.artifact.sha256``) a different digest is an error.
    """
    # The URL comes from the object's status: refuse file:// and other schemes urllib would follow.
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"not an http(s) URL: {url!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            except urllib.error.HTTPError as error:
                raise DownloadError(f"{error.code} {error.reason} from the storage") from error
            except (urllib.error.URLError, OSError) as error:
                host = urllib.parse.urlsplit(url).netloc
                raise DownloadError(
                    f"cannot reach {host}: {getattr(error, 'reason', error)} (the URL is signed "
                    "for the storage's public endpoint; with the chart's bundled MinIO, "
                    "port-forward its Service to that address first)"
                ) from error
        if expected_sha256 and digest.hexdigest() != expected_sha256:
            raise DownloadError(
                f"sha256 of the download is {digest.hexdigest()}, "
                f"the job recorded {expected_sha256}"
            )
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return Downloaded(target, size, digest.hexdigest())
